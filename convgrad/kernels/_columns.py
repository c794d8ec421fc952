"""A register-blocked tile for grad_input with few input channels: weighted columns.

With C_in/groups * KH * KW = J small, grad_input's columns are one matrix product,

    cols[j, k] = sum over co of w[co, j] * g[co, k]      (j = (ci2, p, q)),

added afterwards into the input planes at tap (p, q)'s shift. The flat
kernels' axpys instead add each output channel's term into the planes in
memory (a load and a store of the planes per four output channels); here a
tile of L pixels (one vector register) keeps all ``count`` <= COLUMNS_MAX
columns in registers for the whole sum over output channels: per output
channel one vector load of grad_output and ``count`` multiply-adds with the
weight broadcast from memory.

Written as LLVM IR because numba's loops vectorise only the innermost loop,
which would put the sum over output channels (or the pixels) in memory. The
loop over output channels is a plain counted loop; one copy of it per count
(a ``switch``, ``switch_on_count``), since the registers must be named when
the code is built.

The kernels that call into this file (``nchw_flat.py``; through ``_lanes.py``,
``depthwise_tiles.py``) are cached on disk by their own source: after editing
this file, delete their cached code in ``kernels/__pycache__``.
"""

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _vector_registers() -> tuple[int, int]:
    """(bytes per vector register, vector registers) of the CPU numba compiles for."""
    features = llvm.get_host_cpu_features().flatten().split(",")
    if "+avx512f" in features:
        return 64, 32
    if "+avx" in features:
        return 32, 16
    return 16, 16 if llvm.get_process_triple().startswith("x86") else 32


VECTOR_BYTES, VECTOR_REGISTERS = _vector_registers()
# The columns' accumulators, leaving registers for grad_output's vector, a
# broadcast weight and the loop (27: a 3 x 3 kernel on RGB in one pass).
COLUMNS_MAX = VECTOR_REGISTERS - 5


def switch_on_count(builder, count, most, name, body) -> None:
    """Emit ``body(n)`` for the run-time ``count`` == n, 1 <= n <= most; other counts do nothing.

    One copy of the code per count: its registers must be named when it is built.
    """
    done = builder.append_basic_block(f"{name}.done")
    switch = builder.switch(count, done)
    for n in range(1, most + 1):
        case = builder.append_basic_block(f"{name}.{n}")
        switch.add_case(ir.Constant(count.type, n), case)
        builder.position_at_end(case)
        body(n)
        builder.branch(done)
    builder.position_at_end(done)


def c_float_arrays(*arrays) -> bool:
    """Whether every argument type is a C-contiguous float32 or float64 array, all of one dtype."""
    return all(
        isinstance(a, types.Array)
        and a.layout == "C"
        and a.dtype in (types.float32, types.float64)
        and a.dtype == arrays[0].dtype
        for a in arrays
    )


@intrinsic
def weighted_columns(
    typingctx, w, w_at, w_stride, count, g, g_at, g_stride, steps, cols, c_at, c_stride
):
    """A tile of weighted columns: ``count`` columns of L pixels, summed over ``steps`` channels.

    cols.flat[c_at + j*c_stride + i] = sum over m < steps of
    w.flat[w_at + m*w_stride + j] * g.flat[g_at + m*g_stride + i], for j < count, i < L;
    L = VECTOR_BYTES / itemsize pixels; 1 <= count <= COLUMNS_MAX (other counts
    write nothing). C-contiguous float arrays of one dtype; the caller keeps
    every index in bounds.
    """
    if not c_float_arrays(w, g, cols):
        return None
    signature = types.void(
        w, types.intp, types.intp, types.intp, g, types.intp, types.intp, types.intp, cols,
        types.intp, types.intp,
    )  # fmt: skip

    def codegen(context, builder, sig, args):
        w_value, w_at, w_stride, count, g_value, g_at, g_stride, steps, c_value, c_at, c_stride = (
            args
        )
        weights = context.make_array(sig.args[0])(context, builder, w_value).data
        grads = context.make_array(sig.args[4])(context, builder, g_value).data
        columns = context.make_array(sig.args[8])(context, builder, c_value).data
        item = context.get_data_type(sig.args[0].dtype)
        width = context.get_abi_sizeof(item)
        lanes = VECTOR_BYTES // width
        vector = ir.VectorType(item, lanes)
        fma = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(vector, [vector, vector, vector]),
            f"llvm.fma.v{lanes}f{8 * width}",
        )
        zero = ir.Constant(vector, [ir.Constant(item, 0.0)] * lanes)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
        lane0 = ir.Constant(ir.IntType(32), 0)

        def vector_at(base, at):
            return builder.bitcast(builder.gep(base, [at]), vector.as_pointer())

        def columns_of(n):  # the loop over output channels with n accumulators
            sums = [cgutils.alloca_once_value(builder, zero) for _ in range(n)]
            with cgutils.for_range(builder, steps) as loop:
                m = loop.index
                g_vector = builder.load(
                    vector_at(grads, builder.add(g_at, builder.mul(m, g_stride))), align=width
                )
                row = builder.add(w_at, builder.mul(m, w_stride))
                for j in range(n):
                    at = builder.add(row, ir.Constant(row.type, j))
                    weight = builder.load(builder.gep(weights, [at]))
                    spread = builder.shuffle_vector(
                        builder.insert_element(ir.Constant(vector, ir.Undefined), weight, lane0),
                        ir.Constant(vector, ir.Undefined),
                        splat,
                    )
                    builder.store(
                        builder.call(fma, [spread, g_vector, builder.load(sums[j])]), sums[j]
                    )
            for j in range(n):
                at = builder.add(c_at, builder.mul(ir.Constant(c_at.type, j), c_stride))
                builder.store(builder.load(sums[j]), vector_at(columns, at), align=width)

        switch_on_count(builder, count, COLUMNS_MAX, "columns", columns_of)
        return context.get_dummy_value()

    return signature, codegen
