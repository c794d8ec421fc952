"""The unfolded products (``im2col.py``) for NCHW, on channel-major rows: no layout copies.

Where ``im2col.py`` unfolds an NHWC tile into one row per output pixel, an
NCHW tile unfolds into one row per weight column (c, i, j), running over the
tile's output pixels (n, oh, ow), as in Caffe:

    rows[(c, i, j), (n, oh, ow)] = xpad[n, c, oh*sh + i*dh, ow*sw + j*dw]

That is the order of the NCHW weight's columns (a C_out x (C_in*KH*KW)
matrix), and with grad_output's tile as a C_out x pixels matrix, per tile

    grad_weight += grads @ rows.T        rows = weight.T @ grads

the second product overwriting the rows with grad_input's, folded back
(col2im) into the input planes. Each row is a shifted window of one input
plane, so unfolding and folding copy and add runs of OW contiguous values,
with no NHWC copies of the input and no reordered weight. grad_output's
tile is copied once into a C_out x pixels matrix (one image's is one
already).

Spans of the rows, one per task, fixed by the problem (``parts``), as in
``im2col.py``; the same finite-only contract (the padding's zeros meet
grad_output in grad_weight's product).
"""

import numba
import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._cblas import NO_TRANS, TRANS, gemm_call
from ._flags import FASTMATH
from ._tile import TILE_ROWS, tile_columns
from .gemm_tiles import _block as tile_block
from .gemm_tiles import _block_transposed as block_transposed
from .gemm_tiles import _span as panel_span
from .gemm_tiles import _workspaces as tile_workspaces

# Small helpers (``_span``) are repeated in each kernel module on purpose:
# numba's on-disk cache keys a kernel on its own module's source, so an edited
# helper imported from elsewhere would leave stale compiled kernels behind.


@njit(cache=CACHE)
def _span(part, parts, length):
    """(start, stop) of part ``part`` of ``parts`` even parts of range(length)."""
    return part * length // parts, (part + 1) * length // parts


@njit(cache=CACHE)
def _padded_extent(size, pad_before, out_size, stride, dilation, k):
    """Length of a padded axis that holds the input and every window position."""
    return max(pad_before + size, (out_size - 1) * stride + (k - 1) * dilation + 1)


@njit(cache=CACHE, parallel=True)
def _unfold(x, rows, sh, sw, pt, pl, dh, dw, kh, kw, out_h, out_w):
    """rows[(c, i, j), (n, oh, ow)] = xpad[n, c, oh*sh + i*dh, ow*sw + j*dw]; a channel per task.

    Each plane is first copied into a zeroed, padded one, so that every
    window's runs are plain copies (no bounds, no zero runs). (Indexing the
    padded row here and a strided view in ``_fold`` each measured the faster.)
    """
    n_tile, c_in, height, width = x.shape
    plane = out_h * out_w
    padded_h = _padded_extent(height, pt, out_h, sh, dh, kh)
    padded_w = _padded_extent(width, pl, out_w, sw, dw, kw)
    for c in prange(c_in):
        xp = np.zeros((padded_h, padded_w), x.dtype)
        for n in range(n_tile):
            xp[pt : pt + height, pl : pl + width] = x[n, c]
            for i in range(kh):
                for j in range(kw):
                    line = rows[(c * kh + i) * kw + j, n * plane : (n + 1) * plane]
                    for oh in range(out_h):
                        source, at = xp[oh * sh + i * dh], oh * out_w
                        for ow in range(out_w):
                            line[at + ow] = source[ow * sw + j * dw]


@njit(cache=CACHE, parallel=True)
def _fold(rows, gi, sh, sw, pt, pl, dh, dw, kh, kw, out_h, out_w):
    """gi[n, c] = the sum of the rows' values for the windows that read each pixel.

    A channel per task, for every image of the tile: each plane is summed in a
    zeroed, padded one and its inside copied out. No two tasks write one
    value, and each value's terms come in one fixed order (i, j, oh).
    """
    n_tile, c_in, height, width = gi.shape
    plane, span = out_h * out_w, (out_w - 1) * sw + 1
    padded_h = _padded_extent(height, pt, out_h, sh, dh, kh)
    padded_w = _padded_extent(width, pl, out_w, sw, dw, kw)
    for c in prange(c_in):
        gp = np.empty((padded_h, padded_w), gi.dtype)
        for n in range(n_tile):
            gp[:] = 0
            for i in range(kh):
                for j in range(kw):
                    line = rows[(c * kh + i) * kw + j, n * plane : (n + 1) * plane]
                    for oh in range(out_h):
                        target = gp[oh * sh + i * dh, j * dw : j * dw + span : sw]
                        run = line[oh * out_w : (oh + 1) * out_w]
                        for ow in range(out_w):
                            target[ow] += run[ow]
            gi[n, c] = gp[pt : pt + height, pl : pl + width]


@njit(cache=CACHE, parallel=True)
def _gather_grads(g, grads):
    """grads[k, (n, oh, ow)] = g[n, k, oh, ow]: a tile's grad_output as a C_out x pixels matrix."""
    n_tile, c_out, out_h, out_w = g.shape
    plane = out_h * out_w
    for k in prange(c_out):
        line = grads[k]
        for n in range(n_tile):
            source = g[n, k]
            for oh in range(out_h):
                for ow in range(out_w):
                    line[n * plane + oh * out_w + ow] = source[oh, ow]


@njit(cache=CACHE, parallel=True)
def _products(rows, grads, w, gw, parts, splits, weight_too, input_too, gemm, ilp64):
    """Per span of the rows: grad_weight's product, then grad_input's.

    rows (C_in*KH*KW, pixels), grads (C_out, pixels), w and gw (C_out,
    C_in*KH*KW), all C-contiguous: gw[:, s0:s1] += grads @ rows[s0:s1].T, then
    rows[s0:s1] = w[:, s0:s1].T @ grads. Each span's products are cut into
    ``splits`` tasks as in ``im2col._products``: grad_weight's along its
    output channels, grad_input's along the pixels, in two passes.
    """
    columns, pixels = rows.shape
    c_out, item = grads.shape[0], rows.itemsize
    if weight_too:
        for task in prange(parts * splits):
            s0, s1 = _span(task // splits, parts, columns)
            o0, o1 = _span(task % splits, splits, c_out)
            if s1 > s0 and o1 > o0:
                gemm_call(
                    gemm, ilp64, NO_TRANS, TRANS, o1 - o0, s1 - s0, pixels,
                    grads.ctypes.data + o0 * pixels * item, pixels,
                    rows.ctypes.data + s0 * pixels * item, pixels,
                    1.0, gw, o0 * columns + s0, columns,
                )  # fmt: skip
    if input_too:
        for task in prange(parts * splits):
            s0, s1 = _span(task // splits, parts, columns)
            p0, p1 = _span(task % splits, splits, pixels)
            if s1 > s0 and p1 > p0:
                gemm_call(
                    gemm, ilp64, TRANS, NO_TRANS, s1 - s0, p1 - p0, c_out,
                    w.ctypes.data + s0 * item, columns, grads.ctypes.data + p0 * item, pixels,
                    0.0, rows, s0 * pixels + p0, pixels,
                )  # fmt: skip


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def _products_tiles(rows, grads, w, gw, parts, weight_too, input_too, threads):
    """``_products`` by register tiles (``gemm_tiles``), the rows transposed for grad_weight's.

    As ``im2col._products_tiles``: with fewer spans than threads each span's
    products are cut once more, grad_weight's by output channels (whole
    tiles) and grad_input's by pixels (whole panels), in two passes; the
    same bits however they are cut.
    """
    splits = max(1, -(-threads // parts))
    if splits == 1:
        for part in prange(parts):
            _span_products(rows, grads, w, gw, part, parts, 0, 1, weight_too, input_too)
        return
    if weight_too:
        for task in prange(parts * splits):
            part, split = task // splits, task % splits
            _span_products(rows, grads, w, gw, part, parts, split, splits, True, False)
    if input_too:
        for task in prange(parts * splits):
            part, split = task // splits, task % splits
            _span_products(rows, grads, w, gw, part, parts, split, splits, False, True)


@njit(cache=CACHE, fastmath=FASTMATH)
def _span_products(rows, grads, w, gw, part, parts, split, splits, weight_too, input_too):
    """Span ``part`` of ``parts`` of the rows: its products' cut ``split`` of ``splits``."""
    columns, pixels = rows.shape
    c_out = grads.shape[0]
    rows_flat, grads_flat = rows.reshape(rows.size), grads.reshape(grads.size)
    w_flat, gw_flat = w.reshape(w.size), gw.reshape(gw.size)
    nr = tile_columns(rows_flat)
    # spans of whole panels: the tiles compute whole panels of NR columns, and
    # resnet_s2's even spans of 144 columns took three of 64, a quarter padding
    s0, s1 = panel_span(part, parts, -(-columns // nr), nr, columns)
    if s1 == s0:
        return
    tile, a_edge, panel = tile_workspaces(rows_flat)
    if weight_too:  # gw[i0:i1, s0:s1] += grads[i0:i1] @ rows[s0:s1].T
        i0, i1 = panel_span(split, splits, -(-c_out // TILE_ROWS), TILE_ROWS, c_out)
        if i1 > i0:
            block_transposed(
                grads_flat, i0 * pixels, pixels, 1, rows_flat, s0 * pixels, pixels, i1 - i0,
                s1 - s0, pixels, gw_flat, i0 * columns + s0, columns, True, tile, a_edge, panel,
            )  # fmt: skip
    if input_too:  # rows[s0:s1, p0:p1] = w[:, s0:s1].T @ grads[:, p0:p1]
        p0, p1 = panel_span(split, splits, -(-pixels // nr), nr, pixels)
        if p1 > p0:
            tile_block(
                w_flat, s0, 1, columns, grads_flat, p0, pixels, s1 - s0, p1 - p0, c_out,
                rows_flat, s0 * pixels + p0, pixels, False, tile, a_edge, panel, False,
            )  # fmt: skip


def _products_matmul(rows, grads, w, gw, weight_too, input_too):
    """``_products``' products through ``np.matmul`` (all rows at once)."""
    if weight_too:
        gw += grads @ rows.T
    if input_too:
        np.matmul(w.T, grads, out=rows)


def tile_values(c_in, c_out, kh, kw, out_h, out_w):
    """Workspace values per image of a tile: its rows and its share of grad_output's matrix."""
    return out_h * out_w * (c_in * kh * kw + c_out)


def unfolded_products(
    x, g, w, gi, gw, geometry, images_per_tile, parts, blas, by_tiles=0, splits=1
):
    """grad_weight added into gw and grad_input written into gi (NCHW), a tile of images at a time.

    ``geometry`` is (sh, sw, pt, pl, dh, dw); gw None (and x): grad_input
    alone; gi None (and w): grad_weight alone. ``blas``: (address, ilp64) of
    the cblas gemm, or None for ``np.matmul``; ``by_tiles``: the products by
    register tiles instead; ``splits``: BLAS tasks per span (``im2col.product_splits``).
    The caller holds OpenBLAS at one thread.
    """
    weight_too, input_too = gw is not None, gi is not None
    image, weight_like = (x if gi is None else gi), (w if gw is None else gw)
    n_batch, c_in = image.shape[0], image.shape[1]
    c_out, kh, kw = weight_like.shape[0], weight_like.shape[2], weight_like.shape[3]
    out_h, out_w = g.shape[2], g.shape[3]
    geometry = (*geometry, kh, kw, out_h, out_w)
    plane, columns = out_h * out_w, c_in * kh * kw
    tile = min(images_per_tile, n_batch)
    rows_all = np.empty(columns * tile * plane, g.dtype)
    grads_all = np.empty(c_out * tile * plane, g.dtype) if tile > 1 else None
    weights = (w if input_too else gw).reshape(c_out, columns)
    sums = gw.reshape(c_out, columns) if weight_too else weights  # unused: any matrix
    for n0 in range(0, n_batch, tile):
        n1 = min(n_batch, n0 + tile)
        pixels = (n1 - n0) * plane
        rows = rows_all[: columns * pixels].reshape(columns, pixels)
        if n1 - n0 == 1:
            grads = g[n0].reshape(c_out, pixels)
        else:
            grads = grads_all[: c_out * pixels].reshape(c_out, pixels)
            _gather_grads(g[n0:n1], grads)
        if weight_too:
            _unfold(x[n0:n1], rows, *geometry)
        if by_tiles:
            _products_tiles(
                rows, grads, weights, sums, parts, weight_too, input_too, numba.get_num_threads()
            )
        elif blas is None:
            _products_matmul(rows, grads, weights, sums, weight_too, input_too)
        else:
            _products(rows, grads, weights, sums, parts, splits, weight_too, input_too, *blas)
        if input_too:
            _fold(rows, gi[n0:n1], *geometry)
