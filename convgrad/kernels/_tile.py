"""A register tile of a matrix product: the inner step of the explicit gemm (``gemm_tiles.py``).

    tile[i*NR + j] = sum over k < count of a[a_at + i*a_row + k*a_step] * b[b_at + k*b_row + j]

for i < MR rows and j < NR = NV*L columns (L: one vector register's lanes): A
read through any strides, B's rows with their NR columns contiguous.
The MR x NV vectors of sums stay in registers for the whole sum over k; per k,
NV vector loads of B and MR broadcasts of A feed MR*NV multiply-adds. That is
the shape of the inner kernels of BLIS and OpenBLAS, and numba cannot emit it
from plain loops (it vectorises only innermost loops, which would keep the
sums in memory), so it is written as LLVM IR, as ``_columns.py`` explains.

Shapes by the CPU's vector registers: 32 (AVX-512) take 6 x 4 vectors (24
sums, 4 loads of B, 1 broadcast: 29 of 32 registers); 16 (AVX2 and others)
take 6 x 2. Measured on a 2-core AMD EPYC (Zen 5), float32, k = 256 in L1: 6 x
4 vectors 270 GFLOP/s per core, 98 % of its two 512-bit FMAs a cycle; 12 x 2
(the broadcasts outnumbering the multiply-adds per load) 138, 14 x 2 267, 24 x
1 251, 8 x 3 225.

The kernel calling this step (``gemm_tiles.py``) is cached on disk by its own
source: after editing this file, delete its cached code in
``kernels/__pycache__`` (``gemm_tiles.*``).
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._columns import VECTOR_BYTES, VECTOR_REGISTERS, c_float_arrays
from ._lanes import _data, _Vectors

TILE_ROWS = 6  # MR
TILE_VECTORS = 4 if VECTOR_REGISTERS >= 32 else 2  # NV
TILE_COLUMNS_BYTES = TILE_VECTORS * VECTOR_BYTES  # NR values of any dtype


@intrinsic
def tile_columns(typingctx, array):
    """NR = TILE_VECTORS * L, the tile's columns for ``array``'s dtype, as a constant."""
    if not c_float_arrays(array):
        return None

    def codegen(context, builder, sig, args):
        v = _Vectors(context, builder, sig.args[0].dtype)
        return context.get_constant(types.intp, TILE_VECTORS * v.lanes)

    return types.intp(array), codegen


@intrinsic
def tile_product(typingctx, tile, a, a_at, a_row, a_step, b, b_at, b_row, count):
    """tile[i*NR + j] = sum over k < count of a[a_at + i*a_row + k*a_step] * b[b_at + k*b_row + j].

    Written, not added: all MR x NR entries (zeros when ``count`` is 0). All
    three arrays C-contiguous of one float dtype; the caller keeps the panels
    in bounds.
    """
    if not c_float_arrays(tile, a, b):
        return None
    intp = types.intp
    signature = types.void(tile, a, intp, intp, intp, b, intp, intp, intp)

    def codegen(context, builder, sig, args):
        tile_value, a_value, a_at, a_row, a_step, b_value, b_at, b_row, count = args
        v = _Vectors(context, builder, sig.args[0].dtype)
        tile_data = _data(context, builder, sig.args[0], tile_value)
        a_data = _data(context, builder, sig.args[1], a_value)
        b_data = _data(context, builder, sig.args[5], b_value)
        rows, vectors = TILE_ROWS, TILE_VECTORS
        columns = vectors * v.lanes

        def constant(value):
            return ir.Constant(a_at.type, value)

        sums = [
            [cgutils.alloca_once_value(builder, v.zero) for _ in range(vectors)]
            for _ in range(rows)
        ]
        with cgutils.for_range(builder, count) as loop:
            k = loop.index
            b_first = builder.add(b_at, builder.mul(k, b_row))
            b_vectors = [
                v.load(b_data, builder.add(b_first, constant(j * v.lanes))) for j in range(vectors)
            ]
            a_first = builder.add(a_at, builder.mul(k, a_step))
            for i in range(rows):
                at = builder.add(a_first, builder.mul(constant(i), a_row))
                value = builder.load(builder.gep(a_data, [at]))
                splat = builder.insert_element(
                    ir.Constant(v.vector, ir.Undefined), value, ir.Constant(ir.IntType(32), 0)
                )
                splat = builder.shuffle_vector(
                    splat,
                    ir.Constant(v.vector, ir.Undefined),
                    ir.Constant(ir.VectorType(ir.IntType(32), v.lanes), [0] * v.lanes),
                )
                for j in range(vectors):
                    total = builder.call(v.fma, [splat, b_vectors[j], builder.load(sums[i][j])])
                    builder.store(total, sums[i][j])
        for i in range(rows):
            for j in range(vectors):
                v.store(builder.load(sums[i][j]), tile_data, constant(i * columns + j * v.lanes))
        return context.get_dummy_value()

    return signature, codegen
