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


@pytest.mark.parametrize("user_layout", [NCHW, NHWC])
@pytest.mark.parametrize("operation", ["forward", "grad_input", "grad_weight"])
@pytest.mark.parametrize(
    "c_in, c_out, groups, size, family",
    [
        (1, 6, 1, 28, nchw),  # the seed: 26-long rows beat 6 channels
        (8, 8, 8, 56, nchw),  # depthwise: one output channel per group
        (16, 16, 1, 64, nchw),  # big images, few channels: rows
        (1, 32, 1, 28, nhwc),  # mnist-like: 32 channels beat 28-long rows
        (64, 64, 1, 56, nhwc),  # dense
        (8, 32, 2, 16, nhwc),  # grouped: 16 channels per group beat 16-long rows
    ],
)
def test_vector_length_picks_the_kernel_family(
    user_layout, operation, c_in, c_out, groups, size, family
):
    p = problem(user_layout, c_in=c_in, c_out=c_out, groups=groups, size=size)
    choice = _dispatch.select_kernel(operation, p)
    expected_layout = NHWC if family is nhwc else NCHW
    assert choice.layout is expected_layout
    assert _dispatch.kernel_layout(p) is expected_layout
    assert choice.kernel is getattr(family, f"{operation}_{expected_layout.name.lower()}")


def test_rows_win_up_to_the_row_preference():
    at = problem(c_in=1, c_out=8, size=16)  # OW = 16 = 2 * 8: rows
    above = problem(c_in=1, c_out=9, size=16)  # 18 > 16: channels
    assert at.out_w == _dispatch.ROW_PREFERENCE * 8
    assert _dispatch.kernel_layout(at) is NCHW
    assert _dispatch.kernel_layout(above) is NHWC


def test_bias_kernel_per_layout():
    assert _dispatch.select_bias_kernel("NCHW") is nchw.grad_bias_nchw
    assert _dispatch.select_bias_kernel("NHWC") is nhwc.grad_bias_nhwc


def test_geometry_arguments_follow_the_options():
    opts = {"stride": (2, 3), "padding": ((1, 2), (3, 0)), "dilation": (2, 1), "groups": 2}
    planar = problem(c_in=4, c_out=6, size=32, **opts)  # 3 channels per group, OW 12: NCHW
    assert _dispatch.select_kernel("grad_input", planar).args == (2, 3, 1, 3, 2, 1, 2)
    assert _dispatch.select_kernel("grad_weight", planar).args == (2, 3, 1, 3, 2, 1, 2)
    channels_last = problem(c_in=8, c_out=32, n=16, size=64, **opts)  # 16 channels, OW 22
    chunks = _dispatch.weight_chunks(channels_last)
    assert chunks > 1
    expected = (2, 3, 1, 3, 2, 1, 2, chunks)
    assert _dispatch.select_kernel("grad_weight", channels_last).args == expected


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
