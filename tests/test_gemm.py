"""1x1 / stride 1 / no padding: the BLAS matrix-product kernels, over random shapes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convgrad
from convgrad import _dispatch
from convgrad._layouts import NCHW, NHWC
from convgrad._problem import describe
from convgrad.kernels import gemm
from convgrad.reference import conv2d_backward_reference


@st.composite
def pointwise_cases(draw):
    groups = draw(st.integers(1, 3))
    cin_g, cout_g = draw(st.integers(4, 12)), draw(st.integers(4, 12))
    n, height, width = draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    layout = draw(st.sampled_from([NCHW, NHWC]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    batched = draw(st.booleans())
    rows_per_tile = draw(st.integers(1, 64))
    return (
        layout,
        dtype,
        (n, groups * cin_g, groups * cout_g, height, width, groups),
        batched,
        (rows_per_tile, draw(st.integers(0, 2**32 - 1))),
    )


def make(layout, dtype, dims, batched, seed):
    n, c_in, c_out, height, width, groups = dims
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(layout.image_shape(n, c_in, height, width)).astype(dtype)
    w = rng.standard_normal(layout.weight_shape(c_out, c_in // groups, 1, 1)).astype(dtype)
    g = rng.standard_normal(layout.image_shape(n, c_out, height, width)).astype(dtype)
    if not batched:
        x, g = x[0], g[0]
    return x, w, g, {"groups": groups, "layout": layout.name}


@settings(deadline=None, max_examples=120)
@given(pointwise_cases())
def test_gemm_path_matches_reference(case):
    layout, dtype, dims, batched, (rows_per_tile, seed) = case
    x, w, g, opts = make(layout, dtype, dims, batched, seed)
    problem = describe(
        layout,
        np.dtype(dtype),
        x.shape,
        w.shape,
        stride=1,
        padding=0,
        dilation=1,
        groups=opts["groups"],
    )
    assert _dispatch.gemm_suits(problem)
    expected = conv2d_backward_reference(*(a.astype(np.float64) for a in (g, x, w)), **opts)
    rtol, atol = (1e-4, 1e-4) if dtype == np.float32 else (1e-12, 1e-12)
    for got, want in zip(convgrad.conv2d_backward(g, x, w, **opts), expected, strict=True):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    # the kernels themselves, with an arbitrary tile size: grad_input writes
    # every value (``writes_input``), grad_weight adds into what is there
    grad_input, grad_weight = (
        getattr(gemm, f"grad_{what}_gemm_{layout.name.lower()}") for what in ("input", "weight")
    )
    xb, gb = (a if batched else a[np.newaxis] for a in (x, g))
    gi = np.full_like(xb, np.nan)
    grad_input(gb, w, gi, opts["groups"], rows_per_tile)
    np.testing.assert_allclose(gi, expected[0].reshape(gi.shape), rtol=rtol, atol=atol)
    gw = np.ones_like(w)
    grad_weight(xb, gb, gw, opts["groups"], rows_per_tile)
    np.testing.assert_allclose(gw - 1, expected[1], rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    "k, stride, padding, c, suits",
    [
        (1, 1, 0, 16, True),
        (1, 2, 0, 16, False),  # strided 1x1: not a plain product of the arrays
        (1, 1, 1, 16, False),  # padded 1x1
        (3, 1, 0, 16, False),
        (1, 1, 0, 2, False),  # 4 channel pairs: too few to pay
    ],
)
def test_gemm_only_for_plain_products(k, stride, padding, c, suits):
    for layout in (NCHW, NHWC):
        problem = describe(
            layout,
            np.dtype(np.float32),
            layout.image_shape(2, c, 8, 8),
            layout.weight_shape(c, c, k, k),
            stride=stride,
            padding=padding,
            dilation=1,
            groups=1,
        )
        assert _dispatch.gemm_suits(problem) is suits
        choice = _dispatch.select_kernel("grad_weight", problem)
        assert (
            choice.kernel
            is _dispatch.gemm_kernel("grad_weight", layout, _dispatch.tiles_suit(problem))
        ) is suits
        if suits:
            assert choice.layout is layout  # no relayout
            assert choice.args == (1, _dispatch.gemm_rows_per_tile(problem))
            assert _dispatch.select_kernel("grad_input", problem).writes_input


@pytest.mark.parametrize("layout", [NCHW, NHWC])
def test_gemm_path_adds_into_out_and_keeps_nan_where_the_reference_has_it(layout):
    """grad_input is written by the GEMM kernels (``writes_input``): with ``accumulate`` the
    API must still add into ``out``; a NaN in grad_output reaches exactly the entries it should."""
    x, w, g, opts = make(layout, np.float32, (2, 8, 8, 3, 4, 1), True, 5)
    g[(1, 2, 0, 3) if layout is NCHW else (1, 0, 3, 2)] = np.nan
    expected = conv2d_backward_reference(*(a.astype(np.float64) for a in (g, x, w)), **opts)
    out = tuple(np.full(a.shape, 2.0, np.float32) for a in (x, w, np.zeros(8)))
    got = convgrad.conv2d_backward(g, x, w, **opts, out=out, accumulate=True)
    for result, target, want in zip(got, out, expected, strict=True):
        assert result is target
        np.testing.assert_array_equal(np.isnan(result), np.isnan(want))
        assert np.isnan(want).any() and not np.isnan(want).all()
        np.testing.assert_allclose(result - 2, want, rtol=1e-5, atol=1e-5)
