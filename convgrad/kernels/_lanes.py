"""Vector-register steps of the depthwise tiles (``depthwise_tiles.py``): one block of channels.

A depthwise tile holds a block of L channels (L = one vector register's
lanes) for every pixel, channels innermost, so each pixel's block is one
vector and every channel's arithmetic is the same lane of the same
instruction. The steps:

- ``tap_sums``: over a run of pixels, the multiply-adds of a patch of kernel
  taps (whole kernel rows, up to TAPS_MAX taps) into their sums, kept in
  registers for the whole run (grad_weight, and grad_bias with a vector of
  ones for the input);
- ``tap_gather``: a run of grad_input pixels, each the sum over a patch of
  taps of weight times grad_output, with the taps' weights held in registers;
- ``lanes_of``: L itself, a constant the compiler can fold;
- ``lanes_move``: one pixel's block from or to a layout's array, a plain
  vector load or store where the channels are contiguous (NHWC) and a gather
  or scatter where they are a plane apart (NCHW);
- ``lanes_transpose``: L x L values in registers, so that L of NCHW's planes
  (L pixels of each) become L pixels' blocks, or back, without a gather or
  scatter per pixel.

Written as LLVM IR for the reason ``_columns.py`` gives: numba vectorises only
innermost loops, so loops over pixels with the channels in the lanes would
keep the sums in memory, and a loop over a block's few lanes is not
vectorised at all. One copy of a loop per tap count (a ``switch``), since the
registers must be named when the code is built. Arrays are C-contiguous of
one float dtype and addressed by flat offsets; the caller keeps every vector
in bounds.

The code these steps emit is compiled into the kernels that call them, and
numba's disk cache keys those kernels on their own module's source: after
editing this file, delete the cached kernels (``depthwise_tiles.*`` in
``kernels/__pycache__``) or they run the old steps.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._columns import VECTOR_BYTES, c_float_arrays, switch_on_count

# Taps of one call: whole kernel rows of at most this many taps together (wider
# rows are split by the caller): a 3 x 3 kernel in one call, 5 x 5 a row at a
# time (three rows at once, 15 taps, took 1.07x the time on 14 x 14 images).
TAPS_MAX = 9


class _Vectors:
    """IR helpers for one dtype's vector registers."""

    def __init__(self, context, builder, dtype):
        self.builder = builder
        self.item = context.get_data_type(dtype)
        self.width = context.get_abi_sizeof(self.item)
        self.lanes = VECTOR_BYTES // self.width
        self.vector = ir.VectorType(self.item, self.lanes)
        self.zero = ir.Constant(self.vector, [ir.Constant(self.item, 0.0)] * self.lanes)
        self.fma = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(self.vector, [self.vector] * 3),
            f"llvm.fma.v{self.lanes}f{8 * self.width}",
        )

    def pointer(self, data, at):
        """The vector at flat offset ``at`` of an array's data."""
        return self.builder.bitcast(self.builder.gep(data, [at]), self.vector.as_pointer())

    def load(self, data, at):
        return self.builder.load(self.pointer(data, at), align=self.width)

    def store(self, value, data, at):
        self.builder.store(value, self.pointer(data, at), align=self.width)


def _data(context, builder, array_type, value):
    return context.make_array(array_type)(context, builder, value).data


@intrinsic
def lanes_of(typingctx, array):
    """L, the lanes of one vector register of ``array``'s dtype, as a compile-time constant.

    Index arithmetic with a constant L compiles to shifts and fixed offsets; L
    known only at run time (``VECTOR_BYTES // x.itemsize`` in numba) took the
    tiles kernel 1.3-1.5x the time.
    """
    if not c_float_arrays(array):
        return None

    def codegen(context, builder, sig, args):
        width = context.get_abi_sizeof(context.get_data_type(sig.args[0].dtype))
        return context.get_constant(types.intp, VECTOR_BYTES // width)

    return types.intp(array), codegen


def _tap_offsets(builder, n, row_step, col_step, cols):
    """The offsets (t // cols)*row_step + (t % cols)*col_step of taps t < n, rows of ``cols``."""
    offsets = []
    for t in range(n):
        tap = ir.Constant(cols.type, t)
        row, col = builder.sdiv(tap, cols), builder.srem(tap, cols)
        offsets.append(builder.add(builder.mul(row, row_step), builder.mul(col, col_step)))
    return offsets


@intrinsic
def tap_sums(
    typingctx, acc, acc_at, x, x_at, x_step, row_step, col_step, cols, taps, g, g_at, g_step, count
):
    """The sums of a patch of taps over a run of pixels, added into ``acc``.

        acc[acc_at + t*L + l] += sum over k < count of
                                 x[x_at + k*x_step + offset(t) + l] * g[g_at + k*g_step + l]

    for every tap t < taps (1..TAPS_MAX) and lane l < L, the taps in rows of
    ``cols``: offset(t) = (t // cols)*row_step + (t % cols)*col_step. The sums
    stay in registers over the ``count`` pixels and are added into ``acc`` once.
    """
    if not c_float_arrays(acc, x, g):
        return None
    intp = types.intp
    signature = types.void(acc, intp, x, intp, intp, intp, intp, intp, intp, g, intp, intp, intp)

    def codegen(context, builder, sig, args):
        acc_value, acc_at, x_value, x_at, x_step, row_step, col_step, cols, taps = args[:9]
        g_value, g_at, g_step, count = args[9:]
        v = _Vectors(context, builder, sig.args[0].dtype)
        sums_data = _data(context, builder, sig.args[0], acc_value)
        x_data = _data(context, builder, sig.args[2], x_value)
        g_data = _data(context, builder, sig.args[9], g_value)

        def sums_of(n):
            offsets = _tap_offsets(builder, n, row_step, col_step, cols)
            sums = [cgutils.alloca_once_value(builder, v.zero) for _ in range(n)]
            with cgutils.for_range(builder, count) as loop:
                k = loop.index
                grads = v.load(g_data, builder.add(g_at, builder.mul(k, g_step)))
                first = builder.add(x_at, builder.mul(k, x_step))
                for t in range(n):
                    inputs = v.load(x_data, builder.add(first, offsets[t]))
                    builder.store(
                        builder.call(v.fma, [inputs, grads, builder.load(sums[t])]), sums[t]
                    )
            for t in range(n):
                at = builder.add(acc_at, ir.Constant(acc_at.type, t * v.lanes))
                v.store(builder.fadd(v.load(sums_data, at), builder.load(sums[t])), sums_data, at)

        switch_on_count(builder, taps, TAPS_MAX, "tap_sums", sums_of)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def tap_gather(
    typingctx, dst, dst_at, dst_step, w, w_at, taps, g, g_at, g_step, row_step, col_step, cols,
    count, add,
):  # fmt: skip
    """A run of pixels, each the weighted sum of a patch of taps.

        dst[dst_at + k*dst_step + l] (+)= sum over t < taps of
                                          w[w_at + t*L + l] * g[g_at + k*g_step - offset(t) + l]

    for every pixel k < count and lane l < L, offset(t) as in ``tap_sums``; the
    taps' weights are loaded into registers once. ``add`` False overwrites
    ``dst``, True adds into it.
    """
    if not c_float_arrays(dst, w, g) or not isinstance(add, types.Boolean):
        return None
    intp = types.intp
    signature = types.void(
        dst, intp, intp, w, intp, intp, g, intp, intp, intp, intp, intp, intp, add
    )

    def codegen(context, builder, sig, args):
        d_value, d_at, d_step, w_value, w_at, taps, g_value, g_at, g_step = args[:9]
        row_step, col_step, cols, count, add = args[9:]
        v = _Vectors(context, builder, sig.args[0].dtype)
        d_data = _data(context, builder, sig.args[0], d_value)
        w_data = _data(context, builder, sig.args[3], w_value)
        g_data = _data(context, builder, sig.args[6], g_value)

        def gather_of(n):
            offsets = _tap_offsets(builder, n, row_step, col_step, cols)
            weights = [
                v.load(w_data, builder.add(w_at, ir.Constant(w_at.type, t * v.lanes)))
                for t in range(n)
            ]
            with cgutils.for_range(builder, count) as loop:
                k = loop.index
                first = builder.add(g_at, builder.mul(k, g_step))
                total = v.zero
                for t in range(n):
                    grads = v.load(g_data, builder.sub(first, offsets[t]))
                    total = builder.call(v.fma, [weights[t], grads, total])
                at = builder.add(d_at, builder.mul(k, d_step))
                before = builder.select(add, v.load(d_data, at), v.zero)
                v.store(builder.fadd(before, total), d_data, at)

        switch_on_count(builder, taps, TAPS_MAX, "tap_gather", gather_of)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def lanes_move(typingctx, dst, dst_at, dst_stride, src, src_at, src_stride):
    """dst[dst_at + l*dst_stride] = src[src_at + l*src_stride] for every lane l < L.

    A stride of 1 is a plain vector load or store; any other a gather or scatter.
    """
    if not c_float_arrays(dst, src):
        return None
    intp = types.intp
    signature = types.void(dst, intp, intp, src, intp, intp)

    def codegen(context, builder, sig, args):
        d_value, d_at, d_stride, s_value, s_at, s_stride = args
        v = _Vectors(context, builder, sig.args[0].dtype)
        d_data = _data(context, builder, sig.args[0], d_value)
        s_data = _data(context, builder, sig.args[3], s_value)
        index = s_at.type
        i32 = ir.IntType(32)
        indices = ir.VectorType(index, v.lanes)
        pointers = ir.VectorType(d_data.type, v.lanes)
        mask = ir.VectorType(ir.IntType(1), v.lanes)
        every_lane = ir.Constant(mask, [ir.Constant(ir.IntType(1), 1)] * v.lanes)
        lane_numbers = ir.Constant(indices, [ir.Constant(index, lane) for lane in range(v.lanes)])
        one = ir.Constant(index, 1)

        def spread(value):
            vector = builder.insert_element(ir.Constant(indices, ir.Undefined), value, i32(0))
            every = ir.Constant(ir.VectorType(i32, v.lanes), [0] * v.lanes)
            return builder.shuffle_vector(vector, ir.Constant(indices, ir.Undefined), every)

        def addresses(data, at, stride):
            offsets = builder.add(spread(at), builder.mul(lane_numbers, spread(stride)))
            start = spread(builder.ptrtoint(data, index))
            byte_offsets = builder.mul(offsets, spread(ir.Constant(index, v.width)))
            return builder.inttoptr(builder.add(start, byte_offsets), pointers)

        alignment = ir.Constant(i32, v.width)
        with builder.if_else(builder.icmp_signed("==", s_stride, one)) as (contiguous, strided):
            with contiguous:
                loaded = v.load(s_data, s_at)
                loaded_block = builder.block
            with strided:
                gather = cgutils.get_or_insert_function(
                    builder.module,
                    ir.FunctionType(v.vector, [pointers, i32, mask, v.vector]),
                    f"llvm.masked.gather.v{v.lanes}f{8 * v.width}.v{v.lanes}p0",
                )
                undefined = ir.Constant(v.vector, ir.Undefined)
                where = addresses(s_data, s_at, s_stride)
                gathered = builder.call(gather, [where, alignment, every_lane, undefined])
                gathered_block = builder.block
        value = builder.phi(v.vector)
        value.add_incoming(loaded, loaded_block)
        value.add_incoming(gathered, gathered_block)
        with builder.if_else(builder.icmp_signed("==", d_stride, one)) as (contiguous, strided):
            with contiguous:
                v.store(value, d_data, d_at)
            with strided:
                scatter = cgutils.get_or_insert_function(
                    builder.module,
                    ir.FunctionType(ir.VoidType(), [v.vector, pointers, i32, mask]),
                    f"llvm.masked.scatter.v{v.lanes}f{8 * v.width}.v{v.lanes}p0",
                )
                where = addresses(d_data, d_at, d_stride)
                builder.call(scatter, [value, where, alignment, every_lane])
        return context.get_dummy_value()

    return signature, codegen


def _transpose(builder, rows, lanes):
    """The L x L transpose of ``rows`` (L vectors), by log2(L) rounds of two-vector shuffles.

    Round h (L/2, L/4, ..., 1) swaps, for each pair of rows i and i + h (i & h == 0), the
    off-diagonal h x h blocks: after all rounds row k holds lane k of every input row.
    """
    i32 = ir.IntType(32)
    h = lanes // 2
    while h:
        low, high = [], []
        for p in range(lanes):
            block, offset = divmod(p, 2 * h)
            start = block * 2 * h
            if offset < h:
                low.append(start + offset)
                high.append(start + h + offset)
            else:
                low.append(lanes + start + offset - h)
                high.append(lanes + start + offset)
        low_mask = ir.Constant(ir.VectorType(i32, lanes), low)
        high_mask = ir.Constant(ir.VectorType(i32, lanes), high)
        new = list(rows)
        for i in range(lanes):
            if i & h:
                continue
            new[i] = builder.shuffle_vector(rows[i], rows[i + h], low_mask)
            new[i + h] = builder.shuffle_vector(rows[i], rows[i + h], high_mask)
        rows = new
        h //= 2
    return rows


@intrinsic
def lanes_transpose(typingctx, dst, dst_at, dst_step, src, src_at, src_step):
    """dst[dst_at + k*dst_step + r] = src[src_at + r*src_step + k] for r, k < L.

    L vectors in, transposed, L vectors out: L channels' runs of L pixels become L
    pixels' blocks of L channels, or back.
    """
    if not c_float_arrays(dst, src):
        return None
    intp = types.intp
    signature = types.void(dst, intp, intp, src, intp, intp)

    def codegen(context, builder, sig, args):
        d_value, d_at, d_step, s_value, s_at, s_step = args
        v = _Vectors(context, builder, sig.args[0].dtype)
        d_data = _data(context, builder, sig.args[0], d_value)
        s_data = _data(context, builder, sig.args[3], s_value)
        rows = [
            v.load(s_data, builder.add(s_at, builder.mul(ir.Constant(s_at.type, r), s_step)))
            for r in range(v.lanes)
        ]
        for k, row in enumerate(_transpose(builder, rows, v.lanes)):
            v.store(row, d_data, builder.add(d_at, builder.mul(ir.Constant(d_at.type, k), d_step)))
        return context.get_dummy_value()

    return signature, codegen
