"""Kernels for the NCHW layout: images (N, C, H, W), weights (C_out, C_in/groups, KH, KW).

Notation used in every kernel (forward is cross-correlation, as in PyTorch):

    y[n, co, i, j] = sum over ci2, p, q of
        x[n, g0 + ci2, i*sh + p*dh - pt, j*sw + q*dw - pl] * w[co, ci2, p, q]

where g0 is the first input channel of output channel co's group. Work is done
one image row at a time: the innermost loop runs along j over a row of the
output and the matching (strided) row of the input, so it vectorises.
"""

import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._flags import FASTMATH

# Small helpers are repeated in each kernel module on purpose: numba's on-disk
# cache keys a kernel on its own module's source, so an edited helper imported
# from elsewhere would leave stale compiled kernels behind.


@njit(cache=CACHE, inline="always")
def _valid_range(out_len, in_len, offset, stride):
    """Half-open range of output positions k with 0 <= k*stride + offset < in_len."""
    lo = max(0, -(offset // stride))
    hi = min(out_len, (in_len - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


# The row helpers below take 0-based slices in the stride-1 case: LLVM only
# vectorises these loops when the index provably starts at zero (no
# negative-index wraparound) and the views are known to be contiguous.


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def _row_dot(a, offset, stride, b, lo, hi):
    """sum over j in [lo, hi) of a[j*stride + offset] * b[j]."""
    acc = a.dtype.type(0)
    if stride == 1:
        a_part = a[lo + offset : hi + offset]
        b_part = b[lo:hi]
        for k in range(hi - lo):
            acc += a_part[k] * b_part[k]
    else:
        for j in range(lo, hi):
            acc += a[j * stride + offset] * b[j]
    return acc


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def _row_axpy(dest, offset, stride, scale, src, lo, hi):
    """dest[j*stride + offset] += scale * src[j] for j in [lo, hi)."""
    if stride == 1:
        dest_part = dest[lo + offset : hi + offset]
        src_part = src[lo:hi]
        for k in range(hi - lo):
            dest_part[k] += scale * src_part[k]
    else:
        for j in range(lo, hi):
            dest[j * stride + offset] += scale * src[j]


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def _row_gather_axpy(dest, scale, src, offset, stride, lo, hi):
    """dest[j] += scale * src[j*stride + offset] for j in [lo, hi)."""
    if stride == 1:
        dest_part = dest[lo:hi]
        src_part = src[lo + offset : hi + offset]
        for k in range(hi - lo):
            dest_part[k] += scale * src_part[k]
    else:
        for j in range(lo, hi):
            dest[j] += scale * src[j * stride + offset]


# Each operation is a task body -- the work for one output-owning index --
# and a driver that runs the tasks in parallel with prange.


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def _forward_plane(x, w, y, task, sh, sw, pt, pl, dh, dw, groups):
    """Task: y[n, co] += conv2d(x, w)[n, co] for the output plane (n, co) = divmod(task, C_out)."""
    height, width = x.shape[2], x.shape[3]
    c_out, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    cin_g = x.shape[1] // groups
    n = task // c_out
    co = task - n * c_out
    g0 = (co // (c_out // groups)) * cin_g
    for ci2 in range(cin_g):
        for p in range(kh):
            i_lo, i_hi = _valid_range(out_h, height, p * dh - pt, sh)
            for q in range(kw):
                j_lo, j_hi = _valid_range(out_w, width, q * dw - pl, sw)
                wv = w[co, ci2, p, q]
                for i in range(i_lo, i_hi):
                    x_row = x[n, g0 + ci2, i * sh + p * dh - pt]
                    _row_gather_axpy(y[n, co, i], wv, x_row, q * dw - pl, sw, j_lo, j_hi)


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def forward_nchw(x, w, y, sh, sw, pt, pl, dh, dw, groups):
    """y += conv2d(x, w); parallel over (n, co) output planes."""
    for task in prange(y.shape[0] * y.shape[1]):
        _forward_plane(x, w, y, task, sh, sw, pt, pl, dh, dw, groups)


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def _grad_input_plane(g, w, gi, task, sh, sw, pt, pl, dh, dw, groups):
    """Task: gi[n, ci] += scatter-add of w * g for the input plane (n, ci) = divmod(task, C_in)."""
    c_in, height, width = gi.shape[1], gi.shape[2], gi.shape[3]
    c_out, out_h, out_w = g.shape[1], g.shape[2], g.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    cin_g = c_in // groups
    cout_g = c_out // groups
    n = task // c_in
    ci = task - n * c_in
    group = ci // cin_g
    ci2 = ci - group * cin_g
    for co in range(group * cout_g, (group + 1) * cout_g):
        for p in range(kh):
            i_lo, i_hi = _valid_range(out_h, height, p * dh - pt, sh)
            for q in range(kw):
                j_lo, j_hi = _valid_range(out_w, width, q * dw - pl, sw)
                wv = w[co, ci2, p, q]
                for i in range(i_lo, i_hi):
                    gi_row = gi[n, ci, i * sh + p * dh - pt]
                    _row_axpy(gi_row, q * dw - pl, sw, wv, g[n, co, i], j_lo, j_hi)


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def grad_input_nchw(g, w, gi, sh, sw, pt, pl, dh, dw, groups):
    """gi += scatter-add of w * g; parallel over (n, ci) input planes."""
    for task in prange(gi.shape[0] * gi.shape[1]):
        _grad_input_plane(g, w, gi, task, sh, sw, pt, pl, dh, dw, groups)


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def _grad_weight_plane(x, g, gw, task, sh, sw, pt, pl, dh, dw, groups):
    """Task: gw[co, ci2] += correlation of x with g for (co, ci2) = divmod(task, C_in/groups).

    The task owns the KH x KW plane gw[co, ci2] and adds into it over (n, i)
    in a fixed order: one image's rows summed in the dtype (a block of OH x OW
    terms at most), the images' sums in float64, rounded once at the end, so
    the error does not grow with the batch.
    """
    height, width = x.shape[2], x.shape[3]
    c_out, out_h, out_w = g.shape[1], g.shape[2], g.shape[3]
    cin_g, kh, kw = gw.shape[1], gw.shape[2], gw.shape[3]
    co = task // cin_g
    ci2 = task - co * cin_g
    ci = (co // (c_out // groups)) * cin_g + ci2
    total = np.zeros((kh, kw), dtype=np.float64)
    for n in range(x.shape[0]):
        for p in range(kh):
            i_lo, i_hi = _valid_range(out_h, height, p * dh - pt, sh)
            for q in range(kw):
                j_lo, j_hi = _valid_range(out_w, width, q * dw - pl, sw)
                acc = gw.dtype.type(0)
                for i in range(i_lo, i_hi):
                    x_row = x[n, ci, i * sh + p * dh - pt]
                    acc += _row_dot(x_row, q * dw - pl, sw, g[n, co, i], j_lo, j_hi)
                total[p, q] += acc
    plane = gw[co, ci2]
    for p in range(kh):
        for q in range(kw):
            plane[p, q] += total[p, q]


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def grad_weight_nchw(x, g, gw, sh, sw, pt, pl, dh, dw, groups):
    """gw += valid correlation of x with g; parallel over (co, ci2) kernel planes."""
    for task in prange(gw.shape[0] * gw.shape[1]):
        _grad_weight_plane(x, g, gw, task, sh, sw, pt, pl, dh, dw, groups)


@njit(cache=CACHE, fastmath=FASTMATH)
def _channel_sum(g, co):
    """sum of g[:, co] over (n, i, j), accumulated in float64; g C-contiguous.

    A plane at a time as one run: summed row by row, each row's vector of
    partial sums was reduced to the scalar at the row's end, which took 2-3x
    the time on 14-112 pixel rows.
    """
    n_batch, _, out_h, out_w = g.shape
    acc = 0.0
    for n in range(n_batch):
        plane = g[n, co].reshape(out_h * out_w)
        for k in range(plane.shape[0]):
            acc += plane[k]
    return acc


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def grad_bias_nchw(g, gb):
    """gb += sum of g over (n, i, j), accumulated in float64; parallel over co."""
    for co in prange(g.shape[1]):
        gb[co] += _channel_sum(g, co)


@njit(cache=CACHE, fastmath=FASTMATH)
def grad_bias_nchw_serial(g, gb):
    """``grad_bias_nchw`` on the calling thread, leaving numba's thread pool idle."""
    for co in range(g.shape[1]):
        gb[co] += _channel_sum(g, co)
