"""A register tile of a matrix product: the inner step of ``gemm_tiles.py`` and ``direct_tiles.py``.

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

The kernels calling these steps are cached on disk by their own source:
after editing this file, delete their cached code in ``kernels/__pycache__``
(``gemm_tiles.*``, ``direct_tiles.*``, ``im2col*``).
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


def _splat(builder, v, value):
    """A vector of ``value`` in every lane."""
    one = builder.insert_element(
        ir.Constant(v.vector, ir.Undefined), value, ir.Constant(ir.IntType(32), 0)
    )
    return builder.shuffle_vector(
        one,
        ir.Constant(v.vector, ir.Undefined),
        ir.Constant(ir.VectorType(ir.IntType(32), v.lanes), [0] * v.lanes),
    )


def _sum_terms(builder, v, sums, a_data, a_first, a_row, a_step, b_data, b_first, b_row, count):
    """sums[i][j] += a[a_first + i*a_row + k*a_step] * b[b_first + k*b_row + vector j]."""
    vectors = len(sums[0])

    def constant(value):
        return ir.Constant(a_first.type, value)

    row_offsets = [None, a_row, builder.mul(a_row, constant(2)), builder.mul(a_row, constant(3))]
    group_step = builder.mul(a_row, constant(ROW_GROUP))
    with cgutils.for_range(builder, count) as loop:
        k = loop.index
        b_at = builder.add(b_first, builder.mul(k, b_row))
        b_vectors = [
            v.load(b_data, builder.add(b_at, constant(j * v.lanes))) for j in range(vectors)
        ]
        # A's rows from a base every ROW_GROUP rows, each base an add hidden
        # from LLVM: its loop strength reduction otherwise keeps a pointer per
        # row across the loop, more than x86's 16 registers for the 24 x 1 and
        # 14 x 2 tiles, and reloads the spilled ones from the stack at every
        # broadcast (the direct grad_input's 24 x 1 tile: 11-46 stack loads
        # per term, ~200 GFLOP/s per core against ~232 without)
        base = builder.add(a_first, builder.mul(k, a_step))
        for i, row in enumerate(sums):
            offset = i % ROW_GROUP
            if offset == 0:
                next_base = base if i == 0 else builder.add(base, group_step)
                base = _opaque_in_loop(builder, next_base, k)
            at = base if offset == 0 else builder.add(base, row_offsets[offset])
            splat = _splat(builder, v, builder.load(builder.gep(a_data, [at])))
            for j in range(vectors):
                builder.store(
                    builder.call(v.fma, [splat, b_vectors[j], builder.load(row[j])]), row[j]
                )


# Rows of a tile's A addressed from one base: base + {0, 1, 2, 3} * a_row, an
# index x86 loads take as a scaled register (a_row's multiples held once).
ROW_GROUP = 4


def _opaque_in_loop(builder, value, k):
    """``value``, through an empty inline asm that also takes the loop's index ``k``.

    LLVM can neither fold the value into the next one nor move it out of the loop.
    """
    signature = ir.FunctionType(value.type, [value.type, k.type])
    return builder.asm(signature, "", "=r,0,r", [value, k], side_effect=False)


def _tile_sums(builder, initial, rows=TILE_ROWS, vectors=TILE_VECTORS):
    """``rows`` x ``vectors`` vector variables, each holding ``initial(i, j)``."""
    return [
        [cgutils.alloca_once_value(builder, initial(i, j)) for j in range(vectors)]
        for i in range(rows)
    ]


def _tile_offset(v, tile_at, i, j, vectors=TILE_VECTORS):
    """Flat offset of row i's vector j in a tile of ``vectors`` vectors a row."""
    return ir.Constant(tile_at.type, (i * vectors + j) * v.lanes)


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
        sums = _tile_sums(builder, lambda i, j: v.zero)
        _sum_terms(builder, v, sums, a_data, a_at, a_row, a_step, b_data, b_at, b_row, count)
        zero = ir.Constant(a_at.type, 0)
        for i, row in enumerate(sums):
            for j, total in enumerate(row):
                v.store(builder.load(total), tile_data, _tile_offset(v, zero, i, j))
        return context.get_dummy_value()

    return signature, codegen


def _opaque(builder, value):
    """``value``, hidden from LLVM's constant folding behind an empty inline asm.

    With a step known to be 1 LLVM rewrites a tile's broadcasts of adjacent
    values into vector loads and shuffles: the 14 x 2 tile ran at 105 GFLOP/s
    per core with A's step a constant 1, 258 with the same step unknown.
    """
    signature = ir.FunctionType(value.type, [value.type])
    return builder.asm(signature, "", "=r,0", [value], side_effect=False)


def _tap_tile(rows, vectors, hide_step):
    """The ``tile_add_taps`` step for tiles of ``rows`` x ``vectors`` vectors."""

    @intrinsic
    def step(typingctx, tile, tile_at, a, a_at, a_row, a_step, taps, b, b_at, b_row, count):
        if not c_float_arrays(tile, a, b):
            return None
        if not (isinstance(taps, types.Array) and taps.dtype == types.intp and taps.layout == "C"):
            return None
        intp = types.intp
        signature = types.void(tile, intp, a, intp, intp, intp, taps, b, intp, intp, intp)

        def codegen(context, builder, sig, args):
            tile_value, tile_at, a_value, a_at, a_row, a_step, taps_value = args[:7]
            b_value, b_at, b_row, count = args[7:]
            v = _Vectors(context, builder, sig.args[0].dtype)
            tile_data = _data(context, builder, sig.args[0], tile_value)
            a_data = _data(context, builder, sig.args[2], a_value)
            taps_array = context.make_array(sig.args[6])(context, builder, taps_value)
            b_data = _data(context, builder, sig.args[7], b_value)
            if hide_step:
                a_step = _opaque(builder, a_step)

            def offset(i, j):
                return builder.add(tile_at, _tile_offset(v, tile_at, i, j, vectors))

            sums = _tile_sums(builder, lambda i, j: v.load(tile_data, offset(i, j)), rows, vectors)
            n_taps = builder.extract_value(taps_array.shape, 0)
            with cgutils.for_range(builder, n_taps) as loop:
                s = loop.index
                a_first = builder.add(a_at, builder.load(builder.gep(taps_array.data, [s])))
                b_first = builder.add(b_at, builder.mul(builder.mul(s, count), b_row))
                _sum_terms(
                    builder, v, sums, a_data, a_first, a_row, a_step, b_data, b_first, b_row,
                    count,
                )  # fmt: skip
            for i, row in enumerate(sums):
                for j, total in enumerate(row):
                    v.store(builder.load(total), tile_data, offset(i, j))
            return context.get_dummy_value()

        return signature, codegen

    return step


# tile_add_taps_V (V = 4, 2, 1): a tile of V vectors a row (NR = V*L) and
# TAP_TILE_ROWS[V] rows (MR) of
#
#     tile[tile_at + i*NR + j] += sum over s, k of A_s[i, k] * b[b_at + (s*count + k)*b_row + j]
#
# with A_s[i, k] = a[a_at + taps[s] + i*a_row + k*a_step], s < len(taps), k <
# count: one product whose terms run through several windows of ``a`` (a
# convolution's taps) against consecutive rows of B, its sums in registers
# from the first term to the last. ``taps`` a C-contiguous intp array, the
# others as ``tile_product``'s. MR by NV so that MR*NV sums, NV loads of B and
# a broadcast fill AVX-512's 32 registers (6 x 4 as above; 14 x 2 267
# GFLOP/s per core, 24 x 1 251); with 16 registers, half as many rows. The
# 14 x 2 tile hides A's step from LLVM (``_opaque``: the direct kernels'
# grad_input passes a constant 1); the others run faster with it known (24 x
# 1 in the direct grad_input 170 GFLOP/s per core, 118 with it hidden).
TAP_TILE_ROWS = {4: 6, 2: 14, 1: 24} if VECTOR_REGISTERS >= 32 else {4: 3, 2: 6, 1: 12}
tile_add_taps_4 = _tap_tile(TAP_TILE_ROWS[4], 4, hide_step=False)
tile_add_taps_2 = _tap_tile(TAP_TILE_ROWS[2], 2, hide_step=True)
tile_add_taps_1 = _tap_tile(TAP_TILE_ROWS[1], 1, hide_step=False)

# Shorter tiles of 2 and 1 vectors, for grad_weight: its C's rows (input
# channels, or a kernel row's taps by them) are fixed by the problem, and the
# last tile's rows past them are zeros multiplied. 32 input channels took 3
# tiles of 14 rows (42 rows, a quarter of them zeros), 4 of 8 none: dilated's
# grad_weight 0.78x the time, 1 thread; big_kernel's 7 x 16 rows 5 tiles of
# 24, 7 of 16: 0.93x. ``direct_tiles.weight_tile_shape`` picks the height.
SHORT_TAP_TILE_ROWS = {2: 8, 1: 16} if VECTOR_REGISTERS >= 32 else {2: 4, 1: 8}
tile_add_taps_2_short = _tap_tile(SHORT_TAP_TILE_ROWS[2], 2, hide_step=True)
tile_add_taps_1_short = _tap_tile(SHORT_TAP_TILE_ROWS[1], 1, hide_step=False)
