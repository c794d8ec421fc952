"""The flat kernels' channel-block steps (``nchw_flat.py``), written in LLVM IR.

- ``dots4x4`` (grad_weight, ``_weight_block``): the dot products of up to
  four windows of the image planes (four input channels, or four kernel taps
  of one channel) with four grad_output planes. Numba's loops kept each sum in
  its own vector register and reduced each across its lanes on its own:
  log2(L) shuffles and adds per sum, 16 x 8 = 128 instructions for float32 on
  AVX-512, against 64 multiply-adds for a 64-value plane (lenet2's). Here the
  sixteen vectors are summed together: each round adds two vectors' halves
  into one (the low halves of every lane group side by side, plus the high
  halves), so L vectors become one vector of their L sums in L - 1
  two-shuffle-and-add steps (45 instructions for float32 on AVX-512).
- ``axpys4x4`` (grad_input, ``_input_block``): up to four gi planes += the
  weighted sum of four grad_output planes, the weights in registers. As numba
  functions the axpys had to be called, not inlined, to skip LLVM's run-time
  overlap checks, and each call passed nine arrays.

Tails shorter than a vector are read and written with masked loads and
stores. Arrays are of one float dtype and addressed by flat offsets; the
caller keeps every value in bounds. Explicit vectors of the CPU's widest
registers (``_columns.VECTOR_BYTES``), for the reason ``_columns.py`` gives.

The kernels that call into this file are cached on disk by their own source:
after editing it, delete ``nchw_flat.*`` in ``kernels/__pycache__``.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._columns import c_float_arrays, switch_on_count
from ._lanes import _data, _Vectors

BLOCK = 4  # windows, and grad_output planes, of one call


def _halves(builder, first, second, group, lanes):
    """first and second's lane groups of ``group`` lanes, each folded to group/2 lanes.

    The result holds first's folded groups, then second's: lane groups of
    half the size, each the sum of the two halves of one input group.
    """
    i32 = ir.IntType(32)
    half = group // 2
    low, high = [], []
    for vector_start in (0, lanes):
        for start in range(0, lanes, group):
            low.extend(vector_start + start + k for k in range(half))
            high.extend(vector_start + start + half + k for k in range(half))
    low_lanes = builder.shuffle_vector(first, second, ir.Constant(ir.VectorType(i32, lanes), low))
    high_lanes = builder.shuffle_vector(first, second, ir.Constant(ir.VectorType(i32, lanes), high))
    return builder.fadd(low_lanes, high_lanes)


def lane_sums(builder, vectors, lanes):
    """Vectors of L lanes -> the sums of their lanes, L sums per vector, in order.

    ``len(vectors)`` is a multiple of L; result vector m holds the sums of
    vectors m*L ... m*L + L - 1.
    """
    out = []
    for first in range(0, len(vectors), lanes):
        level, group = vectors[first : first + lanes], lanes
        while group > 1:
            level = [
                _halves(builder, level[i], level[i + 1], group, lanes)
                for i in range(0, len(level), 2)
            ]
            group //= 2
        out.extend(level)
    return out


@intrinsic
def dots4x4(typingctx, x, x0, x1, x2, x3, g, g0, g1, g2, g3, count, windows):
    """The dot products of ``windows`` (1..4) windows of ``x`` with four of ``g``, then their sums.

        sums[i*4 + j] = sum over k < count of x[x_i + k] * g[g_j + k]    (i < windows, j < 4)
        sums[16 + j]  = sum over k < count of g[g_j + k]

    and 0 for i >= windows (those windows are not read). The last four come
    from the same loads (grad_bias's sums); a caller that leaves them unused
    leaves them out of the compiled code. One copy of the loop per window
    count (``switch_on_count``); a literal count compiles to its copy alone.
    """
    if not c_float_arrays(x, g):
        return None
    intp = types.intp
    signature = types.UniTuple(x.dtype, BLOCK * BLOCK + BLOCK)(
        x, intp, intp, intp, intp, g, intp, intp, intp, intp, intp, intp
    )

    def codegen(context, builder, sig, args):
        x_value, g_value, count, windows = args[0], args[5], args[10], args[11]
        x_starts, g_starts = args[1:5], args[6:10]
        v = _Vectors(context, builder, sig.args[0].dtype)
        x_data = _data(context, builder, sig.args[0], x_value)
        g_data = _data(context, builder, sig.args[5], g_value)
        sums = [cgutils.alloca_once_value(builder, v.zero) for _ in range(BLOCK * BLOCK + BLOCK)]

        def multiply_add(load, n):
            xs = [load(x_data, start) for start in x_starts[:n]]
            gs = [load(g_data, start) for start in g_starts]
            for i in range(n):
                for j in range(BLOCK):
                    total = sums[i * BLOCK + j]
                    builder.store(builder.call(v.fma, [xs[i], gs[j], builder.load(total)]), total)
            for j in range(BLOCK):
                total = sums[BLOCK * BLOCK + j]
                builder.store(builder.fadd(gs[j], builder.load(total)), total)

        def accumulate(n):
            _vectors_then_tail(builder, v, count, lambda load, store: multiply_add(load, n))

        switch_on_count(builder, windows, BLOCK, "dots4x4", accumulate)
        values = [builder.load(total) for total in sums]
        values += [v.zero] * (-len(values) % v.lanes)
        summed = lane_sums(builder, values, v.lanes)
        result = cgutils.get_null_value(context.get_value_type(sig.return_type))
        for m in range(BLOCK * BLOCK + BLOCK):
            vector, lane = divmod(m, v.lanes)
            item = builder.extract_element(summed[vector], ir.Constant(ir.IntType(32), lane))
            result = builder.insert_value(result, item, m)
        return result

    return signature, codegen


def _lane_numbers(v, index):
    """The vector 0, 1, ..., L - 1 of integers of type ``index``."""
    return ir.Constant(
        ir.VectorType(index, v.lanes), [ir.Constant(index, k) for k in range(v.lanes)]
    )


def _splat(builder, value, lanes):
    """A vector of ``lanes`` copies of ``value``."""
    vector_type = ir.VectorType(value.type, lanes)
    one = builder.insert_element(
        ir.Constant(vector_type, ir.Undefined), value, ir.Constant(ir.IntType(32), 0)
    )
    every = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
    return builder.shuffle_vector(one, one, every)


@intrinsic
def axpys4x4(
    typingctx, d, d0, d1, d2, d3, w, w_at, w_source_step, w_target_step, s, s0, s1, s2, s3,
    count, targets, sources,
):  # fmt: skip
    """Up to four windows of ``d`` += weighted sums of up to four windows of ``s``.

        d[d_i + k] += sum over j < sources of w[w_at + j*w_source_step + i*w_target_step]
                                              * s[s_j + k]

    for i < targets (1..4), j < sources (1..4), k < count. The weights are
    broadcast into registers once; each vector of the sources feeds every
    target. ``w`` may be any strided float array of the dtype (steps in items);
    the windows of ``d`` must not overlap each other or those of ``s``. One
    copy of the loop per (targets, sources).
    """
    if not c_float_arrays(d, s) or not (isinstance(w, types.Array) and w.dtype == d.dtype):
        return None
    intp = types.intp
    signature = types.void(
        d, intp, intp, intp, intp, w, intp, intp, intp, s, intp, intp, intp, intp, intp, intp,
        intp,
    )  # fmt: skip

    def codegen(context, builder, sig, args):
        d_value, w_value, w_at, w_source_step, w_target_step, s_value = args[0], *args[5:10]
        d_starts, s_starts = args[1:5], args[10:14]
        count, targets, sources = args[14:]
        v = _Vectors(context, builder, sig.args[0].dtype)
        d_data = _data(context, builder, sig.args[0], d_value)
        w_data = _data(context, builder, sig.args[5], w_value)
        s_data = _data(context, builder, sig.args[9], s_value)
        index = count.type

        def weight(i, j):
            at = builder.add(
                w_at,
                builder.add(
                    builder.mul(ir.Constant(index, j), w_source_step),
                    builder.mul(ir.Constant(index, i), w_target_step),
                ),
            )
            return _splat(builder, builder.load(builder.gep(w_data, [at])), v.lanes)

        def pass_of(n_targets, n_sources):
            weights = [[weight(i, j) for j in range(n_sources)] for i in range(n_targets)]

            def step(load, store):
                values = [load(s_data, start) for start in s_starts[:n_sources]]
                for i in range(n_targets):
                    total = load(d_data, d_starts[i])
                    for j in range(n_sources):
                        total = builder.call(v.fma, [weights[i][j], values[j], total])
                    store(total, d_data, d_starts[i])

            _vectors_then_tail(builder, v, count, step)

        switch_on_count(
            builder,
            targets,
            BLOCK,
            "axpys4x4",
            lambda n_targets: switch_on_count(
                builder,
                sources,
                BLOCK,
                f"axpys4x4.{n_targets}",
                lambda n_sources: pass_of(n_targets, n_sources),
            ),
        )
        return context.get_dummy_value()

    return signature, codegen


def _vectors_then_tail(builder, v, count, step):
    """``step(load, store)`` for each whole vector of ``count`` values, then the masked rest.

    ``load(data, start)`` and ``store(value, data, start)`` address the vector
    at flat offset start + k (k the vector's first value); the rest's lanes
    past ``count`` are neither read nor written.
    """
    index = count.type
    lanes = ir.Constant(index, v.lanes)
    whole = builder.sdiv(count, lanes)
    done = builder.mul(whole, lanes)
    left = builder.sub(count, done)
    with cgutils.for_range(builder, whole) as loop:
        shift = builder.mul(loop.index, lanes)
        step(
            lambda data, start: v.load(data, builder.add(start, shift)),
            lambda value, data, start: v.store(value, data, builder.add(start, shift)),
        )
    mask = builder.icmp_signed("<", _lane_numbers(v, index), _splat(builder, left, v.lanes))
    masked_load, masked_store = _masked_access(builder, v, mask.type)
    alignment = ir.Constant(ir.IntType(32), v.width)
    with builder.if_then(builder.icmp_signed(">", left, ir.Constant(index, 0))):
        step(
            lambda data, start: builder.call(
                masked_load, [v.pointer(data, builder.add(start, done)), alignment, mask, v.zero]
            ),
            lambda value, data, start: builder.call(
                masked_store, [value, v.pointer(data, builder.add(start, done)), alignment, mask]
            ),
        )


def _masked_access(builder, v, mask_type):
    """LLVM's masked vector load and store for ``v``'s vectors."""
    pointer, i32 = v.vector.as_pointer(), ir.IntType(32)
    suffix = f"v{v.lanes}f{8 * v.width}.p0"
    load = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(v.vector, [pointer, i32, mask_type, v.vector]),
        f"llvm.masked.load.{suffix}",
    )
    store = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(ir.VoidType(), [v.vector, pointer, i32, mask_type]),
        f"llvm.masked.store.{suffix}",
    )
    return load, store
