"""Depthwise kernels for the NHWC layout: groups == C_in == C_out, weights (KH, KW, 1, C).

Each channel is its own one-channel convolution,

    y[n, i, j, c] = sum over p, q of x[n, i*sh + p*dh - pt, j*sw + q*dw - pl, c] * w[p, q, 0, c]

so the innermost loop runs elementwise along the contiguous channel axis, C long,
instead of over a group's single channel pair as in ``nhwc.py``.
"""

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


@njit(cache=CACHE, fastmath=FASTMATH)
def _multiply_add(dest, a, b):
    """dest += a * b, elementwise over equally long contiguous vectors."""
    for k in range(dest.shape[0]):
        dest[k] += a[k] * b[k]


# The two loops below take a run of pixels in one call, indexing rows of the
# images directly: a call per pixel on its one-pixel views (``_multiply_add``)
# cost more than the pixel's C multiply-adds (8 x 32 channels @ 112 x 112,
# stride 2: grad_input 1.1 ms, torch's 0.19).
@njit(cache=CACHE, fastmath=FASTMATH, pipeline_class=NoAliasCompiler)
def _add_weighted_pixels(dest, first, step, weight, source, lo, hi):
    """dest[first + j*step, c] += weight[c] * source[j, c] for lo <= j < hi (rows of pixels)."""
    for j in range(lo, hi):
        at = first + j * step
        for c in range(source.shape[1]):
            dest[at, c] += weight[c] * source[j, c]


@njit(cache=CACHE, fastmath=FASTMATH, pipeline_class=NoAliasCompiler)
def _add_pixel_products(acc, a, first, step, b, lo, hi):
    """acc[c] += sum over lo <= j < hi of a[first + j*step, c] * b[j, c] (rows of pixels).

    Four pixels' products summed before each read-modify-write of ``acc``:
    one per pixel made each channel's sum wait on its previous store.
    """
    four = hi - (hi - lo) % 4
    for j in range(lo, four, 4):
        at = first + j * step
        for c in range(b.shape[1]):
            acc[c] += (a[at, c] * b[j, c] + a[at + step, c] * b[j + 1, c]) + (
                a[at + 2 * step, c] * b[j + 2, c] + a[at + 3 * step, c] * b[j + 3, c]
            )
    for j in range(four, hi):
        at = first + j * step
        for c in range(b.shape[1]):
            acc[c] += a[at, c] * b[j, c]


@njit(cache=CACHE, fastmath=FASTMATH, pipeline_class=NoAliasCompiler)
def _multiply_add_pixels(dest, a, b):
    """dest[c] += sum over pixels k of a[k, c] * b[k, c]: a run of pixels of two image rows.

    One call per run instead of one per pixel: the call and its overlap checks
    cost more than a pixel's C multiply-adds. Four pixels' products are summed
    before each read-modify-write of ``dest``.
    """
    pixels, channels = a.shape
    eight = pixels - pixels % 8
    for k in range(0, eight, 8):
        a8, b8 = a[k : k + 8], b[k : k + 8]
        for c in range(channels):
            dest[c] += (
                (a8[0, c] * b8[0, c] + a8[1, c] * b8[1, c])
                + (a8[2, c] * b8[2, c] + a8[3, c] * b8[3, c])
            ) + (
                (a8[4, c] * b8[4, c] + a8[5, c] * b8[5, c])
                + (a8[6, c] * b8[6, c] + a8[7, c] * b8[7, c])
            )
    for k in range(eight, pixels):
        _multiply_add(dest, a[k], b[k])


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def forward_nhwc_depthwise(x, w, y, sh, sw, pt, pl, dh, dw, groups):
    """y += depthwise conv2d(x, w); parallel over (n, i) output rows."""
    height, width = x.shape[1], x.shape[2]
    out_h, out_w = y.shape[1], y.shape[2]
    kh, kw = w.shape[0], w.shape[1]
    for task in prange(y.shape[0] * out_h):
        n = task // out_h
        i = task - n * out_h
        for p in range(kh):
            r = i * sh + p * dh - pt
            if r < 0 or r >= height:
                continue
            for q in range(kw):
                j_lo, j_hi = _valid_range(out_w, width, q * dw - pl, sw)
                for j in range(j_lo, j_hi):
                    _multiply_add(y[n, i, j], w[p, q, 0], x[n, r, j * sw + q * dw - pl])


@njit(cache=CACHE, fastmath=FASTMATH)
def _zero(row):
    """row[:] = 0 for a (W, C) image row."""
    for col in range(row.shape[0]):
        for c in range(row.shape[1]):
            row[col, c] = 0


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def _gather_3x3(dest, w, g0, g1, g2, j0, j1, j2):
    """dest[c] += sum over p, q < 3 of w[p, q, 0, c] * g_p[j_q, c]: one pixel, all nine taps.

    The nine products are summed before the one read-modify-write of ``dest``,
    instead of nine passes over it.
    """
    for c in range(dest.shape[0]):
        dest[c] += (
            (w[0, 0, 0, c] * g0[j0, c] + w[0, 1, 0, c] * g0[j1, c] + w[0, 2, 0, c] * g0[j2, c])
            + (w[1, 0, 0, c] * g1[j0, c] + w[1, 1, 0, c] * g1[j1, c] + w[1, 2, 0, c] * g1[j2, c])
            + (w[2, 0, 0, c] * g2[j0, c] + w[2, 1, 0, c] * g2[j1, c] + w[2, 2, 0, c] * g2[j2, c])
        )


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def _nine_taps(taps, g0, g1, g2, j, dw, c):
    """sum over p, q < 3 of taps[3p + q] * g_p[j - q*dw, c]: channel c of one pixel's nine taps."""
    return (
        (taps[0] * g0[j, c] + taps[1] * g0[j - dw, c] + taps[2] * g0[j - 2 * dw, c])
        + (taps[3] * g1[j, c] + taps[4] * g1[j - dw, c] + taps[5] * g1[j - 2 * dw, c])
        + (taps[6] * g2[j, c] + taps[7] * g2[j - dw, c] + taps[8] * g2[j - 2 * dw, c])
    )


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def _write_four(row, col, taps, g0, g1, g2, j, dw, c):
    """row[col + k, c] = channel c of pixel col + k's nine taps (k < 4; ``_nine_taps`` at j + k)."""
    row[col, c] = _nine_taps(taps, g0, g1, g2, j, dw, c)
    row[col + 1, c] = _nine_taps(taps, g0, g1, g2, j + 1, dw, c)
    row[col + 2, c] = _nine_taps(taps, g0, g1, g2, j + 2, dw, c)
    row[col + 3, c] = _nine_taps(taps, g0, g1, g2, j + 3, dw, c)


@njit(cache=CACHE, fastmath=FASTMATH, pipeline_class=NoAliasCompiler)
def _gather_3x3_run(row, w, g0, g1, g2, lo, hi, pl, dw):
    """row[lo:hi] = their nine taps' sums (``_gather_3x3``), four pixels per pass: written.

    Their nine taps all fall inside grad_output's rows g0, g1, g2 (p = 0, 1, 2).
    The four pixels share each load of the nine weights, and with dw == 1 (a
    constant there) the loads of grad_output's pixels the four share;
    ``noalias`` (``row`` is grad_input, never an input) lets LLVM vectorise
    the pass over channels without a run-time overlap check per pair of its arrays.
    """
    col = lo
    while col + 4 <= hi:
        j = col + pl
        for c in range(row.shape[1]):
            taps = (
                w[0, 0, 0, c], w[0, 1, 0, c], w[0, 2, 0, c],
                w[1, 0, 0, c], w[1, 1, 0, c], w[1, 2, 0, c],
                w[2, 0, 0, c], w[2, 1, 0, c], w[2, 2, 0, c],
            )  # fmt: skip
            if dw == 1:  # a literal 1 inlined: the four pixels' taps share their loads
                _write_four(row, col, taps, g0, g1, g2, j, 1, c)
            else:
                _write_four(row, col, taps, g0, g1, g2, j, dw, c)
        col += 4
    for rest in range(col, hi):
        j0 = rest + pl
        for c in range(row.shape[1]):
            row[rest, c] = 0
        _gather_3x3(row[rest], w, g0, g1, g2, j0, j0 - dw, j0 - 2 * dw)


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def grad_input_nhwc_depthwise(g, w, gi, sh, sw, pt, pl, dh, dw, groups):
    """gi = scatter-add of w * g; parallel over (n, r) input rows, each gathering its sources.

    gi is written, not added into (``_input_row``), so the caller needs no
    zeroed buffer, a memset as long as the input followed by reading it back.
    """
    height = gi.shape[1]
    for task in prange(gi.shape[0] * height):
        n = task // height
        _input_row(g, w, gi, n, task - n * height, sh, sw, pt, pl, dh, dw)


@njit(cache=CACHE, fastmath=FASTMATH)
def _input_row(g, w, gi, n, r, sh, sw, pt, pl, dh, dw):
    """gi[n, r] = the sum of the taps that reach it: written, or zeroed (then in cache) and added.

    3x3 kernels with stride 1 (the common depthwise layer) take all nine taps
    of a pixel in one pass where they all fall inside grad_output; other
    pixels and shapes go tap by tap.
    """
    width = gi.shape[2]
    out_h, out_w = g.shape[1], g.shape[2]
    kh, kw = w.shape[0], w.shape[1]
    i0, i1, i2 = r + pt, r + pt - dh, r + pt - 2 * dh  # output rows of taps p = 0, 1, 2
    if kh == 3 and kw == 3 and sh == 1 and sw == 1 and i2 >= 0 and i0 < out_h:
        inner_lo, inner_hi = max(0, 2 * dw - pl), max(0, min(width, out_w - pl))
        inner_hi = max(inner_lo, inner_hi)
        _gather_3x3_run(gi[n, r], w, g[n, i0], g[n, i1], g[n, i2], inner_lo, inner_hi, pl, dw)
        for col in range(width):
            if inner_lo <= col < inner_hi:
                continue  # all nine taps inside grad_output: written above
            for c in range(gi.shape[3]):
                gi[n, r, col, c] = 0
            for p in range(3):
                for q in range(3):
                    j = col + pl - q * dw
                    if 0 <= j < out_w:
                        _multiply_add(gi[n, r, col], w[p, q, 0], g[n, r + pt - p * dh, j])
        return
    if sw > 1:
        _strided_input_row(g, w, gi[n, r], n, r, sh, sw, pt, pl, dh, dw)
        return
    _zero(gi[n, r])
    for p in range(kh):
        i = _output_row(r, p, sh, pt, dh, out_h)
        if i < 0:
            continue
        for q in range(kw):
            j_lo, j_hi = _valid_range(out_w, width, q * dw - pl, sw)
            _add_weighted_pixels(gi[n, r], q * dw - pl, sw, w[p, q, 0], g[n, i], j_lo, j_hi)


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def _output_row(r, p, sh, pt, dh, out_h):
    """The output row whose kernel row p reads input row r, or -1 if none."""
    shifted = r + pt - p * dh  # = i * sh for that output row i
    if shifted < 0 or shifted % sh != 0 or shifted // sh >= out_h:
        return -1
    return shifted // sh


@njit(cache=CACHE, fastmath=FASTMATH, pipeline_class=NoAliasCompiler)
def _phase_one_tap(row, first, step, wa, oa, src, lo, hi, add):
    """row[first + m*step, c] = (or += if ``add``) wa[c] * src[m + oa, c], for lo <= m < hi."""
    if add:
        for m in range(lo, hi):
            at = first + m * step
            for c in range(row.shape[1]):
                row[at, c] += wa[c] * src[m + oa, c]
    else:
        for m in range(lo, hi):
            at = first + m * step
            for c in range(row.shape[1]):
                row[at, c] = wa[c] * src[m + oa, c]


@njit(cache=CACHE, fastmath=FASTMATH, pipeline_class=NoAliasCompiler)
def _phase_two_taps(row, first, step, wa, oa, wb, ob, src, lo, hi, add):
    """row[first + m*step, c] = (or +=) wa[c]*src[m + oa, c] + wb[c]*src[m + ob, c], m in lo..hi."""
    if add:
        for m in range(lo, hi):
            at = first + m * step
            for c in range(row.shape[1]):
                row[at, c] += wa[c] * src[m + oa, c] + wb[c] * src[m + ob, c]
    else:
        for m in range(lo, hi):
            at = first + m * step
            for c in range(row.shape[1]):
                row[at, c] = wa[c] * src[m + oa, c] + wb[c] * src[m + ob, c]


@njit(cache=CACHE, fastmath=FASTMATH)
def _strided_input_row(g, w, row, n, r, sh, sw, pt, pl, dh, dw):
    """row = grad_input's row r at column stride sw > 1: a pass per kernel row and column phase.

    Tap q sends grad_output pixel j to column j*sw + q*dw - pl, so the taps of
    one phase rho = (q*dw - pl) mod sw reach the columns rho + m*sw, pixel m
    of those taking grad_output pixel m + (rho + pl - q*dw) // sw. The pixels
    all of whose phase's taps fall inside grad_output take them two at a time,
    the first kernel row's written and the others' added: no zeroing pass,
    and one read-modify-write per two taps (tap by tap, a 3 x 3 kernel at
    stride 2 took a zeroing pass and six passes over half the row). The few
    other pixels are zeroed and take their taps one at a time.
    """
    width = row.shape[0]
    out_h, out_w = g.shape[1], g.shape[2]
    kh, kw = w.shape[0], w.shape[1]
    for rho in range(min(sw, width)):
        count = (width - rho + sw - 1) // sw  # columns rho, rho + sw, ... of the row
        lo, hi, taps = 0, count, 0  # the pixels m all of whose taps are inside grad_output
        for q in range(kw):
            if (q * dw - pl) % sw == rho:
                offset = (rho + pl - q * dw) // sw
                lo, hi, taps = max(lo, -offset), min(hi, out_w - offset), taps + 1
        lo, hi = (min(lo, count), max(min(lo, count), hi)) if taps else (0, 0)
        written = False
        for p in range(kh):
            i = _output_row(r, p, sh, pt, dh, out_h)
            if i < 0 or hi <= lo:
                continue
            pending = -1  # a tap waiting for a second one
            for q in range(kw):
                if (q * dw - pl) % sw != rho:
                    continue
                if pending < 0:
                    pending = q
                    continue
                oa, ob = (rho + pl - pending * dw) // sw, (rho + pl - q * dw) // sw
                _phase_two_taps(
                    row, rho, sw, w[p, pending, 0], oa, w[p, q, 0], ob, g[n, i], lo, hi, written
                )  # fmt: skip
                written, pending = True, -1
            if pending >= 0:
                oa = (rho + pl - pending * dw) // sw
                _phase_one_tap(row, rho, sw, w[p, pending, 0], oa, g[n, i], lo, hi, written)
                written = True
        for m in range(count):
            if written and lo <= m < hi:
                continue  # written above
            col = rho + m * sw
            for c in range(row.shape[1]):
                row[col, c] = 0
            for p in range(kh):
                i = _output_row(r, p, sh, pt, dh, out_h)
                if i < 0:
                    continue
                for q in range(kw):
                    j = col + pl - q * dw
                    if j % sw == 0 and 0 <= j // sw < out_w:
                        _multiply_add(row[col], w[p, q, 0], g[n, i, j // sw])


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def _products4(a, k, sw, c, b0, b1, b2, b3):
    """a[k, c]*b0 + a[k+sw, c]*b1 + a[k+2sw, c]*b2 + a[k+3sw, c]*b3: four pixels of one channel."""
    return (a[k, c] * b0 + a[k + sw, c] * b1) + (a[k + 2 * sw, c] * b2 + a[k + 3 * sw, c] * b3)


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def _add_three_taps(acc, q, a, k, c, sw, dw, b0, b1, b2, b3):
    """acc[q + t, 0, c] += tap q + t's four products (``_products4`` at k + t*dw), t < 3."""
    acc[q, 0, c] += _products4(a, k, sw, c, b0, b1, b2, b3)
    acc[q + 1, 0, c] += _products4(a, k + dw, sw, c, b0, b1, b2, b3)
    acc[q + 2, 0, c] += _products4(a, k + 2 * dw, sw, c, b0, b1, b2, b3)


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def _three_taps_fours(acc, q, a, b, four, sw, dw):
    """``_multiply_add_3_taps``' pixels below ``four``, four at a time."""
    for k in range(0, four, 4):
        at = k * sw
        for c in range(b.shape[1]):
            b0, b1, b2, b3 = b[k, c], b[k + 1, c], b[k + 2, c], b[k + 3, c]
            _add_three_taps(acc, q, a, at, c, sw, dw, b0, b1, b2, b3)


@njit(cache=CACHE, fastmath=FASTMATH, pipeline_class=NoAliasCompiler)
def _multiply_add_3_taps(acc, q, a, b, sw, dw):
    """acc[q + t, 0, c] += sum over pixels k of a[k*sw + t*dw, c] * b[k, c], for t < 3.

    Three taps of a kernel row at once: ``b`` is a run of grad_output pixels,
    ``a`` the input pixels they read. The taps share each load of ``b``, the
    input row is read in order once (tap by tap, a stride-2 pass read every
    other pixel, twice over), and four pixels' products are summed before
    each read-modify-write of ``acc``; ``noalias`` (``acc`` is a workspace of
    its own) spares the vectorised loop its run-time overlap checks.
    """
    pixels = b.shape[0]
    four = pixels - pixels % 4
    # literal steps inlined: the taps and pixels share their loads of ``a``
    if sw == 1 and dw == 1:
        _three_taps_fours(acc, q, a, b, four, 1, 1)
    elif sw == 2 and dw == 1:
        _three_taps_fours(acc, q, a, b, four, 2, 1)
    elif sw == 1:
        _three_taps_fours(acc, q, a, b, four, 1, dw)
    else:
        _three_taps_fours(acc, q, a, b, four, sw, dw)
    for k in range(four, pixels):
        for t in range(3):
            _multiply_add(acc[q + t, 0], a[k * sw + t * dw], b[k])


@njit(cache=CACHE, fastmath=FASTMATH)
def _weight_row_taps(acc, x_row, g_row, pl, sw, dw):
    """acc[q, 0] += sum over j of x_row[j*sw + q*dw - pl] * g_row[j], each tap q of a kernel row.

    ``acc`` is (KW, 1, C). Taps go three at a time over the pixels valid for
    all three (``_multiply_add_3_taps``); each tap's other pixels (near the
    edges) and the taps left over from threes, one tap at a time.
    """
    kw, width, out_w = acc.shape[0], x_row.shape[0], g_row.shape[0]
    threes = kw - kw % 3
    for q in range(kw):
        j_lo, j_hi = _valid_range(out_w, width, q * dw - pl, sw)
        lo = hi = j_hi  # the pixels done three taps at a time: none
        if q < threes:
            first = q - q % 3
            lo = _valid_range(out_w, width, first * dw - pl, sw)[0]
            hi = max(lo, _valid_range(out_w, width, (first + 2) * dw - pl, sw)[1])
            if q == first and hi > lo:
                start = lo * sw + first * dw - pl
                run = x_row[start : (hi - 1) * sw + (first + 2) * dw - pl + 1]
                _multiply_add_3_taps(acc, q, run, g_row[lo:hi], sw, dw)
        for j0, j1 in ((j_lo, min(j_hi, lo)), (max(j_lo, hi), j_hi)):
            if j1 <= j0:
                continue
            if sw == 1:
                left = j0 + q * dw - pl
                _multiply_add_pixels(acc[q, 0], x_row[left : left + j1 - j0], g_row[j0:j1])
            else:
                _add_pixel_products(acc[q, 0], x_row, q * dw - pl, sw, g_row, j0, j1)


# Blocked sums, as in nhwc.py: rows are summed a block of at most about
# BLOCK_TERMS terms per entry at a time in the dtype, each block folded into a
# float64 total, so the error does not grow with the number of rows.
BLOCK_TERMS = 4096


@njit(cache=CACHE)
def _fold(total, block):
    """total += block, then block = 0; both C-contiguous and equally large."""
    t = total.reshape(total.size)
    b = block.reshape(block.size)
    for k in range(t.shape[0]):
        t[k] += b[k]
        b[k] = 0


def grad_weight_nhwc_depthwise(x, g, gw, sh, sw, pt, pl, dh, dw, groups, n_chunks):
    """gw += the weight gradient, summed in ``n_chunks`` blocked partials."""
    no_bias, no_input = np.zeros(0, gw.dtype), np.zeros((0, 0, 0, 0), gw.dtype)
    _weight_and_bias(x, g, gw, no_bias, gw, no_input, sh, sw, pt, pl, dh, dw, n_chunks)


def backward_nhwc_depthwise(x, g, w, gi, gw, gb, sh, sw, pt, pl, dh, dw, groups, n_chunks):
    """gi = and gw, gb += the depthwise backward; at stride 1 in one pass over the rows.

    Stride 1: a chunk's task takes, row after row, grad_input's row t and
    grad_output's row t's share of grad_weight and grad_bias: the grad_output
    rows grad_input reads are the ones grad_weight reads next, still in cache,
    so grad_output comes from memory once (with the kernels' other changes of
    that commit, the suite's depthwise shape took 0.79-0.92x the time of two
    passes). Other strides: grad_input's pass, then the other two's (one pass
    measured the same there).
    """
    if sh == 1 and sw == 1:
        _weight_and_bias(x, g, gw, gb, w, gi, sh, sw, pt, pl, dh, dw, n_chunks)
        return
    grad_input_nhwc_depthwise(g, w, gi, sh, sw, pt, pl, dh, dw, groups)
    no_input = np.zeros((0, 0, 0, 0), gw.dtype)
    _weight_and_bias(x, g, gw, gb, gw, no_input, sh, sw, pt, pl, dh, dw, n_chunks)


def _weight_and_bias(x, g, gw, gb, w, gi, sh, sw, pt, pl, dh, dw, n_chunks):
    """gw (and gb, unless it is empty) += the gradients, summed in ``n_chunks`` blocked partials.

    gi, unless it is empty: written with grad_input, from the weight ``w``.
    The partials are allocated here, by NumPy, so the asv memory tracks see them.
    """
    totals = np.zeros((n_chunks, *gw.shape), dtype=np.float64)
    blocks = np.zeros((n_chunks, *gw.shape), dtype=gw.dtype)
    bias_totals = np.zeros((n_chunks, gb.shape[0]), dtype=np.float64)
    bias_blocks = np.zeros((n_chunks, gb.shape[0]), dtype=gw.dtype)
    _grad_weight_nhwc_depthwise(
        x, g, gw, gb, w, gi, sh, sw, pt, pl, dh, dw, n_chunks, totals, blocks, bias_totals,
        bias_blocks,
    )  # fmt: skip


@njit(cache=CACHE, fastmath=FASTMATH)
def _add_row(acc, g_row):
    """acc[c] += sum over pixels j of g_row[j, c], four pixels summed per read-modify-write."""
    pixels, channels = g_row.shape
    four = pixels - pixels % 4
    for j in range(0, four, 4):
        for c in range(channels):
            acc[c] += (g_row[j, c] + g_row[j + 1, c]) + (g_row[j + 2, c] + g_row[j + 3, c])
    for j in range(four, pixels):
        for c in range(channels):
            acc[c] += g_row[j, c]


@njit(cache=CACHE, fastmath=FASTMATH)
def _weight_row(x, g, block, bias_block, n, i, sh, sw, pt, pl, dh, dw):
    """block[p, q, 0] += output row (n, i)'s terms of every tap; bias_block += its sum (if any)."""
    height, kh = x.shape[1], block.shape[0]
    if bias_block.shape[0] > 0:
        _add_row(bias_block, g[n, i])
    for p in range(kh):
        r = i * sh + p * dh - pt
        if r < 0 or r >= height:
            continue
        _weight_row_taps(block[p], x[n, r], g[n, i], pl, sw, dw)


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def _grad_weight_nhwc_depthwise(
    x, g, gw, gb, w, gi, sh, sw, pt, pl, dh, dw, n_chunks, totals, blocks, bias_totals,
    bias_blocks,
):  # fmt: skip
    """gw += per-channel valid correlation of x with g; gb += g's sum unless gb is empty.

    Rows (of grad_output, and of grad_input as well unless gi is empty: row t
    of an image is both) are split into ``n_chunks`` fixed chunks summed in
    parallel into their own partial gradients (blocked, see BLOCK_TERMS), then
    added in chunk order: deterministic for any thread count.
    """
    height, out_h, out_w = x.shape[1], g.shape[1], g.shape[2]
    with_input = gi.shape[0] > 0
    rows = max(height, out_h) if with_input else out_h  # per image
    n_rows = g.shape[0] * rows
    block_rows = max(1, BLOCK_TERMS // max(1, out_w))
    for chunk in prange(n_chunks):
        row_lo = chunk * n_rows // n_chunks
        row_hi = (chunk + 1) * n_rows // n_chunks
        pending = 0  # output rows summed into the blocks since their last fold
        for row in range(row_lo, row_hi):
            n = row // rows
            t = row - n * rows
            if with_input and t < height:
                _input_row(g, w, gi, n, t, sh, sw, pt, pl, dh, dw)
            if t < out_h:
                _weight_row(x, g, blocks[chunk], bias_blocks[chunk], n, t, sh, sw, pt, pl, dh, dw)
                pending += 1
            if pending == block_rows or (row == row_hi - 1 and pending > 0):
                _fold(totals[chunk], blocks[chunk])
                _fold(bias_totals[chunk], bias_blocks[chunk])
                pending = 0
    for chunk in range(1, n_chunks):
        _fold(totals[0], totals[chunk])
        _fold(bias_totals[0], bias_totals[chunk])
    _fold(gw, totals[0])  # gw += total, rounded once
    _fold(gb, bias_totals[0])
