"""1x1 convolutions' gradients as explicit matrix products: register tiles over blocks of C.

With a 1x1 kernel, stride 1 and no padding, per group (as ``gemm.py``)

    NHWC  grad_input[p, ci]     = sum over co of g[p, co] * w[ci, co]    (written)
          grad_weight[ci, co]  += sum over p of x[p, ci] * g[p, co]
    NCHW  grad_input[n, ci, p]  = sum over co of w[co, ci] * g[n, co, p] (written)

(p: a pixel). Each is C = A @ B with C's rows contiguous, computed a block of C
per task and, inside it, a register tile of MR rows by NR columns at a time
(``_tile.tile_product``): the tile's sums stay in registers over KC terms of
the inner dimension. A is read where it lies, through its strides (a row of C's
tile broadcasts one value of A per term); B's rows must have their columns
contiguous, which holds for all but NHWC grad_input's weight (copied
transposed once per call, C_out x C_in/g values). A tile past C's last row or
column works on a zero-padded copy of the part of A or B it reads (no read
outside the arrays); its extra entries are dropped.

Sums: KC terms in the dtype, then added into C (grad_input: in the dtype, as
BLAS does; grad_weight: into float64 totals, rounded once into gw). Blocks and
KC are fixed by the problem, so the same bits at any thread count.
"""

import numpy as np
from numba import njit, prange

from . import gemm
from ._cache import CACHE
from ._flags import FASTMATH
from ._tile import TILE_ROWS, tile_columns, tile_product

# Terms per tile pass: a tile's B rows (KC x NR: 32 KB for float32's 64
# columns) stay in L1 while the block's row tiles go through them.
KC = 128
# C rows per grad_input task (pixels): 16 tiles.
INPUT_BLOCK_ROWS = 16 * TILE_ROWS
# C block per grad_weight task: its rows (input channels) and columns (output channels).
WEIGHT_BLOCK_ROWS = 8 * TILE_ROWS
WEIGHT_BLOCK_COLUMNS = 128


@njit(cache=CACHE, fastmath=FASTMATH)
def _block(
    a, a_at, a_row, a_step, b, b_at, b_row, m, n, k, out, out_at, out_row, add, tile, a_edge,
    panel,
):  # fmt: skip
    """out[out_at + i*out_row + j] (=, or += with ``add``) sum over t < k of A[i, t] * B[t, j].

    A[i, t] = a[a_at + i*a_row + t*a_step], B[t, j] = b[b_at + t*b_row + j], for
    i < m, j < n; ``a``, ``b`` and ``out`` flat. ``tile`` holds MR x NR values,
    ``a_edge`` MR x KC (the last rows' A, zero-padded) and ``panel`` KC x NR. KC
    terms summed in the dtype at a time, then added into ``out`` (any float dtype).
    """
    mr, nr = TILE_ROWS, tile_columns(tile)
    whole_rows = m - m % mr
    for t0 in range(0, k, KC):
        kc = min(KC, k - t0)
        write = t0 == 0 and not add
        if whole_rows < m:  # the last rows' A, zero-padded to a whole tile
            a_edge[:] = 0
            for i in range(whole_rows, m):
                for t in range(kc):
                    a_edge[(i - whole_rows) * kc + t] = a[a_at + i * a_row + (t0 + t) * a_step]
        for j0 in range(0, n, nr):
            width = min(nr, n - j0)
            # B's rows for this tile column, packed (zero-padded past n): rows a
            # power of two apart would share a few L1 sets and evict each other
            for t in range(kc):
                at = b_at + (t0 + t) * b_row + j0
                _copy_padded(panel[t * nr : (t + 1) * nr], b[at : at + width])
            for i0 in range(0, m, mr):
                if i0 < whole_rows:
                    tile_product(
                        tile, a, a_at + i0 * a_row + t0 * a_step, a_row, a_step, panel, 0, nr, kc
                    )
                else:
                    tile_product(tile, a_edge, 0, kc, 1, panel, 0, nr, kc)
                for i in range(min(mr, m - i0)):
                    row = out_at + (i0 + i) * out_row + j0
                    _put(out[row : row + width], tile[i * nr : i * nr + width], write)


# The two loops below index from 0 within slices: LLVM vectorises them only
# when it can see the index is never negative (numba wraps negative indices).
@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def _copy_padded(target, source):
    """target[:len(source)] = source, the rest of target 0."""
    for j in range(source.shape[0]):
        target[j] = source[j]
    for j in range(source.shape[0], target.shape[0]):
        target[j] = 0


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
def _workspaces(dtype_of):
    """(tile, a_edge, panel) for one task, of ``dtype_of``'s dtype."""
    nr = tile_columns(dtype_of)
    tile = np.empty(TILE_ROWS * nr, dtype_of.dtype)
    return tile, np.empty(TILE_ROWS * KC, dtype_of.dtype), np.empty(KC * nr, dtype_of.dtype)


def _contiguous(*arrays):
    return all(a.flags.c_contiguous for a in arrays)


def grad_input_tiles_nhwc(g, w, gi, groups, rows_per_tile):
    """``gemm.grad_input_gemm_nhwc`` by register tiles (``rows_per_tile`` for its fallback).

    Arrays that are not C-contiguous (an ``out`` array the caller gave) go to
    the BLAS kernel, which takes any strides.
    """
    if not _contiguous(g, w, gi):
        return gemm.grad_input_gemm_nhwc(g, w, gi, groups, rows_per_tile)
    return grad_input_nhwc(g, w, gi, groups)


def grad_weight_tiles_nhwc(x, g, gw, groups, rows_per_tile):
    """``gemm.grad_weight_gemm_nhwc`` by register tiles (as ``grad_input_tiles_nhwc``)."""
    if not _contiguous(x, g, gw):
        return gemm.grad_weight_gemm_nhwc(x, g, gw, groups, rows_per_tile)
    return grad_weight_nhwc(x, g, gw, groups)


def grad_input_tiles_nchw(g, w, gi, groups, rows_per_tile):
    """``gemm.grad_input_gemm_nchw`` by register tiles (as ``grad_input_tiles_nhwc``)."""
    if not _contiguous(g, w, gi):
        return gemm.grad_input_gemm_nchw(g, w, gi, groups, rows_per_tile)
    return grad_input_nchw(g, w, gi, groups)


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def grad_input_nhwc(g, w, gi, groups):
    """gi[p, ins] = g[p, outs] @ w[0, 0, :, outs].T per group (written).

    g (N, H, W, C_out), w (1, 1, C_in/g, C_out), gi (N, H, W, C_in); a block
    of INPUT_BLOCK_ROWS pixels of one group per task.
    """
    c_out, c_in = g.shape[3], gi.shape[3]
    cin_g, cout_g = c_in // groups, c_out // groups
    pixels = g.size // max(1, c_out)
    g_flat, gi_flat = g.reshape(g.size), gi.reshape(gi.size)
    w_t = np.ascontiguousarray(w[0, 0].T)  # (C_out, C_in/g): B's rows contiguous
    w_flat = w_t.reshape(w_t.size)
    blocks = (pixels + INPUT_BLOCK_ROWS - 1) // INPUT_BLOCK_ROWS
    for task in prange(groups * blocks):
        group, block = task // blocks, task % blocks
        p0 = block * INPUT_BLOCK_ROWS
        rows = min(INPUT_BLOCK_ROWS, pixels - p0)
        tile, a_edge, panel = _workspaces(gi_flat)
        _block(
            g_flat, p0 * c_out + group * cout_g, c_out, 1,
            w_flat, group * cout_g * cin_g, cin_g,
            rows, cin_g, cout_g, gi_flat, p0 * c_in + group * cin_g, c_in, False,
            tile, a_edge, panel,
        )  # fmt: skip


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def grad_weight_nhwc(x, g, gw, groups):
    """gw[0, 0, ins, outs] += x[p, ins].T @ g[p, outs] per group.

    x (N, H, W, C_in), g (N, H, W, C_out), gw (1, 1, C_in/g, C_out); a block
    of WEIGHT_BLOCK_ROWS input by WEIGHT_BLOCK_COLUMNS output channels per
    task, its float64 totals over all pixels rounded once into gw.
    """
    c_in, c_out = x.shape[3], g.shape[3]
    cin_g, cout_g = c_in // groups, c_out // groups
    pixels = x.size // max(1, c_in)
    x_flat, g_flat, gw_flat = x.reshape(x.size), g.reshape(g.size), gw.reshape(gw.size)
    row_blocks = (cin_g + WEIGHT_BLOCK_ROWS - 1) // WEIGHT_BLOCK_ROWS
    column_blocks = (cout_g + WEIGHT_BLOCK_COLUMNS - 1) // WEIGHT_BLOCK_COLUMNS
    per_group = row_blocks * column_blocks
    for task in prange(groups * per_group):
        group, rest = task // per_group, task % per_group
        i0 = (rest // column_blocks) * WEIGHT_BLOCK_ROWS
        j0 = (rest % column_blocks) * WEIGHT_BLOCK_COLUMNS
        rows, columns = min(WEIGHT_BLOCK_ROWS, cin_g - i0), min(WEIGHT_BLOCK_COLUMNS, cout_g - j0)
        totals = np.zeros(rows * columns)
        tile, a_edge, panel = _workspaces(gw_flat)
        _block(
            x_flat, group * cin_g + i0, 1, c_in,
            g_flat, group * cout_g + j0, c_out,
            rows, columns, pixels, totals, 0, columns, True,
            tile, a_edge, panel,
        )  # fmt: skip
        for i in range(rows):
            for j in range(columns):
                gw_flat[(i0 + i) * c_out + group * cout_g + j0 + j] += totals[i * columns + j]


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def grad_input_nchw(g, w, gi, groups):
    """gi[n, ins] = w[outs, :, 0, 0].T @ g[n, outs] per group (written).

    g (N, C_out, H, W), w (C_out, C_in/g, 1, 1), gi (N, C_in, H, W); a block of
    the image's pixels (INPUT_BLOCK_ROWS tiles' columns wide) per task.
    """
    n_batch, c_out, c_in = g.shape[0], g.shape[1], gi.shape[1]
    cin_g, cout_g = c_in // groups, c_out // groups
    pixels = g.shape[2] * g.shape[3]
    g_flat, gi_flat, w_flat = g.reshape(g.size), gi.reshape(gi.size), w.reshape(w.size)
    block_columns = 4 * tile_columns(gi_flat)
    blocks = (pixels + block_columns - 1) // block_columns
    for task in prange(n_batch * groups * blocks):
        n, rest = task // (groups * blocks), task % (groups * blocks)
        group, block = rest // blocks, rest % blocks
        p0 = block * block_columns
        columns = min(block_columns, pixels - p0)
        tile, a_edge, panel = _workspaces(gi_flat)
        _block(
            w_flat, group * cout_g * cin_g, 1, cin_g,
            g_flat, (n * c_out + group * cout_g) * pixels + p0, pixels,
            cin_g, columns, cout_g, gi_flat, (n * c_in + group * cin_g) * pixels + p0, pixels,
            False, tile, a_edge, panel,
        )  # fmt: skip
