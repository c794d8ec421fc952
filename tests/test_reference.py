"""convgrad.reference (vectorised NumPy, used by the CLI and benchmarks) against tests/naive.py."""

import numpy as np
import pytest
from naive import (
    conv2d_nchw,
    grad_bias_nchw,
    grad_input_nchw,
    grad_weight_nchw,
    hwio_to_oihw,
    nchw_to_nhwc,
    nhwc_to_nchw,
    oihw_to_hwio,
)

from convgrad.reference import conv2d_backward_reference, conv2d_reference

CASES = [
    # n, c_in, c_out, h, w, kh, kw, stride, padding (t, b, l, r), dilation, groups
    (2, 4, 6, 9, 8, 3, 3, (2, 1), (1, 0, 2, 1), (1, 2), 2),
    (1, 3, 3, 7, 7, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 3),
    (0, 2, 2, 5, 5, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (3, 1, 4, 6, 7, 2, 3, (2, 1), (2, 2, 2, 2), (2, 2), 1),
]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", CASES)
def test_reference_matches_naive_loops(case, layout):
    n, c_in, c_out, h, w, kh, kw, stride, pads, dilation, groups = case
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, c_in, h, w))
    wt = rng.standard_normal((c_out, c_in // groups, kh, kw))
    b = rng.standard_normal(c_out)
    y = conv2d_nchw(x, wt, b, stride, pads, dilation, groups)
    g = rng.standard_normal(y.shape)
    opts = {
        "stride": stride,
        "padding": (pads[:2], pads[2:]),
        "dilation": dilation,
        "groups": groups,
        "layout": layout,
    }
    if layout == "NHWC":
        args = (nchw_to_nhwc(g), nchw_to_nhwc(x), oihw_to_hwio(wt))
        got_y = nhwc_to_nchw(conv2d_reference(args[1], args[2], b, **opts))
        gi, gw, gb = conv2d_backward_reference(*args, **opts)
        gi, gw = nhwc_to_nchw(gi), hwio_to_oihw(gw)
    else:
        got_y = conv2d_reference(x, wt, b, **opts)
        gi, gw, gb = conv2d_backward_reference(g, x, wt, **opts)
    np.testing.assert_allclose(got_y, y, atol=1e-12)
    np.testing.assert_allclose(
        gi, grad_input_nchw(g, wt, x.shape, stride, pads, dilation, groups), atol=1e-12
    )
    np.testing.assert_allclose(
        gw, grad_weight_nchw(g, x, wt.shape, stride, pads, dilation, groups), atol=1e-12
    )
    np.testing.assert_allclose(gb, grad_bias_nchw(g), atol=1e-12)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_reference_adds_no_terms_for_padding(layout):
    """An Inf on the image's border reaches only the entries that depend on it, as the
    naive loops and the README say: zero padding adds no terms (no Inf times a padded 0)."""
    rng = np.random.default_rng(11)
    n, c_in, c_out, h, w, k = 1, 2, 3, 6, 5, 3
    pads, stride, dilation = (1, 2, 2, 1), (1, 2), (2, 1)
    x = rng.standard_normal((n, c_in, h, w))
    wt = rng.standard_normal((c_out, c_in, k, k))
    y = conv2d_nchw(x, wt, None, stride, pads, dilation, 1)
    g = rng.standard_normal(y.shape)
    g[0, 1, -1, -1] = np.inf  # grad_output's last pixel: its taps reach into the padding
    wt[2, 0, 0, 0] = np.inf  # a corner tap: the padding is all it reads at the border
    opts = {"stride": stride, "padding": (pads[:2], pads[2:]), "dilation": dilation}
    want_y = conv2d_nchw(x, wt, None, stride, pads, dilation, 1)
    want = (
        grad_input_nchw(g, wt, x.shape, stride, pads, dilation, 1),
        grad_weight_nchw(g, x, wt.shape, stride, pads, dilation, 1),
    )
    if layout == "NHWC":
        got_y = nhwc_to_nchw(
            conv2d_reference(nchw_to_nhwc(x), oihw_to_hwio(wt), layout=layout, **opts)
        )
        gi, gw, _ = conv2d_backward_reference(
            nchw_to_nhwc(g), nchw_to_nhwc(x), oihw_to_hwio(wt), layout=layout, **opts
        )
        got = (nhwc_to_nchw(gi), hwio_to_oihw(gw))
    else:
        got_y = conv2d_reference(x, wt, **opts)
        got = conv2d_backward_reference(g, x, wt, **opts)[:2]
    for a, b in zip((got_y, *got), (want_y, *want), strict=True):
        assert np.isfinite(b).any() and not np.isfinite(b).all()  # the case tests something
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a, b, atol=1e-12, equal_nan=True)
