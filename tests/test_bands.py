"""Bands of output rows (``convgrad._bands``): the single gradients of images too big
for the memory budget, computed band by band, against the NumPy reference."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import convgrad
from convgrad import _bands, _dispatch
from convgrad._layouts import NCHW, NHWC
from convgrad._problem import describe
from convgrad.reference import conv2d_backward_reference


@st.composite
def banded_problems(draw):
    layout = draw(st.sampled_from([NCHW, NHWC]))
    n, c_in = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    c_out = draw(st.integers(16, 20))  # 16+ channel pairs: flat-kernel problems
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = tuple(draw(st.integers(0, 4)) for _ in range(2))
    height = draw(st.integers(max(1, dh * (kh - 1) + 1 - sum(pads)), 30))
    width = 100  # planes of any band stay long enough for the flat kernels
    problem = describe(
        layout,
        np.dtype(np.float64),
        layout.image_shape(n, c_in, height, width),
        layout.weight_shape(c_out, c_in, kh, kw),
        stride=(sh, sw),
        padding=(pads, (1, 0)),
        dilation=(dh, dw),
        groups=1,
    )
    count = draw(st.integers(1, min(6, problem.out_h)))
    return problem, count, draw(st.integers(0, 2**32 - 1))


@settings(deadline=None, max_examples=60)
@given(banded_problems())
def test_gradients_by_bands_match_the_reference(case):
    problem, count, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(problem.input_shape)
    w = rng.standard_normal(problem.weight_shape)
    g = rng.standard_normal(problem.output_shape)
    (sh, sw), (top, bottom, left, right), dilation, _ = problem.geometry
    options = {
        "stride": (sh, sw),
        "padding": ((top, bottom), (left, right)),
        "dilation": dilation,
        "layout": problem.layout.name,
    }
    expected_gi, expected_gw, _ = conv2d_backward_reference(g, x, w, **options)
    gi, gw = np.ones_like(x), np.ones_like(w)  # the bands add into what is there
    _bands.grad_input_by_bands(problem, count, g, w, gi)
    _bands.grad_weight_by_bands(problem, count, x, g, gw)
    np.testing.assert_allclose(gi - 1, expected_gi, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gw - 1, expected_gw, rtol=1e-10, atol=1e-10)


def test_one_big_image_runs_in_bands_through_the_api():
    """One 224 x 224 image, 3 -> 64 channels: its planes alone would be 3x the budget."""
    rng = np.random.default_rng(3)
    for layout in (NCHW, NHWC):
        x = rng.standard_normal(layout.image_shape(1, 3, 224, 224)).astype(np.float32)
        w = rng.standard_normal(layout.weight_shape(64, 3, 3, 3)).astype(np.float32)
        opts = {"stride": 1, "padding": 1, "dilation": 1, "groups": 1}
        problem = describe(layout, x.dtype, x.shape, w.shape, **opts)
        g = rng.standard_normal(problem.output_shape).astype(np.float32)
        assert _dispatch.image_bands(problem) > 1
        assert _dispatch.select_backward_kernel(problem) is None  # not fused either
        got = convgrad.conv2d_backward(g, x, w, padding=1, layout=layout.name)
        wide = [a.astype(np.float64) for a in (g, x, w)]
        expected = conv2d_backward_reference(*wide, padding=1, layout=layout.name)
        for part, want in zip(got, expected, strict=True):
            np.testing.assert_allclose(part, want, rtol=1e-4, atol=1e-3)


def test_bands_without_padding_of_their_own():
    """A 1x1 kernel padded only at the top and bottom: inner bands have no padding at all
    (as problems of their own, BLAS products); they take the flat kernels all the same."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 4, 600, 600)).astype(np.float32)
    w = rng.standard_normal((8, 4, 1, 1)).astype(np.float32)
    opts = {"stride": 1, "padding": ((2, 1), (0, 0)), "dilation": 1, "groups": 1}
    problem = describe(NCHW, x.dtype, x.shape, w.shape, **opts)
    g = rng.standard_normal(problem.output_shape).astype(np.float32)
    assert _dispatch.image_bands(problem) > 2 and not _dispatch.gemm_suits(problem)
    inner = list(_bands.bands(problem, _dispatch.image_bands(problem)))[1].problem
    assert _dispatch.gemm_suits(inner)
    assert (
        _dispatch.flat_choice("grad_input", inner).kernel
        is not _dispatch.select_kernel("grad_input", inner).kernel
    )
    got = convgrad.conv2d_backward(g, x, w, padding=opts["padding"])
    wide = [a.astype(np.float64) for a in (g, x, w)]
    expected = conv2d_backward_reference(*wide, padding=opts["padding"])
    for part, want in zip(got, expected, strict=True):
        np.testing.assert_allclose(part, want, rtol=1e-4, atol=2e-3)


def test_banded_problems_keep_nan_and_inf_where_they_belong():
    """A NaN in the input and an Inf in grad_output of a problem big enough for bands (and
    for the fused kernel's bands): the exact kernels run, matching the reference."""
    rng = np.random.default_rng(6)
    for n, size, layout in ((1, 224, NCHW), (4, 224, NHWC)):
        x = rng.standard_normal(layout.image_shape(n, 3, size, size)).astype(np.float32)
        w = rng.standard_normal(layout.weight_shape(32, 3, 3, 3)).astype(np.float32)
        problem = describe(
            layout, x.dtype, x.shape, w.shape, stride=1, padding=1, dilation=1, groups=1
        )
        g = rng.standard_normal(problem.output_shape).astype(np.float32)
        x[_at(layout, n - 1, 1, 50, 60)] = np.nan  # inside: the reference pads with
        g[_at(layout, 0, 16, 100, 100)] = np.inf  # zeros, so Inf * padding would be NaN there
        got = convgrad.conv2d_backward(g, x, w, padding=1, layout=layout.name)
        wide = [a.astype(np.float64) for a in (g, x, w)]
        expected = conv2d_backward_reference(*wide, padding=1, layout=layout.name)
        for part, want in zip(got, expected, strict=True):
            np.testing.assert_array_equal(np.isnan(part), np.isnan(want))
            np.testing.assert_array_equal(np.isinf(part), np.isinf(want))
            finite = np.isfinite(want)
            np.testing.assert_allclose(part[finite], want[finite], rtol=1e-4, atol=1e-3)


def _at(layout, n, c, h, w):
    """The index of image element (n, c, h, w) in ``layout``."""
    index = [0] * 4
    for axis, value in zip(layout.image_axes, (n, c, h, w), strict=True):
        index[axis] = value
    return tuple(index)
