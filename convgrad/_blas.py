"""NumPy's BLAS, called from numba's threads: where it is and how to hold it at one thread.

The 1x1 path is matrix products. Through ``np.matmul`` OpenBLAS threads each
product over its own pool, sized by ``OPENBLAS_NUM_THREADS`` rather than
``numba.set_num_threads``, and its workers spin for about 0.1 s after each
product (``OPENBLAS_THREAD_TIMEOUT``): on a 2-core machine that took a core
from the numba kernel run next (an NCHW depthwise backward after a 1x1
layer's took 2.5-3x its time), and numba's workers, spinning after a kernel,
slowed the next product the same way.

So where the OpenBLAS library NumPy loaded exports cblas gemm and its thread
controls (NumPy's own wheels do), ``kernels/gemm_blas.py`` cuts each product
into tasks along its output rows or columns and calls gemm for them from a
numba ``prange``, on numba's threads, with OpenBLAS held at one thread
meanwhile (``one_blas_thread``); its own workers are never woken. Otherwise
(another BLAS or platform, or ``CONVGRAD_BLAS_THREADS=library``) the products go
through ``np.matmul`` as before, threaded by the library.

Holding OpenBLAS at one thread is process-wide: BLAS calls that other
threads make while a convgrad product runs run single-threaded too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

# (gemm, ILP64?) by the names OpenBLAS builds export: NumPy's wheels bundle
# scipy-openblas with prefixed, 64-bit-integer symbols; None: ask its config.
_GEMM_NAMES = {
    "float32": (("scipy_cblas_sgemm64_", True), ("cblas_sgemm64_", True), ("cblas_sgemm", None)),
    "float64": (("scipy_cblas_dgemm64_", True), ("cblas_dgemm64_", True), ("cblas_dgemm", None)),
}
_THREAD_NAMES = (
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)
_CONFIG_NAMES = ("scipy_openblas_get_config64_", "openblas_get_config64_", "openblas_get_config")
_CORENAME_NAMES = (
    "scipy_openblas_get_corename64_",
    "openblas_get_corename64_",
    "openblas_get_corename",
)


class Gemm(NamedTuple):
    """A cblas gemm of one dtype: its address and whether its integers are 64 bits wide."""

    address: int
    ilp64: bool


class _OpenBLAS(NamedTuple):
    path: str
    gemm: dict[str, Gemm]
    get_threads: ctypes._CFuncPtr
    set_threads: ctypes._CFuncPtr
    core: str | None  # the kernels OpenBLAS chose for this CPU ("Haswell", "SkylakeX", ...)


def _loaded_openblas_paths() -> list[str]:
    """Paths of the OpenBLAS libraries this process has loaded, NumPy's first (Linux only)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {
                line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1].lower()
            }
    except OSError:
        return []
    numpy_home = os.path.dirname(os.path.dirname(np.__file__))
    ours = sorted(path for path in paths if path.startswith(numpy_home) and "numpy" in path)
    return ours + sorted(paths - set(ours))


def _is_ilp64(library: ctypes.CDLL) -> bool | None:
    for name in _CONFIG_NAMES:
        config = getattr(library, name, None)
        if config is not None:
            config.restype, config.argtypes = ctypes.c_char_p, []
            return b"USE64BITINT" in (config() or b"")
    return None


def _core_name(library: ctypes.CDLL) -> str | None:
    for name in _CORENAME_NAMES:
        corename = getattr(library, name, None)
        if corename is not None:
            corename.restype, corename.argtypes = ctypes.c_char_p, []
            return (corename() or b"").decode("ascii", "replace").strip() or None
    return None


def _open(path: str) -> _OpenBLAS | None:
    """The gemms and thread controls of the library at ``path`` if it is loaded and has them."""
    try:
        # RTLD_NOLOAD: a handle to the copy already loaded, never a second copy
        library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
    except (OSError, AttributeError):
        return None
    controls = next(
        (
            (getattr(library, get), getattr(library, set_))
            for get, set_ in _THREAD_NAMES
            if hasattr(library, get) and hasattr(library, set_)
        ),
        None,
    )
    if controls is None:
        return None
    gemm = {}
    for dtype, names in _GEMM_NAMES.items():
        for name, ilp64 in names:
            function = getattr(library, name, None)
            if function is None:
                continue
            ilp64 = _is_ilp64(library) if ilp64 is None else ilp64
            if ilp64 is not None:
                gemm[dtype] = Gemm(ctypes.cast(function, ctypes.c_void_p).value or 0, ilp64)
                break
    if len(gemm) != len(_GEMM_NAMES) or not all(g.address for g in gemm.values()):
        return None
    get_threads, set_threads = controls
    get_threads.restype, get_threads.argtypes = ctypes.c_int, []
    set_threads.restype, set_threads.argtypes = None, [ctypes.c_int]
    return _OpenBLAS(path, gemm, get_threads, set_threads, _core_name(library))


def _library_threads_asked() -> bool:
    return os.environ.get("CONVGRAD_BLAS_THREADS", "").strip().lower() == "library"


def _find() -> _OpenBLAS | None:
    if _library_threads_asked():
        return None
    return next(filter(None, map(_open, _loaded_openblas_paths())), None)


_openblas = _find()
_limit_lock = threading.Lock()
_holders = 0  # calls now running products with OpenBLAS held at one thread
_saved_threads = 1


def gemm_for(dtype: np.dtype) -> Gemm | None:
    """The cblas gemm for ``dtype`` that numba's threads may call, or None (use ``np.matmul``)."""
    return None if _openblas is None else _openblas.gemm.get(np.dtype(dtype).name)


def blas_info() -> dict[str, object]:
    """How the 1x1 products run in this process, for ``convgrad info``."""
    if _openblas is None:
        why = (
            "CONVGRAD_BLAS_THREADS=library"
            if _library_threads_asked()
            else "no loaded OpenBLAS exports cblas gemm and its thread controls"
        )
        return {"numba_threads": False, "library": None, "why": why}
    ilp64 = _openblas.gemm["float32"].ilp64
    core = _openblas.core
    return {"numba_threads": True, "library": _openblas.path, "ilp64": ilp64, "core": core}


# Vector width of OpenBLAS's x86-64 cores' kernels (``OPENBLAS_CORETYPE`` names, lower case).
_CORE_VECTOR_BYTES = {
    **dict.fromkeys(("skylakex", "cooperlake", "sapphirerapids"), 64),
    **dict.fromkeys(
        ("haswell", "zen", "sandybridge", "excavator", "steamroller", "piledriver", "bulldozer"),
        32,
    ),
}


def blas_vector_bytes() -> int | None:
    """Bytes per vector of the kernels OpenBLAS runs (64: AVX-512, 32: AVX2), None if unknown.

    Unknown: no OpenBLAS found, or a core that is not in the table (another
    architecture's, or an older x86's).
    """
    if _openblas is None or _openblas.core is None:
        return None
    return _CORE_VECTOR_BYTES.get(_openblas.core.lower())


def blas_kernels() -> str | None:
    """The kernels NumPy's OpenBLAS runs, as "OpenBLAS <core>" (and ``OPENBLAS_CORETYPE`` if set).

    Its matrix products (and convgrad's 1x1 and unfolded-product paths) run at
    the rate of those kernels: on a 2-core AMD EPYC (Zen 5) with
    ``OPENBLAS_CORETYPE=Haswell`` (AVX2) set in the environment, float32
    matmul ran at 258 GFLOP/s, against 476 with the SkylakeX (AVX-512)
    kernels OpenBLAS picks there by itself. None where no OpenBLAS was found.
    """
    if _openblas is None or _openblas.core is None:
        return None
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    pinned = f", OPENBLAS_CORETYPE={coretype}" if coretype else ""
    return f"OpenBLAS {_openblas.core}{pinned}"


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """OpenBLAS at one thread while any convgrad product runs; its count before, after the last."""
    global _holders, _saved_threads
    if _openblas is None:
        yield
        return
    with _limit_lock:
        if _holders == 0:
            _saved_threads = _openblas.get_threads()
            if _saved_threads != 1:
                _openblas.set_threads(1)
        _holders += 1
    try:
        yield
    finally:
        with _limit_lock:
            _holders -= 1
            if _holders == 0 and _saved_threads != 1:
                _openblas.set_threads(_saved_threads)


def _forget_holders_after_fork() -> None:
    # a forked child has none of the parent's threads that were inside
    global _limit_lock, _holders
    _limit_lock, _holders = threading.Lock(), 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_holders_after_fork)
