"""Kernels for the NHWC layout: images (N, H, W, C), weights (KH, KW, C_in/groups, C_out).

Same math as the NCHW kernels (see ``nchw.py``), with channels contiguous:

    y[n, i, j, co] = sum over p, q, ci2 of
        x[n, i*sh + p*dh - pt, j*sw + q*dw - pl, g0 + ci2] * w[p, q, ci2, co]

The innermost loop runs over a contiguous slice of output channels, taken as a
0-based view so that LLVM vectorises it.
"""

import numba
import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._flags import FASTMATH
from ._noalias import NoAliasCompiler

# Small helpers are repeated in each kernel module on purpose: numba's on-disk
# cache keys a kernel on its own module's source, so an edited helper imported
# from elsewhere would leave stale compiled kernels behind.


@njit(cache=CACHE, inline="always")
def _valid_range(out_len, in_len, offset, stride):
    """Half-open range of output positions k with 0 <= k*stride + offset < in_len."""
    lo = max(0, -(offset // stride))
    hi = min(out_len, (in_len - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


# Writes an output row or a workspace from inputs: noalias (``_noalias.py``) spares its
# short loop (a group's output channels) the run-time overlap checks.
@njit(cache=CACHE, fastmath=FASTMATH, pipeline_class=NoAliasCompiler)
def _axpy(dest, scale, src):
    """dest += scale * src over two equally long contiguous vectors."""
    for k in range(src.shape[0]):
        dest[k] += scale * src[k]


@njit(cache=CACHE, fastmath=FASTMATH)
def _dot(a, b):
    """sum of a * b over two equally long contiguous vectors."""
    acc = a.dtype.type(0)
    for k in range(a.shape[0]):
        acc += a[k] * b[k]
    return acc


# Each operation is a task body -- the work for one output-owning index --
# and a driver that runs the tasks in parallel with prange.


@njit(cache=CACHE, fastmath=FASTMATH)
def _forward_row(x, w, y, task, sh, sw, pt, pl, dh, dw, groups):
    """Task: y[n, i] += conv2d(x, w)[n, i] for the output row (n, i) = divmod(task, OH)."""
    height, width, c_in = x.shape[1], x.shape[2], x.shape[3]
    out_h, out_w, c_out = y.shape[1], y.shape[2], y.shape[3]
    kh, kw = w.shape[0], w.shape[1]
    cin_g = c_in // groups
    cout_g = c_out // groups
    n = task // out_h
    i = task - n * out_h
    for p in range(kh):
        r = i * sh + p * dh - pt
        if r < 0 or r >= height:
            continue
        for q in range(kw):
            j_lo, j_hi = _valid_range(out_w, width, q * dw - pl, sw)
            for j in range(j_lo, j_hi):
                c = j * sw + q * dw - pl
                for group in range(groups):
                    co0 = group * cout_g
                    y_part = y[n, i, j, co0 : co0 + cout_g]
                    for ci2 in range(cin_g):
                        xv = x[n, r, c, group * cin_g + ci2]
                        _axpy(y_part, xv, w[p, q, ci2, co0 : co0 + cout_g])


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def forward_nhwc(x, w, y, sh, sw, pt, pl, dh, dw, groups):
    """y += conv2d(x, w); parallel over (n, i) output rows."""
    for task in prange(y.shape[0] * y.shape[1]):
        _forward_row(x, w, y, task, sh, sw, pt, pl, dh, dw, groups)


@njit(cache=CACHE, fastmath=FASTMATH)
def _grad_input_row(g, w, gi, task, sh, sw, pt, pl, dh, dw, groups):
    """Task: gi[n, r] += scatter-add of w * g for the input row (n, r) = divmod(task, H).

    The task gathers the output rows that touch input row r, so no two tasks
    add into the same cell.
    """
    height, width, c_in = gi.shape[1], gi.shape[2], gi.shape[3]
    out_h, out_w, c_out = g.shape[1], g.shape[2], g.shape[3]
    kh, kw = w.shape[0], w.shape[1]
    cin_g = c_in // groups
    cout_g = c_out // groups
    n = task // height
    r = task - n * height
    for p in range(kh):
        shifted = r + pt - p * dh  # = i * sh for the output row i that reads row r
        if shifted < 0 or shifted % sh != 0 or shifted // sh >= out_h:
            continue
        i = shifted // sh
        for q in range(kw):
            j_lo, j_hi = _valid_range(out_w, width, q * dw - pl, sw)
            for j in range(j_lo, j_hi):
                c = j * sw + q * dw - pl
                for group in range(groups):
                    co0 = group * cout_g
                    g_part = g[n, i, j, co0 : co0 + cout_g]
                    for ci2 in range(cin_g):
                        gi[n, r, c, group * cin_g + ci2] += _dot(
                            w[p, q, ci2, co0 : co0 + cout_g], g_part
                        )


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def grad_input_nhwc(g, w, gi, sh, sw, pt, pl, dh, dw, groups):
    """gi += scatter-add of w * g; parallel over (n, r) input rows."""
    for task in prange(gi.shape[0] * gi.shape[1]):
        _grad_input_row(g, w, gi, task, sh, sw, pt, pl, dh, dw, groups)


@njit(cache=CACHE, fastmath=FASTMATH)
def _grad_weight_rows(x, g, acc, row_lo, row_hi, sh, sw, pt, pl, dh, dw, groups):
    """Task: acc += correlation of x with g over the output rows [row_lo, row_hi) of (n, i).

    ``acc`` has grad_weight's shape (KH, KW, C_in/groups, C_out).
    """
    height, width, c_in = x.shape[1], x.shape[2], x.shape[3]
    out_h, out_w, c_out = g.shape[1], g.shape[2], g.shape[3]
    kh, kw = acc.shape[0], acc.shape[1]
    cin_g = c_in // groups
    cout_g = c_out // groups
    for row in range(row_lo, row_hi):
        n = row // out_h
        i = row - n * out_h
        g_row = g[n, i]
        for p in range(kh):
            r = i * sh + p * dh - pt
            if r < 0 or r >= height:
                continue
            x_row = x[n, r]
            for q in range(kw):
                j_lo, j_hi = _valid_range(out_w, width, q * dw - pl, sw)
                for group in range(groups):
                    co0 = group * cout_g
                    for ci2 in range(cin_g):
                        ci = group * cin_g + ci2
                        acc_part = acc[p, q, ci2, co0 : co0 + cout_g]
                        for j in range(j_lo, j_hi):
                            xv = x_row[j * sw + q * dw - pl, ci]
                            _axpy(acc_part, xv, g_row[j, co0 : co0 + cout_g])


# Blocked sums: a float32 accumulator that took many terms one after another
# drifts (about 1e-4 of the sum of |terms| after 1e7 positive terms). Each
# chunk therefore sums its rows a block of at most about BLOCK_TERMS terms per
# entry at a time, folds the block into a float64 total and starts the next
# block at zero; the chunk totals are added in chunk order and rounded once.
BLOCK_TERMS = 4096


@njit(cache=CACHE)
def _fold(total, block):
    """total += block, then block = 0; both C-contiguous and equally large."""
    t = total.reshape(total.size)
    b = block.reshape(block.size)
    for k in range(t.shape[0]):
        t[k] += b[k]
        b[k] = 0


def grad_weight_nhwc(x, g, gw, sh, sw, pt, pl, dh, dw, groups, n_chunks):
    """gw += the weight gradient, summed in ``n_chunks`` blocked partials.

    The partials are allocated here, by NumPy, so the asv memory tracks see them.
    """
    totals = np.zeros((n_chunks, *gw.shape), dtype=np.float64)
    blocks = np.zeros((n_chunks, *gw.shape), dtype=gw.dtype)
    _grad_weight_nhwc(x, g, gw, sh, sw, pt, pl, dh, dw, groups, n_chunks, totals, blocks)


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def _grad_weight_nhwc(x, g, gw, sh, sw, pt, pl, dh, dw, groups, n_chunks, totals, blocks):
    """gw += valid correlation of x with g.

    The (n, i) output rows are split into ``n_chunks`` fixed chunks, each summed
    into its own partial weight gradient in parallel (blocked, see BLOCK_TERMS);
    the partials are then added in chunk order. The chunks and blocks depend
    only on the caller's ``n_chunks`` and the shapes, never on the thread count,
    so the result is deterministic.
    """
    n_rows = g.shape[0] * g.shape[1]
    block_rows = max(1, BLOCK_TERMS // max(1, g.shape[2]))
    for chunk in prange(n_chunks):
        row_lo = chunk * n_rows // n_chunks
        row_hi = (chunk + 1) * n_rows // n_chunks
        for r0 in range(row_lo, row_hi, block_rows):
            r1 = min(r0 + block_rows, row_hi)
            _grad_weight_rows(x, g, blocks[chunk], r0, r1, sh, sw, pt, pl, dh, dw, groups)
            _fold(totals[chunk], blocks[chunk])
    for chunk in range(1, n_chunks):
        _fold(totals[0], totals[chunk])
    _fold(gw, totals[0])  # gw += total, rounded once (the zeroed total is not used again)


def grad_weight_nhwc_by_channel(x, g, gw, sh, sw, pt, pl, dh, dw, groups):
    """gw += the weight gradient, one input channel per parallel task.

    For weights too large to keep a partial copy per chunk of rows: a task
    owns one input channel's kernel planes gw[:, :, ci2, group's channels]
    and sums them in a per-thread workspace (allocated here, by NumPy, so
    the asv memory tracks see them; each task clears what it uses, so the
    result does not depend on which thread ran it).
    """
    kh, kw, _, c_out = gw.shape
    shape = (numba.get_num_threads(), kh, kw, c_out // groups)
    blocks, totals = np.zeros(shape, gw.dtype), np.zeros(shape, np.float64)
    _grad_weight_by_channel(x, g, gw, sh, sw, pt, pl, dh, dw, groups, blocks, totals)


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def _grad_weight_by_channel(x, g, gw, sh, sw, pt, pl, dh, dw, groups, blocks, totals):
    """gw += valid correlation of x with g; parallel over input channels.

    Each task sums its channel's terms a block of output rows at a time
    (BLOCK_TERMS, as ``_grad_weight_nhwc``) and adds the float64 total to gw,
    rounded once.
    """
    height, width, c_in = x.shape[1], x.shape[2], x.shape[3]
    out_h, out_w = g.shape[1], g.shape[2]
    kh, kw, cout_g = blocks.shape[1], blocks.shape[2], blocks.shape[3]
    cin_g = c_in // groups
    n_rows = g.shape[0] * out_h
    block_rows = max(1, BLOCK_TERMS // max(1, out_w))
    for ci in prange(c_in):
        block, total = blocks[numba.get_thread_id()], totals[numba.get_thread_id()]
        total[:] = 0
        co0 = (ci // cin_g) * cout_g
        for r0 in range(0, n_rows, block_rows):
            for row in range(r0, min(r0 + block_rows, n_rows)):
                n = row // out_h
                i = row - n * out_h
                for p in range(kh):
                    r = i * sh + p * dh - pt
                    if r < 0 or r >= height:
                        continue
                    for q in range(kw):
                        j_lo, j_hi = _valid_range(out_w, width, q * dw - pl, sw)
                        for j in range(j_lo, j_hi):
                            xv = x[n, r, j * sw + q * dw - pl, ci]
                            _axpy(block[p, q], xv, g[n, i, j, co0 : co0 + cout_g])
            _fold(total, block)
        ci2 = ci % cin_g
        for p in range(kh):
            for q in range(kw):
                for co in range(cout_g):
                    gw[p, q, ci2, co0 + co] += total[p, q, co]


@njit(cache=CACHE, fastmath=FASTMATH)
def grad_bias_nhwc(g, gb):
    """gb += sum of g over (n, i, j), accumulated in float64."""
    _add_channel_sums(g, gb, 0, g.shape[3])


@njit(cache=CACHE, fastmath=FASTMATH)
def _add_channel_sums(g, gb, c0, c1):
    """gb[c0:c1] += the sums of g's channels c0 .. c1 - 1 over (n, i, j), in float64.

    Each channel's terms in pixel order, whatever the slice.
    """
    n_batch, out_h, out_w = g.shape[:3]
    acc = np.zeros(c1 - c0, dtype=np.float64)
    for n in range(n_batch):
        for i in range(out_h):
            for j in range(out_w):
                pixel = g[n, i, j, c0:c1]
                for co in range(c1 - c0):
                    acc[co] += pixel[co]
    for co in range(c1 - c0):
        gb[c0 + co] += acc[co]


# grad_bias in parallel: a slice of the channels per thread, of at least this
# many channels (a vector of each pixel's values or more), each summed over
# every pixel in the serial kernel's order: the same bits at any thread count.
# On 2 threads (2-core AMD EPYC) 0.72-0.89x the serial kernel's time on
# grad_outputs of 32-256 channels (pointwise's 27 -> 22 us; memory-bound), 1.02x
# on 16 channels, where one slice is all there is.
BIAS_SLICE_CHANNELS = 16


def grad_bias_nhwc_parallel(g, gb):
    """``grad_bias_nhwc`` on numba's threads, a slice of the channels each (the same bits)."""
    slices = min(numba.get_num_threads(), g.shape[3] // BIAS_SLICE_CHANNELS)
    if slices <= 1:
        grad_bias_nhwc(g, gb)
        return
    _grad_bias_slices(g, gb, slices)


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def _grad_bias_slices(g, gb, slices):
    """``grad_bias_nhwc`` in ``slices`` even slices of the channels, one task each."""
    c_out = g.shape[3]
    for s in prange(slices):
        _add_channel_sums(g, gb, s * c_out // slices, (s + 1) * c_out // slices)
