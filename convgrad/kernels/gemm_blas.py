"""The 1x1 products of ``gemm.py`` as single-threaded BLAS calls spread over numba's threads.

The same products as ``gemm.py`` (see there), each cut into ``parts`` tasks
per group along its output rows or columns, never along the summed pixels
(each value is one gemm call's sum): grad_input along its pixels,
grad_weight along its output channels or, where a group has more input
channels than output ones, its input channels (the wider side keeps each
task's gemm wide). The caller takes one part per thread, so
the bits are the same for a given thread count; across counts the last bits
can differ, as OpenBLAS sums small blocks with other kernels than large ones.

``gemm`` and ``ilp64`` are the cblas gemm for the arrays' dtype
(``convgrad._blas.gemm_for``); the caller holds OpenBLAS at one thread
(``_blas.one_blas_thread``) and passes C-contiguous arrays of one dtype. The
grad_input kernels take ``rows_per_tile`` too, unused (they need no
temporary), so that all four have one signature.

grad_weight sums its pixels a tile of ``rows_per_tile`` at a time (NCHW: that
many pixels' worth of whole images) in the dtype and the tiles in float64,
rounded once; a single tile goes into gw directly (beta = 1).
"""

import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._cblas import NO_TRANS, TRANS, gemm_call


@njit(cache=CACHE)
def _span(part, parts, length):
    """(start, stop) of part ``part`` of ``parts`` even parts of range(length)."""
    return part * length // parts, (part + 1) * length // parts


@njit(cache=CACHE)
def _weight_spans(task, parts, cout_g, cin_g):
    """(group, o0, o1, i0, i1): task's output and input channels of its group's weight.

    Absolute channel numbers. The group's output channels are cut into
    ``parts`` spans, or its input channels where there are more of them.
    """
    group, part = task // parts, task % parts
    o0, o1, i0, i1 = 0, cout_g, 0, cin_g
    if cin_g > cout_g:
        i0, i1 = _span(part, parts, cin_g)
    else:
        o0, o1 = _span(part, parts, cout_g)
    return group, group * cout_g + o0, group * cout_g + o1, group * cin_g + i0, group * cin_g + i1


@njit(cache=CACHE)
def _add_rounded(total, scratch, target, at, pitch):
    """target.flat[at + i*pitch + j] += total[i, j] rounded to the dtype (through scratch)."""
    flat = target.reshape(target.size)
    for i in range(total.shape[0]):
        for j in range(total.shape[1]):
            scratch[i, j] = total[i, j]
            flat[at + i * pitch + j] += scratch[i, j]


@njit(parallel=True, cache=CACHE)
def grad_input_nhwc(g, w, gi, groups, rows_per_tile, parts, gemm, ilp64):
    """gi[pixels, ins] = g[pixels, outs] @ w[0, 0, :, outs].T per group (written).

    A span of pixels per task; g (N, H, W, C_out), w (1, 1, C_in/g, C_out), gi (N, H, W, C_in).
    """
    c_out, c_in = g.shape[3], gi.shape[3]
    cin_g, cout_g = c_in // groups, c_out // groups
    pixels, item = g.size // c_out, g.itemsize
    for task in prange(groups * parts):
        group, part = task // parts, task % parts
        r0, r1 = _span(part, parts, pixels)
        if r1 > r0:
            gemm_call(
                gemm, ilp64, NO_TRANS, TRANS, r1 - r0, cin_g, cout_g,
                g.ctypes.data + (r0 * c_out + group * cout_g) * item, c_out,
                w.ctypes.data + group * cout_g * item, c_out,
                0.0, gi, r0 * c_in + group * cin_g, c_in,
            )  # fmt: skip


@njit(parallel=True, cache=CACHE)
def grad_weight_nhwc(x, g, gw, groups, rows_per_tile, parts, gemm, ilp64):
    """gw[0, 0, :, cols] += x[pixels, ins].T @ g[pixels, cols] per group.

    A span of output (or input, ``_weight_spans``) channels per task;
    x (N, H, W, C_in), g (N, H, W, C_out), gw (1, 1, C_in/g, C_out).
    """
    c_in, c_out = x.shape[3], g.shape[3]
    cin_g, cout_g = c_in // groups, c_out // groups
    pixels, item = x.size // c_in, x.itemsize
    tiles = (pixels + rows_per_tile - 1) // rows_per_tile
    for task in prange(groups * parts):
        group, c0, c1, i0, i1 = _weight_spans(task, parts, cout_g, cin_g)
        if c1 == c0 or i1 == i0:
            continue
        x_at, g_at = x.ctypes.data + i0 * item, g.ctypes.data + c0 * item
        gw_at = (i0 - group * cin_g) * c_out + c0
        if tiles == 1:
            gemm_call(
                gemm, ilp64, TRANS, NO_TRANS, i1 - i0, c1 - c0, pixels, x_at, c_in, g_at, c_out,
                1.0, gw, gw_at, c_out,
            )  # fmt: skip
            continue
        product = np.empty((i1 - i0, c1 - c0), gw.dtype)
        total = np.zeros((i1 - i0, c1 - c0))
        for tile in range(tiles):
            t0, t1 = _span(tile, tiles, pixels)
            gemm_call(
                gemm, ilp64, TRANS, NO_TRANS, i1 - i0, c1 - c0, t1 - t0,
                x_at + t0 * c_in * item, c_in, g_at + t0 * c_out * item, c_out,
                0.0, product, 0, c1 - c0,
            )  # fmt: skip
            total += product
        _add_rounded(total, product, gw, gw_at, c_out)


@njit(parallel=True, cache=CACHE)
def grad_input_nchw(g, w, gi, groups, rows_per_tile, parts, gemm, ilp64):
    """gi[n, ins, cols] = w[outs, :, 0, 0].T @ g[n, outs, cols] per group (written).

    An image (or, with fewer images than parts, a span of its pixels) per task;
    g (N, C_out, H, W), w (C_out, C_in/g, 1, 1), gi (N, C_in, H, W).
    """
    n_batch, c_out, c_in = g.shape[0], g.shape[1], gi.shape[1]
    cin_g, cout_g = c_in // groups, c_out // groups
    pixels, item = g.shape[2] * g.shape[3], g.itemsize
    spans = max(1, -(-parts // n_batch))  # pixel spans per image
    for task in prange(groups * n_batch * spans):
        group, rest = task // (n_batch * spans), task % (n_batch * spans)
        n, span = rest // spans, rest % spans
        p0, p1 = _span(span, spans, pixels)
        if p1 > p0:
            gemm_call(
                gemm, ilp64, TRANS, NO_TRANS, cin_g, p1 - p0, cout_g,
                w.ctypes.data + group * cout_g * cin_g * item, cin_g,
                g.ctypes.data + ((n * c_out + group * cout_g) * pixels + p0) * item, pixels,
                0.0, gi, (n * c_in + group * cin_g) * pixels + p0, pixels,
            )  # fmt: skip


@njit(parallel=True, cache=CACHE)
def grad_weight_nchw(x, g, gw, groups, rows_per_tile, parts, gemm, ilp64):
    """gw[rows, :, 0, 0] += sum over n of g[n, rows] @ x[n, ins].T per group.

    A span of output (or input, ``_weight_spans``) channels per task;
    x (N, C_in, H, W), g (N, C_out, H, W), gw (C_out, C_in/g, 1, 1).
    """
    n_batch, c_in, c_out = x.shape[0], x.shape[1], g.shape[1]
    cin_g, cout_g = c_in // groups, c_out // groups
    pixels, item = x.shape[2] * x.shape[3], x.itemsize
    images_per_tile = max(1, rows_per_tile // max(1, pixels))
    tiles = (n_batch + images_per_tile - 1) // images_per_tile
    for task in prange(groups * parts):
        group, r0, r1, i0, i1 = _weight_spans(task, parts, cout_g, cin_g)
        if r1 == r0 or i1 == i0:
            continue
        gw_at = r0 * cin_g + i0 - group * cin_g
        if tiles == 1:
            for n in range(n_batch):
                gemm_call(
                    gemm, ilp64, NO_TRANS, TRANS, r1 - r0, i1 - i0, pixels,
                    g.ctypes.data + (n * c_out + r0) * pixels * item, pixels,
                    x.ctypes.data + (n * c_in + i0) * pixels * item, pixels,
                    1.0, gw, gw_at, cin_g,
                )  # fmt: skip
            continue
        product = np.empty((r1 - r0, i1 - i0), gw.dtype)
        total = np.zeros((r1 - r0, i1 - i0))
        for tile in range(tiles):
            n0, n1 = _span(tile, tiles, n_batch)
            for n in range(n0, n1):
                gemm_call(
                    gemm, ilp64, NO_TRANS, TRANS, r1 - r0, i1 - i0, pixels,
                    g.ctypes.data + (n * c_out + r0) * pixels * item, pixels,
                    x.ctypes.data + (n * c_in + i0) * pixels * item, pixels,
                    0.0 if n == n0 else 1.0, product, 0, i1 - i0,
                )  # fmt: skip
            total += product
        _add_rounded(total, product, gw, gw_at, cin_g)
