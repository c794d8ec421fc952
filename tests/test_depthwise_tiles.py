"""The depthwise tiles kernel (``kernels/depthwise_tiles.py``) and its vector steps (``_lanes.py``).

The kernel against the naive loops in both layouts, any kernel size (rows of
taps wider than one call's TAPS_MAX too), padding and dilation, channel
counts that leave the last block partial; its float64 sums past SUM_TERMS;
each vector step on its own, writing exactly what it says; and the API, which
sends small depthwise images and kernels of more than nine taps to it and
falls back to the exact kernels when an input is not finite.
"""

import naive
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

import convgrad
from convgrad import _dispatch
from convgrad._layouts import NCHW, NHWC
from convgrad._problem import describe
from convgrad.kernels import depthwise_tiles
from convgrad.kernels._columns import VECTOR_BYTES
from convgrad.kernels._lanes import TAPS_MAX, lanes_move, lanes_transpose, tap_gather, tap_sums

TO_NHWC, WEIGHT_TO_HWIO = (0, 2, 3, 1), (2, 3, 1, 0)


@st.composite
def depthwise_problems(draw):
    channels, n = draw(st.integers(1, 40), label="channels"), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 11)), draw(st.integers(1, 11))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = tuple(draw(st.integers(0, 3)) for _ in range(4))
    least_h = max(1, dh * (kh - 1) + 1 - pads[0] - pads[1])
    least_w = max(1, dw * (kw - 1) + 1 - pads[2] - pads[3])
    height = draw(st.integers(least_h, least_h + 12))
    width = draw(st.integers(least_w, least_w + 12))
    return n, channels, height, width, (kh, kw), pads, (dh, dw)


def random_problem(rng, n, channels, height, width, kernel, pads, dilation, dtype):
    x = rng.standard_normal((n, channels, height, width)).astype(dtype)
    w = rng.standard_normal((channels, 1, *kernel)).astype(dtype)
    out_h = naive.output_size(height, kernel[0], 1, dilation[0], pads[0], pads[1])
    out_w = naive.output_size(width, kernel[1], 1, dilation[1], pads[2], pads[3])
    g = rng.standard_normal((n, channels, out_h, out_w)).astype(dtype)
    return g, x, w


def expected_gradients(g, x, w, pads, dilation):
    geometry = {"stride": (1, 1), "padding": pads, "dilation": dilation, "groups": x.shape[1]}
    return (
        naive.grad_input_nchw(g, w, x.shape, **geometry),
        naive.grad_weight_nchw(g, x, w.shape, **geometry),
        naive.grad_bias_nchw(g),
    )


def run_tiles(g, x, w, pads, dilation, layout):
    """The kernel's (gi, gw, gb) in NCHW order, run on ``layout``'s arrays.

    gi starts as NaN (the kernel must set every value); gw and gb as ones (it adds).
    """
    nhwc = layout == "NHWC"
    if nhwc:
        g, x = (np.ascontiguousarray(a.transpose(TO_NHWC)) for a in (g, x))
        w = np.ascontiguousarray(w.transpose(WEIGHT_TO_HWIO))
    gi, gw, gb = np.full_like(x, np.nan), np.ones_like(w), np.ones(x.shape[-1 if nhwc else 1])
    gb = gb.astype(x.dtype)
    depthwise_tiles.backward_depthwise_tiles(
        x, g, w, gi, gw, gb, 1, 1, *pads, *dilation, gb.shape[0], nhwc
    )
    if nhwc:
        gi, gw = gi.transpose(0, 3, 1, 2), gw.transpose(3, 2, 0, 1)
    return gi, gw - 1, gb - 1


@settings(max_examples=150, deadline=None)
@given(
    problem=depthwise_problems(),
    layout=st.sampled_from(["NCHW", "NHWC"]),
    dtype=st.sampled_from([np.float64, np.float32]),
    seed=st.integers(0, 2**16),
)
def test_matches_the_naive_loops(problem, layout, dtype, seed):
    """float64 to 1e-12; float32 (NCHW's transposed planes) against float64 sums of its inputs."""
    *_, pads, dilation = problem
    g, x, w = random_problem(np.random.default_rng(seed), *problem, dtype)
    got = run_tiles(g, x, w, pads, dilation, layout)
    wide = [a.astype(np.float64) for a in (g, x, w)]
    tolerance = 1e-12 if dtype == np.float64 else 1e-4
    for a, b in zip(got, expected_gradients(*wide, pads, dilation), strict=True):
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_float32_blocks_of_16_lanes_and_a_partial_block(layout):
    """float32 has twice float64's lanes per block: 37 channels are two whole blocks and a
    partial one with AVX-512 (other vector widths: other splits, the same answer)."""
    rng = np.random.default_rng(1)
    pads, dilation = (1, 2, 2, 1), (1, 2)
    g, x, w = random_problem(rng, 2, 37, 11, 12, (3, 4), pads, dilation, np.float32)
    got = run_tiles(g, x, w, pads, dilation, layout)
    wide = [a.astype(np.float64) for a in (g, x, w)]
    for a, b in zip(got, expected_gradients(*wide, pads, dilation), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_sums_longer_than_one_dtype_sum_keep_float64_accuracy(layout):
    """An image of more than SUM_TERMS output pixels: grad_weight and grad_bias are summed in
    float32 a few rows at a time, those sums in float64. Summing 66 x 66 ones times 1/3 in
    float32 alone would be off by far more than float32's rounding of the exact total."""
    size = 66
    assert size * size > depthwise_tiles.SUM_TERMS
    x = np.ones((1, 3, size, size), np.float32)
    g = np.full((1, 3, size, size), 1 / 3, np.float32)
    w = np.ones((3, 1, 1, 1), np.float32)
    _, gw, gb = run_tiles(g, x, w, (0, 0, 0, 0), (1, 1), layout)
    exact = size * size * np.float64(np.float32(1 / 3))
    np.testing.assert_allclose(gw.ravel(), exact, rtol=2e-7)
    np.testing.assert_allclose(gb, exact, rtol=2e-7)


def test_refuses_other_strides():
    x, g, w = np.zeros((1, 2, 6, 6)), np.zeros((1, 2, 3, 3)), np.zeros((2, 1, 2, 2))
    gi, gw, gb = np.zeros_like(x), np.zeros_like(w), np.zeros(2)
    with pytest.raises(ValueError, match=r"^backward_depthwise_tiles is for stride 1$"):
        depthwise_tiles.backward_depthwise_tiles(x, g, w, gi, gw, gb, 2, 2, 0, 0, 0, 0, 1, 1, 2, 0)


# The vector steps, called through small njit wrappers (intrinsics need a compiled caller).


@njit(cache=False)
def _sums(acc, acc_at, x, x_at, x_step, row_step, col_step, cols, taps, g, g_at, g_step, count):
    tap_sums(acc, acc_at, x, x_at, x_step, row_step, col_step, cols, taps, g, g_at, g_step, count)


@njit(cache=False)
def _gather(dst, dst_at, dst_step, w, w_at, taps, g, g_at, g_step, steps, cols, count, add):
    row_step, col_step = steps
    tap_gather(
        dst, dst_at, dst_step, w, w_at, taps, g, g_at, g_step, row_step, col_step, cols,
        count, add,
    )  # fmt: skip


@njit(cache=False)
def _move(dst, dst_at, dst_stride, src, src_at, src_stride):
    lanes_move(dst, dst_at, dst_stride, src, src_at, src_stride)


@njit(cache=False)
def _transpose(dst, dst_at, dst_step, src, src_at, src_step):
    lanes_transpose(dst, dst_at, dst_step, src, src_at, src_step)


def _lanes(dtype):
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def _offset(t, cols, row_step, col_step):
    return (t // cols) * row_step + (t % cols) * col_step


@pytest.mark.parametrize("cols", [1, 3, TAPS_MAX])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tap_sums_adds_each_taps_sum_and_writes_nothing_else(dtype, cols):
    rng = np.random.default_rng(2)
    lanes, count = _lanes(dtype), 5
    x_step, row_step, col_step, g_step = 3 * lanes + 1, 4 * lanes + 5, 2, 7
    reach = _offset(TAPS_MAX - 1, cols, row_step, col_step)
    x = rng.standard_normal(3 + count * x_step + reach + lanes).astype(dtype)
    g = rng.standard_normal(4 + count * g_step + lanes).astype(dtype)
    for taps in range(TAPS_MAX + 2):
        acc = np.full(6 + (TAPS_MAX + 1) * lanes, 0.5, dtype)
        _sums(acc, 6, x, 3, x_step, row_step, col_step, cols, taps, g, 4, g_step, count)
        expected = np.full_like(acc, 0.5)
        for t in range(taps if taps <= TAPS_MAX else 0):  # other counts do nothing
            for k in range(count):
                at = 3 + k * x_step + _offset(t, cols, row_step, col_step)
                expected[6 + t * lanes : 6 + (t + 1) * lanes] += (
                    x[at : at + lanes] * g[4 + k * g_step : 4 + k * g_step + lanes]
                )
        np.testing.assert_allclose(acc, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("add", [False, True])
@pytest.mark.parametrize("cols", [1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tap_gather_sets_or_adds_each_pixel_and_writes_nothing_else(dtype, cols, add):
    rng = np.random.default_rng(3)
    lanes = _lanes(dtype)
    count, dst_step, g_step, row_step, col_step = 4, lanes + 3, 5, 2 * lanes + 3, 3
    first = _offset(TAPS_MAX - 1, cols, row_step, col_step) + 2  # the farthest tap reads back
    w = rng.standard_normal(1 + TAPS_MAX * lanes).astype(dtype)
    g = rng.standard_normal(first + count * g_step + lanes).astype(dtype)
    for taps in range(TAPS_MAX + 2):
        dst = np.full(5 + count * dst_step + lanes, 0.25, dtype)
        steps = (row_step, col_step)
        _gather(dst, 5, dst_step, w, 1, taps, g, first, g_step, steps, cols, count, add)
        expected = np.full_like(dst, 0.25)
        for k in range(count if 1 <= taps <= TAPS_MAX else 0):  # other counts do nothing
            at = 5 + k * dst_step
            total = np.zeros(lanes, dtype)
            for t in range(taps):
                source = first + k * g_step - _offset(t, cols, row_step, col_step)
                total += w[1 + t * lanes : 1 + (t + 1) * lanes] * g[source : source + lanes]
            expected[at : at + lanes] = (expected[at : at + lanes] if add else 0) + total
        np.testing.assert_allclose(dst, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dst_stride, src_stride", [(1, 1), (1, 7), (5, 1), (3, 2)])
def test_lanes_move_copies_one_vector_of_lanes(dtype, dst_stride, src_stride):
    lanes = _lanes(dtype)
    src = np.arange(2 + lanes * src_stride, dtype=dtype)
    dst = np.full(3 + lanes * dst_stride, -1, dtype)
    _move(dst, 3, dst_stride, src, 2, src_stride)
    expected = np.full_like(dst, -1)
    expected[3 : 3 + lanes * dst_stride : dst_stride] = src[2 : 2 + lanes * src_stride : src_stride]
    np.testing.assert_array_equal(dst, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lanes_transpose_turns_rows_into_columns(dtype):
    lanes, src_step, dst_step = _lanes(dtype), 21, 19
    src = np.arange(3 + lanes * src_step, dtype=dtype)
    dst = np.full(5 + lanes * dst_step, -1, dtype)
    _transpose(dst, 5, dst_step, src, 3, src_step)
    expected = np.full_like(dst, -1)
    for r in range(lanes):
        for k in range(lanes):
            expected[5 + k * dst_step + r] = src[3 + r * src_step + k]
    np.testing.assert_array_equal(dst, expected)


# The API and the dispatch.


def _problem(layout, size, k, dtype=np.float32, stride=1, channels=32):
    return describe(
        layout,
        np.dtype(dtype),
        layout.image_shape(8, channels, size, size),
        layout.weight_shape(channels, 1, k, k),
        stride=stride,
        padding=k // 2,
        dilation=1,
        groups=channels,
    )


def test_dispatch_takes_tiles_for_small_images_and_wide_kernels():
    suit = _dispatch.depthwise_tiles_suit
    assert suit(_problem(NCHW, 14, 3)) and not suit(_problem(NCHW, 15, 3))
    assert suit(_problem(NCHW, 7, 3, np.float64))
    assert not suit(_problem(NHWC, 4, 3))  # NHWC 3 x 3: the channel kernels
    assert suit(_problem(NCHW, 56, 5)) and suit(_problem(NHWC, 56, 5, np.float64))
    assert not suit(_problem(NCHW, 7, 3, stride=2)) and not suit(_problem(NHWC, 56, 5, stride=2))
    # the workspace is one task's tiles per thread; a wide image over the budget does not fit
    assert _dispatch.depthwise_fits(_problem(NCHW, 56, 5))
    assert not _dispatch.depthwise_fits(_problem(NCHW, 2000, 5, channels=2))
    assert _dispatch.select_backward_kernel(_problem(NCHW, 2000, 5, channels=2)) is None


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("where", ["grad_output", "input", "weight"])
def test_api_matches_the_naive_loops_and_keeps_nan_exact(layout, where):
    """Through conv2d_backward (which picks the tiles here), then with an Inf: the zeros of the
    tiles would turn it into NaNs the exact answer does not have, so the exact kernels, one
    gradient each, must answer instead."""
    rng = np.random.default_rng(4)
    pads, dilation = (2, 2, 2, 2), (1, 1)
    g, x, w = random_problem(rng, 2, 20, 9, 10, (5, 5), pads, dilation, np.float64)
    spec = NCHW if layout == "NCHW" else NHWC
    shapes = spec.image_shape(2, 20, 9, 10), spec.weight_shape(20, 1, 5, 5)
    geometry = {"stride": 1, "padding": 2, "dilation": 1, "groups": 20}
    problem = describe(spec, np.dtype(np.float64), *shapes, **geometry)
    picked = _dispatch.select_backward_kernel(problem)
    assert picked.kernel is depthwise_tiles.backward_depthwise_tiles
    expected = expected_gradients(g, x, w, pads, dilation)
    if layout == "NHWC":
        g, x = (np.ascontiguousarray(a.transpose(TO_NHWC)) for a in (g, x))
        w = np.ascontiguousarray(w.transpose(WEIGHT_TO_HWIO))
        expected = (
            expected[0].transpose(TO_NHWC),
            expected[1].transpose(WEIGHT_TO_HWIO),
            expected[2],
        )
    options = {"padding": 2, "groups": 20, "layout": layout}
    got = convgrad.conv2d_backward(g, x, w, **options)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    {"grad_output": g, "input": x, "weight": w}[where].flat[7] = np.inf
    got = convgrad.conv2d_backward(g, x, w, **options)
    masks = [(True, False, False), (False, True, False), (False, False, True)]
    for k, mask in enumerate(masks):
        exact = convgrad.conv2d_backward(g, x, w, **options, output_mask=mask)[k]
        np.testing.assert_array_equal(got[k], exact)
    assert not all(np.isfinite(part).all() for part in got)
