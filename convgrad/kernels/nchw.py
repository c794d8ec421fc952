"""Kernels for the NCHW layout: images (N, C, H, W), weights (C_out, C_in/groups, KH, KW).

Notation used in every kernel (forward is cross-correlation, as in PyTorch):

    y[n, co, i, j] = sum over ci2, p, q of
        x[n, g0 + ci2, i*sh + p*dh - pt, j*sw + q*dw - pl] * w[co, ci2, p, q]

where g0 is the first input channel of output channel co's group. The inner
loop always runs over j, the contiguous axis of the output planes.
"""

from numba import njit, prange

from ._flags import FASTMATH


@njit(cache=True, inline="always")
def _valid_range(out_len, in_len, offset, stride):
    """Half-open range of output positions k with 0 <= k*stride + offset < in_len."""
    lo = max(0, -(offset // stride))
    hi = min(out_len, (in_len - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


@njit(cache=True, fastmath=FASTMATH, parallel=True)
def forward_nchw(x, w, y, sh, sw, pt, pl, dh, dw, groups):
    """y += conv2d(x, w); parallel over (n, co) output planes."""
    n_batch, c_in, height, width = x.shape
    c_out, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    cin_g = c_in // groups
    cout_g = c_out // groups
    for task in prange(n_batch * c_out):
        n = task // c_out
        co = task - n * c_out
        g0 = (co // cout_g) * cin_g
        for ci2 in range(cin_g):
            for p in range(kh):
                i_lo, i_hi = _valid_range(out_h, height, p * dh - pt, sh)
                for q in range(kw):
                    j_lo, j_hi = _valid_range(out_w, width, q * dw - pl, sw)
                    wv = w[co, ci2, p, q]
                    for i in range(i_lo, i_hi):
                        r = i * sh + p * dh - pt
                        for j in range(j_lo, j_hi):
                            y[n, co, i, j] += wv * x[n, g0 + ci2, r, j * sw + q * dw - pl]


@njit(cache=True, fastmath=FASTMATH, parallel=True)
def grad_input_nchw(g, w, gi, sh, sw, pt, pl, dh, dw, groups):
    """gi += scatter-add of w * g; parallel over (n, ci) input planes."""
    n_batch, c_in, height, width = gi.shape
    c_out, out_h, out_w = g.shape[1], g.shape[2], g.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    cin_g = c_in // groups
    cout_g = c_out // groups
    for task in prange(n_batch * c_in):
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
                        r = i * sh + p * dh - pt
                        for j in range(j_lo, j_hi):
                            gi[n, ci, r, j * sw + q * dw - pl] += wv * g[n, co, i, j]


@njit(cache=True, fastmath=FASTMATH, parallel=True)
def grad_weight_nchw(x, g, gw, sh, sw, pt, pl, dh, dw, groups):
    """gw += valid correlation of x with g; parallel over output channels co."""
    n_batch, c_in, height, width = x.shape
    c_out, out_h, out_w = g.shape[1], g.shape[2], g.shape[3]
    kh, kw = gw.shape[2], gw.shape[3]
    cin_g = c_in // groups
    cout_g = c_out // groups
    for co in prange(c_out):
        g0 = (co // cout_g) * cin_g
        for ci2 in range(cin_g):
            for p in range(kh):
                i_lo, i_hi = _valid_range(out_h, height, p * dh - pt, sh)
                for q in range(kw):
                    j_lo, j_hi = _valid_range(out_w, width, q * dw - pl, sw)
                    acc = gw.dtype.type(0)
                    for n in range(n_batch):
                        for i in range(i_lo, i_hi):
                            r = i * sh + p * dh - pt
                            for j in range(j_lo, j_hi):
                                acc += x[n, g0 + ci2, r, j * sw + q * dw - pl] * g[n, co, i, j]
                    gw[co, ci2, p, q] += acc


@njit(cache=True, fastmath=FASTMATH, parallel=True)
def grad_bias_nchw(g, gb):
    """gb += sum of g over (n, i, j), accumulated in float64; parallel over co."""
    n_batch, c_out, out_h, out_w = g.shape
    for co in prange(c_out):
        acc = 0.0
        for n in range(n_batch):
            for i in range(out_h):
                for j in range(out_w):
                    acc += g[n, co, i, j]
        gb[co] += acc
