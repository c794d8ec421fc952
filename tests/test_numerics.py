"""Numerics: long float32 reductions stay close to float64, subnormals are kept.

Tolerance (README, "Reliability"): every float32 gradient entry is within
1e-5 of the sum of the absolute values of its terms from the exact value. The
long-reduction cases below use positive data (no cancellation to hide drift)
and about 2**20 terms per grad_weight entry, where plain float32 accumulation
was measured at up to 3.4e-6 (and 8.9e-5 at 1e7 terms); with blocked sums the
error is about 1e-7, so these tests demand 1e-6.
"""

import numpy as np
import pytest

import convgrad
from convgrad import _dispatch
from convgrad._layouts import LAYOUTS
from convgrad._problem import describe

# name: (n, c_in, c_out, size, k, stride, groups, layout); each >= 2**20 terms per gw entry
LONG = {
    "rows": (10_500, 1, 2, 12, 3, 1, 1, "NCHW"),
    "flat": (10_500, 4, 4, 12, 3, 1, 1, "NCHW"),
    "channels": (29_200, 1, 8, 8, 3, 1, 1, "NHWC"),
    "depthwise": (16, 4, 4, 258, 3, 1, 4, "NHWC"),
    "gemm": (16, 4, 4, 256, 1, 1, 1, "NHWC"),
    "gemm_nchw": (16, 4, 4, 256, 1, 1, 1, "NCHW"),
}
MODULES = {"rows": "nchw", "flat": "nchw_flat", "channels": "nhwc"}
# (4 channels: BLAS's products whatever its kernels, never the register tiles)
MODULES |= {"depthwise": "nhwc_depthwise", "gemm": "gemm", "gemm_nchw": "gemm"}


def arrays(case, draw):
    n, c_in, c_out, size, k, stride, groups, layout = case
    spec = LAYOUTS[layout]
    x = draw(spec.image_shape(n, c_in, size, size))
    w = draw(spec.weight_shape(c_out, c_in // groups, k, k))
    problem = describe(spec, np.dtype(np.float32), x.shape, w.shape, stride=stride,
                       padding=0, dilation=1, groups=groups)  # fmt: skip
    g = draw(problem.output_shape)
    return problem, g, x, w, {"stride": stride, "groups": groups, "layout": layout}


@pytest.mark.parametrize("name", sorted(LONG))
def test_long_float32_reductions_stay_near_float64(name):
    rng = np.random.default_rng(0)
    problem, g, x, w, opts = arrays(LONG[name], lambda s: rng.random(s, dtype=np.float32))
    kernel = _dispatch.select_kernel("grad_weight", problem).kernel
    assert getattr(kernel, "py_func", kernel).__module__.endswith("." + MODULES[name])
    assert problem.n * problem.out_h * problem.out_w >= 2**20
    got = convgrad.conv2d_backward(g, x, w, **opts)
    wide = [a.astype(np.float64) for a in (g, x, w)]
    exact = convgrad.conv2d_backward(*wide, **opts)  # data positive: |terms| sum = exact
    for part, want in zip(got, exact, strict=True):
        assert np.max(np.abs(part - want) / want) <= 1e-6


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", ["rows", "flat", "channels", "depthwise"])
def test_subnormal_inputs_are_kept(case, layout):
    """Subnormal float32 values (below 2**-126) times small integers, summed exactly.

    Every product and partial sum is a multiple of 2**-149 far inside float32's
    range, so the exact result is representable: no flush-to-zero anywhere.
    """
    n, c_in, c_out, size, k, stride, groups, _ = {
        "rows": (2, 1, 2, 12, 3, 1, 1, "-"),
        "flat": (2, 4, 4, 12, 3, 1, 1, "-"),
        "channels": (2, 8, 16, 6, 3, 2, 1, "-"),
        "depthwise": (2, 4, 4, 8, 3, 1, 4, "-"),
    }[case]
    rng = np.random.default_rng(1)
    ints = lambda s: rng.integers(-3, 4, s).astype(np.float32)  # noqa: E731
    _, g, x, w, opts = arrays((n, c_in, c_out, size, k, stride, groups, layout), ints)
    tiny = np.float32(2.0**-140)  # subnormal
    for name in ("x", "w", "g"):
        scaled = {"g": g, "x": x, "w": w}
        scaled[name] = scaled[name] * tiny
        assert np.any(np.abs(scaled[name]) < np.finfo(np.float32).tiny) or not scaled[name].any()
        got = convgrad.conv2d_backward(scaled["g"], scaled["x"], scaled["w"], **opts)
        wide = [scaled[k].astype(np.float64) for k in ("g", "x", "w")]
        exact = convgrad.conv2d_backward(*wide, **opts)
        for part, want in zip(got, exact, strict=True):
            np.testing.assert_array_equal(part, want.astype(np.float32))
        assert np.any(got[0] != 0) or np.any(got[1] != 0)
