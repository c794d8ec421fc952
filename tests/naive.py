"""Slow, obviously correct reference for conv2d forward and backward.

Everything here is plain Python ``for`` loops over every index; NumPy is used
only to allocate arrays. The code transcribes the math below term by term so
that it can be checked line by line. It is meant for tiny shapes only.

Conventions (NCHW logical order; forward is cross-correlation, as in PyTorch)::

    x: (N, C_in, H, W)
    w: (C_out, C_in // groups, KH, KW)
    g = grad_output: (N, C_out, OH, OW)
    stride (sh, sw), dilation (dh, dw), padding (top, bottom, left, right)

    OH = (H + top + bottom - dh*(KH-1) - 1) // sh + 1   (likewise OW)

    output channel co belongs to group grp = co // (C_out // groups), whose
    input channels are grp*cin_g + ci2 for ci2 in range(cin_g),
    where cin_g = C_in // groups.

    y[n,co,i,j] = b[co] + sum_{ci2,p,q}
        x[n, grp*cin_g+ci2, i*sh + p*dh - top, j*sw + q*dw - left] * w[co,ci2,p,q]

Terms whose input position lies outside [0, H) x [0, W) read zero padding and
are skipped. All accumulation is done in float64; results are cast back to the
dtype of the inputs.
"""

from __future__ import annotations

import numpy as np

Pair = tuple[int, int]
Padding4 = tuple[int, int, int, int]


def output_size(
    size: int,
    kernel: int,
    stride: int,
    dilation: int,
    pad_before: int,
    pad_after: int,
) -> int:
    """Output length of a 1-D convolution along one spatial axis."""
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def _out_dtype(*arrays: np.ndarray) -> np.dtype:
    """Dtype the result is cast back to: the common dtype of the inputs."""
    return np.result_type(*arrays)


def conv2d_nchw(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: Pair,
    padding: Padding4,
    dilation: Pair,
    groups: int,
) -> np.ndarray:
    """Forward conv2d: y[n, co, i, j], shape (N, C_out, OH, OW)."""
    N, C_in, H, W = x.shape
    C_out, cin_g, KH, KW = w.shape
    sh, sw = stride
    dh, dw = dilation
    top, bottom, left, right = padding
    assert C_in == cin_g * groups, (C_in, cin_g, groups)
    assert C_out % groups == 0, (C_out, groups)
    cout_g = C_out // groups
    OH = output_size(H, KH, sh, dh, top, bottom)
    OW = output_size(W, KW, sw, dw, left, right)
    assert OH >= 1 and OW >= 1, (OH, OW)

    y = np.zeros((N, C_out, OH, OW), dtype=np.float64)
    for n in range(N):
        for co in range(C_out):
            grp = co // cout_g
            for i in range(OH):
                for j in range(OW):
                    acc = 0.0
                    if b is not None:
                        acc += float(b[co])
                    for ci2 in range(cin_g):
                        ci = grp * cin_g + ci2
                        for p in range(KH):
                            r = i * sh + p * dh - top
                            if r < 0 or r >= H:
                                continue
                            for q in range(KW):
                                c = j * sw + q * dw - left
                                if c < 0 or c >= W:
                                    continue
                                acc += float(x[n, ci, r, c]) * float(w[co, ci2, p, q])
                    y[n, co, i, j] = acc
    arrays = (x, w) if b is None else (x, w, b)
    return y.astype(_out_dtype(*arrays))


def grad_input_nchw(
    g: np.ndarray,
    w: np.ndarray,
    input_shape: tuple[int, int, int, int],
    stride: Pair,
    padding: Padding4,
    dilation: Pair,
    groups: int,
) -> np.ndarray:
    """Gradient w.r.t. x, shape ``input_shape`` = (N, C_in, H, W).

    Scatter-add: every forward term x[n,ci,r,c] * w[co,ci2,p,q] that feeds
    y[n,co,i,j] sends w[co,ci2,p,q] * g[n,co,i,j] back to grad_input[n,ci,r,c].
    """
    N, C_in, H, W = input_shape
    C_out, cin_g, KH, KW = w.shape
    sh, sw = stride
    dh, dw = dilation
    top, bottom, left, right = padding
    assert C_in == cin_g * groups, (C_in, cin_g, groups)
    assert C_out % groups == 0, (C_out, groups)
    cout_g = C_out // groups
    OH = output_size(H, KH, sh, dh, top, bottom)
    OW = output_size(W, KW, sw, dw, left, right)
    assert g.shape == (N, C_out, OH, OW), (g.shape, (N, C_out, OH, OW))

    gx = np.zeros((N, C_in, H, W), dtype=np.float64)
    for n in range(N):
        for co in range(C_out):
            grp = co // cout_g
            for i in range(OH):
                for j in range(OW):
                    go = float(g[n, co, i, j])
                    for ci2 in range(cin_g):
                        ci = grp * cin_g + ci2
                        for p in range(KH):
                            r = i * sh + p * dh - top
                            if r < 0 or r >= H:
                                continue
                            for q in range(KW):
                                c = j * sw + q * dw - left
                                if c < 0 or c >= W:
                                    continue
                                gx[n, ci, r, c] += float(w[co, ci2, p, q]) * go
    return gx.astype(_out_dtype(g, w))


def grad_weight_nchw(
    g: np.ndarray,
    x: np.ndarray,
    weight_shape: tuple[int, int, int, int],
    stride: Pair,
    padding: Padding4,
    dilation: Pair,
    groups: int,
) -> np.ndarray:
    """Gradient w.r.t. w, shape ``weight_shape`` = (C_out, C_in // groups, KH, KW).

    grad_weight[co,ci2,p,q] = sum_{n,i,j}
        x[n, grp*cin_g+ci2, i*sh+p*dh-top, j*sw+q*dw-left] * g[n,co,i,j]
    """
    N, C_in, H, W = x.shape
    C_out, cin_g, KH, KW = weight_shape
    sh, sw = stride
    dh, dw = dilation
    top, bottom, left, right = padding
    assert C_in == cin_g * groups, (C_in, cin_g, groups)
    assert C_out % groups == 0, (C_out, groups)
    cout_g = C_out // groups
    OH = output_size(H, KH, sh, dh, top, bottom)
    OW = output_size(W, KW, sw, dw, left, right)
    assert g.shape == (N, C_out, OH, OW), (g.shape, (N, C_out, OH, OW))

    gw = np.zeros((C_out, cin_g, KH, KW), dtype=np.float64)
    for co in range(C_out):
        grp = co // cout_g
        for ci2 in range(cin_g):
            ci = grp * cin_g + ci2
            for p in range(KH):
                for q in range(KW):
                    acc = 0.0
                    for n in range(N):
                        for i in range(OH):
                            r = i * sh + p * dh - top
                            if r < 0 or r >= H:
                                continue
                            for j in range(OW):
                                c = j * sw + q * dw - left
                                if c < 0 or c >= W:
                                    continue
                                acc += float(x[n, ci, r, c]) * float(g[n, co, i, j])
                    gw[co, ci2, p, q] = acc
    return gw.astype(_out_dtype(g, x))


def grad_bias_nchw(g: np.ndarray) -> np.ndarray:
    """Gradient w.r.t. b, shape (C_out,): grad_bias[co] = sum_{n,i,j} g[n,co,i,j]."""
    N, C_out, OH, OW = g.shape
    gb = np.zeros((C_out,), dtype=np.float64)
    for co in range(C_out):
        acc = 0.0
        for n in range(N):
            for i in range(OH):
                for j in range(OW):
                    acc += float(g[n, co, i, j])
        gb[co] = acc
    return gb.astype(g.dtype)


# ---------------------------------------------------------------------------
# Layout converters. Plain index copies, so they are as easy to check as the
# math above. NHWC-layout kernels use weights (KH, KW, C_in // groups, C_out);
# NCHW-layout kernels use (C_out, C_in // groups, KH, KW).
# ---------------------------------------------------------------------------


def nhwc_to_nchw(a: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N, C, H, W)."""
    N, H, W, C = a.shape
    out = np.zeros((N, C, H, W), dtype=a.dtype)
    for n in range(N):
        for h in range(H):
            for col in range(W):
                for c in range(C):
                    out[n, c, h, col] = a[n, h, col, c]
    return out


def nchw_to_nhwc(a: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N, H, W, C)."""
    N, C, H, W = a.shape
    out = np.zeros((N, H, W, C), dtype=a.dtype)
    for n in range(N):
        for c in range(C):
            for h in range(H):
                for col in range(W):
                    out[n, h, col, c] = a[n, c, h, col]
    return out


def hwio_to_oihw(w: np.ndarray) -> np.ndarray:
    """Weights (KH, KW, C_in // groups, C_out) -> (C_out, C_in // groups, KH, KW)."""
    KH, KW, cin_g, C_out = w.shape
    out = np.zeros((C_out, cin_g, KH, KW), dtype=w.dtype)
    for p in range(KH):
        for q in range(KW):
            for ci2 in range(cin_g):
                for co in range(C_out):
                    out[co, ci2, p, q] = w[p, q, ci2, co]
    return out


def oihw_to_hwio(w: np.ndarray) -> np.ndarray:
    """Weights (C_out, C_in // groups, KH, KW) -> (KH, KW, C_in // groups, C_out)."""
    C_out, cin_g, KH, KW = w.shape
    out = np.zeros((KH, KW, cin_g, C_out), dtype=w.dtype)
    for co in range(C_out):
        for ci2 in range(cin_g):
            for p in range(KH):
                for q in range(KW):
                    out[p, q, ci2, co] = w[co, ci2, p, q]
    return out
