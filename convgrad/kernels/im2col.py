"""Dense convolutions on short planes as two matrix products per tile: unfold, multiply, fold.

Unfold (im2col) a tile of whole NHWC images into columns: one row per output
pixel (n, oh, ow), holding the KH*KW*C_in input values its window reads,

    cols[(n, oh, ow), (i, j, c)] = xpad[n, oh*sh + i*dh, ow*sw + j*dw, c]

(zero where it reads padding). The NHWC weight is a (KH*KW*C_in) x C_out
matrix in the same order, grad_output a pixels x C_out one, and per tile

    grad_weight += cols.T @ grad_output        cols = grad_output @ weight.T

the second product overwriting the columns with grad_input's; folding them
back (col2im: each value added to the input pixel its window read) gives
grad_input. On short planes, where the flat kernels' vectors are short and
the row kernels' loops are mostly overhead, BLAS does the arithmetic at a
large share of the machine's peak. NCHW problems take the same path through
NHWC copies of each tile (input, grad_output, grad_input): unfolding and
folding NCHW rows of a few pixels cost more than the copies. Their weight
(C_out x (C_in*KH*KW), (c, i, j) order) is reordered to NHWC's order, and
grad_weight back, unless it is large beside the batch's pixels; then the
columns take its (c, i, j) order instead (``channel_major``).

Both products run as single-threaded BLAS gemm calls from numba's threads,
OpenBLAS held at one thread (as in ``gemm.py``), each task on its own span of
the KH*KW*C_in columns: the second product overwrites only the span the first
one read. ``parts`` (the spans), ``images_per_tile`` and ``fold_spans`` come
from the problem, not the thread count, so the bits do not depend on it.
grad_weight's tiles are summed in the dtype (beta = 1), a few tiles at most
within the working-memory budget. Without a cblas gemm to call, the same
products go through ``np.matmul``.

The padding's zeros multiply grad_output values inside the products, so a NaN
or Inf there spreads further than the exact sums do: the backward and
grad_weight alone are exact for finite inputs only (the caller checks, as for
the flat kernels). grad_input alone unfolds nothing and is exact for any input.
"""

import numpy as np
from numba import njit, prange

from .._blas import gemm_for, one_blas_thread
from . import relayout
from ._cache import CACHE
from ._cblas import NO_TRANS, TRANS, gemm_call
from .nchw import grad_bias_nchw, grad_bias_nchw_serial
from .nhwc import grad_bias_nhwc


@njit(cache=CACHE)
def _span(part, parts, length):
    """(start, stop) of part ``part`` of ``parts`` even parts of range(length)."""
    return part * length // parts, (part + 1) * length // parts


@njit(cache=CACHE, inline="always")
def _column(i, j, c, kw, c_in, taps, by_channel):
    """Where tap (i, j) of channel c goes in a row of the columns: (i, j, c) or (c, i, j) order."""
    return c * taps + i * kw + j if by_channel else (i * kw + j) * c_in + c


@njit(cache=CACHE, parallel=True)
def _unfold(x, cols, by_channel, sh, sw, pt, pl, dh, dw, kh, kw, out_h, out_w):
    """cols[(n, oh, ow), (i, j, c) or (c, i, j)] = xpad[n, oh*sh + i*dh, ow*sw + j*dw, c].

    x is an NHWC tile; a row of output pixels per task.
    """
    height, width, c_in = x.shape[1], x.shape[2], x.shape[3]
    taps = kh * kw
    for row in prange(x.shape[0] * out_h):
        n, oh = row // out_h, row % out_h
        for ow in range(out_w):
            line = cols[row * out_w + ow]
            for i in range(kh):
                h = oh * sh + i * dh - pt
                for j in range(kw):
                    col = ow * sw + j * dw - pl
                    inside = 0 <= h < height and 0 <= col < width
                    first = _column(i, j, 0, kw, c_in, taps, by_channel)
                    if by_channel:  # a value every ``taps`` columns
                        for c in range(c_in):
                            line[first + c * taps] = x[n, h, col, c] if inside else 0
                    elif inside:
                        window, pixel = line[first : first + c_in], x[n, h, col]
                        for c in range(c_in):
                            window[c] = pixel[c]
                    else:
                        line[first : first + c_in] = 0


@njit(cache=CACHE, parallel=True)
def _fold(cols, gi, c_spans, by_channel, sh, sw, pt, pl, dh, dw, kh, kw, out_h, out_w):
    """gi[n, h, w] = the sum of cols' values for the windows that read pixel (h, w).

    gi is an NHWC tile; an image's span of channels per task (``c_spans``
    spans): no two tasks write one value, and each value's terms come in one
    fixed order.
    """
    height, width, c_in = gi.shape[1], gi.shape[2], gi.shape[3]
    taps = kh * kw
    for task in prange(gi.shape[0] * c_spans):
        n = task // c_spans
        c0, c1 = _span(task % c_spans, c_spans, c_in)
        for h in range(height):
            for col in range(width):
                pixel = gi[n, h, col, c0:c1]
                for c in range(c1 - c0):
                    pixel[c] = 0
        for oh in range(out_h):
            for ow in range(out_w):
                line = cols[(n * out_h + oh) * out_w + ow]
                for i in range(kh):
                    h = oh * sh + i * dh - pt
                    if h < 0 or h >= height:
                        continue
                    for j in range(kw):
                        col = ow * sw + j * dw - pl
                        if col < 0 or col >= width:
                            continue
                        pixel = gi[n, h, col]
                        first = _column(i, j, 0, kw, c_in, taps, by_channel)
                        if by_channel:
                            for c in range(c0, c1):
                                pixel[c] += line[first + c * taps]
                        else:
                            window = line[first + c0 : first + c1]
                            part = pixel[c0:c1]
                            for c in range(c1 - c0):
                                part[c] += window[c]


@njit(cache=CACHE)
def _weight_span(cols, grads, gw, s0, s1, by_channel, gemm, ilp64):
    """grad_weight's product for columns [s0, s1): added into gw (beta = 1).

    Tap-major: gw[s0:s1] += cols[:, s0:s1].T @ grads; channel-major:
    gw[:, s0:s1] += grads.T @ cols[:, s0:s1].
    """
    pixels, width = cols.shape
    c_out, item = grads.shape[1], cols.itemsize
    if by_channel:
        gemm_call(
            gemm, ilp64, TRANS, NO_TRANS, c_out, s1 - s0, pixels,
            grads.ctypes.data, c_out, cols.ctypes.data + s0 * item, width,
            1.0, gw, s0, width,
        )  # fmt: skip
    else:
        gemm_call(
            gemm, ilp64, TRANS, NO_TRANS, s1 - s0, c_out, pixels,
            cols.ctypes.data + s0 * item, width, grads.ctypes.data, c_out,
            1.0, gw, s0 * c_out, c_out,
        )  # fmt: skip


@njit(cache=CACHE)
def _input_span(cols, grads, w, s0, s1, by_channel, gemm, ilp64):
    """grad_input's product for columns [s0, s1), written over them (beta = 0).

    Tap-major: cols[:, s0:s1] = grads @ w[s0:s1].T; channel-major:
    cols[:, s0:s1] = grads @ w[:, s0:s1].
    """
    pixels, width = cols.shape
    c_out, item = grads.shape[1], cols.itemsize
    if by_channel:
        gemm_call(
            gemm, ilp64, NO_TRANS, NO_TRANS, pixels, s1 - s0, c_out,
            grads.ctypes.data, c_out, w.ctypes.data + s0 * item, width,
            0.0, cols, s0, width,
        )  # fmt: skip
    else:
        gemm_call(
            gemm, ilp64, NO_TRANS, TRANS, pixels, s1 - s0, c_out,
            grads.ctypes.data, c_out, w.ctypes.data + s0 * c_out * item, c_out,
            0.0, cols, s0, width,
        )  # fmt: skip


@njit(cache=CACHE, parallel=True)
def _products(cols, grads, w, gw, parts, by_channel, weight_too, input_too, gemm, ilp64):
    """Per span of cols' columns (one per task): grad_weight's product, then grad_input's.

    cols (pixels, KH*KW*C_in) and grads (pixels, C_out), C-contiguous; w and
    gw C-contiguous, (KH*KW*C_in, C_out) or, ``by_channel``, (C_out,
    C_in*KH*KW). grad_input's product overwrites only the span that
    grad_weight's read. ``weight_too``/``input_too``: which of the two to run
    (the other's matrix argument is then unused).
    """
    width = cols.shape[1]
    for part in prange(parts):
        s0, s1 = _span(part, parts, width)
        if s1 == s0:
            continue
        if weight_too:
            _weight_span(cols, grads, gw, s0, s1, by_channel, gemm, ilp64)
        if input_too:
            _input_span(cols, grads, w, s0, s1, by_channel, gemm, ilp64)


# The weight reorderings below go a block of TRANSPOSE_BLOCK output by as many
# input channels at a time, so that the block's part of both arrays stays in
# L1: a walk along one axis of the whole weight touched a cache line per value
# (2-core Intel Xeon, there and back: 256 x 128 channels 290 -> 250 us, 512 x
# 512 10.7 -> 2.9 ms).
TRANSPOSE_BLOCK = 16


@njit(cache=CACHE, parallel=True)
def _weight_taps_first(w, target):
    """target[i, j, c, k] = w[k, c, i, j]: an NCHW weight in NHWC's order; a block of k per task."""
    c_out, c_in, kh, kw = w.shape
    block = TRANSPOSE_BLOCK
    for task in prange((c_out + block - 1) // block):
        k0, k1 = task * block, min(c_out, (task + 1) * block)
        for c0 in range(0, c_in, block):
            for c in range(c0, min(c_in, c0 + block)):
                for i in range(kh):
                    for j in range(kw):
                        line = target[i, j, c]
                        for k in range(k0, k1):
                            line[k] = w[k, c, i, j]


@njit(cache=CACHE, parallel=True)
def _add_weight_channels_first(totals, gw):
    """gw[k, c, i, j] += totals[i, j, c, k]: an NHWC-ordered grad_weight added in NCHW's order."""
    c_out, c_in, kh, kw = gw.shape
    block = TRANSPOSE_BLOCK
    for task in prange((c_out + block - 1) // block):
        k0, k1 = task * block, min(c_out, (task + 1) * block)
        for c0 in range(0, c_in, block):
            for k in range(k0, k1):
                for c in range(c0, min(c_in, c0 + block)):
                    for i in range(kh):
                        for j in range(kw):
                            gw[k, c, i, j] += totals[i, j, c, k]


def _products_matmul(cols, grads, w, gw, by_channel, weight_too, input_too):
    """``_products``' products through ``np.matmul`` (all columns at once)."""
    if weight_too:
        gw += grads.T @ cols if by_channel else cols.T @ grads
    if input_too:
        np.matmul(grads, w if by_channel else w.T, out=cols)


# An NCHW weight goes to NHWC's order (a copy, and grad_weight's back) when
# C_out * CHANNEL_MAJOR_PIXELS <= the batch's output pixels; otherwise the
# columns take its (c, i, j) order.
CHANNEL_MAJOR_PIXELS = 2


def channel_major(n_batch, c_out, out_h, out_w, nhwc):
    """Whether the columns take NCHW's weight order (c, i, j) rather than NHWC's (i, j, c)."""
    return not nhwc and c_out * CHANNEL_MAJOR_PIXELS > n_batch * out_h * out_w


def tile_values(c_in, c_out, height, width, kh, kw, out_h, out_w, nhwc):
    """Workspace values per image of a tile: its columns and (NCHW) its NHWC copies."""
    columns = out_h * out_w * c_in * kh * kw
    return columns if nhwc else columns + c_in * height * width + c_out * out_h * out_w


def fixed_values(n_batch, c_in, c_out, kh, kw, out_h, out_w, nhwc):
    """Workspace values besides the tiles': an NCHW weight and grad_weight in NHWC's order."""
    if nhwc or channel_major(n_batch, c_out, out_h, out_w, nhwc):
        return 0
    return 2 * c_out * c_in * kh * kw


def backward_im2col(
    x, g, w, gi, gw, gb, sh, sw, pt, pb, pl, pr, dh, dw, images_per_tile, parts, fold_spans, nhwc
):
    """All three gradients, groups 1, either layout (``nhwc``), a tile of whole images at a time.

    gi is written (every value), gw and gb added into. ``parts`` gemm tasks
    per product, ``fold_spans`` tasks per image folding the columns (spans of
    channels). Returns None: the caller checks that the results are finite.
    """
    _unfolded_products(
        x, g, w, gi, gw, sh, sw, pt, pl, dh, dw, images_per_tile, parts, fold_spans, nhwc
    )
    if nhwc:
        grad_bias_nhwc(g, gb)  # one pass along the channels, on the calling thread
    elif gemm_for(g.dtype) is None:  # OpenBLAS's threads may still spin after np.matmul
        grad_bias_nchw_serial(g, gb)
    else:
        grad_bias_nchw(g, gb)


def grad_input_im2col(
    g, w, gi, sh, sw, pt, pb, pl, pr, dh, dw, images_per_tile, parts, fold_spans, nhwc
):
    """grad_input alone (written): grad_output times the weight, folded; no unfolding.

    Exact for any input: the product holds grad_output and weight values
    only, and folding drops what lands on padding.
    """
    _unfolded_products(
        None, g, w, gi, None, sh, sw, pt, pl, dh, dw, images_per_tile, parts, fold_spans, nhwc
    )


def grad_weight_im2col(
    x, g, gw, sh, sw, pt, pb, pl, pr, dh, dw, images_per_tile, parts, fold_spans, nhwc
):
    """grad_weight alone (added into gw): the unfolded input times grad_output; no folding.

    Exact for finite inputs only (the padding's zeros meet grad_output).
    """
    _unfolded_products(
        x, g, None, None, gw, sh, sw, pt, pl, dh, dw, images_per_tile, parts, fold_spans, nhwc
    )


def _unfolded_products(
    x, g, w, gi, gw, sh, sw, pt, pl, dh, dw, images_per_tile, parts, fold_spans, nhwc
):
    """grad_weight added into gw and grad_input written into gi, a tile of images at a time.

    gw None (and x with it): grad_input alone; gi None (and w): grad_weight alone.
    """
    image, weight_like = (x if gi is None else gi), (w if gw is None else gw)
    weight_too, input_too = gw is not None, gi is not None
    if nhwc:
        n_batch, height, width, c_in = image.shape
        kh, kw, c_out = weight_like.shape[0], weight_like.shape[1], weight_like.shape[3]
        out_h, out_w = g.shape[1], g.shape[2]
    else:
        n_batch, c_in, height, width = image.shape
        c_out, kh, kw = weight_like.shape[0], weight_like.shape[2], weight_like.shape[3]
        out_h, out_w = g.shape[2], g.shape[3]
    geometry = (sh, sw, pt, pl, dh, dw, kh, kw, out_h, out_w)
    plane, columns = out_h * out_w, kh * kw * c_in
    tile = min(images_per_tile, n_batch)
    dtype = g.dtype
    cols_all = np.empty((tile * plane, columns), dtype)
    if not nhwc:  # the tile's NHWC copies; grad_input's goes where the input's was
        images_all = np.empty((tile, height, width, c_in), dtype)
        grads_all = np.empty((tile, out_h, out_w, c_out), dtype)
    # The columns' order follows the weight's: (i, j, c) for NHWC's (KH*KW*C_in,
    # C_out) matrix, (c, i, j) for NCHW's (C_out, C_in*KH*KW), whose columns
    # cost more to unfold and fold (a value every KH*KW columns). Unless its
    # weight is large beside the columns, NCHW's goes to NHWC's order instead.
    by_channel = channel_major(n_batch, c_out, out_h, out_w, nhwc)
    weight, totals = w, gw
    if not (nhwc or by_channel):
        if input_too:
            weight = np.empty((kh, kw, c_in, c_out), dtype)
            _weight_taps_first(w, weight)
        if weight_too:
            totals = np.zeros((kh, kw, c_in, c_out), dtype)
    matrix = (c_out, columns) if by_channel else (columns, c_out)
    weights = weight.reshape(matrix) if input_too else totals.reshape(matrix)
    sums = totals.reshape(matrix) if weight_too else weights  # the unused one: any matrix
    blas = gemm_for(dtype)
    with one_blas_thread():
        for n0 in range(0, n_batch, tile):
            n1 = min(n_batch, n0 + tile)
            cols = cols_all[: (n1 - n0) * plane]
            if nhwc:
                images = x[n0:n1] if weight_too else None
                grads = g[n0:n1]
                grad_images = gi[n0:n1] if input_too else None
            else:
                images = grad_images = images_all[: n1 - n0]
                grads = grads_all[: n1 - n0]
                if weight_too:
                    relayout.nchw_to_nhwc(x[n0:n1], images)
                relayout.nchw_to_nhwc(g[n0:n1], grads)
            if weight_too:
                _unfold(images, cols, by_channel, *geometry)
            grads = grads.reshape(-1, c_out)
            if blas is None:
                _products_matmul(cols, grads, weights, sums, by_channel, weight_too, input_too)
            else:
                _products(
                    cols, grads, weights, sums, parts, by_channel, weight_too, input_too, *blas
                )
            if input_too:
                _fold(cols, grad_images, fold_spans, by_channel, *geometry)
                if not nhwc:
                    relayout.nhwc_to_nchw(grad_images, gi[n0:n1])
    if weight_too and totals is not gw:
        _add_weight_channels_first(totals, gw)
