"""Array checks and conversions shared by the public functions."""

from collections.abc import Sequence

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Largest size NumPy takes for one axis (and for a whole array, in bytes).
MAX_SIZE = int(np.iinfo(np.intp).max)


def allocate(shape: tuple[int, ...], dtype: np.dtype, *, zero: bool = True) -> np.ndarray:
    """A new array (zeroed unless ``zero`` is False); MemoryError when it cannot exist.

    NumPy raises ValueError for a shape whose byte size passes the address
    space; for the caller that is the same failure as an allocation that the
    system refuses, so both come out as MemoryError.
    """
    try:
        array = np.empty(shape, dtype)
    except ValueError as error:
        raise MemoryError(
            f"cannot allocate an array of shape {shape} and dtype {np.dtype(dtype)}: {error}"
        ) from None
    if zero:
        # zeros written here, not calloc's untouched fresh pages: a kernel adding
        # into such a page reads the shared zero page first, and its write then
        # copies the page and flushes the other cores' TLBs (an interrupt each,
        # costly in a VM). A process whose heap malloc trimmed after each call
        # took 250 such flushes per resnet_s2 NHWC backward, 11.1 ms against 8.2
        # with the zeros written (2-core AMD EPYC VM); where malloc reuses memory
        # it writes the zeros itself, as here.
        array.fill(0)
    return array


def common_float_dtype(**arrays: object) -> np.dtype:
    """The one native float dtype of all ``arrays`` (keyword = argument name).

    Raises TypeError for a non-array, a non-float32/float64 dtype, or a mix.
    """
    dtype = None
    first_name = ""
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray):
            raise TypeError(
                f"{name} must be a numpy.ndarray of float32 or float64; got {type(array).__name__}"
            )
        this = array.dtype if array.dtype.isnative else array.dtype.newbyteorder("=")
        if this not in FLOAT_DTYPES:
            raise TypeError(f"{name} must have dtype float32 or float64; got {array.dtype}")
        if dtype is None:
            dtype, first_name = this, name
        elif this != dtype:
            raise TypeError(
                f"all arrays must have one dtype; {first_name} is {dtype} but {name} is {this}"
            )
    assert dtype is not None
    return dtype


def check_ndim(name: str, array: np.ndarray, allowed: tuple[int, ...], order: str) -> None:
    """ValueError unless ``array.ndim`` is one of ``allowed``."""
    if array.ndim not in allowed:
        expected = " or ".join(str(n) for n in allowed)
        raise ValueError(f"{name} must be {expected}-D {order}; got shape {array.shape}")


def kernel_ready(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``array`` as a C-contiguous, aligned, native, writeable ``dtype`` array.

    Returns ``array`` itself when it already is one (the kernels never write to
    their inputs), else a copy: views, Fortran order, negative or zero strides,
    read-only and byte-swapped arrays all become one compiled signature.
    """
    flags = array.flags
    if flags.c_contiguous and flags.aligned and flags.writeable and array.dtype == dtype:
        return array
    return np.array(array, dtype=dtype, order="C", copy=True)


def as_batched(array: np.ndarray, batched: bool) -> np.ndarray:
    """A 4-D view of an image array, adding N = 1 when it is unbatched."""
    return array if batched else array[np.newaxis]


def check_shape_tuple(name: str, shape: object, ndims: tuple[int, ...]) -> tuple[int, ...]:
    """A shape given as a sequence of non-negative ints, with an allowed length."""
    if (
        not isinstance(shape, Sequence)
        or isinstance(shape, (str, bytes))
        or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in shape)
    ):
        raise TypeError(f"{name} must be a tuple of ints; got {shape!r}")
    if len(shape) not in ndims or min(shape, default=0) < 0:
        expected = " or ".join(str(n) for n in ndims)
        raise ValueError(f"{name} must be {expected} non-negative ints; got {tuple(shape)!r}")
    if max(shape, default=0) > MAX_SIZE:
        raise ValueError(f"{name} must have sizes at most {MAX_SIZE}; got {tuple(shape)!r}")
    return tuple(int(s) for s in shape)


def check_out(name: str, out: object, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """ValueError/TypeError unless ``out`` is a writeable array of ``shape`` and ``dtype``."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray; got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"{name} must have shape {shape}; got {out.shape}")
    if out.dtype.newbyteorder("=") != dtype:
        raise ValueError(f"{name} must have dtype {dtype}; got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable; got a read-only array")
    return out


def destination(
    out: np.ndarray | None,
    shape: tuple[int, ...],
    dtype: np.dtype,
    accumulate: bool,
    inputs: tuple[np.ndarray, ...],
    overwritten: bool = False,
) -> np.ndarray:
    """The array a kernel adds its result into (or, ``overwritten``, writes it to).

    That is ``out`` itself when the kernel can write to it directly (zeroed
    first unless accumulating or ``overwritten``); otherwise a fresh buffer,
    zeroed unless ``overwritten``, which ``deliver`` later adds or copies into
    ``out``. A fresh buffer also protects against ``out`` aliasing an input. A
    kernel that overwrites never gets ``out`` when accumulating: it would lose
    out's values.
    """
    if out is not None and not (overwritten and accumulate):
        flags = out.flags
        if (
            flags.c_contiguous
            and flags.aligned
            and out.dtype == dtype
            and not any(np.may_share_memory(out, a) for a in inputs)
        ):
            if not (accumulate or overwritten):
                out.fill(0)
            return out
    return allocate(shape, dtype, zero=not overwritten)


def deliver(result: np.ndarray, out: np.ndarray | None, accumulate: bool) -> np.ndarray:
    """The user's result: ``out`` holding ``result`` (added when accumulating), or ``result``.

    ``result`` may be a transposed view of a kernel's buffer; without ``out``
    it comes back as a contiguous array.
    """
    if out is None:
        return np.ascontiguousarray(result)
    if result is not out:
        if accumulate:
            out += result
        else:
            out[...] = result
    return out
