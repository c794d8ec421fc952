"""A call of the BLAS library's ``cblas_sgemm``/``cblas_dgemm`` from numba code, by address.

Numba's own ``np.dot`` needs SciPy's BLAS bindings, and a ctypes function as a
global would bake its address into the machine code (so numba would not cache
the kernel). Here the address is an ordinary integer argument, found at run
time by ``convgrad._blas``, and the call goes through a function pointer of
cblas's row-major signature:

    gemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

computing C = A' @ B' + beta * C (alpha is 1; ' is the transpose where asked),
with C an m x n block of the array ``c`` starting at flat element ``c_at``.
The integers m, n, k, lda, ldb and ldc are 32 bits wide in most BLAS builds
and 64 in "ILP64" ones (NumPy's wheels): one intrinsic for each, ``gemm_call``
picking between them at run time.
"""

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ._cache import CACHE

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def _gemm_intrinsic(index_bits):
    """The cblas gemm call with ``index_bits``-wide integer arguments."""

    @intrinsic
    def gemm(
        typingctx, address, trans_a, trans_b, m, n, k, a_at, lda, b_at, ldb, beta, c, c_at, ldc
    ):
        if not (isinstance(c, types.Array) and c.dtype in (types.float32, types.float64)):
            return None
        intp = types.intp
        signature = types.void(
            intp, intp, intp, intp, intp, intp, intp, intp, intp, intp, types.float64, c, intp,
            intp,
        )  # fmt: skip

        def codegen(context, builder, sig, args):
            address, trans_a, trans_b, m, n, k, a_at, lda, b_at, ldb, beta, c_value, c_at, ldc = (
                args
            )
            enum, index = ir.IntType(32), ir.IntType(index_bits)
            real = context.get_data_type(sig.args[11].dtype)
            pointer = ir.IntType(8).as_pointer()
            function_type = ir.FunctionType(
                ir.VoidType(),
                [enum, enum, enum, index, index, index, real, pointer, index, pointer, index, real,
                 pointer, index],
            )  # fmt: skip
            function = builder.inttoptr(address, function_type.as_pointer())

            def width(value):
                return builder.trunc(value, index) if index_bits < 64 else value

            data = context.make_array(sig.args[11])(context, builder, c_value).data
            c_pointer = builder.bitcast(builder.gep(data, [c_at]), pointer)
            beta_real = beta if isinstance(real, ir.DoubleType) else builder.fptrunc(beta, real)
            builder.call(
                function,
                [
                    ir.Constant(enum, ROW_MAJOR), builder.trunc(trans_a, enum),
                    builder.trunc(trans_b, enum), width(m), width(n), width(k),
                    ir.Constant(real, 1.0), builder.inttoptr(a_at, pointer), width(lda),
                    builder.inttoptr(b_at, pointer), width(ldb), beta_real, c_pointer, width(ldc),
                ],
            )  # fmt: skip
            return context.get_dummy_value()

        return signature, codegen

    return gemm


_gemm_lp64 = _gemm_intrinsic(32)
_gemm_ilp64 = _gemm_intrinsic(64)


@njit(cache=CACHE)
def gemm_call(address, ilp64, trans_a, trans_b, m, n, k, a_at, lda, b_at, ldb, beta, c, c_at, ldc):
    """C = A' @ B' + beta * C through the cblas gemm at ``address``; see the module docstring.

    ``a_at``, ``b_at``: byte addresses of A's and B's first elements; ``c``
    the array C lies in and ``c_at`` its first element's flat index. The
    caller keeps every block inside its array.
    """
    if ilp64:
        _gemm_ilp64(address, trans_a, trans_b, m, n, k, a_at, lda, b_at, ldb, beta, c, c_at, ldc)
    else:
        _gemm_lp64(address, trans_a, trans_b, m, n, k, a_at, lda, b_at, ldb, beta, c, c_at, ldc)
