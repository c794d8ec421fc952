"""``kernels/_wide.py``: functions compiled with WideCompiler ask LLVM for 512-bit vectors."""

import llvmlite.binding as llvm
import numpy as np
import pytest
from numba import njit

from convgrad.kernels._flags import FASTMATH
from convgrad.kernels._wide import PREFER_512, WideCompiler, WideNoAliasCompiler


def _dot(a, b):
    acc = a.dtype.type(0)
    for k in range(a.shape[0]):
        acc += a[k] * b[k]
    return acc


def _compiled(pipeline_class=None, dtype=np.float32):
    options = {"pipeline_class": pipeline_class} if pipeline_class else {}
    kernel = njit(fastmath=FASTMATH, **options)(_dot)
    a = np.arange(1000, dtype=dtype)
    assert kernel(a, a) == pytest.approx(float(np.dot(a.astype(np.float64), a)), rel=1e-5)
    return kernel, kernel.signatures[0]


def test_wide_functions_carry_the_attribute_and_plain_ones_do_not():
    wide, signature = _compiled(WideCompiler)
    assert PREFER_512 in wide.inspect_llvm(signature)
    plain, signature = _compiled()
    assert PREFER_512 not in plain.inspect_llvm(signature)


def test_wide_functions_use_512_bit_registers_on_avx512():
    if "+avx512f" not in llvm.get_host_cpu_features().flatten().split(","):
        pytest.skip("this CPU has no AVX-512")
    wide, signature = _compiled(WideCompiler)
    assert "zmm" in wide.inspect_asm(signature)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wide_noalias_compiler_widens_every_signature_with_noalias(dtype):
    wide, signature = _compiled(WideNoAliasCompiler, dtype)
    assert PREFER_512 in wide.inspect_llvm(signature)
    plain, plain_signature = _compiled(None, dtype)
    noalias = wide.inspect_llvm(signature).count("noalias")
    assert noalias > plain.inspect_llvm(plain_signature).count("noalias")
