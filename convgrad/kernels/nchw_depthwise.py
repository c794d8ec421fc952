"""Depthwise backward for the NCHW layout, all three gradients in one pass.

For groups == C_in == C_out: every channel is its own one-channel
convolution. Stride 1 here; other strides on phase planes further down
(``backward_nchw_depthwise_strided``). A parallel task owns one channel, for
all images. Per image it zero-pads the input plane (``x_pad``, pitch
Wp = W + pl + pr) and lays the grad_output plane out at the same pitch, its OW
columns followed by zero columns, behind a margin of zeros (``g_pad``). Every kernel tap is then a
window of a flat vector (m runs over whole planes):

    gw[c, 0, p, q] = sum over m of x_pad[m + p*dh*Wp + q*dw] * g_pad[margin + m]
    gi_pad[m]      = sum over p, q of w[c, 0, p, q] * g_pad[margin + m - p*dh*Wp - q*dw]

The zero columns and margin stand in for the image's edges, so the loops run
over planes thousands of values long instead of rows of a few dozen, which is
what made the row kernels slow here. Zero padding multiplies the data, so this
is exact for finite inputs only (``finite_only`` in the dispatch; the caller
falls back to the row kernels).
"""

import numba
import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._flags import FASTMATH
from ._noalias import NoAliasCompiler
from ._wide import WideCompiler, WideNoAliasCompiler

# Small helpers are repeated in each kernel module on purpose: numba's on-disk
# cache keys a kernel on its own module's source, so an edited helper imported
# from elsewhere would leave stale compiled kernels behind.

# Values per float32 dot product of grad_weight; the dots are summed in float64,
# so the error does not grow with the image size or the batch.
DOT_TERMS = 4096

# Bytes of a cache line. The planes start on one: numba aligns its arrays to
# 32 bytes, and a 512-bit load of a window off a line reads two. The stride-1
# kernel's taps, dots and copy-back compile 512 bits wide (``_wide``); the two
# together, with grad_bias summed in the 3 x 3 dots, took the suite's depthwise
# shape from 1.79-1.89 to 1.68 ms (2 threads, 2-core Intel Xeon; 4.0-4.5 to
# 3.5-3.6 ms on one thread). The helpers the strided kernel uses keep LLVM's
# width: with ``_sum``, ``_plane_sum`` and ``_tap`` wide (which of the three
# was not pinned down) a stride-2 layer of the suite's size took 1.05-1.1x the
# time; ``_place``, ``_dot`` and ``_add1`` were not measured wide on their own.
LINE_BYTES = 64

# A stride-1 task owns a run of up to CHANNEL_RUN channels and, per image,
# takes their planes one after another: they lie next to each other in
# memory, where a task per channel jumped an image's worth of planes between
# two planes (1.6 MB on the suite's depthwise shape). Runs are shortened to
# leave TASKS_PER_THREAD tasks per thread. Measured interleaved against a
# task per channel (2-core AMD EPYC, float32, 3 x 3, two runs): the suite's
# shape (8 x 128 @ 56 x 56) 0.94-0.98x the time on 2 threads, 0.92-0.95x on
# one; 2 x 32 @ 112 x 112 0.93-0.96x; images that stay in cache (8 x 64 @
# 28 x 28, 4 x 256 @ 14 x 14) 0.89-1.04x. (A software prefetch of the next
# plane while placing this one gained 0-14 % on the suite's shape and cost
# 10-18 % on images that stay in cache: left out.)
CHANNEL_RUN = 8
TASKS_PER_THREAD = 4


@njit(cache=CACHE, fastmath=FASTMATH)
def _place(plane, target, top, left, pitch):
    """target[(top + r) * pitch + left + k] = plane[r, k]: a plane into a wider, zeroed one."""
    height, width = plane.shape
    for r in range(height):
        row = target[(top + r) * pitch + left : (top + r) * pitch + left + width]
        source = plane[r]
        for k in range(width):
            row[k] = source[k]


@njit(cache=CACHE)
def _line_aligned_zeros(count, like):
    """np.zeros(count, like.dtype) starting on a cache line."""
    flat = np.zeros(count + LINE_BYTES // like.itemsize, like.dtype)
    skip = (-flat.ctypes.data % LINE_BYTES) // like.itemsize
    return flat[skip : skip + count]


@njit(cache=CACHE, fastmath=FASTMATH)
def _sum(values):
    """sum of ``values`` in their dtype (vectorised)."""
    acc = values.dtype.type(0)
    for m in range(values.shape[0]):
        acc += values[m]
    return acc


@njit(cache=CACHE, fastmath=FASTMATH)
def _plane_sum(values):
    """The sum of ``values`` (a plane laid out flat, zero columns and all), in float64.

    Summed DOT_TERMS values at a time in the dtype, those sums in float64.
    """
    total = 0.0
    for m0 in range(0, values.shape[0], DOT_TERMS):
        total += _sum(values[m0 : m0 + DOT_TERMS])
    return total


@njit(cache=CACHE, fastmath=FASTMATH)
def _dot(a, b):
    """sum of a * b over two equally long contiguous vectors."""
    acc = a.dtype.type(0)
    for m in range(b.shape[0]):
        acc += a[m] * b[m]
    return acc


@njit(cache=CACHE, fastmath=FASTMATH, pipeline_class=WideCompiler)
def _dot3(a0, a1, a2, b):
    """(sum a0*b, sum a1*b, sum a2*b) in one pass: three taps share each load of b."""
    s0 = s1 = s2 = b.dtype.type(0)
    for m in range(b.shape[0]):
        v = b[m]
        s0 += a0[m] * v
        s1 += a1[m] * v
        s2 += a2[m] * v
    return s0, s1, s2


@njit(cache=CACHE, fastmath=FASTMATH, pipeline_class=WideCompiler)
def _dot3x3(x_pad, at, step, dw, b):
    """The nine sums over m of x_pad[at + p*step + q*dw + m] * b[m] (p, q < 3), p-major, and sum b.

    A 3 x 3 kernel's taps in one pass: nine windows share each load of b, and
    grad_bias's sum takes it too.
    """
    length = b.shape[0]
    a0 = x_pad[at : at + length]
    a1 = x_pad[at + dw : at + dw + length]
    a2 = x_pad[at + 2 * dw : at + 2 * dw + length]
    a3 = x_pad[at + step : at + step + length]
    a4 = x_pad[at + step + dw : at + step + dw + length]
    a5 = x_pad[at + step + 2 * dw : at + step + 2 * dw + length]
    a6 = x_pad[at + 2 * step : at + 2 * step + length]
    a7 = x_pad[at + 2 * step + dw : at + 2 * step + dw + length]
    a8 = x_pad[at + 2 * step + 2 * dw : at + 2 * step + 2 * dw + length]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = total = b.dtype.type(0)
    for m in range(length):
        v = b[m]
        total += v
        s0 += a0[m] * v
        s1 += a1[m] * v
        s2 += a2[m] * v
        s3 += a3[m] * v
        s4 += a4[m] * v
        s5 += a5[m] * v
        s6 += a6[m] * v
        s7 += a7[m] * v
        s8 += a8[m] * v
    return s0, s1, s2, s3, s4, s5, s6, s7, s8, total


@njit(cache=CACHE, fastmath=FASTMATH, pipeline_class=WideNoAliasCompiler)
def _gather3x3(dest, taps, g_pad, at, step, dw):
    """dest[m] = sum over p, q < 3 of taps[p, q] * g_pad[at - p*step - q*dw + m].

    A 3 x 3 kernel's taps in one pass over dest; ``noalias`` (dest is a
    workspace) spares the loop's ten arrays their run-time overlap checks.
    """
    length = dest.shape[0]
    t00, t01, t02 = taps[0, 0], taps[0, 1], taps[0, 2]
    t10, t11, t12 = taps[1, 0], taps[1, 1], taps[1, 2]
    t20, t21, t22 = taps[2, 0], taps[2, 1], taps[2, 2]
    r0, r1, r2 = at, at - step, at - 2 * step
    s00, s01 = g_pad[r0 : r0 + length], g_pad[r0 - dw : r0 - dw + length]
    s02 = g_pad[r0 - 2 * dw : r0 - 2 * dw + length]
    s10, s11 = g_pad[r1 : r1 + length], g_pad[r1 - dw : r1 - dw + length]
    s12 = g_pad[r1 - 2 * dw : r1 - 2 * dw + length]
    s20, s21 = g_pad[r2 : r2 + length], g_pad[r2 - dw : r2 - dw + length]
    s22 = g_pad[r2 - 2 * dw : r2 - 2 * dw + length]
    for m in range(length):
        dest[m] = (
            (t00 * s00[m] + t01 * s01[m] + t02 * s02[m])
            + (t10 * s10[m] + t11 * s11[m] + t12 * s12[m])
            + (t20 * s20[m] + t21 * s21[m] + t22 * s22[m])
        )


@njit(cache=CACHE, fastmath=FASTMATH, pipeline_class=WideCompiler)
def _add3(dest, w0, s0, w1, s1, w2, s2):
    """dest += w0*s0 + w1*s1 + w2*s2 in one pass over dest."""
    for m in range(dest.shape[0]):
        dest[m] += w0 * s0[m] + w1 * s1[m] + w2 * s2[m]


@njit(cache=CACHE, fastmath=FASTMATH)
def _add1(dest, w0, s0):
    """dest += w0 * s0."""
    for m in range(dest.shape[0]):
        dest[m] += w0 * s0[m]


@njit(cache=CACHE, fastmath=FASTMATH, pipeline_class=WideCompiler)
def _weight_taps(x_pad, g_rows, totals, pitch, dh, dw):
    """totals[p, q] += sum over m of x_pad[m + p*dh*pitch + q*dw] * g_rows[m]; returns sum g_rows.

    ``g_rows`` is grad_output's OH rows at the padded pitch. Dots of at most
    DOT_TERMS values (whole rows), three taps of a kernel row at a time; the
    returned sum (grad_bias's share) is summed by the same chunks, in float64.
    """
    kh, kw = totals.shape
    rows_per_dot = max(1, DOT_TERMS // pitch)
    bias = 0.0
    for m0 in range(0, g_rows.shape[0], rows_per_dot * pitch):
        length = min(rows_per_dot * pitch, g_rows.shape[0] - m0)
        b = g_rows[m0 : m0 + length]
        if kh == 3 and kw == 3:
            sums = _dot3x3(x_pad, m0, dh * pitch, dw, b)
            for t in range(9):
                totals[t // 3, t % 3] += sums[t]
            bias += sums[9]
            continue
        bias += _sum(b)
        threes = kw - kw % 3
        for p in range(kh):
            row = m0 + p * dh * pitch
            for q in range(0, threes, 3):
                a0 = x_pad[row + q * dw : row + q * dw + length]
                a1 = x_pad[row + (q + 1) * dw : row + (q + 1) * dw + length]
                a2 = x_pad[row + (q + 2) * dw : row + (q + 2) * dw + length]
                s0, s1, s2 = _dot3(a0, a1, a2, b)
                totals[p, q] += s0
                totals[p, q + 1] += s1
                totals[p, q + 2] += s2
            for q in range(threes, kw):
                totals[p, q] += _dot(x_pad[row + q * dw : row + q * dw + length], b)
    return bias


@njit(cache=CACHE, fastmath=FASTMATH, pipeline_class=WideCompiler)
def _input_taps(g_pad, taps, gi_pad, start, pitch, dh, dw):
    """gi_pad[m] = sum over p, q of taps[p, q] * g_pad[start + m - p*dh*pitch - q*dw].

    Three taps of a kernel row at a time.
    """
    kh, kw = taps.shape
    length = gi_pad.shape[0]
    if kh == 3 and kw == 3:
        _gather3x3(gi_pad, taps, g_pad, start, dh * pitch, dw)
        return
    gi_pad[:] = 0
    threes = kw - kw % 3
    for p in range(kh):
        row = start - p * dh * pitch
        for q in range(0, threes, 3):
            s0 = g_pad[row - q * dw : row - q * dw + length]
            s1 = g_pad[row - (q + 1) * dw : row - (q + 1) * dw + length]
            s2 = g_pad[row - (q + 2) * dw : row - (q + 2) * dw + length]
            _add3(gi_pad, taps[p, q], s0, taps[p, q + 1], s1, taps[p, q + 2], s2)
        for q in range(threes, kw):
            _add1(gi_pad, taps[p, q], g_pad[row - q * dw : row - q * dw + length])


@njit(cache=CACHE, fastmath=FASTMATH, pipeline_class=WideCompiler)
def _copy_valid(gi_plane, gi_pad, left, pitch):
    """gi_plane[r, k] = gi_pad[r * pitch + left + k]: the image's part of the padded rows."""
    height, width = gi_plane.shape
    for r in range(height):
        row = gi_plane[r]
        source = gi_pad[r * pitch + left : r * pitch + left + width]
        for k in range(width):
            row[k] = source[k]


def backward_nchw_depthwise(x, g, w, gi, gw, gb, sh, sw, pt, pb, pl, pr, dh, dw, groups):
    """gi = and gw, gb += the depthwise backward (stride 1); parallel over runs of channels.

    grad_input is written, not added into: every value of gi is set, so the
    caller needs no zeroed buffer (a memset as long as the input) and the
    kernel does not read gi back. Each task owns a run of channels of gi, gw
    and gb and goes through the images in order, an image's run of planes
    (adjacent in memory) at a time; each channel's sums are its own, so how
    the channels are cut into runs never changes a value: the same bits
    whatever the thread count. Arguments as the flat kernels take them;
    ``groups`` is C.
    """
    if sh != 1 or sw != 1:
        raise ValueError("backward_nchw_depthwise is for stride 1")
    _planes_backward(x, g, w, gi, gw, gb, 1, 1, pt, pb, pl, pr, dh, dw)


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def _backward_runs(x, g, w, gi, gw, gb, pt, pb, pl, pr, dh, dw, run):
    """``backward_nchw_depthwise``'s work, a task per run of ``run`` channels.

    gi empty: grad_weight and grad_bias alone; gw empty: grad_input alone (x
    then gives the planes' shape only, its values unread).
    """
    n_batch, channels, height, width = x.shape
    out_h = g.shape[2]
    kh, kw = w.shape[2], w.shape[3]
    pitch, rows = width + pl + pr, height + pt + pb
    margin = (kh - 1) * dh * pitch + (kw - 1) * dw  # the farthest a tap reaches
    margin += -margin % (LINE_BYTES // x.itemsize)  # grad_output's plane starts on a line too
    for block in prange((channels + run - 1) // run):
        c0, c1 = block * run, min((block + 1) * run, channels)
        # zeros outside the planes' own values: written once, never overwritten
        x_pad = _line_aligned_zeros(rows * pitch + margin if gw.shape[0] else 0, x)
        g_pad = _line_aligned_zeros(margin + rows * pitch, x)
        gi_pad = _line_aligned_zeros(height * pitch if gi.shape[0] else 0, x)
        totals = np.zeros((c1 - c0, kh, kw))
        bias = np.zeros(c1 - c0)
        for n in range(n_batch):
            for c in range(c0, c1):  # planes next to each other in memory
                _place(g[n, c], g_pad[margin:], 0, 0, pitch)
                if gw.shape[0]:
                    _place(x[n, c], x_pad, pt, pl, pitch)
                    g_rows = g_pad[margin : margin + out_h * pitch]
                    bias[c - c0] += _weight_taps(x_pad, g_rows, totals[c - c0], pitch, dh, dw)
                if gi.shape[0]:
                    # gi's rows pt .. pt + H of the padded plane
                    _input_taps(g_pad, w[c, 0], gi_pad, margin + pt * pitch, pitch, dh, dw)
                    _copy_valid(gi[n, c], gi_pad, pl, pitch)
        if gw.shape[0]:
            for c in range(c0, c1):
                for p in range(kh):
                    for q in range(kw):
                        gw[c, 0, p, q] += totals[c - c0, p, q]
                gb[c] += bias[c - c0]


# Other strides: the padded planes split into sh * sw phases, as in
# ``nchw_flat``. Phase (a, b) holds the padded plane's rows a, a + sh, ... and
# columns b, b + sw, ... at pitch ceil(Wp / sw), so tap (p, q) is a window of
# phase ((p*dh) % sh, (q*dw) % sw), ((p*dh) // sh) rows and ((q*dw) // sw)
# columns in, and grad_output is laid out at that pitch:
#
#     gw[c, 0, p, q] = sum over m of x_ph[phase, offset + m] * g_pad[margin + m]
#     gi_ph[phase, m] = sum over that phase's taps of w[c, 0, p, q] * g_pad[margin + m - offset]
#
# A tap at a time (a phase's windows are few and short).


@njit(cache=CACHE, fastmath=FASTMATH)
def _tap(p, q, sh, sw, dh, dw, pitch):
    """(phase, offset) of kernel tap (p, q) in the phase planes."""
    phase = ((p * dh) % sh) * sw + (q * dw) % sw
    return phase, ((p * dh) // sh) * pitch + (q * dw) // sw


@njit(cache=CACHE, inline="always")
def _phase_columns(b, left, width, sw):
    """Where the image's columns z with z % sw == b lie in their phase planes' rows.

    The image starts ``left`` columns into the padded plane and is ``width``
    wide. Returns the first such image column, how many there are, and the
    phase column of the first.
    """
    first = (b - left) % sw  # the first image column k with (left + k) % sw == b
    count = (width - first + sw - 1) // sw
    return first, count, (left + first) // sw


# The phase planes are filled (and grad_input read back) a column phase b at a
# time, image row by row, with the row's phase and offset stepped along instead
# of recomputed: the five integer divisions per row and phase that recomputing
# took were most of the strided depthwise backward's time (16 x 64 x 28 x 28,
# stride 2: 0.8 ms of 2 ms on one thread, as much again for the way back).


# At column stride 2 a row's even and odd columns go to their two phase rows
# in one pass (``_deinterleave``, which LLVM vectorises), and come back the
# same way (``_interleave``), not a phase at a time through strided loads and
# stores: on 4 x 144 x 56 x 56, stride 2, those took 0.8 and 0.84 ms of the
# backward's 2.3 ms on one thread.


@njit(cache=CACHE, fastmath=FASTMATH, pipeline_class=NoAliasCompiler)
def _deinterleave(row, even, odd):
    """even[t] = row[2t], odd[t] = row[2t + 1]; ``even`` may hold one more (odd rows)."""
    pairs = odd.shape[0]
    for t in range(pairs):
        even[t] = row[2 * t]
        odd[t] = row[2 * t + 1]
    if even.shape[0] > pairs:
        even[pairs] = row[2 * pairs]


@njit(cache=CACHE, fastmath=FASTMATH, pipeline_class=NoAliasCompiler)
def _interleave(row, even, odd):
    """row[2t] = even[t], row[2t + 1] = odd[t]: ``_deinterleave`` undone.

    A select per value: LLVM vectorises this form, not two stores per pair
    (measured 0.19 against 0.65 ns a value).
    """
    for k in range(row.shape[0]):
        half = k >> 1
        row[k] = odd[half] if k & 1 else even[half]


@njit(cache=CACHE, fastmath=FASTMATH)
def _column_pairs(plane, phases, top, left, sh, pitch, back):
    """``_place_phases`` at column stride 2, or (``back``) ``_copy_valid_phases``."""
    width = plane.shape[1]
    first = left % 2  # the column phase of the image's column 0 (padded column ``left``)
    evens, odds = (width + 1) // 2, width // 2
    even_at, odd_at = left // 2, (left + 1) // 2  # their phase columns
    a, at = top % sh, (top // sh) * pitch  # padded row top's phase and offset
    for r in range(plane.shape[0]):
        even = phases[a * 2 + first, at + even_at : at + even_at + evens]
        odd = phases[a * 2 + 1 - first, at + odd_at : at + odd_at + odds]
        if back:
            _interleave(plane[r], even, odd)
        else:
            _deinterleave(plane[r], even, odd)
        a += 1
        if a == sh:
            a, at = 0, at + pitch


@njit(cache=CACHE, fastmath=FASTMATH)
def _place_phases(plane, phases, top, left, sh, sw, pitch):
    """phases[(y % sh)*sw + z % sw, (y // sh)*pitch + z // sw] = plane[y - top, z - left]."""
    height, width = plane.shape
    if sw == 2:
        _column_pairs(plane, phases, top, left, sh, pitch, False)
        return
    for b in range(sw):
        first, count, column = _phase_columns(b, left, width, sw)
        a, at = top % sh, (top // sh) * pitch + column  # padded row top's phase and offset
        for r in range(height):
            row, target = plane[r], phases[a * sw + b, at : at + count]
            for t in range(count):
                target[t] = row[first + t * sw]
            a += 1
            if a == sh:
                a, at = 0, at + pitch


@njit(cache=CACHE, fastmath=FASTMATH)
def _copy_valid_phases(gi_plane, phases, top, left, sh, sw, pitch):
    """gi_plane[r, k] = its value in ``phases``: ``_place_phases`` undone (every r, k)."""
    height, width = gi_plane.shape
    if sw == 2:
        _column_pairs(gi_plane, phases, top, left, sh, pitch, True)
        return
    for b in range(sw):
        first, count, column = _phase_columns(b, left, width, sw)
        a, at = top % sh, (top // sh) * pitch + column
        for r in range(height):
            row, source = gi_plane[r], phases[a * sw + b, at : at + count]
            for t in range(count):
                row[first + t * sw] = source[t]
            a += 1
            if a == sh:
                a, at = 0, at + pitch


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def backward_nchw_depthwise_strided(x, g, w, gi, gw, gb, sh, sw, pt, pb, pl, pr, dh, dw, groups):
    """``backward_nchw_depthwise`` for any stride, on phase planes; parallel over channels.

    Writes gi too (pixels no tap reaches get 0) and adds into gw and gb. An
    empty gi: grad_weight and grad_bias alone; an empty gw and gb: grad_input
    alone (x then gives the planes' shape only, its values unread).
    """
    for c in prange(x.shape[1]):
        _strided_channel(x, g, w, gi, gw, gb, c, sh, sw, pt, pb, pl, pr, dh, dw)


# One gradient alone by the backward's planes: grad_input's taps or
# grad_weight's dot products are skipped, with their planes.


def grad_weight_nchw_depthwise(x, g, gw, sh, sw, pt, pb, pl, pr, dh, dw, groups):
    """grad_weight alone (added into gw) by the backward's planes, without grad_input.

    ``backward_nchw_depthwise`` at stride 1, ``backward_nchw_depthwise_strided``
    otherwise, each with an empty gi (and grad_bias summed into a scratch array
    on the way). Exact for finite inputs only, as they are (the planes' zero
    columns meet grad_output's values).
    """
    no_input = np.empty((0, 0, 0, 0), x.dtype)
    bias = np.zeros(x.shape[1], x.dtype)
    _planes_backward(x, g, gw, no_input, gw, bias, sh, sw, pt, pb, pl, pr, dh, dw)


def grad_input_nchw_depthwise(g, w, gi, sh, sw, pt, pb, pl, pr, dh, dw, groups):
    """grad_input alone (written: every value set) by the backward's planes, without grad_weight.

    Exact for finite weights and grad_output only, as the backward (a weight
    meets the planes' zeros).
    """
    no_weight = np.empty((0, 1, w.shape[2], w.shape[3]), w.dtype)
    no_bias = np.empty(0, w.dtype)
    _planes_backward(gi, g, w, gi, no_weight, no_bias, sh, sw, pt, pb, pl, pr, dh, dw)


def _planes_backward(x, g, w, gi, gw, gb, sh, sw, pt, pb, pl, pr, dh, dw):
    """The stride-1 planes or the phase planes, parallel over channels (see the kernels)."""
    if sh == 1 and sw == 1:
        threads = numba.get_num_threads()
        run = max(1, min(CHANNEL_RUN, x.shape[1] // (TASKS_PER_THREAD * threads)))
        _backward_runs(x, g, w, gi, gw, gb, pt, pb, pl, pr, dh, dw, run)
    else:
        args = (sh, sw, pt, pb, pl, pr, dh, dw, x.shape[1])
        backward_nchw_depthwise_strided(x, g, w, gi, gw, gb, *args)


@njit(cache=CACHE, fastmath=FASTMATH)
def _strided_channel(x, g, w, gi, gw, gb, c, sh, sw, pt, pb, pl, pr, dh, dw):
    """Channel c's gradients on phase planes: gi[:, c] written, gw and gb added (unless empty)."""
    n_batch, height, width = x.shape[0], x.shape[2], x.shape[3]
    out_h = g.shape[2]
    kh, kw = w.shape[2], w.shape[3]
    input_too, weight_too = gi.shape[0] > 0, gw.shape[0] > 0
    pitch = (width + pl + pr + sw - 1) // sw
    reach_h, reach_w = ((kh - 1) * dh) // sh, ((kw - 1) * dw) // sw
    rows = max((height + pt + pb + sh - 1) // sh, out_h + reach_h) + 1
    margin = reach_h * pitch + reach_w  # the farthest a tap reaches
    rows_per_dot = max(1, DOT_TERMS // pitch)
    x_ph = np.zeros((sh * sw, rows * pitch if weight_too else 0), x.dtype)
    g_pad = np.zeros(margin + rows * pitch, x.dtype)
    gi_ph = np.empty((sh * sw, rows * pitch if input_too else 0), x.dtype)
    totals = np.zeros((kh, kw))
    bias = 0.0
    for n in range(n_batch):
        _place(g[n, c], g_pad[margin:], 0, 0, pitch)
        g_rows = g_pad[margin : margin + out_h * pitch]
        if weight_too:
            _place_phases(x[n, c], x_ph, pt, pl, sh, sw, pitch)
            bias += _plane_sum(g_rows)
        if input_too:
            gi_ph[:] = 0
        for p in range(kh):
            for q in range(kw):
                phase, offset = _tap(p, q, sh, sw, dh, dw, pitch)
                for m0 in range(0, g_rows.shape[0] if weight_too else 0, rows_per_dot * pitch):
                    length = min(rows_per_dot * pitch, g_rows.shape[0] - m0)
                    window = x_ph[phase, offset + m0 : offset + m0 + length]
                    totals[p, q] += _dot(window, g_rows[m0 : m0 + length])
                if input_too:
                    source = g_pad[margin - offset : margin - offset + rows * pitch]
                    _add1(gi_ph[phase], w[c, 0, p, q], source)
        if input_too:
            _copy_valid_phases(gi[n, c], gi_ph, pt, pl, sh, sw, pitch)
    if weight_too:
        for p in range(kh):
            for q in range(kw):
                gw[c, 0, p, q] += totals[p, q]
        gb[c] += bias
