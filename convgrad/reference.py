"""A plain NumPy implementation of the same functions, for checking and comparing.

It shares nothing with the numba kernels but argument validation: it pads the
input, then for each kernel offset (p, q) contracts the strided window of the
input with grad_output over channels using ``np.einsum``, over the output
positions whose window entry lies inside the image: zero padding adds no
terms, as the README says (so an Inf never meets a padded zero and makes a
NaN the kernels would not). Slow but simple; the
CLI checks the kernels against it and the benchmarks use it as the "naive
NumPy" baseline. Results are computed in the arrays' dtype.
"""

from collections.abc import Sequence

import numpy as np

from ._arrays import common_float_dtype
from ._layouts import get_layout
from ._problem import Problem, describe


def conv2d_reference(
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
    """Same contract as :func:`convgrad.conv2d`."""
    problem, x, w = _setup(input, weight, stride, padding, dilation, groups, layout)
    n, g, cin_g, cout_g = problem.n, problem.geometry.groups, *_per_group(problem)
    xg = x.reshape(n, g, cin_g, *x.shape[2:])
    wg = w.reshape(g, cout_g, cin_g, problem.kh, problem.kw)
    y = np.zeros((n, g, cout_g, problem.out_h, problem.out_w), problem.dtype)
    for p, q, rows, cols, out_rows, out_cols in _offsets(problem):
        window = xg[:, :, :, rows, cols]
        y[:, :, :, out_rows, out_cols] += np.einsum("ngcij,goc->ngoij", window, wg[:, :, :, p, q])
    y = y.reshape(n, problem.c_out, problem.out_h, problem.out_w)
    if bias is not None:
        y += bias.astype(problem.dtype).reshape(-1, 1, 1)
    return _from_nchw(y, problem)


def conv2d_backward_reference(
    grad_output: np.ndarray,
    input: np.ndarray,
    weight: np.ndarray,
    *,
    stride: int | Sequence[int] = 1,
    padding: object = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    layout: str = "NCHW",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same contract as :func:`convgrad.conv2d_backward` (all three gradients)."""
    common_float_dtype(grad_output=grad_output, input=input, weight=weight)
    problem, x, w = _setup(input, weight, stride, padding, dilation, groups, layout)
    n, g, cin_g, cout_g = problem.n, problem.geometry.groups, *_per_group(problem)
    go = _to_nchw(grad_output, problem)
    xg = x.reshape(n, g, cin_g, *x.shape[2:])
    gg = go.reshape(n, g, cout_g, problem.out_h, problem.out_w)
    wg = w.reshape(g, cout_g, cin_g, problem.kh, problem.kw)
    grad_xg = np.zeros_like(xg)
    grad_wg = np.zeros_like(wg)
    for p, q, rows, cols, out_rows, out_cols in _offsets(problem):
        grads = gg[:, :, :, out_rows, out_cols]
        grad_wg[:, :, :, p, q] += np.einsum("ngcij,ngoij->goc", xg[:, :, :, rows, cols], grads)
        grad_xg[:, :, :, rows, cols] += np.einsum("ngoij,goc->ngcij", grads, wg[:, :, :, p, q])
    top, _, left, _ = problem.geometry.padding
    grad_x = grad_xg.reshape(x.shape)[:, :, top : top + problem.height, left : left + problem.width]
    grad_w = grad_wg.reshape(w.shape)
    grad_b = go.sum(axis=(0, 2, 3), dtype=problem.dtype)
    w_axes = problem.layout.weight_axes
    return (
        _from_nchw(grad_x, problem),
        np.ascontiguousarray(grad_w.transpose(np.argsort(w_axes))),
        grad_b,
    )


def _setup(
    input: np.ndarray,
    weight: np.ndarray,
    stride: object,
    padding: object,
    dilation: object,
    groups: object,
    layout: str,
) -> tuple[Problem, np.ndarray, np.ndarray]:
    """Validate, then return the problem, the zero-padded NCHW input and the OIHW weight."""
    spec = get_layout(layout)
    dtype = common_float_dtype(input=input, weight=weight)
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
    top, bottom, left, right = problem.geometry.padding
    x = np.pad(_to_nchw(input, problem), ((0, 0), (0, 0), (top, bottom), (left, right)))
    w = weight.astype(dtype).transpose(spec.weight_axes)
    return problem, x, w


def _per_group(problem: Problem) -> tuple[int, int]:
    groups = problem.geometry.groups
    return problem.c_in // groups, problem.c_out // groups


def _inside(offset: int, step: int, pad: int, size: int, out: int) -> slice:
    """The outputs i < ``out`` whose input index i*step + offset - pad lies in [0, size)."""
    first = max(0, -(-(pad - offset) // step))
    last = min(out, (pad + size - 1 - offset) // step + 1)
    return slice(first, max(first, last))


def _offsets(problem: Problem):
    """(p, q, rows, cols, out_rows, out_cols) for each kernel offset.

    out_rows and out_cols: the output positions whose input entry for (p, q)
    lies inside the image; rows and cols: those entries in the padded input.
    """
    (sh, sw), (top, _, left, _), (dh, dw), _ = problem.geometry
    for p in range(problem.kh):
        out_rows = _inside(p * dh, sh, top, problem.height, problem.out_h)
        rows = slice(out_rows.start * sh + p * dh, out_rows.stop * sh + p * dh, sh)
        for q in range(problem.kw):
            out_cols = _inside(q * dw, sw, left, problem.width, problem.out_w)
            cols = slice(out_cols.start * sw + q * dw, out_cols.stop * sw + q * dw, sw)
            yield p, q, rows, cols, out_rows, out_cols


def _to_nchw(image: np.ndarray, problem: Problem) -> np.ndarray:
    batched = image if problem.batched else image[np.newaxis]
    return batched.astype(problem.dtype).transpose(problem.layout.image_axes)


def _from_nchw(image: np.ndarray, problem: Problem) -> np.ndarray:
    result = np.ascontiguousarray(image.transpose(np.argsort(problem.layout.image_axes)))
    return result if problem.batched else result[0]
