"""Stride-1 convolution gradients as direct products by register tiles, over NHWC bands.

Both gradients are matrix products whose terms run over the kernel's taps
(a, b), read straight from zero-padded bands of the images (no unfolding):

    grad_input   gi[y, x, ci]     = sum over a, b, co of
                                    gpad[y + a*dh, x + b*dw, co] * w[KH-1-a, KW-1-b, ci, co]
    grad_weight  gw[a, b, ci, co] += sum over y, x of xpad[y + a*dh, x + b*dw, ci] * g[y, x, co]

(per group; gpad is grad_output padded by the kernel's reach less the
convolution's padding, xpad the input padded by the padding). A band of rows
is copied into a buffer PITCH pixels a row, channels innermost (NCHW arrays
are gathered into it, and grad_input's band written back a plane row at a
time); its pixels are then one flat run,
a tap a fixed offset into it, so a register tile of MR consecutive pixels
(``_tile.tile_add_taps_V``) reads every tap's window the same way. Pixels of
the run past a row's end (PITCH - width of them) are computed and dropped
(grad_input) or read as zeros (grad_weight's packed grad_output). A row's
zeros past its right edge are also the next row's before its left edge
(``band_pitch``), so PITCH is the width and the wider padding, not both.

grad_input: a tile of MR pixels by NR input channels sums all KH*KW*C_out/g
terms in registers, then is written; B is the weight, packed once per call
as panels of NR input channels with rows (tap, co). A band of images' rows
per task.

grad_weight: C is (ci, co) per tap with the band's pixels as terms, KC at a
time; A is the padded input read at the tap's offset, B grad_output's band
packed in panels of NR channels. Tiles accumulate in the dtype over at most
BLOCK_TERMS pixels, then fold into float64 totals per part of the images'
bands; the parts (fixed by the problem) are added in order and rounded once.
Where a copy of the totals per part would not fit, one part's tiles are cut
into runs (``slices``), a task each over every band: the same sums, one copy.

Both multiply the zero padding by the data: exact only for finite inputs
(the dispatch names the kernels to run otherwise). Every value's sum runs in
an order fixed by the problem: the same bits at any thread count.
"""

import numba
import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._columns import VECTOR_BYTES
from ._flags import FASTMATH
from ._tile import (
    SHORT_TAP_TILE_ROWS,
    TAP_TILE_ROWS,
    tile_add_taps_1,
    tile_add_taps_1_short,
    tile_add_taps_2,
    tile_add_taps_2_short,
    tile_add_taps_4,
)
from .gemm_tiles import _put, add_totals
from .nchw_flat import _copy_items

# Terms (pixels) of grad_weight's tiles per pass over the taps: KC pixels of
# the packed grad_output panel (KC x NR values) stay in L1 while every tap and
# every row tile of input channels uses them.
KC = 128
# grad_weight's tiles fold into their float64 totals after this many pixels
# (a float32 sum of many more terms drifts; see ``nhwc.BLOCK_TERMS``).
BLOCK_TERMS = 4096
# Workspaces are allocated by NumPy in the Python wrappers (so that the asv
# memory tracks see them), one per thread where tasks need their own, and
# B's panels and the tiles' sums 64 bytes aligned (numba's and NumPy's own
# alignment, 32 or 16 bytes, has a 512-bit load cross two cache lines half
# the time).
ALIGN_BYTES = 64


def _aligned_rows(rows, values, dtype):
    """A zeroed (rows, >= values) array of ``dtype`` whose rows start ALIGN_BYTES aligned."""
    item = np.dtype(dtype).itemsize
    step = ALIGN_BYTES // item
    width = -(-max(values, 1) // step) * step
    block = np.zeros(rows * width + step, dtype)
    start = (-block.ctypes.data) % ALIGN_BYTES // item
    return block[start : start + rows * width].reshape(rows, width)


# Relative speed of the tap tiles by vectors a row (per core, single thread:
# 6 x 4 255-262 GFLOP/s, 14 x 2 250-258, 24 x 1 232-236): a narrower tile
# that pads C's columns less wins where it pads them enough less.
TILE_SPEED = {4: 1.0, 2: 0.98, 1: 0.90}


def tap_tile_shape(columns, dtype):
    """(MR, NV, NR): the tap tile for C rows ``columns`` wide, quickest over their padding.

    NV of 4, 2 or 1 vector registers, whichever takes the least time for the
    columns padded up to whole panels of NR = NV registers' values
    (TILE_SPEED; the wider on a tie); MR = ``_tile.TAP_TILE_ROWS[NV]``. 96
    float32 columns take 3 panels of 2 vectors (4 vectors: 128 columns, 8 x
    96 -> 96 @ 28 x 28 0.78x the time so), 48 or 80 take 1-vector panels
    (0.84x, 0.71x).
    """
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    best, best_time = 4, np.inf
    for vectors in (4, 2, 1):
        nr = vectors * lanes
        time = -(-columns // nr) * nr / TILE_SPEED[vectors]
        if time < best_time:
            best, best_time = vectors, time
    return TAP_TILE_ROWS[best], best, best * lanes


def weight_tile_shape(rows, columns, dtype):
    """``tap_tile_shape`` for grad_weight's C of ``rows`` rows: the height padding them least.

    NV's full height or, where there is one, its short one
    (``_tile.SHORT_TAP_TILE_ROWS``); the full one where both pad alike.
    """
    mr, vectors, nr = tap_tile_shape(columns, dtype)
    short = SHORT_TAP_TILE_ROWS.get(vectors, mr)
    if -(-rows // short) * short < -(-rows // mr) * mr:
        mr = short
    return mr, vectors, nr


@njit(cache=CACHE, inline="always")
def _add_taps(vectors, tile, tile_at, a, a_at, a_row, a_step, taps, b, b_at, b_row, count):
    """``_tile.tile_add_taps_V`` for V = ``vectors``."""
    if vectors == 4:
        tile_add_taps_4(tile, tile_at, a, a_at, a_row, a_step, taps, b, b_at, b_row, count)
    elif vectors == 2:
        tile_add_taps_2(tile, tile_at, a, a_at, a_row, a_step, taps, b, b_at, b_row, count)
    else:
        tile_add_taps_1(tile, tile_at, a, a_at, a_row, a_step, taps, b, b_at, b_row, count)


SHORT_ROWS_2, SHORT_ROWS_1 = SHORT_TAP_TILE_ROWS[2], SHORT_TAP_TILE_ROWS[1]


@njit(cache=CACHE, inline="always")
def _add_weight_taps(
    rows, vectors, tile, tile_at, a, a_at, a_row, a_step, taps, b, b_at, b_row, count
):  # fmt: skip
    """``_add_taps`` for tiles of ``rows`` rows: V's full height or its short one."""
    if vectors == 2 and rows == SHORT_ROWS_2:
        tile_add_taps_2_short(tile, tile_at, a, a_at, a_row, a_step, taps, b, b_at, b_row, count)
    elif vectors == 1 and rows == SHORT_ROWS_1:
        tile_add_taps_1_short(tile, tile_at, a, a_at, a_row, a_step, taps, b, b_at, b_row, count)
    else:
        _add_taps(vectors, tile, tile_at, a, a_at, a_row, a_step, taps, b, b_at, b_row, count)


@njit(cache=CACHE)
def _pack_weight(w, groups, nr, packed):
    """grad_input's B: packed[group, panel, tap, co, j] = w[KH-1-a, KW-1-b, panel*NR + j, co].

    Tap (a, b) in row-major order; ``packed`` zeroed: zeros stay past the
    group's last input channel.
    """
    kh, kw, cin_g, c_out = w.shape
    cout_g = c_out // groups
    panels = (cin_g + nr - 1) // nr
    at = 0
    for group in range(groups):
        for panel in range(panels):
            for a in range(kh):
                for b in range(kw):
                    for co in range(group * cout_g, (group + 1) * cout_g):
                        for j in range(min(nr, cin_g - panel * nr)):
                            packed[at + j] = w[kh - 1 - a, kw - 1 - b, panel * nr + j, co]
                        at += nr


@njit(cache=CACHE)
def band_pitch(width, out_w, left, reach_w):
    """Pixels per row of the padded bands: the image's ``width`` and its wider side's padding.

    Stride 1, ``left`` the convolution's left padding, ``reach_w`` the
    kernel's reach across; the right padding is what makes ``out_w``.
    Output pixel x < OW reads a band row's pixels x to x + reach_w, with the
    image's row from ``left``: past PITCH it runs into the next row's left
    padding, which is zeros as far as PITCH + ``left`` (the input band; in
    grad_input's band of grad_output the paddings swap sides, the same
    sum). One padding between rows, not two: big_kernel's rows of 64 pixels
    took 70, now 67.
    """
    right = out_w + reach_w - width - left
    return width + max(left, right)


@njit(cache=CACHE)
def _taps_per_run(kw, dw, groups):
    """Taps of a kernel row that run as one: all KW where their windows are adjacent, else 1.

    With dilation 1 (and one group, so that a pixel's channels are the
    group's) a kernel row's KW windows are adjacent pixels of the band: their
    terms are one run (grad_input: KW*C_out/g terms a tap offset; grad_weight:
    C's rows (tap, input channel), adjacent values of the band, as gw's are).
    """
    return kw if dw == 1 and groups == 1 else 1


@njit(cache=CACHE)
def _tap_offsets(kh, kw, dh, dw, pitch, scale):
    """Each tap's offset into a band PITCH pixels a row, in units of ``scale`` values."""
    taps = np.empty(kh * kw, np.intp)
    for a in range(kh):
        for b in range(kw):
            taps[a * kw + b] = (a * dh * pitch + b * dw) * scale
    return taps


@njit(cache=CACHE)
def _pad_rows(source, n, first, rows, top, left, target, pitch, nchw):
    """target's pixel rows r < ``rows`` = source[n, first + r - top] from column ``left``; else 0.

    ``source`` C-contiguous, (N, H, W, C) or with ``nchw`` (N, C, H, W): its
    channels then go into the band's pixels (channels innermost). Zeros past
    the rows too, to the end of ``target`` (the tiles read a little beyond).
    """
    height, width, channels = _sizes(source, nchw)
    flat = source.reshape(source.size)
    row_values, before = pitch * channels, left * channels
    after = row_values - before - width * channels
    if nchw:
        _zero(target, 0, target.shape[0])
    for r in range(rows):
        row, start = first + r - top, r * row_values
        if not 0 <= row < height:
            if not nchw:
                _zero(target, start, row_values)
        elif nchw:
            for c in range(channels):
                plane_row = flat[((n * channels + c) * height + row) * width :]
                for x in range(width):
                    target[start + before + x * channels + c] = plane_row[x]
        else:
            _zero(target, start, before)
            at = ((n * height + row) * width) * channels
            _copy_items(target, start + before, flat, at, width * channels)
            _zero(target, start + before + width * channels, after)
    if not nchw:
        _zero(target, rows * row_values, target.shape[0] - rows * row_values)


@njit(cache=CACHE, inline="always")
def _sizes(image, nchw):
    """(H, W, C) of an image array, NCHW if ``nchw`` else NHWC."""
    if nchw:
        return image.shape[2], image.shape[3], image.shape[1]
    return image.shape[1], image.shape[2], image.shape[3]


@njit(cache=CACHE, inline="always")
def _zero(target, start, count):
    """target[start:start + count] = 0."""
    part = target[start : start + count]
    for k in range(part.shape[0]):
        part[k] = 0


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def grad_input_nhwc(
    g, w_panels, gi, kh, kw, pt, pl, dh, dw, groups, band_rows, nchw, tile_shape, paddeds,
    tiles, bands_out,
):  # fmt: skip
    """gi = the input gradient, written; g (N, OH, OW, C_out), gi (N, H, W, C_in).

    Stride 1, each padding at most the kernel's reach; ``w_panels`` the
    weight packed by ``_pack_weight`` for ``tile_shape`` (MR, NV, NR). A band
    of ``band_rows`` rows of one image per task, in the workspaces of its
    thread (``paddeds``, ``tiles`` and, with ``nchw``, ``bands_out``: g and gi
    are then (N, C, H, W) arrays; the bands are NHWC all the same).
    """
    n_batch = gi.shape[0]
    height, width, c_in = _sizes(gi, nchw)
    c_out = _sizes(g, nchw)[2]
    cin_g, cout_g = c_in // groups, c_out // groups
    mr, vectors, nr = tile_shape
    gi_flat = gi.reshape(gi.size)
    panels = (cin_g + nr - 1) // nr
    top, left = (kh - 1) * dh - pt, (kw - 1) * dw - pl
    pitch = band_pitch(width, _sizes(g, nchw)[1], pl, (kw - 1) * dw)
    reach = (kh - 1) * dh
    run = _taps_per_run(kw, dw, groups)
    taps = _tap_offsets(kh, kw // run, dh, dw, pitch, c_out)
    count = run * cout_g
    panel_values = kh * kw * cout_g * nr
    bands = (height + band_rows - 1) // band_rows
    for task in prange(n_batch * bands):
        n, band = task // bands, task % bands
        y0 = band * band_rows
        y1 = min(height, y0 + band_rows)
        thread = numba.get_thread_id()
        padded, tile = paddeds[thread], tiles[thread]
        _pad_rows(g, n, y0, y1 - y0 + reach, top, left, padded, pitch, nchw)
        # NCHW: the band's results NHWC first, then into the planes a row at a
        # time (a tile row's channels straight into planes a power of two apart
        # would share an L1 set)
        dest, first_row = gi_flat, -n * height
        if nchw:
            dest, first_row = bands_out[thread], y0
        pixels = (y1 - y0) * pitch
        for q0 in range(0, pixels, mr):
            for group in range(groups):
                for panel in range(panels):
                    tile[: mr * nr] = 0
                    _add_taps(
                        vectors, tile, 0, padded, q0 * c_out + group * cout_g, c_out, 1, taps,
                        w_panels, (group * panels + panel) * panel_values, nr, count,
                    )  # fmt: skip
                    j0 = group * cin_g + panel * nr
                    columns = min(nr, cin_g - panel * nr)
                    y, x = y0 + q0 // pitch, q0 % pitch
                    for i in range(min(mr, pixels - q0)):
                        if x < width:
                            at = ((y - first_row) * width + x) * c_in + j0
                            _put(dest[at : at + columns], tile[i * nr : i * nr + columns], True)
                        x += 1
                        if x == pitch:
                            y, x = y + 1, 0
        if nchw:
            _band_to_planes(dest, gi_flat, n, y0, y1, height, width, c_in)


@njit(cache=CACHE)
def _band_to_planes(band, planes, n, y0, y1, height, width, channels):
    """planes[n, c, y, x] = band[y - y0, x, c] for rows y0 <= y < y1 (flat NCHW and NHWC)."""
    for c in range(channels):
        for y in range(y0, y1):
            row = planes[((n * channels + c) * height + y) * width :]
            source = band[((y - y0) * width) * channels + c :]
            for x in range(width):
                row[x] = source[x * channels]


@njit(cache=CACHE)
def _pack_grads(g, n, y0, y1, pitch, groups, nr, target, capacity, sums, nchw):
    """grad_weight's B: grad_output's rows y0 <= y < y1 in panels of NR channels.

    target[(group*panels + panel)*capacity + q, j] = g[n, y0 + q // PITCH,
    q % PITCH, group*C_out/g + panel*NR + j]; zeros past a row's OW pixels and
    past the group's channels. Each value packed is also added into ``sums``
    (float64, C_out of them; grad_bias's) unless ``sums`` is empty. With
    ``nchw``, g is (N, C_out, OH, OW).
    """
    biased = sums.shape[0] > 0
    out_h, out_w, c_out = _sizes(g, nchw)
    cout_g = c_out // groups
    panels = (cout_g + nr - 1) // nr
    flat = g.reshape(g.size)
    target[:] = 0
    for group in range(groups):
        for panel in range(panels):
            first = group * cout_g + panel * nr
            columns = min(nr, cout_g - panel * nr)
            base = (group * panels + panel) * capacity
            if nchw:
                for y in range(y0, y1):
                    for j in range(columns):
                        plane_row = flat[((n * c_out + first + j) * out_h + y) * out_w :]
                        at = (base + (y - y0) * pitch) * nr + j
                        total = 0.0
                        for x in range(out_w):
                            target[at + x * nr] = plane_row[x]
                            total += plane_row[x]
                        if biased:
                            sums[first + j] += total
                continue
            for y in range(y0, y1):
                for x in range(out_w):
                    at = (base + (y - y0) * pitch + x) * nr
                    source = flat[((n * out_h + y) * out_w + x) * c_out + first :]
                    panel_row = target[at : at + columns]
                    for j in range(columns):
                        panel_row[j] = source[j]
                    if biased:
                        _put(sums[first : first + columns], source[:columns], False)


@njit(cache=CACHE)
def _fold_tiles(acc, totals, rows, c_out, groups, mr, nr, first, last):
    """totals[tap, row, group*C_out/g + co] += acc's tiles first <= t < last; acc = 0.

    Tiles numbered tap, group, row tile, output-channel panel (the last
    fastest); acc holds those of the run, in order.
    """
    cout_g = c_out // groups
    row_tiles, panels = (rows + mr - 1) // mr, (cout_g + nr - 1) // nr
    taps = totals.shape[0] // (rows * c_out)
    tile = 0
    for tap in range(taps):
        for group in range(groups):
            for row_tile in range(row_tiles):
                for panel in range(panels):
                    if first <= tile < last:
                        at = (tile - first) * mr * nr
                        columns = min(nr, cout_g - panel * nr)
                        for i in range(min(mr, rows - row_tile * mr)):
                            row = row_tile * mr + i
                            out = (tap * rows + row) * c_out + group * cout_g + panel * nr
                            for j in range(columns):
                                totals[out + j] += acc[at + i * nr + j]
                    tile += 1
    acc[:] = 0


@njit(cache=CACHE)
def _fold_run(acc, total, slices, rows, c_out, groups, mr, nr, first, last):
    """The run's tiles in acc into its totals; acc = 0.

    By ``_fold_tiles`` into the part's totals, or where the tiles are cut in
    ``slices`` > 1, tile for tile into the run's own (``grad_weight_nhwc``).
    """
    if slices == 1:
        _fold_tiles(acc, total, rows, c_out, groups, mr, nr, first, last)
        return
    for k in range((last - first) * mr * nr):
        total[k] += acc[k]
    acc[:] = 0


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def grad_weight_nhwc(
    x, g, gw, gb, pt, pl, dh, dw, groups, band_rows, nchw, tile_shape, totals, sums, accs,
    paddeds, packeds, slices,
):  # fmt: skip
    """gw += the weight gradient of x (N, H, W, C_in) and g (N, OH, OW, C_out).

    gw (KH, KW, C_in/g, C_out); stride 1; tiles of ``tile_shape`` (MR, NV,
    NR). The images' bands of ``band_rows`` output rows, in order, in as many
    even parts as ``totals`` has rows, each summed into its own float64
    totals (and grad_bias into its row of ``sums``, unless gb is empty), added
    in part order into gw (and gb). Or, with ``slices`` > 1, one part whose
    tiles are cut into that many even runs, one task each over all the
    pixels (each task pads and packs the bands itself), its float64 totals in
    its thread's row of ``totals`` (the run's tiles in order) and added into
    gw as the run ends: no copy of the whole weight's totals at all, and a
    tile's sums run the same however cut. A task's tiles, padded input band
    and packed grad_output are its thread's (``accs``, ``paddeds``,
    ``packeds``). With ``nchw``, x and g are (N, C, H, W) arrays.
    """
    n_batch, c_in = x.shape[0], _sizes(x, nchw)[2]
    out_h, out_w, c_out = _sizes(g, nchw)
    kh, kw = gw.shape[0], gw.shape[1]
    cin_g, cout_g = c_in // groups, c_out // groups
    mr, vectors, nr = tile_shape
    parts = totals.shape[0] if slices == 1 else 1
    pitch = band_pitch(_sizes(x, nchw)[1], out_w, pl, (kw - 1) * dw)
    reach = (kh - 1) * dh
    run = _taps_per_run(kw, dw, groups)
    rows = run * cin_g
    taps = _tap_offsets(kh, kw // run, dh, dw, pitch, c_in)
    panels, row_tiles = (cout_g + nr - 1) // nr, (rows + mr - 1) // mr
    tap_tiles = groups * row_tiles * panels  # tiles of one tap's C
    all_tiles = taps.shape[0] * tap_tiles
    tile_values = mr * nr
    bands = (out_h + band_rows - 1) // band_rows
    units = n_batch * bands
    capacity = band_rows * pitch  # pixels of a band in a packed panel
    no_offset = np.zeros(1, np.intp)  # a tap's offset goes into a_at
    no_sums = np.zeros(0)
    gw_flat = gw.reshape(gw.size)
    for task in prange(parts * slices):
        part, piece = task // slices, task % slices
        first, last = piece * all_tiles // slices, (piece + 1) * all_tiles // slices
        thread = numba.get_thread_id()
        acc, padded, packed = accs[thread], paddeds[thread], packeds[thread]
        acc[:] = 0
        total = totals[part] if slices == 1 else totals[thread]
        if slices > 1:
            total[: (last - first) * tile_values] = 0
        bias = sums[part] if piece == 0 else no_sums  # one task per part sums grad_bias
        pending = 0
        for unit in range(part * units // parts, (part + 1) * units // parts):
            n, band = unit // bands, unit % bands
            y0 = band * band_rows
            y1 = min(out_h, y0 + band_rows)
            _pad_rows(x, n, y0, y1 - y0 + reach, pt, pl, padded, pitch, nchw)
            _pack_grads(g, n, y0, y1, pitch, groups, nr, packed, capacity, bias, nchw)
            pixels = (y1 - y0) * pitch
            for t0 in range(0, pixels, KC):
                kc = min(KC, pixels - t0)
                tile = 0  # tap-major, as _fold_tiles's
                for tap in range(taps.shape[0]):
                    for group in range(groups):
                        for row_tile in range(row_tiles):
                            ci0 = group * cin_g + row_tile * mr
                            for panel in range(panels):
                                if first <= tile < last:
                                    b_at = ((group * panels + panel) * capacity + t0) * nr
                                    _add_weight_taps(
                                        mr, vectors, acc, (tile - first) * tile_values, padded,
                                        t0 * c_in + taps[tap] + ci0, 1, c_in, no_offset, packed,
                                        b_at, nr, kc,
                                    )  # fmt: skip
                                tile += 1
            pending += pixels
            if pending >= BLOCK_TERMS:
                _fold_run(acc, total, slices, rows, c_out, groups, mr, nr, first, last)
                pending = 0
        _fold_run(acc, total, slices, rows, c_out, groups, mr, nr, first, last)
        if slices > 1:  # the run's totals are whole: into gw, rounded once
            _fold_tiles(total, gw_flat, rows, c_out, groups, mr, nr, first, last)
    if slices == 1:
        add_totals(gw_flat, totals)
    for part in range(1, parts):
        sums[0] += sums[part]
    for k in range(gb.shape[0]):
        gb[k] += sums[0, k]


def grad_input_direct(g, w, gi, pt, pl, dh, dw, groups, band_rows, nchw):
    """The input gradient, written into gi, for arrays of any strides (see ``grad_input_nhwc``).

    Images NHWC, the weight (KH, KW, C_in/g, C_out); with ``nchw`` images
    (N, C, H, W) and the weight (C_out, C_in/g, KH, KW). The packed weight and
    each thread's workspaces are allocated here.
    """
    g = np.ascontiguousarray(g)
    if nchw:
        w = w.transpose(2, 3, 1, 0)  # a view: the packing reads it where it lies
    kh, kw, cin_g, c_out = w.shape
    width, c_in = (gi.shape[3], gi.shape[1]) if nchw else gi.shape[2:]
    mr, _, nr = tile_shape = tap_tile_shape(cin_g, gi.dtype)
    panels = -(-cin_g // nr)
    w_panels = _aligned_rows(1, groups * panels * kh * kw * (c_out // groups) * nr, gi.dtype)[0]
    _pack_weight(w, groups, nr, w_panels)
    threads = numba.get_num_threads()
    out_w = g.shape[3] if nchw else g.shape[2]
    pitch, reach = band_pitch(width, out_w, pl, (kw - 1) * dw), (kh - 1) * dh
    band_pixels = (band_rows + reach) * pitch + mr + (kw - 1) * dw  # the tiles read past it
    paddeds = np.empty((threads, band_pixels * c_out), gi.dtype)
    tiles = _aligned_rows(threads, mr * nr, gi.dtype)
    bands_out = np.empty((threads, band_rows * width * c_in if nchw else 0), gi.dtype)
    target = gi if gi.flags.c_contiguous else np.empty(gi.shape, gi.dtype)
    grad_input_nhwc(
        g, w_panels, target, kh, kw, pt, pl, dh, dw, groups, band_rows, nchw, tile_shape,
        paddeds, tiles, bands_out,
    )  # fmt: skip
    if target is not gi:
        gi[...] = target


def grad_weight_direct(x, g, gw, pt, pl, dh, dw, groups, band_rows, parts, nchw, slices=1):
    """The weight gradient, added into gw, for arrays of any strides (as ``grad_input_direct``)."""
    no_bias = np.empty(0, gw.dtype)
    _weight_and_bias(x, g, gw, no_bias, pt, pl, dh, dw, groups, band_rows, parts, nchw, slices)


def _weight_and_bias(x, g, gw, gb, pt, pl, dh, dw, groups, band_rows, parts, nchw, slices):
    """``grad_weight_nhwc`` with its workspaces; gb (C-contiguous, or empty) gets grad_bias."""
    x, g = np.ascontiguousarray(x), np.ascontiguousarray(g)
    kernel_order = gw.transpose(2, 3, 1, 0) if nchw else gw  # (KH, KW, C_in/g, C_out)
    kh, kw, cin_g, c_out = kernel_order.shape
    out_w, c_in = (g.shape[3], x.shape[1]) if nchw else (g.shape[2], x.shape[3])
    cout_g = c_out // groups
    run = _taps_per_run(kw, dw, groups)
    rows, products = run * cin_g, kh * kw // run
    mr, _, nr = tile_shape = weight_tile_shape(rows, cout_g, gw.dtype)
    tiles = products * groups * -(-rows // mr) * -(-cout_g // nr)
    threads = numba.get_num_threads()
    width = x.shape[3] if nchw else x.shape[2]
    pitch, reach = band_pitch(width, out_w, pl, (kw - 1) * dw), (kh - 1) * dh
    slices = max(1, min(slices, tiles))
    if slices > 1:  # one part; a row of its run's totals per thread
        parts = 1
        totals = np.empty((threads, -(-tiles // slices) * mr * nr))
    else:
        totals = np.zeros((parts, kh * kw * cin_g * c_out))
    sums = np.zeros((parts, c_out if gb.size else 0))
    accs = _aligned_rows(threads, -(-tiles // slices) * mr * nr, gw.dtype)  # a slice's tiles
    # the last row's dropped pixels read up to the kernel's reach past it
    # (more than a row where the pitch is shorter than the reach)
    band_pixels = (band_rows + reach + 1) * pitch + (kw - 1) * dw
    paddeds = np.empty((threads, band_pixels * c_in + mr), gw.dtype)
    packeds = _aligned_rows(threads, groups * -(-cout_g // nr) * band_rows * pitch * nr, gw.dtype)
    contiguous = kernel_order.flags.c_contiguous
    target = kernel_order if contiguous else np.zeros(kernel_order.shape, gw.dtype)
    grad_weight_nhwc(
        x, g, target, gb, pt, pl, dh, dw, groups, band_rows, nchw, tile_shape, totals, sums,
        accs, paddeds, packeds, slices,
    )  # fmt: skip
    if not contiguous:
        kernel_order += target


def backward_direct(x, g, w, gi, gw, gb, pt, pl, dh, dw, groups, band_rows, parts, nchw, slices=1):
    """All three gradients: gi written, gw and gb added into (grad_bias summed with gw).

    Exact for finite inputs only, like its kernels; returns None (the caller
    checks the results).
    """
    grad_input_direct(g, w, gi, pt, pl, dh, dw, groups, band_rows, nchw)
    if gb.flags.c_contiguous:
        _weight_and_bias(x, g, gw, gb, pt, pl, dh, dw, groups, band_rows, parts, nchw, slices)
        return
    sums = np.zeros(gb.shape, gb.dtype)
    _weight_and_bias(x, g, gw, sums, pt, pl, dh, dw, groups, band_rows, parts, nchw, slices)
    gb += sums
