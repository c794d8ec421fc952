"""The kernel choice is a pure function of the problem: test it directly."""

import numpy as np
import pytest

from convgrad import _dispatch
from convgrad._layouts import NCHW, NHWC
from convgrad._problem import describe
from convgrad.kernels import nchw, nhwc


def problem(layout=NCHW, n=2, c_in=4, c_out=6, size=8, k=3, dtype=np.float32, groups=1, **opts):
    image = layout.image_shape(n, c_in, size, size)
    weight = layout.weight_shape(c_out, c_in // groups, k, k)
    opts = {"stride": 1, "padding": 1, "dilation": 1, "groups": groups} | opts
    return describe(layout, np.dtype(dtype), image, weight, **opts)


@pytest.mark.parametrize("layout, module", [(NCHW, nchw), (NHWC, nhwc)])
@pytest.mark.parametrize("operation", ["forward", "grad_input", "grad_weight"])
def test_layout_picks_its_kernel_family(layout, module, operation):
    choice = _dispatch.select_kernel(operation, problem(layout))
    assert choice.kernel is getattr(module, f"{operation}_{layout.name.lower()}")


def test_bias_kernel_per_layout():
    assert _dispatch.select_bias_kernel("NCHW") is nchw.grad_bias_nchw
    assert _dispatch.select_bias_kernel("NHWC") is nhwc.grad_bias_nhwc


def test_geometry_arguments_follow_the_options():
    p = problem(stride=(2, 3), padding=((1, 2), (3, 0)), dilation=(2, 1), groups=2)
    assert _dispatch.select_kernel("grad_input", p).args == (2, 3, 1, 3, 2, 1, 2)


def test_choice_is_pure_and_repeatable():
    p = problem(NHWC)
    assert _dispatch.select_kernel("grad_weight", p) == _dispatch.select_kernel("grad_weight", p)


def test_weight_chunks_bounded_by_rows_work_and_cap():
    assert _dispatch.weight_chunks(problem(NHWC, n=1, size=3, k=3, padding=0)) == 1
    tiny = problem(NHWC, n=1, c_in=1, c_out=6, size=28, k=3, padding=0)  # the seed case
    assert _dispatch.weight_chunks(tiny) == 1
    big = problem(NHWC, n=64, size=28)
    assert _dispatch.weight_chunks(big) == _dispatch.MAX_WEIGHT_CHUNKS


def test_weight_chunks_bounded_by_memory_budget():
    huge = problem(NHWC, c_in=256, c_out=512, k=3, n=8, size=16)
    weight_bytes = 256 * 512 * 9 * 4
    chunks = _dispatch.weight_chunks(huge)
    assert chunks >= 1
    assert chunks == 1 or chunks * weight_bytes <= _dispatch.PARTIALS_BUDGET_BYTES
