"""Depthwise backward on tiles of channel blocks, either layout: small images, stride 1.

For groups == C_in == C_out every channel is its own one-channel convolution.
A parallel task owns a block of L channels (L = one vector register's lanes,
16 float32 or 8 float64 with AVX-512) for all images. Per image it copies the
block into tiles with the channels innermost, each pixel's block one vector:

    x_tile[y + pt, z + pl]  = x[n, block, y, z]   (zero-padded, Hp x Wp)
    g_tile[mt + i, ml + j]  = g[n, block, i, j]   (zero margins mt, ml before)

and then, every channel in its lane of the same instructions (``_lanes.py``):

    gw[block, p, q] += sum over i, j of x_tile[i + p*dh, j + q*dw] * g_tile[mt + i, ml + j]
    gb[block]       += sum over i, j of g_tile[mt + i, ml + j]
    gi[n, block, y, z] = sum over p, q of
                         w[block, p, q] * g_tile[mt + y + pt - p*dh, ml + z + pl - q*dw]

The zeros stand in for the image's edges, so every tap is a plain run of
pixels. Zero padding multiplies the data, so this is exact for finite inputs
only (``finite_only`` in the dispatch; the caller falls back to the exact
kernels). The planes kernel (``nchw_depthwise.py``) runs each channel's
image as one flat vector, and on small images its copies of short rows cost
more than its arithmetic; the NHWC channel kernels (``nhwc_depthwise.py``)
read and write each row's pixels once per kernel tap. Here a pixel's block is
moved once each way: NHWC's channels are contiguous; NCHW's are a plane apart,
so float32's 16 planes are transposed 16 pixels at a time in registers (a
gather or scatter per pixel for the rest of a plane), through a staging tile,
and float64's 8 are gathered and scattered a pixel at a time (its 8 x 8
transposes took 1.1-1.25x the time of those).

Each step of the arithmetic takes whole kernel rows of taps at once (up to
TAPS_MAX: a 3 x 3 kernel in one step), along a row of output pixels for
grad_weight (the taps' sums in registers) and a row of input pixels for
grad_input (the taps' weights in registers).

Sums: grad_weight and grad_bias are summed in the dtype at most SUM_TERMS
terms at a time, those sums in float64, and each task adds its block's totals
into gw and gb once: the same bits whatever the thread count.
"""

import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._columns import VECTOR_BYTES
from ._flags import FASTMATH
from ._lanes import TAPS_MAX, lanes_move, lanes_of, lanes_transpose, tap_gather, tap_sums

# Terms per grad_weight and grad_bias sum in the dtype before it joins the float64 total.
SUM_TERMS = 4096


def lanes(item_size: int) -> int:
    """Channels per block: the lanes of one vector register of items this many bytes wide.

    (The kernels take it from ``lanes_of``, as a compile-time constant.)
    """
    return VECTOR_BYTES // item_size


def tile_values(height, width, out_h, out_w, kh, kw, pt, pb, pl, pr, dh, dw, block) -> int:
    """Values of one task's tiles and sums, as ``backward_depthwise_tiles`` allocates them.

    All counted in the dtype (the float64 totals are the caller's to add). Plain
    Python: the dispatch's arithmetic, not worth a compiled call.
    """
    padded = (height + pt + pb) * (width + pl + pr)
    top, left = (kh - 1) * dh, (kw - 1) * dw
    margined = (top + max(out_h, height + pt)) * (left + max(out_w, width + pl))
    sums = (kh * kw + 1) * block
    staging = max(height * width, out_h * out_w)
    # tiles of x, g and gi, NCHW's staging; the weights, ones; the sums, dtype and float64
    return (padded + margined + height * width + staging + kh * kw + 1) * block + 3 * sums


@njit(cache=CACHE, inline="always")
def _pixel_block(images, n, c0, y, z, nhwc):
    """(flat offset, stride) of image n's channels c0, c0 + 1, ... at pixel (y, z) in ``images``."""
    if nhwc:
        _, height, width, channels = images.shape
        return ((n * height + y) * width + z) * channels + c0, 1
    _, channels, height, width = images.shape
    return ((n * channels + c0) * height + y) * width + z, height * width


@njit(cache=CACHE, inline="always")
def _transposes(tile, count, nhwc):
    """Whether a block moves by transposes: a whole NCHW float32 block (float64 gathers)."""
    return count == lanes_of(tile) and not nhwc and tile.itemsize == 4


@njit(cache=CACHE, fastmath=FASTMATH)
def _transpose_planes(pixels, planes, start, count, back):
    """pixels[k*L + c] = planes[start + c*count + k] for k < count, c < L (``back``: the reverse).

    L planes of ``count`` pixels each (NCHW's channels c0 .. c0 + L of one image)
    to a block of L channels per pixel, L x L at a time in registers; the last
    ``count`` % L pixels a gather (or scatter) each.
    """
    block = lanes_of(pixels)
    whole = count - count % block
    for k0 in range(0, whole, block):
        if back:
            lanes_transpose(planes, start + k0, count, pixels, k0 * block, block)
        else:
            lanes_transpose(pixels, k0 * block, block, planes, start + k0, count)
    for k in range(whole, count):
        if back:
            lanes_move(planes, start + k, count, pixels, k * block, 1)
        else:
            lanes_move(pixels, k * block, 1, planes, start + k, count)


@njit(cache=CACHE, fastmath=FASTMATH)
def _fill_tile(tile, at, pitch, images, n, c0, count, nhwc, staging):
    """tile[at + (y*pitch + z)*L + c] = block channel c of image n at pixel (y, z), c < count.

    ``images`` is x or g (NCHW or NHWC). A whole block moves a vector per pixel:
    NHWC's straight from the image, NCHW's transposed into ``staging`` first
    (pixel k's block at staging[k*L]).
    """
    block = lanes_of(tile)
    height, width = (images.shape[1], images.shape[2]) if nhwc else images.shape[2:]
    flat = images.reshape(images.size)
    transposed = _transposes(tile, count, nhwc)
    if transposed:
        start, _ = _pixel_block(images, n, c0, 0, 0, nhwc)
        _transpose_planes(staging, flat, start, height * width, False)
    for y in range(height):
        for z in range(width):
            to = at + (y * pitch + z) * block
            if transposed:
                lanes_move(tile, to, 1, staging, (y * width + z) * block, 1)
                continue
            start, stride = _pixel_block(images, n, c0, y, z, nhwc)
            if count == block:
                lanes_move(tile, to, 1, flat, start, stride)
            else:
                for c in range(count):
                    tile[to + c] = flat[start + c * stride]


@njit(cache=CACHE, fastmath=FASTMATH)
def _empty_tile(images, tile, n, c0, count, nhwc):
    """images[n, block channel c, y, z] = tile[(y*W + z)*L + c]: ``_fill_tile`` undone (pitch W)."""
    block = lanes_of(tile)
    height, width = (images.shape[1], images.shape[2]) if nhwc else images.shape[2:]
    flat = images.reshape(images.size)
    if _transposes(tile, count, nhwc):
        start, _ = _pixel_block(images, n, c0, 0, 0, nhwc)
        _transpose_planes(tile, flat, start, height * width, True)
        return
    for y in range(height):
        for z in range(width):
            source = (y * width + z) * block
            start, stride = _pixel_block(images, n, c0, y, z, nhwc)
            if count == block:
                lanes_move(flat, start, stride, tile, source, 1)
            else:
                for c in range(count):
                    flat[start + c * stride] = tile[source + c]


@njit(cache=CACHE)
def _fold(totals, sums):
    """totals += sums (float64), then sums = 0."""
    for k in range(sums.shape[0]):
        totals[k] += sums[k]
        sums[k] = 0


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def backward_depthwise_tiles(x, g, w, gi, gw, gb, sh, sw, pt, pb, pl, pr, dh, dw, groups, nhwc):
    """gi = and gw, gb += the depthwise backward (stride 1); parallel over blocks of channels.

    Arguments as the flat kernels take them, arrays in the layout ``nhwc``
    says (the weight (C, 1, KH, KW) or (KH, KW, 1, C)). Every value of gi is
    written, so it needs no zeroing.
    """
    if sh != 1 or sw != 1:
        raise ValueError("backward_depthwise_tiles is for stride 1")
    if nhwc:
        n_batch, height, width, channels = x.shape
        out_h, out_w = g.shape[1], g.shape[2]
        kh, kw = w.shape[0], w.shape[1]
    else:
        n_batch, channels, height, width = x.shape
        out_h, out_w = g.shape[2], g.shape[3]
        kh, kw = w.shape[2], w.shape[3]
    blocks = (channels + lanes_of(x) - 1) // lanes_of(x)
    pitch = width + pl + pr  # of the input's tile
    top, left = (kh - 1) * dh, (kw - 1) * dw  # grad_output's margins: the farthest a tap reaches
    g_pitch = left + max(out_w, width + pl)
    g_rows = top + max(out_h, height + pt)
    rows_per_sum = max(1, SUM_TERMS // max(1, out_w))
    taps = kh * kw
    # the taps of one step: whole kernel rows, or pieces of a row wider than TAPS_MAX
    rows, cols = (max(1, TAPS_MAX // kw), kw) if kw <= TAPS_MAX else (1, TAPS_MAX)
    for b in prange(blocks):
        block = lanes_of(x)  # here, not outside: the loop body gets outer values at run time
        c0 = b * block
        count = min(block, channels - c0)
        # zeros outside the images' own pixels: written once, never overwritten
        x_tile = np.zeros((height + pt + pb) * pitch * block, x.dtype)
        g_tile = np.zeros(g_rows * g_pitch * block, x.dtype)
        gi_tile = np.empty(height * width * block, x.dtype)
        staging = np.empty(max(height * width, out_h * out_w) * block, x.dtype)  # NCHW
        w_tile = np.zeros(taps * block, x.dtype)  # w_tile[(p*KW + q)*L + c]
        ones = np.ones(block, x.dtype)
        sums = np.zeros((taps + 1) * block, x.dtype)  # the taps', then grad_bias's
        totals = np.zeros((taps + 1) * block)
        for c in range(count):
            for p in range(kh):
                for q in range(kw):
                    tap = w[p, q, 0, c0 + c] if nhwc else w[c0 + c, 0, p, q]
                    w_tile[(p * kw + q) * block + c] = tap
        for n in range(n_batch):
            x_at, g_at = (pt * pitch + pl) * block, (top * g_pitch + left) * block
            _fill_tile(x_tile, x_at, pitch, x, n, c0, count, nhwc, staging)
            _fill_tile(g_tile, g_at, g_pitch, g, n, c0, count, nhwc, staging)
            for i in range(out_h):
                g_at = ((top + i) * g_pitch + left) * block
                tap_sums(sums, taps * block, ones, 0, 0, 0, 0, 1, 1, g_tile, g_at, block, out_w)
                for p0 in range(0, kh, rows):
                    for q0 in range(0, kw, cols):
                        patch_rows, patch_cols = min(rows, kh - p0), min(cols, kw - q0)
                        x_at = ((i + p0 * dh) * pitch + q0 * dw) * block
                        tap_sums(
                            sums, (p0 * kw + q0) * block, x_tile, x_at, block,
                            dh * pitch * block, dw * block, patch_cols, patch_rows * patch_cols,
                            g_tile, g_at, block, out_w,
                        )  # fmt: skip
                if (i + 1) % rows_per_sum == 0 or i == out_h - 1:
                    _fold(totals, sums)
            for y in range(height):
                for p0 in range(0, kh, rows):
                    for q0 in range(0, kw, cols):
                        patch_rows, patch_cols = min(rows, kh - p0), min(cols, kw - q0)
                        # pixel z's taps read grad_output row y + pt - p*dh, column z + pl - q*dw
                        g_at = ((top + y + pt - p0 * dh) * g_pitch + left + pl - q0 * dw) * block
                        tap_gather(
                            gi_tile, y * width * block, block, w_tile, (p0 * kw + q0) * block,
                            patch_rows * patch_cols, g_tile, g_at, block, dh * g_pitch * block,
                            dw * block, patch_cols, width, p0 > 0 or q0 > 0,
                        )  # fmt: skip
            _empty_tile(gi, gi_tile, n, c0, count, nhwc)
        for c in range(count):
            for p in range(kh):
                for q in range(kw):
                    total = totals[(p * kw + q) * block + c]
                    if nhwc:
                        gw[p, q, 0, c0 + c] += total
                    else:
                        gw[c0 + c, 0, p, q] += total
            gb[c0 + c] += totals[taps * block + c]
