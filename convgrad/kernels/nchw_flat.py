"""NCHW gradient kernels on zero-padded, flattened image planes (any stride).

Split the zero-padded input into its stride phases,

    phase[a*sw + b][u, v] = xpad[u*sh + a, v*sw + b]    (0 <= a < sh, 0 <= b < sw),

all with one pitch Wq = ceil(Wp / sw). Output position (i, j) of kernel tap
(p, q) reads xpad[i*sh + p*dh, j*sw + q*dw] = phase[a*sw + b][i + ru, j + cv]
with p*dh = ru*sh + a and q*dw = cv*sw + b: a stride-1 access into one phase.
Give grad_output's rows the same pitch (zero columns past OW) and both planes
flatten: with k = i*Wq + j and shift = ru*Wq + cv,

    grad_weight[co, ci2, p, q] += sum over k of phase[n, ci, a*sw + b].flat[k + shift]
                                                * gpad[n, co].flat[k]
    giphase[n, ci, a*sw + b].flat[k + shift] += w[co, ci2, p, q] * gpad[n, co].flat[k]

so each (p, q) is one long dot product or axpy of OH*Wq terms instead of OH
short rows. (With stride 1 there is one phase: the padded image itself.) The
zero columns add x*0 or w*0 terms, which are exact for finite values; the
caller checks the inputs with ``all_finite`` and uses the row kernels
(``nchw.py``) otherwise, keeping NaN/Inf semantics exact.

Images are split ``n_chunk`` at a time, which bounds the working memory. Each
phase has one spare zero row so every shifted window stays inside, and valid
columns never wrap: (OW - 1) + cv <= (Wp - 1) // sw < Wq. The separate
gradients stack several images' planes end to end (see STACK_TERMS) so that
small planes still make long vectors; ``backward_nchw_flat`` fuses all three
gradients per image for problems where grad_output's traffic dominates.

The planes are always NCHW-ordered workspaces, but the arrays may come in
either layout (the wrappers' ``nhwc`` flag): NHWC channels are gathered into
the planes while padding, and grad_input is scattered back the same way, so
an NHWC problem needs no relayouted copy of its arrays (which would cost more
memory than the workspace budget allows). Weights reach the kernels as
(C_out, C_in/groups, KH, KW) either way; the wrappers convert NHWC's.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._blocks import axpys4x4, dots4x4
from ._cache import CACHE
from ._columns import COLUMNS_MAX, VECTOR_BYTES, weighted_columns
from ._flags import FASTMATH
from ._rows import add_column_taps, add_shifted_rows, shifted_rows
from ._wide import WideCompiler

# Small helpers are repeated in each kernel module on purpose: numba's on-disk
# cache keys a kernel on its own module's source, so an edited helper imported
# from elsewhere would leave stale compiled kernels behind.


@njit(cache=CACHE, fastmath=FASTMATH)
def all_finite_serial(a):
    """``all_finite`` on the calling thread: for small arrays, where starting threads costs more."""
    flat = a.reshape(a.size)
    probe = flat.dtype.type(0)
    for k in range(flat.shape[0]):
        probe += flat[k] * 0  # x*0 is 0 for finite x, NaN for NaN or Inf
    return probe == 0


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def all_finite(a):
    """True when no element of the C-contiguous array ``a`` is NaN or +-Inf."""
    flat = a.reshape(a.size)
    block = 4096
    n_blocks = (flat.size + block - 1) // block
    bad = 0
    for b in prange(n_blocks):
        part = flat[b * block : min((b + 1) * block, flat.size)]
        probe = part[0] * 0  # x*0 is 0 for finite x, NaN for NaN or Inf
        for k in range(1, part.shape[0]):
            probe += part[k] * 0
        if probe != 0:
            bad += 1
    return bad == 0


def _contiguous_pair(a, b):
    """Whether numba types ``a`` and ``b`` are C-contiguous arrays of one dtype.

    The intrinsics' condition: they address elements by flat offsets from the data pointer.
    """
    return (
        isinstance(a, types.Array)
        and isinstance(b, types.Array)
        and a.layout == "C"
        and b.layout == "C"
        and a.dtype == b.dtype
    )


@intrinsic
def _borrowed(typingctx, array):
    """``array`` as an array without a reference count: its views cost no atomics.

    Numba counts references to an array that came from Python, with an atomic
    add and subtract (a few ns) for every view made of it: a row slice per
    plane row adds up to most of the time of a tiny serial kernel. Inside a
    prange body arrays come without a count (a NULL meminfo), and serial code
    borrows them the same way. Only for arrays the caller holds for the whole
    call (arguments), and never returned.
    """
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, sig, args):
        source = context.make_array(sig.args[0])(context, builder, args[0])
        view = context.make_array(sig.return_type)(context, builder, source._getvalue())
        view.meminfo = cgutils.get_null_value(view.meminfo.type)
        view.parent = cgutils.get_null_value(view.parent.type)
        return view._getvalue()

    return array(array), codegen


@intrinsic
def _copy_items(typingctx, dst, dst_start, src, src_start, count):
    """dst.flat[dst_start:dst_start + count] = src.flat[src_start:src_start + count], as one memcpy.

    For C-contiguous arrays of one dtype; the caller keeps both ranges in bounds
    and apart. Image rows are short (28-64 values), and LLVM leaves loops that
    short to scalar code: copying padded planes row by row took half of the
    fused backward's time on MNIST-sized images; a memcpy per row is ~2x faster.
    """
    if not _contiguous_pair(dst, src):
        return None
    signature = types.void(dst, types.intp, src, types.intp, types.intp)

    def codegen(context, builder, sig, args):
        dst_value, dst_at, src_value, src_at, n = args
        target = context.make_array(sig.args[0])(context, builder, dst_value)
        origin = context.make_array(sig.args[2])(context, builder, src_value)
        item = context.get_abi_sizeof(context.get_data_type(sig.args[0].dtype))
        cgutils.raw_memcpy(
            builder,
            builder.gep(target.data, [dst_at]),
            builder.gep(origin.data, [src_at]),
            n,
            item,
        )
        return context.get_dummy_value()

    return signature, codegen


# One 512-bit register: the tile width of ``_transpose_tile`` (16 float32, 8 float64).
TILE_BYTES = 64


@intrinsic
def _transpose_tile(typingctx, src, src_at, src_stride, dst, dst_at, dst_stride):
    """dst.flat[dst_at + j*dst_stride + i] = src.flat[src_at + i*src_stride + j], i, j < L.

    A square tile of L = TILE_BYTES / itemsize values a side, transposed in
    registers: L vector loads, log2(L) rounds of L shuffles, L vector stores.
    Written as LLVM IR because numba's loops for a strided copy stay scalar
    (about one value per cycle: the NHWC transpose of grad_output was a third
    of the fused backward's time on MNIST). C-contiguous float arrays of one
    dtype; the caller keeps every row of the tile in bounds.
    """
    if not (_contiguous_pair(src, dst) and src.dtype in (types.float32, types.float64)):
        return None
    signature = types.void(src, types.intp, types.intp, dst, types.intp, types.intp)

    def codegen(context, builder, sig, args):
        src_value, src_at, src_stride, dst_value, dst_at, dst_stride = args
        source = context.make_array(sig.args[0])(context, builder, src_value)
        target = context.make_array(sig.args[3])(context, builder, dst_value)
        item = context.get_data_type(sig.args[0].dtype)
        lanes = TILE_BYTES // context.get_abi_sizeof(item)
        vector = ir.VectorType(item, lanes)

        def row_pointer(array, at, stride, i):
            offset = builder.add(at, builder.mul(stride, ir.Constant(at.type, i)))
            return builder.bitcast(builder.gep(array.data, [offset]), vector.as_pointer())

        rows = [
            builder.load(row_pointer(source, src_at, src_stride, i), align=1) for i in range(lanes)
        ]
        half = lanes // 2
        while half:  # swap the off-diagonal half-blocks of every 2*half square block
            mask = ir.VectorType(ir.IntType(32), lanes)
            low = [j if (j // half) % 2 == 0 else lanes + j - half for j in range(lanes)]
            high = [j + half if (j // half) % 2 == 0 else lanes + j for j in range(lanes)]
            for r in range(lanes):
                if (r // half) % 2 == 0:
                    a, b = rows[r], rows[r + half]
                    rows[r] = builder.shuffle_vector(a, b, ir.Constant(mask, low))
                    rows[r + half] = builder.shuffle_vector(a, b, ir.Constant(mask, high))
            half //= 2
        for i in range(lanes):
            builder.store(rows[i], row_pointer(target, dst_at, dst_stride, i), align=1)
        return context.get_dummy_value()

    return signature, codegen


def line_aligned_empty(shape, dtype):
    """np.empty(shape, dtype) starting on a cache line (TILE_BYTES).

    NumPy aligns big arrays to 16 bytes; ``_transpose_tile``'s row stores into a
    target whose rows start off a line each touch two lines: the transposes of
    one cifar_b32 image's grad_output took 18-21 us so, 5.7 us aligned (one
    thread, 2-core Intel Xeon). The plane workspaces too: each 512-bit load of a
    window that starts off a line reads two; cifar_b32's fused kernel took
    1.30-1.44 ms with its shifted planes 16, 32 or 48 bytes off a line and
    1.21-1.24 ms on one (2 threads), and which one a process got was up to malloc.
    """
    itemsize = np.dtype(dtype).itemsize
    count = math.prod(shape)
    flat = np.empty(count + TILE_BYTES // itemsize, dtype)
    skip = -flat.ctypes.data % TILE_BYTES // itemsize
    return flat[skip : skip + count].reshape(shape)


@njit(cache=CACHE)
def spread_row(values, itemsize):
    """Row length (>= ``values``) whose bytes are an odd multiple of 64.

    The rows of a transpose's target are written a tile at a time, one store
    per row: rows a power of two bytes apart (a 32 x 32 plane is 4 KiB) fall in
    one L1 set and evict each other (``_gather_grad`` ran 2.6x slower on
    cifar_b32's planes); odd multiples of a line spread them over all sets.
    """
    lines = -(-values * itemsize // 64)
    return (lines + 1 - lines % 2) * 64 // itemsize


@njit(cache=CACHE)
def band_rows(band, n_bands, out_h, stride_h, top, reach, height):
    """Band ``band`` of ``n_bands`` (as long as each other within a row), as a problem of its own.

    Returns (i0, i1, lo, hi, top_b, bottom_b): output rows [i0, i1) read the
    padded rows of input rows [i0*stride_h - top, (i1-1)*stride_h - top +
    reach); of those, input rows [lo, hi) exist (empty when the band reads only
    padding) and top_b, bottom_b are the band's own padding. ``reach`` is the
    kernel's dilated height, (KH-1)*dh + 1.
    """
    i0, i1 = band * out_h // n_bands, (band + 1) * out_h // n_bands
    first, end = i0 * stride_h - top, (i1 - 1) * stride_h - top + reach
    lo = max(first, 0)
    hi = max(lo, min(end, height))
    return i0, i1, lo, hi, lo - first, end - hi


@njit(cache=CACHE, inline="always")
def _clear_outside(line, lo, hi):
    """line[:lo] = 0 and line[hi:] = 0: one plane row's padding (all of it when hi <= lo)."""
    for k in range(min(lo, line.shape[0])):
        line[k] = 0
    for k in range(max(lo, hi), line.shape[0]):
        line[k] = 0


@njit(cache=CACHE, fastmath=FASTMATH)
def _pad_plane(source, top, left, sh, sw, planes, n):
    """planes[:, n] = ``source`` (H, W) zero-padded at (top, left) and split into phases.

    ``planes`` is (sh*sw, N, rows, pitch), C-contiguous (so the copies vectorise):
    planes[a*sw + b, n, u, v] = padded[u*sh + a, v*sw + b]. Returns the sum of
    ``source`` in float64 (the fused kernel's grad_bias).
    """
    height, width = source.shape
    total = 0.0
    if sh != 1 or sw != 1:
        for phase in range(sh * sw):
            planes[phase, n] = 0
        for r in range(height):
            a, u = (top + r) % sh, (top + r) // sh
            row = source[r]
            for k in range(width):
                column = left + k
                planes[a * sw + column % sw, n, u, column // sw] = row[k]
                total += row[k]
        return total
    # stride 1: one phase; write each row once, zeros only where the padding is
    target = planes[0, n]
    pitch = target.shape[1]
    flat = source.reshape(height * width)
    for k in range(height * width):
        total += flat[k]
    for u in range(target.shape[0]):
        line = target[u]
        r = u - top
        if r < 0 or r >= height:
            _clear_outside(line, 0, 0)
            continue
        _clear_outside(line, left, left + width)
        _copy_items(target, u * pitch + left, source, r * width, width)
    return total


@njit(cache=CACHE, fastmath=FASTMATH)
def _pad_channel(image, c, top, left, sh, sw, planes, n):
    """``_pad_plane`` for channel ``c`` of the NHWC ``image`` (H, W, C), any stride.

    Strided inputs only; stride 1 takes ``_gather_channels``, which is faster.
    """
    height, width = image.shape[0], image.shape[1]
    for phase in range(sh * sw):
        planes[phase, n] = 0
    total = 0.0
    for r in range(height):
        a, u = (top + r) % sh, (top + r) // sh
        for k in range(width):
            column = left + k
            value = image[r, k, c]
            planes[a * sw + column % sw, n, u, column // sw] = value
            total += value
    return total


# The separate gradients gather NHWC images into planes this many channels
# per parallel task.
GATHER_CHANNELS = 16


@njit(cache=CACHE, fastmath=FASTMATH)
def _gather_channels(image, c0, c1, first, top, left, planes, n, sums):
    """planes[c - first, 0, n] = channel c of the NHWC ``image`` zero-padded at (top, left).

    For the channels c0 <= c < c1.
    Stride 1 only (one phase); ``planes`` is (C, 1, N, rows, pitch). Goes row by
    row, so each image row (W x C) is read from memory once and its channels
    are picked out of L1. When ``sums`` is not empty, sums[c] += the channel's
    sum (in float64).
    """
    height, width, channels = image.shape
    rows, pitch = planes.shape[3], planes.shape[4]
    for c in range(c0, c1):
        target = planes[c - first, 0, n]
        for u in range(rows):
            r = u - top
            if r < 0 or r >= height:
                _clear_outside(target[u], 0, 0)
            else:
                _clear_outside(target[u], left, left + width)
    # whole tiles of pixels x channels by register transposes (``_transpose_tile``)
    source, target = image.reshape(image.size), planes.reshape(planes.size)
    lanes = TILE_BYTES // source.itemsize
    plane_size = planes.shape[2] * rows * pitch  # one channel's planes, all images
    tiled_width, tiled_end = width - width % lanes, c1 - (c1 - c0) % lanes
    for r in range(height):
        row = image[r]  # W x C: stays in L1 while its channels are copied out
        at = n * rows * pitch + (top + r) * pitch + left
        for c in range(c0, tiled_end, lanes):
            for k in range(0, tiled_width, lanes):
                src_at, dst_at = (r * width + k) * channels + c, (c - first) * plane_size + at + k
                _transpose_tile(source, src_at, channels, target, dst_at, plane_size)
        for c in range(c0, c1):
            line = planes[c - first, 0, n, top + r]
            start = tiled_width if c < tiled_end else 0
            for k in range(start, width):
                line[left + k] = row[k, c]
    if sums.shape[0]:
        _add_channel_sums(image, c0, c1, sums[c0 - first : c1 - first])


@njit(cache=CACHE, fastmath=FASTMATH)
def _add_channel_sums(image, c0, c1, sums):
    """sums[c - c0] += the sum of channel c of the NHWC ``image`` (H, W, C), in float64.

    Along the pixels, a vector of channels at a time (contiguous in NHWC).
    """
    totals = np.zeros(c1 - c0)
    for r in range(image.shape[0]):
        for k in range(image.shape[1]):
            pixel = image[r, k, c0:c1]
            for c in range(c1 - c0):
                totals[c] += pixel[c]
    for c in range(c1 - c0):
        sums[c] += totals[c]


def _as_nchw_weight(w, nhwc):
    """The weight as the kernels take it: (C_out, C_in/groups, KH, KW), C-contiguous."""
    return np.ascontiguousarray(w.transpose(3, 2, 0, 1)) if nhwc else w


def _weight_totals_shape(gw, nhwc):
    """(C_out, C_in/groups, KH, KW) of a grad_weight array in either layout."""
    return (gw.shape[3], gw.shape[2], gw.shape[0], gw.shape[1]) if nhwc else gw.shape


@njit(cache=CACHE)
def _add_partials(gw, gb, totals, bias, nhwc):
    """gw += the sum of ``totals`` over blocks, gb += the sum of ``bias``; rounded once.

    ``totals`` (blocks, C_out, C_in/groups, KH, KW) and ``bias`` (blocks, C_out)
    are float64 partials, added in block order (into block 0's); gw is in
    either layout. Compiled, so that no temporaries are made.
    """
    for block in range(1, totals.shape[0]):
        totals[0] += totals[block]
        bias[0] += bias[block]
    _add_slice(gw, totals[0], 0, totals.shape[1], nhwc)
    gb += bias[0]


@njit(cache=CACHE)
def _image_dims(a, nhwc):
    """(N, C, H, W) of an image array in either layout."""
    if nhwc:
        return a.shape[0], a.shape[3], a.shape[1], a.shape[2]
    return a.shape


def _workspaces(n_chunk, c_in, c_out, height, width, out_h, sh, sw, pt, pb, pl, pr, dtype):
    """Phase planes for ``n_chunk`` images of the input (or grad_input) and of grad_output.

    Allocated here, by NumPy, so that the working memory is visible to
    ``tracemalloc`` (the asv memory tracks) and sized by the dispatch's chunk.
    """
    pitch = (width + pl + pr + sw - 1) // sw
    rows = (height + pt + pb + sh - 1) // sh + 1
    images = line_aligned_empty((n_chunk, c_in, sh * sw, rows, pitch), dtype)
    grads = line_aligned_empty((n_chunk, c_out, 1, out_h, pitch), dtype)
    return images, grads


# Channels are handled in blocks of four: a full block of four input and four
# output channels makes sixteen dot products (grad_weight) or four axpys into
# four gi planes (grad_input) in one pass; partial blocks (a group with fewer
# than four channels left) run the same steps on fewer windows.
BLOCK = 4


# The dot products and the axpys are LLVM IR steps (``_blocks.py``) compiled into
# their callers: explicit vectors of the CPU's widest registers, no run-time
# overlap checks and no call. As numba functions, the axpys had to be called
# (compiled with ``noalias``; inlined, LLVM checked the planes for overlap at
# run time: the dense grad_input shapes took 1.1-1.3x the time), and each call
# passed nine arrays: on lenet2's 64-value planes the IR axpys took 0.91x the
# time of the whole backward, 5 x 5 kernels on 14 x 14 images 0.89-0.9x.
# grad_weight's 4 x 4 channel blocks and all of grad_input's axpys run over
# the planes L1_BYTES of each vector at a time, every kernel tap (and, for
# grad_input, every output-channel block) before the next piece: the pieces
# then stay in L1 instead of streaming whole planes (8 x 13 KB on resnet_3x3)
# from L2 once per tap. Measured on a 2-core Intel Xeon (AVX-512, 48 KiB L1d):
# resnet_3x3 0.85x, big_kernel 0.87x, resnet_3x3_f64 0.90x the time; 2 and 8
# KiB pieces were slower than 4 (more horizontal sums, or L1 misses).
L1_BYTES = 4096


# Both gradients stack the planes of several images end to end and run one dot
# product (or axpy) over all of them: planes of a few hundred values (stride 2,
# small images) then still make long vectors. In a stack, image m's grad_output
# rows past OH are zero, so its shifted input windows may run on into image
# m + 1's plane; the last image's window stops at its own OH rows, which keeps
# every window inside the stack. At most STACK_TERMS values per stack (at least
# one image), so float32 sums stay as short as one big image's; the stacks'
# dot products are summed in float64.
STACK_TERMS = 4096


def _stack_shapes(n_chunk, c_in, c_out, height, width, sh, sw, pt, pb, pl, pr):
    """Shapes of the stacked planes for ``n_chunk`` images.

    Image (or gi) planes (C_in, phases, N, rows, pitch); grad_output planes
    (C_out, N, rows, pitch).
    """
    pitch = (width + pl + pr + sw - 1) // sw
    rows = (height + pt + pb + sh - 1) // sh + 1
    return (c_in, sh * sw, n_chunk, rows, pitch), (c_out, n_chunk, rows, pitch)


def grad_weight_nchw_flat(
    x, g, gw, sh, sw, pt, pb, pl, pr, dh, dw, groups, n_chunk, slice_blocks, nhwc=0
):
    """gw += valid correlation of x with g (NHWC if ``nhwc``).

    ``n_chunk`` images at a time, and the output channels ``slice_blocks``
    channel blocks (of BLOCK) at a time, so that the float64 totals stay as
    small as the dispatch's memory budget asks.
    """
    n_batch, c_in, height, width = _image_dims(x, nhwc)
    c_out, cin_g, kh, kw = _weight_totals_shape(gw, nhwc)
    slice_channels = min(c_out, slice_blocks * BLOCK)
    image_shape, grad_shape = _stack_shapes(
        min(n_chunk, n_batch), c_in, slice_channels, height, width, sh, sw, pt, pb, pl, pr
    )
    images, grads = np.empty(image_shape, x.dtype), np.empty(grad_shape, x.dtype)
    totals = np.zeros((slice_channels, cin_g, kh, kw), dtype=np.float64)
    _grad_weight(
        x, g, gw, sh, sw, pt, pl, dh, dw, groups, n_chunk, slice_blocks, images, grads, totals, nhwc
    )  # fmt: skip


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def _stack_planes(x, g, g_lo, g_hi, pt, pl, sh, sw, images, grads, nhwc):
    """grads[c - g_lo, n] = g[n, c] padded to ``rows`` rows, images[c, :, n] = x[n, c] padded.

    grad_output's channels g_lo <= c < g_hi only. The images are split into
    phases; ``x`` may hold no images (grad_input needs none). With ``nhwc``
    the arrays are NHWC and channels are gathered.
    """
    n_batch = g.shape[0]
    c_out = g_hi - g_lo
    c_in = (x.shape[3] if nhwc else x.shape[1]) if x.shape[0] else 0
    if nhwc and sh == 1 and sw == 1:
        x_blocks = (c_in + GATHER_CHANNELS - 1) // GATHER_CHANNELS
        blocks = x_blocks + (c_out + GATHER_CHANNELS - 1) // GATHER_CHANNELS
        grads5 = grads.reshape(grads.shape[0], 1, grads.shape[1], grads.shape[2], grads.shape[3])
        no_sums = np.zeros(0)
        for task in prange(n_batch * blocks):
            n = task // blocks
            b = task - n * blocks
            if b < x_blocks:
                c0 = b * GATHER_CHANNELS
                c1 = min(c0 + GATHER_CHANNELS, c_in)
                _gather_channels(x[n], c0, c1, 0, pt, pl, images, n, no_sums)
            else:
                c0 = g_lo + (b - x_blocks) * GATHER_CHANNELS
                c1 = min(c0 + GATHER_CHANNELS, g_hi)
                _gather_channels(g[n], c0, c1, g_lo, 0, 0, grads5, n, no_sums)
        return
    for task in prange(n_batch * (c_in + c_out)):
        n = task // (c_in + c_out)
        c = task - n * (c_in + c_out)
        if c < c_in:
            if nhwc:
                _pad_channel(x[n], c, pt, pl, sh, sw, images[c], n)
            else:
                _pad_plane(x[n, c], pt, pl, sh, sw, images[c], n)
        else:
            plane = grads[c - c_in]
            one_phase = plane.reshape(1, plane.shape[0], plane.shape[1], plane.shape[2])
            if nhwc:
                _pad_channel(g[n], g_lo + c - c_in, 0, 0, 1, 1, one_phase, n)
            else:
                _pad_plane(g[n, g_lo + c - c_in], 0, 0, 1, 1, one_phase, n)


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def _grad_weight(
    x, g, gw, sh, sw, pt, pl, dh, dw, groups, n_chunk, slice_blocks, images, grads, totals, nhwc
):
    """gw += valid correlation of x with g.

    Parallel over (block of up to four output channels, block of up to four
    input channels) of one group; each task owns those channels' kernel planes
    totals[co, ci2]. The planes of up to STACK_TERMS values' worth of images
    make one dot product in the dtype; those are summed in float64 (``totals``),
    so the error does not grow with the batch. The output-channel blocks (in
    group order) are taken ``slice_blocks`` at a time: a slice's totals are
    added to gw, rounded once, before the next slice reuses them.
    """
    n_batch, c_in = x.shape[0], images.shape[0]
    c_out = g.shape[3] if nhwc else g.shape[1]
    cin_g = totals.shape[1]
    cout_g = c_out // groups
    co_blocks = (cout_g + BLOCK - 1) // BLOCK  # per group
    ci_blocks = (cin_g + BLOCK - 1) // BLOCK
    phases, slots, rows, pitch = images.shape[1], images.shape[2], images.shape[3], images.shape[4]
    plane = rows * pitch
    valid = (g.shape[1] if nhwc else g.shape[2]) * pitch  # the OH rows of a grad_output plane
    per_dot = max(1, STACK_TERMS // plane)
    x_flat = images.reshape(c_in, phases, slots * plane)
    g_flat = grads.reshape(grads.shape[0], slots * plane)
    all_blocks = groups * co_blocks
    no_sums = np.zeros(0)  # grad_bias is not summed here
    for b_lo in range(0, all_blocks, slice_blocks):
        b_hi = min(b_lo + slice_blocks, all_blocks)
        co_lo = _block_channels(b_lo, co_blocks, cout_g)[0]
        co_hi = _block_channels(b_hi - 1, co_blocks, cout_g)[1]
        for n0 in range(0, n_batch, n_chunk):
            n1 = min(n0 + n_chunk, n_batch)
            # the image planes hold the whole batch from the first slice on
            restack = b_lo == 0 or n_chunk < n_batch
            x_part = x[n0:n1] if restack else x[n0:n0]
            _stack_planes(x_part, g[n0:n1], co_lo, co_hi, pt, pl, sh, sw, images, grads, nhwc)
            for task in prange((b_hi - b_lo) * ci_blocks):
                block = b_lo + task // ci_blocks
                ci2_0 = (task % ci_blocks) * BLOCK
                group = block // co_blocks
                co0, co1 = _block_channels(block, co_blocks, cout_g)
                for s0 in range(0, n1 - n0, per_dot):
                    length = (min(per_dot, n1 - n0 - s0) - 1) * plane + valid
                    _weight_block(
                        x_flat, g_flat, totals, group, co0 - co_lo, co1 - co_lo, ci2_0,
                        sh, sw, dh, dw, pitch, s0 * plane, length, False, s0 * plane,
                        no_sums,
                    )  # fmt: skip
        _add_slice(gw, totals, co_lo, co_hi, nhwc)


@njit(cache=CACHE, inline="always")
def _block_channels(block, co_blocks, cout_g):
    """Output channels [co0, co1) of channel block ``block`` (blocks numbered in group order)."""
    group = block // co_blocks
    co0 = group * cout_g + (block - group * co_blocks) * BLOCK
    return co0, min(co0 + BLOCK, (group + 1) * cout_g)


# NHWC's gw (KH, KW, C_in/g, C_out) is added to in tiles of this many output
# and input channels: gw's values a run of output channels at a time, while
# the tile's totals (SLICE_ADD_OUTPUTS runs of SLICE_ADD_INPUTS * KH * KW
# values) stay in cache. Going through a whole (C_in/g, KH, KW) per output
# channel instead wrote gw's values a weight plane apart (1 MiB on 512 x 512
# channels: every tap in one cache set): adding 512 x 512 x 3 x 3 totals took
# 17.6 ms against 4.9 in tiles (1.0 in NCHW), and 8 x 512 -> 512 @ 7 x 7 took
# 35 ms for grad_weight in NHWC against 24 now (NCHW 19-20). Tiles measured:
# 16-128 outputs x 8-32 inputs within 1.15x of this; 320 x 384 channels
# (no power of two) 1.09x slower than the old order, 1024 x 128 3.9x faster.
SLICE_ADD_OUTPUTS = 64
SLICE_ADD_INPUTS = 8


@njit(cache=CACHE, fastmath=FASTMATH)
def _add_slice(gw, totals, co_lo, co_hi, nhwc):
    """gw[co_lo:co_hi] += totals[:co_hi - co_lo] (rounded once), then those totals = 0.

    NCHW's entries are in the totals' order: one flat loop (vectorised; the
    nested one took 1.7 us of lenet2's 20 us kernel). NHWC's go in tiles of
    SLICE_ADD_OUTPUTS output by SLICE_ADD_INPUTS input channels.
    """
    cin_g, kh, kw = totals.shape[1], totals.shape[2], totals.shape[3]
    if not nhwc:
        per_channel = cin_g * kh * kw
        flat = totals.reshape(totals.size)
        target = gw.reshape(gw.size)[co_lo * per_channel : co_hi * per_channel]
        for k in range(target.shape[0]):
            target[k] += flat[k]
            flat[k] = 0
        return
    for c0 in range(co_lo, co_hi, SLICE_ADD_OUTPUTS):
        c1 = min(c0 + SLICE_ADD_OUTPUTS, co_hi)
        for i0 in range(0, cin_g, SLICE_ADD_INPUTS):
            i1 = min(i0 + SLICE_ADD_INPUTS, cin_g)
            for p in range(kh):
                for q in range(kw):
                    for ci2 in range(i0, i1):
                        row = gw[p, q, ci2]
                        for co in range(c0, c1):
                            row[co] += totals[co - co_lo, ci2, p, q]
    totals[: co_hi - co_lo] = 0


@njit(cache=CACHE, inline="always")
def _tap(p, q, sh, sw, dh, dw, pitch, shifted):
    """(plane, offset) of kernel tap (p, q): where its window starts in the image planes.

    Phase planes (see the module docstring): the phase of (p*dh, q*dw) and the
    shift within it. Shifted planes (``shifted``, stride 1, see
    ``backward_nchw_flat``): plane q holds the padded image moved left by q*dw
    columns with pitch OW, so tap (p, q) starts p*dh rows down plane q.
    """
    if shifted:
        return q, p * dh * pitch
    return ((p * dh) % sh) * sw + (q * dw) % sw, ((p * dh) // sh) * pitch + (q * dw) // sw


# 512-bit vectors where the CPU has AVX-512 (``_wide.py``) for the code around
# the dot products: on a 2-core Intel Xeon resnet_3x3, big_kernel and
# resnet_3x3_f64 took 0.89-0.90x the time, lenet2 1.04x.
@njit(cache=CACHE, fastmath=FASTMATH, pipeline_class=WideCompiler)
def _weight_block(
    xf, gf, totals, group, co0, co1, ci2_0, sh, sw, dh, dw, pitch, base, length, shifted, gbase,
    bias_sums,
):  # fmt: skip
    """totals[co0:co1, ci2_0:ci2_0 + 4] += the terms of ``length`` flat positions from ``base``.

    Positions ``base`` in the image planes pair with ``gbase`` in grad_output's
    (the same, except for the fused kernel's bands of rows).
    ``xf`` holds the flattened image planes (C_in, planes, ...), ``gf`` the
    flattened grad_output planes (C_out, ...) with the same row pitch: kernel
    tap (p, q) pairs xf[ci, plane, base + offset + k] with gf[co, base + k]
    (``_tap``). Full 4 x 4 channel blocks take sixteen dot products at a time
    (``_blocks.dots4x4``), L1_BYTES of each vector at a time for all taps; fewer
    input channels (or output channels) take up to four kernel taps of one
    input channel at a time with four output channels, a short block of output
    channels repeating its last and leaving those sums unused.

    ``bias_sums[co0:co1]`` += the sums of those grad_output positions, unless
    ``bias_sums`` is empty. The few channels' first four taps sum them from
    their own loads (in the dtype's vectors as the dot products): for the
    fused kernel's few input channels that replaces a pass over grad_output
    (cifar_b32 took 0.78-0.97x the time, mnist_b64 0.74-0.91x); full blocks
    read the rows again (``_add_row_sums``, in float64).
    """
    cin_g, kh, kw = totals.shape[1], totals.shape[2], totals.shape[3]
    ci2_1 = min(ci2_0 + BLOCK, cin_g)
    ci0 = group * cin_g + ci2_0
    planes, plane = xf.shape[1], xf.shape[2]
    # grad_output's four planes; a short block repeats its last (the sums unused)
    g0 = co0 * gf.shape[1] + gbase
    g1 = min(co0 + 1, co1 - 1) * gf.shape[1] + gbase
    g2 = min(co0 + 2, co1 - 1) * gf.shape[1] + gbase
    g3 = min(co0 + 3, co1 - 1) * gf.shape[1] + gbase
    if co1 - co0 == BLOCK and ci2_1 - ci2_0 == BLOCK:
        chunk = L1_BYTES // xf.itemsize
        for c0 in range(0, length, chunk):
            c1 = min(c0 + chunk, length)
            for p in range(kh):
                for q in range(kw):
                    phase, offset = _tap(p, q, sh, sw, dh, dw, pitch, shifted)
                    x0 = (ci0 * planes + phase) * plane + base + offset + c0
                    sums = dots4x4(
                        xf, x0, x0 + planes * plane, x0 + 2 * planes * plane,
                        x0 + 3 * planes * plane, gf, g0 + c0, g1 + c0, g2 + c0, g3 + c0, c1 - c0,
                        BLOCK,
                    )  # fmt: skip
                    for a in range(BLOCK):
                        for b in range(BLOCK):
                            totals[co0 + b, ci2_0 + a, p, q] += sums[a * BLOCK + b]
        if bias_sums.shape[0]:
            _add_row_sums(gf[co0:co1, gbase : gbase + length], length, bias_sums[co0:co1])
        return
    # few input channels: four kernel taps share each load of grad_output instead
    taps = kh * kw
    flat_totals = totals.reshape(totals.size)  # tap t of (co, ci2) at (co*C_in/g + ci2)*taps + t
    calls = (taps + BLOCK - 1) // BLOCK
    for ci2 in range(ci2_0, ci2_1):
        at = (group * cin_g + ci2) * planes * plane + base
        for call in range(calls):  # as even as can be: one window makes a slow chain of sums
            t0, t1 = call * taps // calls, (call + 1) * taps // calls
            p0, q0 = t0 // kw, t0 % kw
            p1, q1 = _next_tap(p0, q0, kw)
            p2, q2 = _next_tap(p1, q1, kw)
            p3, q3 = _next_tap(p2, q2, kw)
            x0 = at + _tap_at(p0, q0, sh, sw, dh, dw, pitch, shifted, plane)
            x1 = at + _tap_at(p1, q1, sh, sw, dh, dw, pitch, shifted, plane)
            x2 = at + _tap_at(p2, q2, sh, sw, dh, dw, pitch, shifted, plane)
            x3 = at + _tap_at(p3, q3, sh, sw, dh, dw, pitch, shifted, plane)
            if bias_sums.shape[0] and ci2 == ci2_0 and t0 == 0:  # grad_bias's sums, once
                sums = dots4x4(xf, x0, x1, x2, x3, gf, g0, g1, g2, g3, length, t1 - t0)
                for b in range(co1 - co0):
                    bias_sums[co0 + b] += sums[BLOCK * BLOCK + b]
            else:  # a call of its own, so that its unused sums of grad_output are left out
                sums = dots4x4(xf, x0, x1, x2, x3, gf, g0, g1, g2, g3, length, t1 - t0)
            for i in range(BLOCK):  # constant bounds: unrolled, the sums' indices fixed
                if t0 + i < t1:
                    for b in range(BLOCK):
                        if b < co1 - co0:
                            flat_totals[((co0 + b) * cin_g + ci2) * taps + t0 + i] += sums[
                                i * BLOCK + b
                            ]


@njit(cache=CACHE, inline="always")
def _next_tap(p, q, kw):
    """The kernel tap after (p, q), row-major (no division: it runs four times a call)."""
    if q + 1 == kw:
        return p + 1, 0
    return p, q + 1


@njit(cache=CACHE, inline="always")
def _tap_at(p, q, sh, sw, dh, dw, pitch, shifted, plane):
    """Where kernel tap (p, q) starts in a channel's planes, as a flat offset."""
    phase, offset = _tap(p, q, sh, sw, dh, dw, pitch, shifted)
    return phase * plane + offset


def grad_input_nchw_flat(g, w, gi, sh, sw, pt, pb, pl, pr, dh, dw, groups, n_chunk, nhwc=0):
    """gi += scatter-add of w * g, ``n_chunk`` images at a time (NHWC if ``nhwc``)."""
    n_batch, c_in, height, width = _image_dims(gi, nhwc)
    image_shape, grad_shape = _stack_shapes(
        min(n_chunk, n_batch), c_in, _image_dims(g, nhwc)[1], height, width, sh, sw, pt, pb, pl, pr
    )
    planes, grads = np.empty(image_shape, gi.dtype), np.empty(grad_shape, gi.dtype)
    _grad_input(g, w, gi, sh, sw, pt, pl, dh, dw, groups, n_chunk, planes, grads, nhwc)


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def _grad_input(g, w, gi, sh, sw, pt, pl, dh, dw, groups, n_chunk, planes, grads, nhwc):
    """gi += scatter-add of w * g.

    Parallel over (stack of images, block of up to four input channels of one
    group); each task builds its channels' padded gi planes for its stack in
    ``planes`` (by weighted columns, ``_input_columns``, or by axpys for big
    kernels, ``_input_block``) and adds their valid part to gi (NHWC:
    afterwards, a row of pixels per task, all channels together). An NHWC
    weight is read through a transposed view, not a copy: on many channels a
    copy of the weight alone can pass the working-memory budget (a task copies
    only its block's weight columns).
    """
    w = w.transpose(3, 2, 0, 1) if nhwc else w.transpose(0, 1, 2, 3)  # one type either way
    n_batch, c_in = gi.shape[0], planes.shape[0]
    kh, kw = w.shape[2], w.shape[3]
    c_out = grads.shape[0]
    cin_g, cout_g = c_in // groups, w.shape[0] // groups
    ci_blocks = (cin_g + BLOCK - 1) // BLOCK  # per group
    phases, slots, rows, pitch = planes.shape[1], planes.shape[2], planes.shape[3], planes.shape[4]
    plane = rows * pitch
    valid = (g.shape[1] if nhwc else g.shape[2]) * pitch
    per_stack = max(1, STACK_TERMS // plane)
    gi_flat = planes.reshape(c_in, phases, slots * plane)
    g_flat = grads.reshape(c_out, slots * plane)
    for n0 in range(0, n_batch, n_chunk):
        n1 = min(n0 + n_chunk, n_batch)
        _stack_planes(gi[n0:n0], g[n0:n1], 0, c_out, pt, pl, sh, sw, planes, grads, nhwc)
        stacks = (n1 - n0 + per_stack - 1) // per_stack
        for task in prange(stacks * groups * ci_blocks):
            stack = task // (groups * ci_blocks)
            block = task - stack * groups * ci_blocks
            group = block // ci_blocks
            first = stack * per_stack
            count = min(per_stack, n1 - n0 - first)
            ci2_0 = (block - group * ci_blocks) * BLOCK
            width_b = min(BLOCK, cin_g - ci2_0)
            if not takes_columns(width_b * kh * kw):
                _input_block(
                    g_flat, w, gi_flat, gi, n0 + first, count, group, ci2_0,
                    sh, sw, pt, pl, dh, dw, rows, pitch, first * plane,
                    (count - 1) * plane + valid, nhwc, False, first * plane, 0,
                )  # fmt: skip
                continue
            # per task: the block's weight columns and a piece of its columns
            wcols = np.empty((cout_g, width_b * kh * kw), gi_flat.dtype)
            _weight_columns(w, group, ci2_0, width_b, wcols)
            cols = np.empty(columns_shape(width_b * kh * kw, gi_flat.itemsize), gi_flat.dtype)
            _input_columns(
                g_flat, wcols, gi_flat, gi, n0 + first, count, group * cin_g + ci2_0, width_b,
                kh, kw, group * cout_g, sh, sw, pt, pl, dh, dw, rows, pitch, first * plane,
                (count - 1) * plane + valid, nhwc, False, first * plane, 0, cols,
            )  # fmt: skip
        if nhwc:
            height = gi.shape[1]
            for task in prange((n1 - n0) * height):
                m = task // height
                r = task - m * height
                _scatter_nhwc(gi_flat, m, gi[n0 + m], r, pt, pl, sh, sw, rows, pitch)


@njit(cache=CACHE, fastmath=FASTMATH)
def _scatter_nhwc(gif, slot, image, r, pt, pl, sh, sw, rows, pitch):
    """image[r, k, c] += the valid value of gi plane ``slot`` of channel c, for every k and c.

    ``gif`` holds the flat padded gi planes (C_in, sh*sw, slots * rows * pitch);
    ``image`` is one NHWC grad_input image (H, W, C_in). Writing a pixel's
    channels together touches each cache line of the NHWC array once.
    """
    width, c_in = image.shape[1], image.shape[2]
    a, u = (pt + r) % sh, (pt + r) // sh
    row = slot * rows * pitch + u * pitch
    for k in range(width):
        column = pl + k
        phase, at = a * sw + column % sw, row + column // sw
        pixel = image[r, k]
        for c in range(c_in):
            pixel[c] += gif[c, phase, at]


@njit(cache=CACHE, fastmath=FASTMATH)
def _add_shifted(gif, gi, n, ci0, width_b, pt, pl, dw, pitch, rows, top_row, nhwc):
    """gi[n, ci, r, c] += sum over q of gi plane q at (r + pt, c + pl - q*dw), width_b channels.

    The inverse of the shifted planes (``_tap``): plane q, row u, column v holds
    padded position (u + top_row, v + q*dw); ``pitch`` is OW, ``rows`` the
    planes' rows in use. One image (slot 0); gi is NHWC if ``nhwc``.
    """
    height, width = (gi.shape[1], gi.shape[2]) if nhwc else (gi.shape[2], gi.shape[3])
    planes, plane_items = gif.shape[1], gif.shape[2]
    r0, r1 = max(0, top_row - pt), min(height, top_row - pt + rows)
    for b in range(width_b):
        ci = ci0 + b
        if not nhwc and gi.strides[3] == gi.itemsize:  # rows of vectors, all planes at once
            steps = gi.strides[0] // gi.itemsize, gi.strides[1] // gi.itemsize
            row_step = gi.strides[2] // gi.itemsize
            add_shifted_rows(
                gi, n * steps[0] + ci * steps[1] + r0 * row_step, row_step, r1 - r0, width, gif,
                ci * planes * plane_items + (r0 + pt - top_row) * pitch, pitch, plane_items,
                planes, pl, dw,
            )  # fmt: skip
            continue
        for r in range(r0, r1):
            row = (r + pt - top_row) * pitch
            for q in range(planes):
                move = pl - q * dw  # column c reads v = c + move
                lo, hi = max(0, -move), min(width, pitch - move)
                source = gif[ci, q, row + lo + move : row + hi + move]
                if nhwc:
                    pixels = gi[n, r, lo:hi, ci]
                    for k in range(hi - lo):
                        pixels[k] += source[k]
                else:
                    part = gi[n, ci, r, lo:hi]
                    for k in range(hi - lo):
                        part[k] += source[k]


@njit(cache=CACHE, fastmath=FASTMATH)
def _input_block(
    gf, w, gif, gi, first, count, group, ci2_0, sh, sw, pt, pl, dh, dw, rows, pitch, base, length,
    nhwc, shifted, gbase, top_row,
):  # fmt: skip
    """gi[first:first + count, ci] += scatter-add of w * g, ci = group*C_in/g + ci2_0 + (0..3).

    ``gf`` holds flattened grad_output planes (C_out, ...) and ``gif`` the flat
    gi planes (C_in, sh*sw, ...), the images' planes (rows x pitch each) one
    after another from ``base``: tap (p, q) adds w * gf[co, base + k] to
    gif[ci, phase, base + shift + k] for k < ``length``. The channels' planes
    are zeroed, built, and their valid part added to gi; with ``nhwc`` that
    is left to the caller (``_scatter_nhwc``), which writes each NHWC pixel's
    channels together. Blocks of four output channels feed the (up to four)
    channels' gi planes at once (``_blocks.axpys4x4``); all output channels and
    taps go through L1_BYTES of the planes before the next piece. ``gbase``:
    where the positions start in grad_output's planes; ``top_row``: the padded
    row the shifted planes start at (both 0 but for the fused kernel's bands of
    rows).
    """
    c_in = gif.shape[0]
    cout_g, cin_g, kh, kw = w.shape[0] // (c_in // w.shape[1]), w.shape[1], w.shape[2], w.shape[3]
    phases = gif.shape[1]
    plane_size = rows * pitch
    width_b = min(BLOCK, cin_g - ci2_0)
    ci0 = group * cin_g + ci2_0
    for b in range(width_b):
        for phase in range(phases):
            gif[ci0 + b, phase, base : base + count * plane_size] = 0
    end = group * cout_g + cout_g
    chunk = L1_BYTES // gif.itemsize
    plane_items, g_stride = gif.shape[2], gf.shape[1]
    w_co, w_ci = w.strides[0] // w.itemsize, w.strides[1] // w.itemsize
    w_p, w_q = w.strides[2] // w.itemsize, w.strides[3] // w.itemsize
    for c0 in range(0, length, chunk):
        c1 = min(c0 + chunk, length)
        for co in range(group * cout_g, end, BLOCK):
            sources = min(BLOCK, end - co)
            s0 = co * g_stride + gbase + c0
            for p in range(kh):
                for q in range(kw):
                    phase, offset = _tap(p, q, sh, sw, dh, dw, pitch, shifted)
                    d0 = (ci0 * phases + phase) * plane_items + base + offset + c0
                    step = phases * plane_items  # one input channel's planes
                    weights = co * w_co + ci2_0 * w_ci + p * w_p + q * w_q  # w[co, ci2_0, p, q]
                    axpys4x4(
                        gif, d0, d0 + step, d0 + 2 * step, d0 + 3 * step, w, weights, w_co, w_ci,
                        gf, s0, s0 + g_stride, s0 + 2 * g_stride, s0 + 3 * g_stride, c1 - c0,
                        width_b, sources,
                    )  # fmt: skip
    _planes_into_gi(
        gif, gi, first, count, ci0, width_b, sh, sw, pt, pl, dw, rows, pitch, base, nhwc,
        shifted, top_row,
    )  # fmt: skip


@njit(cache=CACHE, fastmath=FASTMATH)
def _planes_into_gi(
    gif, gi, first, count, ci0, width_b, sh, sw, pt, pl, dw, rows, pitch, base, nhwc, shifted,
    top_row,
):  # fmt: skip
    """gi[first:first + count, ci0:ci0 + width_b] += the valid part of their gi planes.

    Shifted planes: ``_add_shifted``. Phase planes: NCHW here; NHWC is left to
    the caller (``_scatter_nhwc``), which writes each pixel's channels together.
    """
    if shifted:
        _add_shifted(gif, gi, first, ci0, width_b, pt, pl, dw, pitch, rows, top_row, nhwc)
        return
    if nhwc:
        return  # the caller scatters all channels' planes at once (_scatter_nhwc)
    height, width = gi.shape[2], gi.shape[3]
    plane_size = rows * pitch
    for m in range(count):
        image = base + m * plane_size
        for b in range(width_b):
            for r in range(height):
                a, u = (pt + r) % sh, (pt + r) // sh
                row = image + u * pitch
                target = gi[first + m, ci0 + b, r]
                if sw == 1:
                    source = gif[ci0 + b, a, row + pl : row + pl + width]
                    for k in range(width):
                        target[k] += source[k]
                else:
                    for k in range(width):
                        column = pl + k
                        target[k] += gif[ci0 + b, a * sw + column % sw, row + column // sw]


# The fused backward splits the batch into fixed blocks of images (its
# parallel tasks), at most this many; each keeps a float64 partial of
# grad_weight and grad_bias, added in block order afterwards, and one image's
# planes. The dispatch picks the count within the working-memory budget.
MAX_IMAGE_BLOCKS = 8


def backward_nchw_flat(
    x, g, w, gi, gw, gb, sh, sw, pt, pb, pl, pr, dh, dw, groups, n_blocks, n_bands, nhwc=0
):
    """gi, gw, gb += all three gradients in one pass over the batch (NHWC if ``nhwc``).

    The batch is split into ``n_blocks`` fixed blocks of images, one parallel
    task each. Stride 1 runs on shifted copies of the input
    (``_backward_shifted``), other strides on padded phase planes
    (``_backward_padded``); either way each image in ``n_bands`` bands of
    output rows.
    """
    n_blocks = max(1, min(n_blocks, x.shape[0]))
    n_bands = max(1, min(n_bands, _image_dims(g, nhwc)[2]))
    if sh != 1 or sw != 1:
        args = (sh, sw, pt, pb, pl, pr, dh, dw, groups, n_blocks, n_bands, nhwc)
        _backward_padded(x, g, w, gi, gw, gb, *args)
        return
    c_in = _image_dims(x, nhwc)[1]
    _, c_out, out_h, out_w = _image_dims(g, nhwc)
    kh, kw = (w.shape[0], w.shape[1]) if nhwc else (w.shape[2], w.shape[3])
    band = -(-out_h // n_bands)  # the longest band's output rows
    images = line_aligned_empty((n_blocks, c_in, kw, band + (kh - 1) * dh, out_w), x.dtype)
    gi_planes = line_aligned_empty(images.shape, x.dtype)
    # NHWC grad_output is gathered into NCHW order, a band at a time
    row = spread_row(band * out_w, x.dtype.itemsize)
    grads = line_aligned_empty((n_blocks, c_out, row) if nhwc else (0, 0, 0), x.dtype)
    totals = np.zeros((n_blocks, *_weight_totals_shape(gw, nhwc)), dtype=np.float64)
    bias = np.zeros((n_blocks, c_out), dtype=np.float64)
    w = _as_nchw_weight(w, nhwc)
    cols = np.empty((n_blocks, *fused_columns_shape(c_in // groups, kh, kw, x.itemsize)), x.dtype)
    # NHWC images of several channels through NCHW copies, whole images (``_shifted_block``)
    height, width = _image_dims(x, nhwc)[2], _image_dims(x, nhwc)[3]
    copies = c_in if nhwc and c_in > 1 and n_bands == 1 else 0
    x_chw = line_aligned_empty((n_blocks, copies, height, width), x.dtype)
    gi_chw = line_aligned_empty(x_chw.shape, x.dtype)
    _backward_shifted(
        x, g, w, gi, pt, pl, dh, dw, groups, n_bands, images, gi_planes, grads, totals, bias, cols,
        nhwc, x_chw, gi_chw,
    )  # fmt: skip
    _add_partials(gw, gb, totals, bias, nhwc)


# The fused backward on the calling thread, in one block and one band, for tiny
# problems: starting the thread pool (about 5 us) and NumPy's allocations cost
# more than their arithmetic, so everything, workspaces included, happens in one
# compiled call; the dispatch bounds the workspaces (a few KiB for the seed
# notebook's problem) by its working-memory budget. Each returns whether gi, gw
# and gb are all finite (checked while they are in cache). One kernel per kind
# of plane: a call compiles only the planes it uses (the first call of a
# process with an empty cache compiles for 10-20 s).


@njit(cache=CACHE, fastmath=FASTMATH)
def backward_shifted_serial(x, g, w, gi, gw, gb, sh, sw, pt, pb, pl, pr, dh, dw, groups, nhwc=0):
    """``backward_nchw_flat`` at stride 1 (shifted planes), serially; arguments as there."""
    if sh != 1 or sw != 1:
        raise ValueError("backward_shifted_serial is for stride 1")
    totals, bias, w_nchw = _serial_partials(x, g, w, groups, nhwc)
    c_in, c_out, out_h, out_w = _image_dims(x, nhwc)[1], *_image_dims(g, nhwc)[1:]
    kh, kw = w_nchw.shape[2], w_nchw.shape[3]
    images = np.empty((1, c_in, kw, out_h + (kh - 1) * dh, out_w), x.dtype)
    gi_planes = np.empty_like(images)
    row = spread_row(out_h * out_w, x.itemsize)
    grads = np.empty((1, c_out, row) if nhwc else (0, 0, 0), x.dtype)
    cols = np.empty((1, *fused_columns_shape(c_in // groups, kh, kw, x.itemsize)), x.dtype)
    height, width = _image_dims(x, nhwc)[2], _image_dims(x, nhwc)[3]
    # NHWC images through NCHW copies (``_shifted_block``)
    copies = c_in if nhwc and c_in > 1 else 0
    x_chw = np.empty((1, copies, height, width), x.dtype)
    gi_chw = np.empty_like(x_chw)
    _shifted_block(
        0, x, g, w_nchw, gi, pt, pl, dh, dw, groups, 1, images, gi_planes, grads, totals, bias,
        cols, nhwc, x_chw, gi_chw,
    )  # fmt: skip
    return _finish_serial(gi, gw, gb, totals, bias, nhwc)


@njit(cache=CACHE, fastmath=FASTMATH)
def backward_padded_serial(x, g, w, gi, gw, gb, sh, sw, pt, pb, pl, pr, dh, dw, groups, nhwc=0):
    """``backward_nchw_flat`` on padded phase planes (any stride), serially; arguments as there."""
    totals, bias, w_nchw = _serial_partials(x, g, w, groups, nhwc)
    c_in, width = _image_dims(x, nhwc)[1], _image_dims(x, nhwc)[3]
    c_out, out_h = _image_dims(g, nhwc)[1], _image_dims(g, nhwc)[2]
    reach = (out_h - 1) * sh + (w_nchw.shape[2] - 1) * dh + 1  # padded rows the output reads
    pitch = (width + pl + pr + sw - 1) // sw
    rows = (reach + sh - 1) // sh + 1
    images = np.empty((1, c_in, sh * sw, rows, pitch), x.dtype)
    grads = np.empty((1, c_out, 1, out_h, pitch), x.dtype)
    gi_planes = np.empty_like(images)
    kh, kw = w_nchw.shape[2], w_nchw.shape[3]
    cols = np.empty((1, *fused_columns_shape(c_in // groups, kh, kw, x.itemsize)), x.dtype)
    _padded_block(
        0, x, g, w_nchw, gi, sh, sw, pt, pl, dh, dw, groups, 1, images, grads, gi_planes, totals,
        bias, cols, nhwc,
    )  # fmt: skip
    return _finish_serial(gi, gw, gb, totals, bias, nhwc)


@njit(cache=CACHE)
def _serial_partials(x, g, w, groups, nhwc):
    """One block's float64 partials of grad_weight and grad_bias, and the weight in NCHW order."""
    c_in, c_out = _image_dims(x, nhwc)[1], _image_dims(g, nhwc)[1]
    kh, kw = (w.shape[0], w.shape[1]) if nhwc else (w.shape[2], w.shape[3])
    totals = np.zeros((1, c_out, c_in // groups, kh, kw))
    bias = np.zeros((1, c_out))
    w_nchw = np.ascontiguousarray(w.transpose(3, 2, 0, 1)) if nhwc else w
    return totals, bias, w_nchw


@njit(cache=CACHE)
def _finish_serial(gi, gw, gb, totals, bias, nhwc):
    """Add the partials into gw and gb; whether gi, gw and gb are all finite."""
    _add_partials(gw, gb, totals, bias, nhwc)
    return all_finite_serial(gi) and all_finite_serial(gw) and all_finite_serial(gb)


@njit(cache=CACHE, fastmath=FASTMATH)
def _put_transposed(planes, image):
    """image[r, c, ch] = planes[ch, r, c]: one image's NCHW values into its NHWC rows."""
    for r in range(image.shape[0]):
        for c in range(image.shape[1]):
            pixel = image[r, c]
            for ch in range(image.shape[2]):
                pixel[ch] = planes[ch, r, c]


@njit(cache=CACHE, fastmath=FASTMATH)
def _gather_grad(image, target):
    """target[c] = channel c of the NHWC ``image`` (OH, OW, C), flattened.

    A transpose of the (pixels, C) matrix: square tiles of one register's
    width go through ``_transpose_tile``; fewer channels than a tile (no
    whole tiles) are copied a channel at a time, and the rest value by value.
    """
    pixels, channels = image.shape[0] * image.shape[1], image.shape[2]
    flat = image.reshape(pixels * channels)
    lanes = TILE_BYTES // flat.itemsize
    stride = target.shape[1]
    if channels < lanes:
        for c in range(channels):
            line = target[c]
            for p in range(pixels):
                line[p] = flat[p * channels + c]
    else:
        tiled_pixels, tiled_channels = pixels - pixels % lanes, channels - channels % lanes
        for p0 in range(0, tiled_pixels, lanes):
            for c0 in range(0, tiled_channels, lanes):
                src_at, dst_at = p0 * channels + c0, c0 * stride + p0
                _transpose_tile(flat, src_at, channels, target, dst_at, stride)
            for c in range(tiled_channels, channels):
                for p in range(p0, p0 + lanes):
                    target[c, p] = flat[p * channels + c]
        for p in range(tiled_pixels, pixels):
            for c in range(channels):
                target[c, p] = flat[p * channels + c]


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def _add_row_sums(rows, length, sums):
    """sums[c] += the sum of rows[c, :length], in float64: grad_bias from NCHW-ordered planes."""
    for c in range(rows.shape[0]):
        line = rows[c]
        total = 0.0
        for k in range(length):
            total += line[k]
        sums[c] += total


@njit(cache=CACHE, fastmath=FASTMATH)
def _shift_plane(image, c, top, move, target, nhwc):
    """target[u, v] = channel c of ``image`` at (u - top, v - move), zero outside the image.

    ``image`` is one image, (C, H, W), or (H, W, C) if ``nhwc``. NCHW images
    whose rows are contiguous take ``_rows.shifted_rows`` instead. With
    move = pl - q*dw, ``target`` is the zero-padded channel moved left by q*dw
    columns and cut to OW columns (``target``'s pitch).
    """
    height, width = (image.shape[0], image.shape[1]) if nhwc else (image.shape[1], image.shape[2])
    rows, pitch = target.shape
    lo, hi = max(0, move), min(pitch, move + width)
    for u in range(rows):
        r = u - top
        line = target[u]
        if r < 0 or r >= height or hi <= lo:
            _clear_outside(line, 0, 0)
            continue
        _clear_outside(line, lo, hi)
        if not nhwc:
            _copy_items(target, u * pitch + lo, image[c], r * width + lo - move, hi - lo)
        elif image.shape[2] == 1:  # one channel: its pixels are contiguous, as in NCHW
            _copy_items(target, u * pitch + lo, image, r * width + lo - move, hi - lo)
        else:
            row = image[r]
            for v in range(lo, hi):
                line[v] = row[v - move, c]


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def _backward_shifted(
    x, g, w, gi, pt, pl, dh, dw, groups, n_bands, images, gi_planes, grads, totals, bias, cols,
    nhwc, x_chw, gi_chw,
):  # fmt: skip
    """The fused backward for NCHW, stride 1, on shifted planes: grad_output is not copied.

    The padded-plane kernels give grad_output the image planes' row pitch, which
    means copying it (C_out planes per image). Here the input instead gets
    grad_output's pitch OW: one copy of it per kernel column q, moved left by
    q*dw (``_shift_plane``), so tap (p, q) is a window p*dh rows down copy q
    (``_tap``) and grad_output is used where it lies. For few input channels
    (the fused kernel's problems) that is C_in * KW small planes instead of
    C_out planes, and no zero columns in the sums. Blocks of images as in
    ``_backward_padded``. NHWC: grad_output is gathered into NCHW order in
    ``grads``, and whole images of several channels go through the blocks'
    NCHW copies ``x_chw`` and ``gi_chw`` (else empty, and the input's
    channels are gathered into the shifted planes). Each image
    goes in ``n_bands`` bands of output rows (see ``_bands`` in the package):
    a band's planes hold the input rows it reads, so big images fit the
    working-memory budget; grad_input rows two bands read get both bands' sums,
    one after the other within the task.
    """
    for block in prange(totals.shape[0]):
        _shifted_block(
            block, x, g, w, gi, pt, pl, dh, dw, groups, n_bands, images, gi_planes, grads, totals,
            bias, cols, nhwc, x_chw, gi_chw,
        )  # fmt: skip


@njit(cache=CACHE, fastmath=FASTMATH)
def _shifted_block(
    block, x, g, w, gi, pt, pl, dh, dw, groups, n_bands, images, gi_planes, grads, totals, bias,
    cols, nhwc, x_chw, gi_chw,
):  # fmt: skip
    """One task of ``_backward_shifted``: its block of images, into its own workspaces.

    grad_input by weighted columns (``_input_columns``) when the weight has few
    columns per output channel, else by the 4 x 4 channel blocks' axpys.
    NHWC with ``x_chw`` and ``gi_chw`` (blocks, C_in, H, W) not empty
    (whole images, one band, more than one channel): each image and its
    grad_input are transposed into the block's copies, grad_input summed
    there and written back, so the planes take the NCHW rows' vector steps
    (``_rows.py``) instead of a channel's pixels one at a time. An NHWC
    image of one channel is its NCHW plane: it and its grad_input are used
    where they lie, as NCHW.
    """
    x, g, w, gi = _borrowed(x), _borrowed(g), _borrowed(w), _borrowed(gi)
    images, gi_planes, grads = _borrowed(images), _borrowed(gi_planes), _borrowed(grads)
    totals, bias, cols = _borrowed(totals), _borrowed(bias), _borrowed(cols[block])
    n_batch, c_in = x.shape[0], images.shape[1]
    c_out = bias.shape[1]
    out_h, out_w = (g.shape[1], g.shape[2]) if nhwc else (g.shape[2], g.shape[3])
    cin_g, cout_g = c_in // groups, c_out // groups
    co_blocks = (cout_g + BLOCK - 1) // BLOCK
    ci_blocks = (cin_g + BLOCK - 1) // BLOCK
    n_blocks, kw, reach = totals.shape[0], images.shape[2], (w.shape[2] - 1) * dh
    height, width = (x.shape[1], x.shape[2]) if nhwc else (x.shape[2], x.shape[3])
    plane = images.shape[3] * out_w
    xf = images[block].reshape(c_in, kw, plane)
    gipf = gi_planes[block].reshape(c_in, kw, plane)
    kh = w.shape[2]
    wcols = _groups_weight_columns(w, groups, cols.shape[0])
    via_chw = nhwc and c_in > 1 and x_chw.shape[1] > 0
    for n in range(block * n_batch // n_blocks, (block + 1) * n_batch // n_blocks):
        if not nhwc:
            gf = g[n].reshape(c_out, out_h * out_w)
        # where the planes come from and grad_input's planes are added
        x_to, gi_to, n_to, nhwc_to = x, gi, n, nhwc
        if nhwc and c_in == 1:  # one channel: an NHWC image is its NCHW plane, where it lies
            x_to = x.reshape(n_batch, 1, height, width)
            gi_to, nhwc_to = gi.reshape(n_batch, 1, height, width), 0
        elif via_chw:  # grad_input's values too, so that its sums run in the same order
            _gather_grad(x[n], x_chw[block].reshape(c_in, height * width))
            _gather_grad(gi[n], gi_chw[block].reshape(c_in, height * width))
            x_to, gi_to = x_chw[block : block + 1], gi_chw[block : block + 1]
            n_to, nhwc_to = 0, 0
        for band in range(n_bands):
            i0, i1 = band_rows(band, n_bands, out_h, 1, pt, reach + 1, height)[:2]
            rows, length = i1 - i0 + reach, (i1 - i0) * out_w  # padded rows i0 .. i1 + reach
            for c in range(c_in):
                for q in range(kw):
                    if nhwc_to or x_to.strides[3] != x_to.itemsize:
                        target = images[block, c, q, :rows]
                        _shift_plane(x[n], c, pt - i0, pl - q * dw, target, nhwc)
                        continue
                    shifted_rows(
                        images, ((block * c_in + c) * kw + q) * plane, rows, out_w, x_to,
                        (n_to * x_to.strides[0] + c * x_to.strides[1]) // x_to.itemsize,
                        x_to.strides[2] // x_to.itemsize, pt - i0, height, width, pl - q * dw,
                    )  # fmt: skip
            gbase = i0 * out_w
            if nhwc:
                gf = grads[block]
                _gather_grad(g[n, i0:i1], gf)
                gbase = 0
            for group in range(groups):
                for co_block in range(co_blocks):
                    co0 = group * cout_g + co_block * BLOCK
                    co1 = min(co0 + BLOCK, (group + 1) * cout_g)
                    for ci_block in range(ci_blocks):
                        # grad_output's rows are summed for grad_bias here, once
                        bias_sums = bias[block, : 0 if ci_block else c_out]
                        _weight_block(
                            xf, gf, totals[block], group, co0, co1, ci_block * BLOCK,
                            1, 1, dh, dw, out_w, 0, length, True, gbase, bias_sums,
                        )  # fmt: skip
                if cols.shape[0]:
                    _input_columns(
                        gf, wcols[group], gipf, gi_to, n_to, 1, group * cin_g, cin_g, kh, kw,
                        group * cout_g, 1, 1, pt, pl, dh, dw, rows, out_w, 0, length, nhwc_to,
                        True, gbase, i0, cols,
                    )  # fmt: skip
                    continue
                for ci_block in range(ci_blocks):
                    _input_block(
                        gf, w, gipf, gi_to, n_to, 1, group, ci_block * BLOCK, 1, 1, pt, pl, dh,
                        dw, rows, out_w, 0, length, nhwc_to, True, gbase, i0,
                    )  # fmt: skip
        if via_chw:
            _put_transposed(gi_chw[block], gi[n])


# grad_input by weighted columns (``_columns.py``) where a block of input
# channels (the fused stride-1 backward: a group's; the single-gradient kernel:
# four) has at most COLUMNS_PASSES * COLUMNS_MAX weight columns per output
# channel, COLUMNS_BYTES of columns at a time. More columns (big kernels) take
# the axpys: big_kernel's 7 x 7 (196 columns, 16 output channels) took 2.5x
# the time by columns, the columns' own loads and stores weighing as much as
# the axpys' with only 16 output channels to sum.
COLUMNS_PASSES = 2
COLUMNS_BYTES = 32 * 2**10


@njit(cache=CACHE)
def takes_columns(n_columns):
    """Whether a block of input channels with ``n_columns`` weight columns goes by columns."""
    return n_columns <= COLUMNS_PASSES * COLUMNS_MAX


@njit(cache=CACHE)
def columns_shape(n_columns, itemsize):
    """The columns workspace for ``n_columns`` columns: a whole number of vectors of pixels."""
    lanes = VECTOR_BYTES // itemsize
    piece = max(lanes, COLUMNS_BYTES // (n_columns * itemsize) // lanes * lanes)
    return n_columns, piece


@njit(cache=CACHE)
def fused_columns_shape(cin_g, kh, kw, itemsize):
    """The fused backward's columns workspace per block: (0, 0) when it takes axpys."""
    n_columns = cin_g * kh * kw
    return columns_shape(n_columns, itemsize) if takes_columns(n_columns) else (0, 0)


@njit(cache=CACHE)
def _weight_columns(w, group, ci2_0, width_b, wcols):
    """wcols[co2, (b*KH + p)*KW + q] = w[group*C_out/g + co2, ci2_0 + b, p, q]: a block's columns.

    ``w`` as (C_out, C_in/groups, KH, KW), in any memory order (an NHWC weight's
    transposed view).
    """
    cout_g, kh, kw = wcols.shape[0], w.shape[2], w.shape[3]
    for co2 in range(cout_g):
        row = wcols[co2]
        for b in range(width_b):
            for p in range(kh):
                for q in range(kw):
                    row[(b * kh + p) * kw + q] = w[group * cout_g + co2, ci2_0 + b, p, q]


@njit(cache=CACHE)
def _groups_weight_columns(w, groups, n_columns):
    """Each group's weight columns (``_weight_columns``), (groups, C_out/g, n_columns).

    None to fill when ``n_columns`` is 0 (the fused kernel takes the axpys).
    """
    cout_g, cin_g = w.shape[0] // groups, w.shape[1]
    wcols = np.empty((groups, cout_g, n_columns), w.dtype)
    if n_columns:
        for group in range(groups):
            _weight_columns(w, group, 0, cin_g, wcols[group])
    return wcols


@njit(cache=CACHE, fastmath=FASTMATH)
def _input_columns(
    gf, wcols, gif, gi, first, count, ci0, width_b, kh, kw, co0, sh, sw, pt, pl, dh, dw, rows,
    pitch, base, length, nhwc, shifted, gbase, top_row, cols,
):  # fmt: skip
    """``_input_block`` by weighted columns, for input channels ci0 .. ci0 + width_b.

    ``wcols`` holds their weight columns (``_weight_columns``), one row per
    output channel of the group, which starts at ``co0``.
    cols[j, k] = sum over co2 of wcols[co2, j] * gf[co0 + co2, gbase + k], j =
    (b, p, q) (``weighted_columns``: a vector of pixels at a time, up to
    COLUMNS_MAX columns per pass, evenly split; the pixels past the last whole
    vector from a zero-padded copy), a piece of ``cols.shape[1]`` pixels at a
    time, then added into gi plane (ci0 + b, tap (p, q)'s plane) at the tap's
    offset (``_tap``), a tap at a time for all b (each plane entry still gets
    its terms in tap order). The planes are zeroed first and added into gi
    after, as in ``_input_block``. Shifted planes of one image (NCHW rows) whose
    columns fit one piece skip the planes: ``_add_columns_into_gi`` adds the
    columns into gi's rows in the planes' order (the same bits).
    """
    cout_g, n_columns = wcols.shape
    taps, g_stride = kh * kw, gf.shape[1]
    # one image's columns in one piece, added straight into gi's rows (no planes)
    direct = shifted and not nhwc and count == 1 and length <= cols.shape[1]
    direct = direct and gi.strides[3] == gi.itemsize
    for b in range(0 if direct else width_b):
        for phase in range(gif.shape[1]):
            gif[ci0 + b, phase, base : base + count * rows * pitch] = 0
    lanes = VECTOR_BYTES // gif.itemsize
    whole = length - length % lanes
    # the pixels past the last whole vector, zero-padded to one
    last = np.zeros((cout_g, lanes), gif.dtype)
    for co2 in range(cout_g):
        last[co2, : length - whole] = gf[co0 + co2, gbase + whole : gbase + length]
    piece = cols.shape[1]
    passes = -(-n_columns // COLUMNS_MAX)
    for c0 in range(0, length, piece):
        c1 = min(c0 + piece, length)
        for done in range(passes):
            j = done * n_columns // passes
            in_pass = (done + 1) * n_columns // passes - j
            for k0 in range(c0, c1, lanes):
                source, at, stride = gf, co0 * g_stride + gbase + k0, g_stride
                if k0 == whole:
                    source, at, stride = last, 0, lanes
                weighted_columns(
                    wcols, j, n_columns, in_pass, source, at, stride, cout_g, cols,
                    j * piece + k0 - c0, piece,
                )  # fmt: skip
        if direct:
            _add_columns_into_gi(
                cols, gi, first, ci0, width_b, kh, kw, pt, pl, dh, dw, rows, pitch, length, top_row
            )
            return
        # a tap at a time across the channels: taken a channel at a time, each
        # tap's window (in the plane the channel's taps share at stride 1) starts
        # one value past the last one's, and its loads, half-overlapping that
        # loop's recent stores, wait for them (no store forwarding): the dense
        # grad_input took 0.90-0.94x the time so, resnet_s2's the same
        for tap in range(taps):
            phase, offset = _tap(tap // kw, tap % kw, sh, sw, dh, dw, pitch, shifted)
            start = base + offset
            for b in range(width_b):
                target = gif[ci0 + b, phase, start + c0 : start + c1]
                column = cols[b * taps + tap]
                for k in range(c1 - c0):
                    target[k] += column[k]
    _planes_into_gi(
        gif, gi, first, count, ci0, width_b, sh, sw, pt, pl, dw, rows, pitch, base, nhwc,
        shifted, top_row,
    )  # fmt: skip


@njit(cache=CACHE, fastmath=FASTMATH)
def _add_columns_into_gi(
    cols, gi, n, ci0, width_b, kh, kw, pt, pl, dh, dw, rows, pitch, length, top_row
):  # fmt: skip
    """gi[n, ci0:ci0 + width_b] += their weighted columns at the taps' shifts (stride 1, NCHW).

    The columns of one band of output rows (``length`` pixels from row
    ``top_row``, the band's planes ``rows`` tall), in one piece of ``cols``;
    the sums in the order of ``_add_shifted`` over the planes they replace.
    """
    height, width = gi.shape[2], gi.shape[3]
    r0, r1 = max(0, top_row - pt), min(height, top_row - pt + rows)
    steps = gi.strides[0] // gi.itemsize, gi.strides[1] // gi.itemsize
    row_step = gi.strides[2] // gi.itemsize
    for b in range(width_b):
        add_column_taps(
            gi, n * steps[0] + (ci0 + b) * steps[1] + r0 * row_step, row_step, r1 - r0, width,
            cols, b * kh * kw * cols.shape[1], cols.shape[1], length // pitch, pitch,
            r0 + pt - top_row, kh, kw, dh, pl, dw,
        )  # fmt: skip


def _backward_padded(
    x, g, w, gi, gw, gb, sh, sw, pt, pb, pl, pr, dh, dw, groups, n_blocks, n_bands, nhwc
):
    """``backward_nchw_flat`` on padded (phase) planes, either layout.

    For planes with few channels the flat kernels spend most of their time
    moving grad_output: each image's planes are padded (and read for the bias)
    once here, while they sit in cache, and feed both gradients. Parallel over
    ``n_blocks`` fixed blocks of images, so the result does not
    depend on the thread count. Workspaces are allocated here, by NumPy, for
    one band of output rows (``_backward``). The arrays are NHWC if ``nhwc``.
    """
    c_in, _, width = _image_dims(x, nhwc)[1:]
    _, c_out, out_h, _ = _image_dims(g, nhwc)
    kh = w.shape[0] if nhwc else w.shape[2]
    band = -(-out_h // n_bands)  # the longest band's output rows, and the padded rows they read
    reach = (band - 1) * sh + (kh - 1) * dh + 1
    images, grads = _workspaces(
        n_blocks, c_in, c_out, reach, width, band, sh, sw, 0, 0, pl, pr, x.dtype
    )
    gi_planes = line_aligned_empty(images.shape, x.dtype)
    totals = np.zeros((n_blocks, *_weight_totals_shape(gw, nhwc)), dtype=np.float64)
    bias = np.zeros((n_blocks, c_out), dtype=np.float64)
    w = _as_nchw_weight(w, nhwc)
    kw = w.shape[3]
    cols = np.empty((n_blocks, *fused_columns_shape(c_in // groups, kh, kw, x.itemsize)), x.dtype)
    _backward(
        x, g, w, gi, sh, sw, pt, pl, dh, dw, groups, n_bands, images, grads, gi_planes, totals,
        bias, cols, nhwc,
    )  # fmt: skip
    _add_partials(gw, gb, totals, bias, nhwc)


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def _backward(
    x, g, w, gi, sh, sw, pt, pl, dh, dw, groups, n_bands, images, grads, gi_planes, totals, bias,
    cols, nhwc,
):  # fmt: skip
    """The fused backward's blocks of images, one task each (see ``backward_nchw_flat``).

    Each image goes in ``n_bands`` bands of output rows [i0, i1), each padded
    like a problem of its own: it reads input rows [i0*sh - pt, ...) (some of
    them padding), and its grad_input rows are added into gi band after band.
    """
    for block in prange(totals.shape[0]):
        _padded_block(
            block, x, g, w, gi, sh, sw, pt, pl, dh, dw, groups, n_bands, images, grads, gi_planes,
            totals, bias, cols, nhwc,
        )  # fmt: skip


@njit(cache=CACHE, fastmath=FASTMATH)
def _padded_block(
    block, x, g, w, gi, sh, sw, pt, pl, dh, dw, groups, n_bands, images, grads, gi_planes, totals,
    bias, cols, nhwc,
):  # fmt: skip
    """One task of ``_backward``: its block of images, into its own workspaces.

    grad_input by weighted columns or axpys, as in ``_shifted_block``.
    """
    x, g, w, gi = _borrowed(x), _borrowed(g), _borrowed(w), _borrowed(gi)
    images, gi_planes, grads = _borrowed(images), _borrowed(gi_planes), _borrowed(grads)
    totals, bias, cols = _borrowed(totals), _borrowed(bias), _borrowed(cols[block])
    n_batch, c_in = x.shape[0], images.shape[1]
    c_out = grads.shape[1]
    cin_g, cout_g = c_in // groups, c_out // groups
    co_blocks = (cout_g + BLOCK - 1) // BLOCK
    ci_blocks = (cin_g + BLOCK - 1) // BLOCK
    n_blocks = totals.shape[0]
    phases, rows, pitch = images.shape[2], images.shape[3], images.shape[4]
    height = x.shape[1] if nhwc else x.shape[2]
    out_h = g.shape[1] if nhwc else g.shape[2]
    reach = (w.shape[2] - 1) * dh + 1
    no_sums = np.zeros(0)
    xp, gp, gip = images[block], grads[block], gi_planes[block]
    xf = xp.reshape(c_in, phases, rows * pitch)
    gf = gp.reshape(c_out, gp.shape[2] * pitch)
    gipf = gip.reshape(c_in, phases, rows * pitch)
    kh, kw = w.shape[2], w.shape[3]
    wcols = _groups_weight_columns(w, groups, cols.shape[0])
    for n in range(block * n_batch // n_blocks, (block + 1) * n_batch // n_blocks):
        for band in range(n_bands):
            i0, i1, lo, hi, top, _ = band_rows(band, n_bands, out_h, sh, pt, reach, height)
            length = (i1 - i0) * pitch
            if nhwc:
                image = x[n, lo:hi]
                if phases == 1:
                    xp5 = xp.reshape(c_in, 1, 1, rows, pitch)
                    _gather_channels(image, 0, c_in, 0, top, pl, xp5, 0, no_sums)
                else:
                    for c in range(c_in):
                        planes = xp[c].reshape(phases, 1, rows, pitch)
                        _pad_channel(image, c, top, pl, sh, sw, planes, 0)
                gp5 = gp.reshape(c_out, 1, 1, gp.shape[2], pitch)
                _gather_channels(g[n, i0:i1], 0, c_out, 0, 0, 0, gp5, 0, bias[block])
            else:
                for c in range(c_in):
                    planes = xp[c].reshape(phases, 1, rows, pitch)
                    _pad_plane(x[n, c, lo:hi], top, pl, sh, sw, planes, 0)
                for c in range(c_out):
                    one_phase = gp[c].reshape(1, 1, gp.shape[2], pitch)
                    bias[block, c] += _pad_plane(g[n, c, i0:i1], 0, 0, 1, 1, one_phase, 0)
            gi_band = gi[n : n + 1, lo:hi] if nhwc else gi[n : n + 1, :, lo:hi]
            for group in range(groups):
                for co_block in range(co_blocks):
                    co0 = group * cout_g + co_block * BLOCK
                    co1 = min(co0 + BLOCK, (group + 1) * cout_g)
                    for ci_block in range(ci_blocks):
                        ci2_0 = ci_block * BLOCK
                        # grad_bias was summed as grad_output was padded
                        _weight_block(
                            xf, gf, totals[block], group, co0, co1, ci2_0, sh, sw, dh, dw,
                            pitch, 0, length, False, 0, bias[block, :0],
                        )  # fmt: skip
                if cols.shape[0]:
                    _input_columns(
                        gf, wcols[group], gipf, gi_band, 0, 1, group * cin_g, cin_g, kh, kw,
                        group * cout_g, sh, sw, top, pl, dh, dw, rows, pitch, 0, length, nhwc,
                        False, 0, 0, cols,
                    )  # fmt: skip
                    continue
                for ci_block in range(ci_blocks):
                    _input_block(
                        gf, w, gipf, gi_band, 0, 1, group, ci_block * BLOCK, sh, sw, top, pl,
                        dh, dw, rows, pitch, 0, length, nhwc, False, 0, 0,
                    )  # fmt: skip
            if nhwc:
                for r in range(hi - lo):
                    _scatter_nhwc(gipf, 0, gi_band[0], r, top, pl, sh, sw, rows, pitch)
