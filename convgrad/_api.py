"""The public functions: validate and normalise, pick a kernel, run it."""

import math
from collections.abc import Callable, Sequence

import numpy as np

from ._arrays import (
    allocate,
    as_batched,
    check_ndim,
    check_out,
    check_shape_tuple,
    common_float_dtype,
    deliver,
    destination,
    kernel_ready,
)
from ._bands import grad_input_by_bands, grad_weight_by_bands
from ._dispatch import (
    KernelChoice,
    banded,
    gemm_suits,
    image_bands,
    kernel_layout,
    select_bias_kernel,
    select_kernel,
    select_partial_kernel,
    tiles_suit,
)
from ._layouts import Layout, convert_weight, get_layout, relayout_image
from ._plans import ALL_GRADIENTS, plan_key, remember, run_plan
from ._problem import Problem, describe
from ._threading import run_kernel
from .kernels.nchw_flat import all_finite, all_finite_serial

Shape = tuple[int, ...]


def conv2d(
    input: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: object = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    layout: str = "NCHW",
) -> np.ndarray:
    """2-D convolution (cross-correlation, as in PyTorch), the forward pass.

    Parameters
    ----------
    input : ndarray
        (N, C_in, H, W) for ``layout="NCHW"``, (N, H, W, C_in) for ``"NHWC"``;
        without the N axis for a single image.
    weight : ndarray
        (C_out, C_in/groups, KH, KW) for NCHW, (KH, KW, C_in/groups, C_out) for NHWC.
    bias : ndarray, optional
        (C_out,).
    stride, dilation : int or (int, int)
        Step and kernel spacing along (H, W), each >= 1.
    padding : int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same"
        Zero padding; "same" (stride 1 only) puts an odd extra row/column at
        the bottom/right, as PyTorch does.
    groups : int
        Number of channel groups; divides C_in and C_out.
    layout : {"NCHW", "NHWC"}

    Returns
    -------
    ndarray
        (N, C_out, OH, OW) for NCHW, (N, OH, OW, C_out) for NHWC, in the
        arrays' dtype (float32 or float64).

    Examples
    --------
    >>> import numpy as np, convgrad
    >>> x = np.ones((1, 1, 4, 4), np.float32); w = np.ones((2, 1, 3, 3), np.float32)
    >>> convgrad.conv2d(x, w, padding=1)[0, 0]
    array([[4., 6., 6., 4.],
           [6., 9., 9., 6.],
           [6., 9., 9., 6.],
           [4., 6., 6., 4.]], dtype=float32)
    """
    spec = get_layout(layout)
    arrays = {"input": input, "weight": weight}
    if bias is not None:
        arrays["bias"] = bias
    dtype = common_float_dtype(**arrays)
    check_ndim("input", input, (4, 3), spec.image_order)
    check_ndim("weight", weight, (4,), spec.weight_order)
    problem = describe(
        spec,
        dtype,
        input.shape,
        weight.shape,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
    )
    if bias is not None and bias.shape != (problem.c_out,):
        raise ValueError(f"bias must have shape ({problem.c_out},) = (C_out,); got {bias.shape}")
    choice = select_kernel("forward", problem)
    family = choice.layout
    output = allocate(
        family.image_shape(problem.n, problem.c_out, problem.out_h, problem.out_w), dtype
    )
    if problem.terms:
        x = _image_for(input, problem, family)
        run_kernel(choice.kernel, x, _weight_for(weight, problem, family), output, *choice.args)
    if bias is not None:
        channel_shape = [1, 1, 1, 1]
        channel_shape[family.image_axes[1]] = problem.c_out
        output += bias.astype(dtype, copy=False).reshape(channel_shape)
    return _to_user_image(output, family, problem)


def conv2d_backward(
    grad_output: np.ndarray,
    input: np.ndarray,
    weight: np.ndarray,
    *,
    stride: int | Sequence[int] = 1,
    padding: object = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    layout: str = "NCHW",
    output_mask: Sequence[bool] = ALL_GRADIENTS,
    out: Sequence[np.ndarray | None] | None = None,
    accumulate: bool = False,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Gradients of :func:`conv2d` with respect to input, weight and bias.

    Parameters
    ----------
    grad_output : ndarray
        Gradient of the loss with respect to the forward output:
        (N, C_out, OH, OW) for NCHW, (N, OH, OW, C_out) for NHWC, unbatched
        if ``input`` is.
    input, weight : ndarray
        The forward pass's arrays, in the layouts described in :func:`conv2d`.
    stride, padding, dilation, groups, layout
        The forward pass's options, as in :func:`conv2d`.
    output_mask : (bool, bool, bool)
        Which of (grad_input, grad_weight, grad_bias) to return; the others
        come back as None. (Where one fused kernel computes all three in less
        time than separate kernels take for those asked for, it runs and the
        rest is thrown away.)
    out : (ndarray or None, ndarray or None, ndarray or None), optional
        Arrays to write the results into, each of exactly the result's shape
        and dtype (None entries are allocated). Entries for results that
        ``output_mask`` leaves out must be None.
    accumulate : bool
        Add the gradients into ``out`` instead of overwriting it (gradient
        accumulation over micro-batches); needs ``out`` for every computed result.

    Returns
    -------
    (grad_input, grad_weight, grad_bias)
        Shaped like input, weight and (C_out,), in the arrays' dtype.

    Examples
    --------
    >>> import numpy as np, convgrad
    >>> x = np.ones((28, 28, 1), np.float32); w = np.ones((3, 3, 1, 6), np.float32)
    >>> g = np.ones((26, 26, 6), np.float32)
    >>> gi, gw, gb = convgrad.conv2d_backward(g, x, w, layout="NHWC")
    >>> gi.shape, gw.shape, float(gb[0])
    ((28, 28, 1), (3, 3, 1, 6), 676.0)
    """
    key = (
        plan_key(grad_output, input, weight, layout, stride, padding, dilation, groups, output_mask)
        if out is None and accumulate is False
        else None
    )
    planned = run_plan(key, grad_output, input, weight)
    if planned is not None:
        return planned
    spec = get_layout(layout)
    dtype = common_float_dtype(grad_output=grad_output, input=input, weight=weight)
    check_ndim("input", input, (4, 3), spec.image_order)
    check_ndim("weight", weight, (4,), spec.weight_order)
    problem = describe(
        spec,
        dtype,
        input.shape,
        weight.shape,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
    )
    _check_grad_output(grad_output, problem)
    mask = _check_output_mask(output_mask)
    outs = _check_out_tuple(out, mask, accumulate, problem)
    originals = (grad_output, input, weight)
    # Every kernel runs before any result is copied into ``out``: an ``out``
    # array may alias input or grad_output, which later kernels still read.
    results: list[np.ndarray | None] = [None, None, None]
    fused = select_partial_kernel(problem, mask)
    if fused is not None:
        computed = _backward_fused(fused, problem, originals, outs, accumulate)
        if computed[0] is not None:
            pairs = zip(computed, mask, strict=True)
            results = [result if wanted else None for result, wanted in pairs]
            mask = (False, False, False)
            remember(key, problem, fused)
    # grad_output goes to the kernels' layout once, unless only grad_bias needs it.
    family = kernel_layout(problem) if mask[0] or mask[1] else problem.layout
    g = _image_for(grad_output, problem, family) if any(mask) else grad_output
    x = _image_for(input, problem, family) if mask[1] else None
    w = _weight_for(weight, problem, family) if mask[0] else None
    # grad_bias goes first: after a product through np.matmul (the 1x1 path
    # without OpenBLAS's controls, see _blas.py) OpenBLAS's threads spin for a
    # while, and a numba kernel started then competes with them for the cores.
    if mask[2]:
        # (products by register tiles run on numba's threads alone)
        beside_blas = gemm_suits(problem) and not tiles_suit(problem) and (mask[0] or mask[1])
        bias_kernel = select_bias_kernel(family, beside_blas, grad_output.size)
        results[2] = _grad_bias(
            bias_kernel, g, problem.c_out, dtype, outs[2], accumulate, originals
        )
    if mask[0]:
        results[0] = _grad_input(problem, g, w, outs[0], accumulate, originals)
    del w  # a relayouted weight copy would otherwise sit beside grad_weight's buffers
    if mask[1]:
        results[1] = _grad_weight(problem, x, g, outs[1], accumulate, originals)
    grad_input, grad_weight, grad_bias = (
        None if result is None else deliver(result, entry, accumulate)
        for result, entry in zip(results, outs, strict=True)
    )
    return grad_input, grad_weight, grad_bias


def conv2d_grad_input(
    grad_output: np.ndarray,
    weight: np.ndarray,
    input_shape: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: object = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    layout: str = "NCHW",
    out: np.ndarray | None = None,
    accumulate: bool = False,
) -> np.ndarray:
    """Gradient of :func:`conv2d` with respect to its input.

    Parameters
    ----------
    grad_output : ndarray
        (N, C_out, OH, OW) for NCHW, (N, OH, OW, C_out) for NHWC, or unbatched.
    weight : ndarray
        The forward pass's weight.
    input_shape : tuple of int
        Shape of the forward pass's input (3 or 4 ints, matching grad_output).
        Needed because with stride > 1 several input sizes give one output size.
    stride, padding, dilation, groups, layout
        The forward pass's options, as in :func:`conv2d`.
    out : ndarray, optional
        Array of shape ``input_shape`` and the arrays' dtype to write into.
    accumulate : bool
        Add into ``out`` instead of overwriting it; needs ``out``.

    Returns
    -------
    ndarray
        grad_input, of shape ``input_shape`` (``out`` itself when given).

    Examples
    --------
    >>> import numpy as np, convgrad
    >>> g = np.ones((1, 1, 4, 4)); w = np.ones((1, 1, 3, 3))
    >>> convgrad.conv2d_grad_input(g, w, (1, 1, 8, 8), stride=2, padding=1)[0, 0, :2]
    array([[1., 2., 1., 2., 1., 2., 1., 1.],
           [2., 4., 2., 4., 2., 4., 2., 2.]])
    """
    spec = get_layout(layout)
    dtype = common_float_dtype(grad_output=grad_output, weight=weight)
    shape = check_shape_tuple("input_shape", input_shape, (4, 3))
    check_ndim("weight", weight, (4,), spec.weight_order)
    problem = describe(
        spec,
        dtype,
        shape,
        weight.shape,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        input_name="input_shape",
    )
    _check_grad_output(grad_output, problem)
    _check_single_out(out, accumulate, problem.input_shape, dtype)
    family = kernel_layout(problem)
    g = _image_for(grad_output, problem, family)
    w = _weight_for(weight, problem, family)
    result = _grad_input(problem, g, w, out, accumulate, (grad_output, weight))
    return deliver(result, out, accumulate)


def conv2d_grad_weight(
    grad_output: np.ndarray,
    input: np.ndarray,
    weight_shape: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: object = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    layout: str = "NCHW",
    out: np.ndarray | None = None,
    accumulate: bool = False,
) -> np.ndarray:
    """Gradient of :func:`conv2d` with respect to its weight.

    Parameters
    ----------
    grad_output : ndarray
        (N, C_out, OH, OW) for NCHW, (N, OH, OW, C_out) for NHWC, or unbatched.
    input : ndarray
        The forward pass's input.
    weight_shape : tuple of int
        Shape of the weight in the layout's convention: (C_out, C_in/groups,
        KH, KW) for NCHW, (KH, KW, C_in/groups, C_out) for NHWC.
    stride, padding, dilation, groups, layout
        The forward pass's options, as in :func:`conv2d`.
    out : ndarray, optional
        Array of shape ``weight_shape`` and the arrays' dtype to write into.
    accumulate : bool
        Add into ``out`` instead of overwriting it; needs ``out``.

    Returns
    -------
    ndarray
        grad_weight, of shape ``weight_shape`` (``out`` itself when given).

    Examples
    --------
    >>> import numpy as np, convgrad
    >>> x = np.ones((1, 1, 4, 4)); g = np.ones((1, 2, 2, 2))
    >>> convgrad.conv2d_grad_weight(g, x, (2, 1, 3, 3))[1, 0]
    array([[4., 4., 4.],
           [4., 4., 4.],
           [4., 4., 4.]])
    """
    spec = get_layout(layout)
    dtype = common_float_dtype(grad_output=grad_output, input=input)
    check_ndim("input", input, (4, 3), spec.image_order)
    shape = check_shape_tuple("weight_shape", weight_shape, (4,))
    problem = describe(
        spec,
        dtype,
        input.shape,
        shape,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        weight_name="weight_shape",
    )
    _check_grad_output(grad_output, problem)
    _check_single_out(out, accumulate, problem.weight_shape, dtype)
    family = kernel_layout(problem)
    g = _image_for(grad_output, problem, family)
    x = _image_for(input, problem, family)
    result = _grad_weight(problem, x, g, out, accumulate, (grad_output, input))
    return deliver(result, out, accumulate)


def conv2d_grad_bias(
    grad_output: np.ndarray,
    *,
    layout: str = "NCHW",
    out: np.ndarray | None = None,
    accumulate: bool = False,
) -> np.ndarray:
    """Gradient of :func:`conv2d` with respect to its bias: grad_output summed per channel.

    Parameters
    ----------
    grad_output : ndarray
        (N, C_out, OH, OW) for NCHW, (N, OH, OW, C_out) for NHWC, or unbatched.
    layout : {"NCHW", "NHWC"}
    out : ndarray, optional
        Array of shape (C_out,) and grad_output's dtype to write into.
    accumulate : bool
        Add into ``out`` instead of overwriting it; needs ``out``.

    Returns
    -------
    ndarray
        grad_bias, of shape (C_out,) (``out`` itself when given). It is summed
        in float64 and rounded to the dtype once.

    Examples
    --------
    >>> import numpy as np, convgrad
    >>> convgrad.conv2d_grad_bias(np.ones((2, 5, 5, 3), np.float32), layout="NHWC")
    array([50., 50., 50.], dtype=float32)
    """
    spec = get_layout(layout)
    dtype = common_float_dtype(grad_output=grad_output)
    check_ndim("grad_output", grad_output, (4, 3), spec.image_order)
    batched = grad_output.ndim == 4
    g = kernel_ready(as_batched(grad_output, batched), dtype)
    c_out = spec.image_dims(g.shape)[1]
    _check_single_out(out, accumulate, (c_out,), dtype)
    kernel = select_bias_kernel(spec, elements=g.size)
    result = _grad_bias(kernel, g, c_out, dtype, out, accumulate, (grad_output,))
    return deliver(result, out, accumulate)


# -- running the kernels ------------------------------------------------------------------
# Kernels take batched, contiguous arrays in the layout the dispatch picked,
# which may differ from the user's. Each runner returns its result in the
# user's layout: ``out`` itself when the kernel wrote there directly, else an
# array (or a transposed view) that the caller hands to ``deliver`` once every
# kernel has run.


def _image_for(array: np.ndarray, problem: Problem, layout: Layout) -> np.ndarray:
    """An image array (input or grad_output) as a kernel working in ``layout`` takes it."""
    batched = kernel_ready(as_batched(array, problem.batched), problem.dtype)
    return relayout_image(batched, problem.layout, layout)


def _weight_for(array: np.ndarray, problem: Problem, layout: Layout) -> np.ndarray:
    """A weight array as a kernel working in ``layout`` takes it."""
    return kernel_ready(convert_weight(array, problem.layout, layout), problem.dtype)


def _to_user_image(array: np.ndarray, layout: Layout, problem: Problem) -> np.ndarray:
    """A batched image result in ``layout``, in the user's layout and batching."""
    result = relayout_image(array, layout, problem.layout)
    return result if problem.batched else result[0]


# Arrays up to this many elements are checked for NaN/Inf on the calling thread.
SERIAL_CHECK_ELEMENTS = 2**16


def _finite(*arrays: np.ndarray) -> bool:
    """No NaN or Inf in any of ``arrays`` (C-contiguous; checked flat, one compiled signature)."""
    return all(
        all_finite_serial(flat)
        if flat.size <= SERIAL_CHECK_ELEMENTS
        else run_kernel(all_finite, flat)
        for flat in (a.reshape(-1) for a in arrays)
        if flat.size
    )


def _fused_applies(choice: KernelChoice, accumulate: bool, *inputs: np.ndarray) -> bool:
    """Whether to run the fused kernel ``choice`` on ``inputs``.

    A fused kernel that is exact for finite inputs only runs when they are
    finite; without ``accumulate`` that is settled afterwards instead, on the
    weight and the small results (see ``_backward_fused``): any NaN or Inf in
    grad_output or an input value the kernel reads, even against zero padding,
    leaves a NaN or Inf in grad_bias or grad_weight.
    """
    return not choice.finite_only or not accumulate or _finite(*inputs)


def _exact_if_needed(choice: KernelChoice, *arrays: np.ndarray) -> KernelChoice:
    """``choice``, or its exact alternative when it needs finite inputs and one is not."""
    if choice.exact is not None and not _finite(*arrays):
        return choice.exact
    return choice


def _backward_fused(
    choice: KernelChoice,
    problem: Problem,
    originals: tuple[np.ndarray, ...],
    outs: tuple[np.ndarray | None, ...],
    accumulate: bool,
) -> list[np.ndarray | None]:
    """All three gradients by the fused kernel ``choice``, or three Nones.

    ``originals`` are the user's (grad_output, input, weight). A kernel exact
    for finite inputs only gives Nones where they hold a NaN or Inf: the caller
    then takes the exact kernels. Without ``accumulate`` that is settled after
    the kernel, on the weight, grad_weight and grad_bias (see
    ``_fused_applies``), which are small: a NaN or Inf in grad_output reaches
    grad_bias (its sum), one in the input reaches grad_weight (every input
    value the kernel reads is multiplied into a sum of it), and one in the
    weight is checked directly. grad_input, as large as the input, is not read
    back.
    """
    family = choice.layout
    g = _image_for(originals[0], problem, family)
    x = _image_for(originals[1], problem, family)
    w = _weight_for(originals[2], problem, family)
    if not _fused_applies(choice, accumulate, g, x, w):
        return [None, None, None]
    cin_g = problem.c_in // problem.geometry.groups
    overwritten = choice.writes_input
    if family is problem.layout:
        gi = destination(
            outs[0],
            problem.input_shape,
            problem.dtype,
            accumulate,
            originals,
            overwritten=overwritten,
        )
        gw = destination(outs[1], problem.weight_shape, problem.dtype, accumulate, originals)
        gi_kernel = as_batched(gi, problem.batched)
    else:
        shape = family.image_shape(problem.n, problem.c_in, problem.height, problem.width)
        gi_kernel = allocate(shape, problem.dtype, zero=not overwritten)
        weight_shape = family.weight_shape(problem.c_out, cin_g, problem.kh, problem.kw)
        gw = allocate(weight_shape, problem.dtype)
    gb = destination(outs[2], (problem.c_out,), problem.dtype, accumulate, originals)
    # the serial kernel says whether its results are finite; the others leave it to us
    finite = run_kernel(choice.kernel, x, g, w, gi_kernel, gw, gb, *choice.args)
    if choice.finite_only and not accumulate:
        if finite is None:
            finite = _finite(w, gw, gb)
        if not finite:  # a NaN or Inf met the zero padding (or a sum overflowed)
            return [None, None, None]
    if family is not problem.layout:
        gi = _to_user_image(gi_kernel, family, problem)
        gw = convert_weight(gw, family, problem.layout)
    return [gi, gw, gb]


def _grad_input(
    problem: Problem,
    g: np.ndarray,
    w: np.ndarray,
    out: np.ndarray | None,
    accumulate: bool,
    originals: tuple[np.ndarray, ...],
) -> np.ndarray:
    choice = _exact_if_needed(select_kernel("grad_input", problem), g, w)
    family = choice.layout
    overwritten = choice.writes_input and problem.terms > 0  # no terms: no kernel call
    if family is problem.layout:
        result = destination(
            out, problem.input_shape, problem.dtype, accumulate, originals, overwritten=overwritten
        )
        target = as_batched(result, problem.batched)
        bands = image_bands(problem) if banded(choice) else 1
        if bands > 1:
            grad_input_by_bands(problem, bands, g, w, target)
        elif problem.terms:
            run_kernel(choice.kernel, g, w, target, *choice.args)
        return result
    shape = family.image_shape(problem.n, problem.c_in, problem.height, problem.width)
    buffer = allocate(shape, problem.dtype, zero=not overwritten)
    if problem.terms:
        run_kernel(choice.kernel, g, w, buffer, *choice.args)
    return _to_user_image(buffer, family, problem)


def _grad_weight(
    problem: Problem,
    x: np.ndarray,
    g: np.ndarray,
    out: np.ndarray | None,
    accumulate: bool,
    originals: tuple[np.ndarray, ...],
) -> np.ndarray:
    choice = select_kernel("grad_weight", problem)
    # Without accumulate, a kernel exact for finite inputs only is checked
    # afterwards, on its result, where that is smaller than its inputs: every
    # input and grad_output value it reads (even against zero padding) is
    # multiplied into a sum of grad_weight, so a NaN or Inf among them leaves
    # one there (as ``_backward_fused`` relies on); then the exact kernel runs.
    if choice.exact is None or accumulate or math.prod(problem.weight_shape) >= x.size + g.size:
        choice = _exact_if_needed(choice, x, g)
    else:
        result = _run_grad_weight(choice, problem, x, g, out, accumulate, originals)
        if _finite(result):
            return result
        choice = choice.exact
    return _run_grad_weight(choice, problem, x, g, out, accumulate, originals)


def _run_grad_weight(
    choice: KernelChoice,
    problem: Problem,
    x: np.ndarray,
    g: np.ndarray,
    out: np.ndarray | None,
    accumulate: bool,
    originals: tuple[np.ndarray, ...],
) -> np.ndarray:
    """grad_weight by ``choice``, in the user's layout (``out`` itself where it can be)."""
    family = choice.layout
    if family is problem.layout:
        buffer = destination(out, problem.weight_shape, problem.dtype, accumulate, originals)
    else:
        cin_g = problem.c_in // problem.geometry.groups
        buffer = allocate(
            family.weight_shape(problem.c_out, cin_g, problem.kh, problem.kw), problem.dtype
        )
    bands = image_bands(problem, "grad_weight") if banded(choice) else 1
    if bands > 1:
        grad_weight_by_bands(problem, bands, x, g, buffer)
    elif problem.terms:
        run_kernel(choice.kernel, x, g, buffer, *choice.args)
    return convert_weight(buffer, family, problem.layout)


def _grad_bias(
    kernel: Callable[..., None],
    g: np.ndarray,
    c_out: int,
    dtype: np.dtype,
    out: np.ndarray | None,
    accumulate: bool,
    originals: tuple[np.ndarray, ...],
) -> np.ndarray:
    """grad_bias from ``g``, a batched kernel-ready grad_output, by ``kernel``."""
    result = destination(out, (c_out,), dtype, accumulate, originals)
    if g.size:
        run_kernel(kernel, g, result)
    return result


# -- argument checks ---------------------------------------------------------------------


def _check_grad_output(grad_output: np.ndarray, problem: Problem) -> None:
    expected = problem.output_shape
    if grad_output.shape != expected:
        raise ValueError(
            f"grad_output must have shape {expected} for these inputs and options "
            f"({problem.layout.name}: {problem.layout.image_order}"
            f"{'' if problem.batched else ' without N'}); "
            f"got {grad_output.shape}"
        )


def _check_output_mask(output_mask: object) -> tuple[bool, bool, bool]:
    if output_mask is ALL_GRADIENTS:  # the default: nothing to check
        return ALL_GRADIENTS
    if (
        not isinstance(output_mask, (tuple, list))
        or len(output_mask) != 3
        or not all(isinstance(m, (bool, np.bool_)) for m in output_mask)
    ):
        raise TypeError(
            "output_mask must be three bools (grad_input, grad_weight, grad_bias); "
            f"got {output_mask!r}"
        )
    return bool(output_mask[0]), bool(output_mask[1]), bool(output_mask[2])


def _check_single_out(
    out: object, accumulate: object, shape: tuple[int, ...], dtype: np.dtype
) -> None:
    """Checks of ``out`` and ``accumulate`` for the functions returning one gradient."""
    _check_accumulate(accumulate, out is not None, "out")
    if out is not None:
        check_out("out", out, shape, dtype)


def _check_accumulate(accumulate: object, has_out: bool, out_name: str) -> None:
    if not isinstance(accumulate, (bool, np.bool_)):
        raise TypeError(f"accumulate must be a bool; got {accumulate!r}")
    if accumulate and not has_out:
        raise ValueError(
            f"accumulate=True adds into existing gradients, so it needs "
            f"{out_name}=...; got {out_name}=None"
        )


def _check_out_tuple(
    out: object, mask: tuple[bool, bool, bool], accumulate: object, problem: Problem
) -> tuple[np.ndarray | None, ...]:
    if out is None:
        _check_accumulate(accumulate, False, "out")
        return (None, None, None)
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        got = (
            f"{type(out).__name__} of length {len(out)}"
            if isinstance(out, (tuple, list))
            else (type(out).__name__)
        )
        raise TypeError(
            "out must be None or a tuple of three arrays or Nones "
            f"(grad_input, grad_weight, grad_bias); got {got}"
        )
    shapes = (problem.input_shape, problem.weight_shape, (problem.c_out,))
    for k, (entry, wanted, shape) in enumerate(zip(out, mask, shapes, strict=True)):
        if entry is None:
            if wanted:
                _check_accumulate(accumulate, False, f"out[{k}]")
            continue
        if not wanted:
            raise ValueError(
                f"out[{k}] must be None because output_mask[{k}] is False; got an array"
            )
        check_out(f"out[{k}]", entry, shape, problem.dtype)
    _check_accumulate(accumulate, True, "out")
    given = [(k, entry) for k, entry in enumerate(out) if entry is not None]
    for a, (k, first) in enumerate(given):
        for m, second in given[a + 1 :]:
            if np.may_share_memory(first, second):
                raise ValueError(
                    f"out[{k}] and out[{m}] must not overlap; got arrays sharing memory"
                )
    return tuple(out)
