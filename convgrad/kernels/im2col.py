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
large share of the machine's peak. NCHW problems unfold into the transposed
matrix instead, one row per weight column (``im2col_nchw.py``): no layout
copies, and no reordered weight.

Both products run as single-threaded BLAS gemm calls from numba's threads,
OpenBLAS held at one thread (as in ``gemm.py``), each task on its own span of
the KH*KW*C_in columns: the second product overwrites only the span the first
one read. Fewer spans than PRODUCT_MIN_TASKS are cut again (``product_splits``).
``parts`` (the spans), the cuts, ``images_per_tile`` and ``fold_spans`` come
from the problem, not the thread count, so the bits do not depend on it.
grad_weight's tiles are summed in the dtype (beta = 1), a few tiles at most
within the working-memory budget. Without a cblas gemm to call, the same
products go through ``np.matmul``.

The padding's zeros multiply grad_output values inside the products, so a NaN
or Inf there spreads further than the exact sums do: the backward and
grad_weight alone are exact for finite inputs only (the caller checks, as for
the flat kernels). grad_input alone unfolds nothing and is exact for any input.
"""

import numba
import numpy as np
from numba import njit, prange

from .._blas import gemm_for, one_blas_thread
from . import im2col_nchw
from ._cache import CACHE
from ._cblas import NO_TRANS, TRANS, gemm_call
from ._flags import FASTMATH
from ._tile import TILE_ROWS, tile_columns
from .gemm_tiles import _block as tile_block
from .gemm_tiles import _block_transposed as block_transposed
from .gemm_tiles import _span as panel_span
from .gemm_tiles import _workspaces as tile_workspaces
from .nchw import grad_bias_nchw, grad_bias_nchw_serial
from .nhwc import grad_bias_nhwc

# Products cut into fewer spans of columns than PRODUCT_MIN_TASKS are cut again,
# grad_weight's along its output channels and grad_input's along the pixels:
# a 1 x 1 kernel at stride 2 on 64 input channels, or 3 x 3 on 16, is one span
# (``_dispatch.im2col_parts``), one task on one thread while the others wait.
# Fixed, not the thread count, so the bits do not depend on it. Measured (2-core
# AMD EPYC, Zen 4, OpenBLAS SkylakeX, the products of 8 images): 8 x 64 -> 128
# @ 56 x 56 1 x 1 stride 2 2.48 -> 1.30 ms in two cuts (four 1.30, eight
# 1.41); 8 x 16 -> 32 @ 56 x 56 3 x 3 stride 2 1.41 -> 1.05 (four 1.42); two
# spans cut in two took 1.12x the time (8 x 32 -> 64 3 x 3 stride 2), so two.
PRODUCT_MIN_TASKS = 2


def product_splits(parts: int) -> int:
    """Tasks per span of columns in the BLAS products: at least PRODUCT_MIN_TASKS in all."""
    return -(-PRODUCT_MIN_TASKS // parts)


@njit(cache=CACHE)
def _span(part, parts, length):
    """(start, stop) of part ``part`` of ``parts`` even parts of range(length)."""
    return part * length // parts, (part + 1) * length // parts


@njit(cache=CACHE, parallel=True)
def _unfold(x, cols, sh, sw, pt, pl, dh, dw, kh, kw, out_h, out_w):
    """cols[(n, oh, ow), (i, j, c)] = xpad[n, oh*sh + i*dh, ow*sw + j*dw, c].

    x is an NHWC tile; a row of output pixels per task.
    """
    height, width, c_in = x.shape[1], x.shape[2], x.shape[3]
    for row in prange(x.shape[0] * out_h):
        n, oh = row // out_h, row % out_h
        for ow in range(out_w):
            line = cols[row * out_w + ow]
            for i in range(kh):
                h = oh * sh + i * dh - pt
                for j in range(kw):
                    col = ow * sw + j * dw - pl
                    first = (i * kw + j) * c_in
                    window = line[first : first + c_in]
                    if 0 <= h < height and 0 <= col < width:
                        pixel = x[n, h, col]
                        for c in range(c_in):
                            window[c] = pixel[c]
                    else:
                        window[:] = 0


@njit(cache=CACHE, parallel=True)
def _fold(cols, gi, c_spans, sh, sw, pt, pl, dh, dw, kh, kw, out_h, out_w):
    """gi[n, h, w] = the sum of cols' values for the windows that read pixel (h, w).

    gi is an NHWC tile; an image's span of channels per task (``c_spans``
    spans): no two tasks write one value, and each value's terms come in one
    fixed order.
    """
    height, width, c_in = gi.shape[1], gi.shape[2], gi.shape[3]
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
                        first = (i * kw + j) * c_in
                        window = line[first + c0 : first + c1]
                        part = gi[n, h, col, c0:c1]
                        for c in range(c1 - c0):
                            part[c] += window[c]


@njit(cache=CACHE, parallel=True)
def _products(cols, grads, w, gw, parts, splits, weight_too, input_too, gemm, ilp64):
    """Per span of cols' columns: grad_weight's product, then grad_input's.

    cols (pixels, KH*KW*C_in) and grads (pixels, C_out), w and gw (KH*KW*C_in,
    C_out), all C-contiguous: gw[s0:s1] += cols[:, s0:s1].T @ grads, then
    cols[:, s0:s1] = grads @ w[s0:s1].T, overwriting only the span the first
    read. ``weight_too``/``input_too``: which of the two to run (the other's
    matrix argument is then unused). Each span's products are cut into
    ``splits`` tasks (``product_splits``), grad_weight's along its output
    channels and grad_input's along the pixels, in two passes (grad_input's
    overwrites the columns grad_weight's reads); never along the summed axis.
    """
    pixels, width = cols.shape
    c_out, item = grads.shape[1], cols.itemsize
    if weight_too:
        for task in prange(parts * splits):
            s0, s1 = _span(task // splits, parts, width)
            o0, o1 = _span(task % splits, splits, c_out)
            if s1 > s0 and o1 > o0:
                gemm_call(
                    gemm, ilp64, TRANS, NO_TRANS, s1 - s0, o1 - o0, pixels,
                    cols.ctypes.data + s0 * item, width, grads.ctypes.data + o0 * item, c_out,
                    1.0, gw, s0 * c_out + o0, c_out,
                )  # fmt: skip
    if input_too:
        for task in prange(parts * splits):
            s0, s1 = _span(task // splits, parts, width)
            p0, p1 = _span(task % splits, splits, pixels)
            if s1 > s0 and p1 > p0:
                gemm_call(
                    gemm, ilp64, NO_TRANS, TRANS, p1 - p0, s1 - s0, c_out,
                    grads.ctypes.data + p0 * c_out * item, c_out,
                    w.ctypes.data + s0 * c_out * item, c_out,
                    0.0, cols, p0 * width + s0, width,
                )  # fmt: skip


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def _products_tiles(cols, grads, w, gw, parts, weight_too, input_too, threads):
    """``_products`` by register tiles (``gemm_tiles``), the weight transposed for grad_input's.

    Columns too few for a span per thread (a 1 x 1 kernel on 64 input
    channels is one panel: ``parts`` 1) leave threads idle: each span's
    products are then cut once more, grad_weight's by its output channels
    and grad_input's by pixels, in two passes (grad_input's overwrites the
    columns grad_weight's reads). Every value is still one task's, computed
    the same way: the same bits however they are cut.
    """
    splits = max(1, -(-threads // parts))
    if splits == 1:
        for part in prange(parts):
            _span_products(cols, grads, w, gw, part, parts, 0, 1, weight_too, input_too)
        return
    if weight_too:
        for task in prange(parts * splits):
            part, split = task // splits, task % splits
            _span_products(cols, grads, w, gw, part, parts, split, splits, True, False)
    if input_too:
        for task in prange(parts * splits):
            part, split = task // splits, task % splits
            _span_products(cols, grads, w, gw, part, parts, split, splits, False, True)


@njit(cache=CACHE, fastmath=FASTMATH)
def _span_products(cols, grads, w, gw, part, parts, split, splits, weight_too, input_too):
    """Span ``part`` of ``parts`` of the columns: its products' cut ``split`` of ``splits``.

    grad_weight's cut: whole panels of its output channels; grad_input's:
    whole tiles of pixels.
    """
    pixels, width = cols.shape
    c_out = grads.shape[1]
    cols_flat, grads_flat = cols.reshape(cols.size), grads.reshape(grads.size)
    gw_flat, w_flat = gw.reshape(gw.size), w.reshape(w.size)
    nr = tile_columns(cols_flat)
    # spans of whole panels: the tiles compute whole panels of NR columns, and
    # resnet_s2's even spans of 144 columns took three of 64, a quarter padding
    s0, s1 = panel_span(part, parts, -(-width // nr), nr, width)
    if s1 == s0:
        return
    tile, a_edge, panel = tile_workspaces(cols_flat)
    if weight_too:  # gw[s0:s1, j0:j1] += cols[:, s0:s1].T @ grads[:, j0:j1]
        j0, j1 = panel_span(split, splits, -(-c_out // nr), nr, c_out)
        if j1 > j0:
            tile_block(
                cols_flat, s0, 1, width, grads_flat, j0, c_out, s1 - s0, j1 - j0, pixels,
                gw_flat, s0 * c_out + j0, c_out, True, tile, a_edge, panel, False,
            )  # fmt: skip
    if input_too:  # cols[p0:p1, s0:s1] = grads[p0:p1] @ w[s0:s1].T
        p0, p1 = panel_span(split, splits, -(-pixels // TILE_ROWS), TILE_ROWS, pixels)
        if p1 > p0:
            block_transposed(
                grads_flat, p0 * c_out, c_out, 1, w_flat, s0 * c_out, c_out, p1 - p0, s1 - s0,
                c_out, cols_flat, p0 * width + s0, width, False, tile, a_edge, panel,
            )  # fmt: skip


def _products_matmul(cols, grads, w, gw, weight_too, input_too):
    """``_products``' products through ``np.matmul`` (all columns at once)."""
    if weight_too:
        gw += cols.T @ grads
    if input_too:
        np.matmul(grads, w.T, out=cols)


def tile_values(c_in, c_out, kh, kw, out_h, out_w, nhwc):
    """Workspace values per image of a tile: its columns (NCHW: and grad_output's copy)."""
    if not nhwc:
        return im2col_nchw.tile_values(c_in, c_out, kh, kw, out_h, out_w)
    return out_h * out_w * c_in * kh * kw


def backward_im2col(
    x, g, w, gi, gw, gb, sh, sw, pt, pb, pl, pr, dh, dw, images_per_tile, parts, fold_spans, nhwc,
    by_tiles=0,
):  # fmt: skip
    """All three gradients, groups 1, either layout (``nhwc``), a tile of whole images at a time.

    gi is written (every value), gw and gb added into. ``parts`` gemm tasks
    per product, ``fold_spans`` tasks per image folding the columns (spans of
    channels); the products by register tiles if ``by_tiles``, else by BLAS.
    Returns None: the caller checks that the results are finite.
    """
    _unfolded_products(
        x, g, w, gi, gw, sh, sw, pt, pl, dh, dw, images_per_tile, parts, fold_spans, nhwc,
        by_tiles,
    )  # fmt: skip
    if nhwc:
        grad_bias_nhwc(g, gb)  # one pass along the channels, on the calling thread
    elif gemm_for(g.dtype) is None:  # OpenBLAS's threads may still spin after np.matmul
        grad_bias_nchw_serial(g, gb)
    else:
        grad_bias_nchw(g, gb)


def grad_input_im2col(
    g, w, gi, sh, sw, pt, pb, pl, pr, dh, dw, images_per_tile, parts, fold_spans, nhwc, by_tiles=0
):
    """grad_input alone (written): grad_output times the weight, folded; no unfolding.

    Exact for any input: the product holds grad_output and weight values
    only, and folding drops what lands on padding.
    """
    _unfolded_products(
        None, g, w, gi, None, sh, sw, pt, pl, dh, dw, images_per_tile, parts, fold_spans, nhwc,
        by_tiles,
    )  # fmt: skip


def grad_weight_im2col(
    x, g, gw, sh, sw, pt, pb, pl, pr, dh, dw, images_per_tile, parts, fold_spans, nhwc, by_tiles=0
):
    """grad_weight alone (added into gw): the unfolded input times grad_output; no folding.

    Exact for finite inputs only (the padding's zeros meet grad_output).
    """
    _unfolded_products(
        x, g, None, None, gw, sh, sw, pt, pl, dh, dw, images_per_tile, parts, fold_spans, nhwc,
        by_tiles,
    )  # fmt: skip


def _unfolded_products(
    x, g, w, gi, gw, sh, sw, pt, pl, dh, dw, images_per_tile, parts, fold_spans, nhwc, by_tiles
):
    """grad_weight added into gw and grad_input written into gi, a tile of images at a time.

    gw None (and x with it): grad_input alone; gi None (and w): grad_weight
    alone. NCHW goes to ``im2col_nchw`` (``fold_spans`` is NHWC's).
    """
    blas, splits = gemm_for(g.dtype), product_splits(parts)
    with one_blas_thread():
        if not nhwc:
            geometry = (sh, sw, pt, pl, dh, dw)
            im2col_nchw.unfolded_products(
                x, g, w, gi, gw, geometry, images_per_tile, parts, blas, by_tiles, splits
            )
            return
        weight_too, input_too = gw is not None, gi is not None
        n_batch = g.shape[0]
        kh, kw, c_in, c_out = (w if gw is None else gw).shape
        out_h, out_w = g.shape[1], g.shape[2]
        geometry = (sh, sw, pt, pl, dh, dw, kh, kw, out_h, out_w)
        plane, columns = out_h * out_w, kh * kw * c_in
        tile = min(images_per_tile, n_batch)
        cols_all = np.empty((tile * plane, columns), g.dtype)
        weights = (w if input_too else gw).reshape(columns, c_out)
        sums = gw.reshape(columns, c_out) if weight_too else weights  # unused: any matrix
        for n0 in range(0, n_batch, tile):
            n1 = min(n_batch, n0 + tile)
            cols = cols_all[: (n1 - n0) * plane]
            if weight_too:
                _unfold(x[n0:n1], cols, *geometry)
            grads = g[n0:n1].reshape(-1, c_out)
            if by_tiles:
                _products_tiles(
                    cols,
                    grads,
                    weights,
                    sums,
                    parts,
                    weight_too,
                    input_too,
                    numba.get_num_threads(),
                )
            elif blas is None:
                _products_matmul(cols, grads, weights, sums, weight_too, input_too)
            else:
                _products(cols, grads, weights, sums, parts, splits, weight_too, input_too, *blas)
            if input_too:
                _fold(cols, gi[n0:n1], fold_spans, *geometry)
