"""1x1 convolutions' gradients as explicit matrix products: register tiles over blocks of C.

With a 1x1 kernel, stride 1 and no padding, per group (as ``gemm.py``)

    NHWC  grad_input[p, ci]     = sum over co of g[p, co] * w[ci, co]    (written)
          grad_weight[ci, co]  += sum over p of x[p, ci] * g[p, co]
    NCHW  grad_input[n, ci, p]  = sum over co of w[co, ci] * g[n, co, p] (written)

(p: a pixel). Each is C = A @ B with C's rows contiguous, computed a block of C
per task and, inside it, a register tile of MR rows by NR columns at a time
(``_tile.tile_product``): the tile's sums stay in registers over KC terms of
the inner dimension. A is read where it lies, through its strides (a row of C's
tile broadcasts one value of A per term); B's rows are packed into panels of
NR contiguous columns, transposed in registers where B is given column-major
(NHWC grad_input's weight, packed once per call; NCHW grad_weight's input
planes). A tile past C's last row or column works on a zero-padded copy of the
part of A or B it reads (no read outside the arrays); its extra entries are
dropped.

Sums: KC terms in the dtype, then added into C (grad_input: in the dtype, as
BLAS does; grad_weight: into float64 totals, rounded once into gw). KC and
grad_weight's pixel parts are fixed by the problem; how C is cut into blocks
follows the thread count but never changes a value: the same bits at any
thread count.
"""

import numba
import numpy as np
from numba import njit, prange

from . import gemm
from ._cache import CACHE
from ._flags import FASTMATH
from ._tile import TILE_COLUMNS_BYTES, TILE_ROWS, tile_columns, tile_product
from .nchw_flat import TILE_BYTES, _copy_items, _transpose_tile

# Terms per tile pass, summed in the dtype before they are added into C.
KC = 128
# grad_input's terms (output channels) per pass: 256 output channels in one
# pass, C written once instead of read back and added to. The suite's
# pointwise backward took 0.976-0.985x the time of 128-term passes in NHWC,
# 0.96-0.99x in NCHW; 512 -> 512 channels 0.96-0.97x (2-core AMD EPYC, two
# runs). grad_weight, whose terms are pixels, gained nothing (0.99x); the
# unfolded products keep KC (their workspaces count against the budget).
KC_INPUT = 256
# Blocks of C per task, in register tiles (MR rows) and panels (NR columns):
# NHWC grad_input's pixels INPUT_BLOCK_TILES tiles at most; grad_weight's input
# channels WEIGHT_BLOCK_TILES tiles by output channels WEIGHT_BLOCK_PANELS
# panels at most. Smaller blocks, down to the LEAST_ sizes, where that makes
# TASKS_PER_THREAD tasks per thread: the threads then finish close together.
# How C is cut never changes a value (each entry is one task's, summed in the
# same order), so the cut may follow the thread count.
INPUT_BLOCK_TILES = 16
WEIGHT_BLOCK_TILES = 64
WEIGHT_BLOCK_PANELS = 1
INPUT_BLOCK_PANELS = 4  # NCHW grad_input's pixels (C's columns there)
LEAST_BLOCK_TILES = 2
# grad_weight's pixels in parts of this many (each part's totals apart), their
# float64 totals at most PARTIALS_BYTES in all.
WEIGHT_PART_PIXELS = 4096
PARTIALS_BYTES = 4 * 2**20
TASKS_PER_THREAD = 4
TOTALS_BLOCK = 4096  # grad_weight entries per task of the parts' final sum


@njit(cache=CACHE)
def _cuts(units, most, least, tasks):
    """How many blocks to cut ``units`` into: of at most ``most`` units, or toward ``tasks``."""
    blocks = (units + most - 1) // most
    if blocks < tasks:
        blocks = max(blocks, min(tasks, units // least))
    return max(1, blocks)


@njit(cache=CACHE)
def _balanced(blocks, copies, threads, most):
    """``blocks``, or the next count up to ``most`` giving ``copies * count`` whole rounds of tasks.

    Equal tasks in a whole number of rounds of ``threads``: 17 blocks on 2
    threads kept one thread waiting for the ninth (pointwise's grad_input).
    """
    for count in range(blocks, min(most, blocks + threads - 1) + 1):
        if copies * count % threads == 0:
            return count
    return blocks


@njit(cache=CACHE)
def _span(part, parts, units, unit, length):
    """[start, stop) of part ``part`` of ``parts`` even parts of ``units`` units of ``unit``."""
    start, stop = part * units // parts * unit, (part + 1) * units // parts * unit
    return min(length, start), min(length, stop)


@njit(cache=CACHE, fastmath=FASTMATH)
def _block(
    a, a_at, a_row, a_step, b, b_at, b_row, m, n, k, out, out_at, out_row, add, tile, a_edge,
    panel, packed, terms=KC,
):  # fmt: skip
    """out[out_at + i*out_row + j] (=, or += with ``add``) sum over t < k of A[i, t] * B[t, j].

    A[i, t] = a[a_at + i*a_row + t*a_step], B[t, j] = b[b_at + t*b_row + j], for
    i < m, j < n; ``a``, ``b`` and ``out`` flat. ``tile`` holds MR x NR values,
    ``a_edge`` MR x ``terms`` (the last rows' A, zero-padded) and ``panel``
    ``terms`` x NR (``_workspaces``). ``terms`` terms summed in the dtype at a
    time, then added into ``out`` (any float dtype).
    ``packed``: ``b`` from ``b_at`` holds B already in panels, each one's k rows in turn.
    """
    mr, nr = TILE_ROWS, tile_columns(tile)
    whole_rows = m - m % mr
    for t0 in range(0, k, terms):
        kc = min(terms, k - t0)
        write = t0 == 0 and not add
        if whole_rows < m:  # the last rows' A, zero-padded to a whole tile
            a_edge[:] = 0
            for i in range(whole_rows, m):
                for t in range(kc):
                    a_edge[(i - whole_rows) * kc + t] = a[a_at + i * a_row + (t0 + t) * a_step]
        for j0 in range(0, n, nr):
            width = min(nr, n - j0)
            source, at = b, b_at + (j0 // nr * k + t0) * nr
            if not packed:  # this tile column's B rows, packed
                _pack_rows(b, b_at + t0 * b_row + j0, b_row, kc, width, panel)
                source, at = panel, 0
            for i0 in range(0, m, mr):
                if i0 < whole_rows:
                    a_at_i = a_at + i0 * a_row + t0 * a_step
                    tile_product(tile, a, a_at_i, a_row, a_step, source, at, nr, kc)
                else:
                    tile_product(tile, a_edge, 0, kc, 1, source, at, nr, kc)
                for i in range(min(mr, m - i0)):
                    row = out_at + (i0 + i) * out_row + j0
                    _put(out[row : row + width], tile[i * nr : i * nr + width], write)


# B's rows go into panels of NR columns (zero-padded past B's last column),
# each panel's rows contiguous: rows a power of two apart, as B's are on
# power-of-two channel counts, would share a few L1 sets and evict each other.
@njit(cache=CACHE, fastmath=FASTMATH)
def _pack_rows(b, b_at, b_row, rows, width, target):
    """target[t*NR + j] = b[b_at + t*b_row + j] for t < rows, j < width; 0 for width <= j < NR."""
    nr = tile_columns(target)
    for t in range(rows):
        _copy_items(target, t * nr, b, b_at + t * b_row, width)
    if width < nr:
        for t in range(rows):
            target[t * nr + width : (t + 1) * nr] = 0


# The loops below index from 0 within slices: LLVM vectorises them only when
# it can see the index is never negative (numba wraps negative indices).
@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def _put(target, sums, write):
    """target = sums (``write``), else target += sums."""
    if write:
        for j in range(sums.shape[0]):
            target[j] = sums[j]
    else:
        for j in range(sums.shape[0]):
            target[j] += sums[j]


@njit(cache=CACHE)
def _workspaces(dtype_of, terms=KC):
    """(tile, a_edge, panel) for one task's ``_block`` of ``terms`` terms, in the dtype."""
    nr = tile_columns(dtype_of)
    tile = np.empty(TILE_ROWS * nr, dtype_of.dtype)
    return tile, np.empty(TILE_ROWS * terms, dtype_of.dtype), np.empty(terms * nr, dtype_of.dtype)


def task_workspace_values(itemsize):
    """Values of one task's workspaces (``_workspaces``: tile, a_edge and panel)."""
    nr = TILE_COLUMNS_BYTES // itemsize
    return TILE_ROWS * nr + TILE_ROWS * KC + KC * nr


def _contiguous(*arrays):
    return all(a.flags.c_contiguous for a in arrays)


def grad_input_tiles_nhwc(g, w, gi, groups, rows_per_tile):
    """``gemm.grad_input_gemm_nhwc`` by register tiles (``rows_per_tile`` for its fallback).

    Arrays that are not C-contiguous (an ``out`` array the caller gave) go to
    the BLAS kernel, which takes any strides.
    """
    if not _contiguous(g, w, gi):
        return gemm.grad_input_gemm_nhwc(g, w, gi, groups, rows_per_tile)
    return grad_input_nhwc(g, w, gi, groups, numba.get_num_threads())


def grad_weight_tiles_nhwc(x, g, gw, groups, rows_per_tile):
    """``gemm.grad_weight_gemm_nhwc`` by register tiles (as ``grad_input_tiles_nhwc``)."""
    if not _contiguous(x, g, gw):
        return gemm.grad_weight_gemm_nhwc(x, g, gw, groups, rows_per_tile)
    parts = weight_pixel_parts(x.size // max(1, x.shape[-1]), gw.size)
    return grad_weight_nhwc(x, g, gw, groups, parts, numba.get_num_threads())


def weight_pixel_parts(pixels, weights):
    """Parts of the pixels whose grad_weight sums are kept apart (fixed by the problem).

    One per WEIGHT_PART_PIXELS pixels, as long as their float64 totals stay
    within PARTIALS_BYTES: each task then reads its rows of x and g once (on
    big images with few channels, blocks of channels over all pixels read
    both arrays once per block, from memory).
    """
    most = max(1, PARTIALS_BYTES // (8 * max(1, weights)))
    return max(1, min(-(-pixels // WEIGHT_PART_PIXELS), most))


def grad_weight_tiles_nchw(x, g, gw, groups, rows_per_tile):
    """``gemm.grad_weight_gemm_nchw`` by register tiles (as ``grad_input_tiles_nhwc``)."""
    if not _contiguous(x, g, gw):
        return gemm.grad_weight_gemm_nchw(x, g, gw, groups, rows_per_tile)
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    parts = weight_pixel_parts(pixels, gw.size)
    return grad_weight_nchw(x, g, gw, groups, parts, numba.get_num_threads())


def grad_input_tiles_nchw(g, w, gi, groups, rows_per_tile):
    """``gemm.grad_input_gemm_nchw`` by register tiles (as ``grad_input_tiles_nhwc``)."""
    if not _contiguous(g, w, gi):
        return gemm.grad_input_gemm_nchw(g, w, gi, groups, rows_per_tile)
    return grad_input_nchw(g, w, gi, groups, numba.get_num_threads())


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def grad_input_nhwc(g, w, gi, groups, threads):
    """gi[p, ins] = g[p, outs] @ w[0, 0, :, outs].T per group (written).

    g (N, H, W, C_out), w (1, 1, C_in/g, C_out), gi (N, H, W, C_in); a block
    of pixels of one group per task, cut for ``threads`` threads.
    """
    c_out, c_in = g.shape[3], gi.shape[3]
    cin_g, cout_g = c_in // groups, c_out // groups
    pixels = g.size // max(1, c_out)
    g_flat, gi_flat = g.reshape(g.size), gi.reshape(gi.size)
    # B = the weight transposed, (C_out/g, C_in/g) per group: packed once for all
    # tasks, a panel per task (``_pack_transposed``: B's columns are w's rows)
    w_flat, nr = w.reshape(w.size), tile_columns(gi_flat)
    panels = (cin_g + nr - 1) // nr
    per_group = panels * nr * cout_g
    w_panels = np.empty(groups * per_group, gi.dtype)
    for task in prange(groups * panels):
        group, j0 = task // panels, task % panels * nr
        to = w_panels[group * per_group + j0 * cout_g :]
        _pack_transposed(
            w_flat, j0 * c_out + group * cout_g, c_out, min(nr, cin_g - j0), cout_g, to
        )
    tiles = (pixels + TILE_ROWS - 1) // TILE_ROWS
    wanted = max(1, TASKS_PER_THREAD * threads // groups)
    blocks = _cuts(tiles, INPUT_BLOCK_TILES, LEAST_BLOCK_TILES, wanted)
    blocks = _balanced(blocks, groups, threads, tiles)
    for task in prange(groups * blocks):
        group, block = task // blocks, task % blocks
        p0, p1 = _span(block, blocks, tiles, TILE_ROWS, pixels)
        tile, a_edge, panel = _workspaces(gi_flat, KC_INPUT)
        _block(
            g_flat, p0 * c_out + group * cout_g, c_out, 1,
            w_panels, group * per_group, 0,
            p1 - p0, cin_g, cout_g, gi_flat, p0 * c_in + group * cin_g, c_in, False,
            tile, a_edge, panel, True, KC_INPUT,
        )  # fmt: skip


@njit(cache=CACHE)
def _weight_blocks(rows, columns, nr, tasks):
    """(row tiles, column panels, row blocks, column blocks) of a grad_weight C toward ``tasks``.

    Whole columns of C first (a task's packed B then serves all its rows),
    cut into blocks of columns, then of rows, while there are fewer than
    ``tasks`` tasks.
    """
    tiles, panels = (rows + TILE_ROWS - 1) // TILE_ROWS, (columns + nr - 1) // nr
    row_blocks = _cuts(tiles, WEIGHT_BLOCK_TILES, LEAST_BLOCK_TILES, 1)
    column_blocks = _cuts(panels, WEIGHT_BLOCK_PANELS, 1, -(-tasks // row_blocks))
    row_blocks = _cuts(tiles, WEIGHT_BLOCK_TILES, LEAST_BLOCK_TILES, -(-tasks // column_blocks))
    return tiles, panels, row_blocks, column_blocks


@njit(cache=CACHE)
def _weight_task(task, groups, blocks, nr, rows, columns, pixels, pixel_parts):
    """(part, group, q0, q1, i0, i1, j0, j1): a grad_weight task's pixels, group and block of C.

    ``blocks``: ``_weight_blocks``' answer for C's ``rows`` x ``columns`` (a
    group's); tasks run part by part, then group, row block, column block.
    """
    tiles, panels, row_blocks, column_blocks = blocks
    per_group = row_blocks * column_blocks
    part, rest = task // (groups * per_group), task % (groups * per_group)
    group, block = rest // per_group, rest % per_group
    q0, q1 = _span(part, pixel_parts, pixels, 1, pixels)
    i0, i1 = _span(block // column_blocks, row_blocks, tiles, TILE_ROWS, rows)
    j0, j1 = _span(block % column_blocks, column_blocks, panels, nr, columns)
    return part, group, q0, q1, i0, i1, j0, j1


@njit(cache=CACHE, parallel=True)
def add_totals(gw_flat, totals):
    """gw += the parts' float64 totals, added in part order, rounded once.

    A block of TOTALS_BLOCK entries per task (each entry's sum in the same
    order: the same bits at any thread count): one thread adding 8 parts'
    totals of a 128 -> 128 3 x 3 weight read 9 MB.
    """
    size, parts = gw_flat.shape[0], totals.shape[0]
    for block in prange((size + TOTALS_BLOCK - 1) // TOTALS_BLOCK):
        k0, k1 = block * TOTALS_BLOCK, min(size, (block + 1) * TOTALS_BLOCK)
        for part in range(1, parts):
            for k in range(k0, k1):
                totals[0, k] += totals[part, k]
        for k in range(k0, k1):
            gw_flat[k] += totals[0, k]


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def grad_weight_nhwc(x, g, gw, groups, pixel_parts, threads):
    """gw[0, 0, ins, outs] += x[p, ins].T @ g[p, outs] per group.

    x (N, H, W, C_in), g (N, H, W, C_out), gw (1, 1, C_in/g, C_out). The
    pixels in ``pixel_parts`` even parts, each part's float64 totals apart,
    added in part order and rounded once into gw; per part, blocks of input
    by output channels, cut for ``threads`` threads.
    """
    c_in, c_out = x.shape[3], g.shape[3]
    cin_g, cout_g = c_in // groups, c_out // groups
    pixels = x.size // max(1, c_in)
    x_flat, g_flat, gw_flat = x.reshape(x.size), g.reshape(g.size), gw.reshape(gw.size)
    nr = tile_columns(gw_flat)
    wanted = max(1, TASKS_PER_THREAD * threads // (groups * pixel_parts))
    blocks = _weight_blocks(cin_g, cout_g, nr, wanted)
    totals = np.zeros((pixel_parts, cin_g * c_out))  # gw's (C_in/g, C_out) per part
    for task in prange(pixel_parts * groups * blocks[2] * blocks[3]):
        part, group, p0, p1, i0, i1, j0, j1 = _weight_task(
            task, groups, blocks, nr, cin_g, cout_g, pixels, pixel_parts
        )
        tile, a_edge, panel = _workspaces(gw_flat)
        _block(
            x_flat, p0 * c_in + group * cin_g + i0, 1, c_in,
            g_flat, p0 * c_out + group * cout_g + j0, c_out,
            i1 - i0, j1 - j0, p1 - p0, totals[part], i0 * c_out + group * cout_g + j0, c_out,
            True, tile, a_edge, panel, False,
        )  # fmt: skip
    add_totals(gw_flat, totals)


@njit(cache=CACHE, fastmath=FASTMATH)
def _pack_transposed(x, at, plane, width, kc, target):
    """target[t*NR + j] = x[at + j*plane + t] for t < kc, j < width; 0 for width <= j < NR.

    B's rows from NCHW channel planes (``plane`` values apart): squares of one
    register's width go through ``_transpose_tile``, the rest value by value.
    """
    nr, lanes = tile_columns(target), TILE_BYTES // target.itemsize
    whole_t, whole_j = kc - kc % lanes, width - width % lanes
    for t0 in range(0, whole_t, lanes):
        for j0 in range(0, whole_j, lanes):
            _transpose_tile(x, at + j0 * plane + t0, plane, target, t0 * nr + j0, nr)
    for t in range(kc):
        first = whole_j if t < whole_t else 0
        for j in range(first, width):
            target[t * nr + j] = x[at + j * plane + t]
        for j in range(width, nr):
            target[t * nr + j] = 0


@njit(cache=CACHE, fastmath=FASTMATH)
def _block_transposed(
    a, a_at, a_row, a_step, bt, bt_at, bt_row, m, n, k, out, out_at, out_row, add, tile, a_edge,
    panel,
):  # fmt: skip
    """``_block`` with B given transposed: B[t, j] = bt[bt_at + j*bt_row + t].

    A panel of B's rows at a time, KC terms of them, packed into ``panel``
    (``_pack_transposed``) and multiplied as ``_block``'s packed B; the sums
    as ``_block``'s.
    """
    nr = tile_columns(panel)
    for t0 in range(0, k, KC):
        kc = min(KC, k - t0)
        for j0 in range(0, n, nr):
            width = min(nr, n - j0)
            _pack_transposed(bt, bt_at + j0 * bt_row + t0, bt_row, width, kc, panel)
            _block(
                a, a_at + t0 * a_step, a_row, a_step, panel, 0, 0, m, width, kc, out,
                out_at + j0, out_row, add or t0 > 0, tile, a_edge, panel, True,
            )  # fmt: skip


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def grad_weight_nchw(x, g, gw, groups, pixel_parts, threads):
    """gw[outs, ins, 0, 0] += sum over n of g[n, outs] @ x[n, ins].T per group.

    x (N, C_in, H, W), g (N, C_out, H, W), gw (C_out, C_in/g, 1, 1). C = gw's
    (C_out/g, C_in/g) per group: A is grad_output's planes, B the input's
    planes transposed (``_block_transposed``, an image at a time). The
    images' pixels, in order, in ``pixel_parts``
    even parts with their float64 totals apart, as ``grad_weight_nhwc``.
    """
    n_batch, c_in, c_out = x.shape[0], x.shape[1], g.shape[1]
    cin_g, cout_g = c_in // groups, c_out // groups
    plane = x.shape[2] * x.shape[3]
    x_flat, g_flat, gw_flat = x.reshape(x.size), g.reshape(g.size), gw.reshape(gw.size)
    nr = tile_columns(gw_flat)
    wanted = max(1, TASKS_PER_THREAD * threads // (groups * pixel_parts))
    blocks = _weight_blocks(cout_g, cin_g, nr, wanted)
    totals = np.zeros((pixel_parts, c_out * cin_g))  # gw's (C_out, C_in/g) per part
    pixels = n_batch * plane
    for task in prange(pixel_parts * groups * blocks[2] * blocks[3]):
        part, group, q0, q1, i0, i1, j0, j1 = _weight_task(
            task, groups, blocks, nr, cout_g, cin_g, pixels, pixel_parts
        )
        tile, a_edge, panel = _workspaces(gw_flat)
        out_at = (group * cout_g + i0) * cin_g + j0
        q = q0
        while q < q1:  # the part's pixels an image at a time
            n, p = q // plane, q % plane
            count = min(q1 - q, plane - p)
            _block_transposed(
                g_flat, (n * c_out + group * cout_g + i0) * plane + p, plane, 1,
                x_flat, (n * c_in + group * cin_g + j0) * plane + p, plane,
                i1 - i0, j1 - j0, count, totals[part], out_at, cin_g, True,
                tile, a_edge, panel,
            )  # fmt: skip
            q += count
    add_totals(gw_flat, totals)


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def grad_input_nchw(g, w, gi, groups, threads):
    """gi[n, ins] = w[outs, :, 0, 0].T @ g[n, outs] per group (written).

    g (N, C_out, H, W), w (C_out, C_in/g, 1, 1), gi (N, C_in, H, W); a block of
    the image's pixels per task (INPUT_BLOCK_PANELS panels at most), cut for
    ``threads`` threads.
    """
    n_batch, c_out, c_in = g.shape[0], g.shape[1], gi.shape[1]
    cin_g, cout_g = c_in // groups, c_out // groups
    pixels = g.shape[2] * g.shape[3]
    g_flat, gi_flat, w_flat = g.reshape(g.size), gi.reshape(gi.size), w.reshape(w.size)
    nr = tile_columns(gi_flat)
    panels = (pixels + nr - 1) // nr
    wanted = max(1, TASKS_PER_THREAD * threads // (n_batch * groups))
    blocks = _cuts(panels, INPUT_BLOCK_PANELS, 1, wanted)
    blocks = _balanced(blocks, n_batch * groups, threads, panels)
    for task in prange(n_batch * groups * blocks):
        n, rest = task // (groups * blocks), task % (groups * blocks)
        group, block = rest // blocks, rest % blocks
        p0, p1 = _span(block, blocks, panels, nr, pixels)
        tile, a_edge, panel = _workspaces(gi_flat, KC_INPUT)
        _block(
            w_flat, group * cout_g * cin_g, 1, cin_g,
            g_flat, (n * c_out + group * cout_g) * pixels + p0, pixels,
            cin_g, p1 - p0, cout_g, gi_flat, (n * c_in + group * cin_g) * pixels + p0, pixels,
            False, tile, a_edge, panel, False, KC_INPUT,
        )  # fmt: skip
