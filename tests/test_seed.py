"""The seed notebook's case: a 28x28x1 HWC image, 3x3x1x6 HWIO weights, 26x26x6 gradient.

``conv2d_backward(..., layout="NHWC")`` must match a direct, 0-based NumPy port
of the notebook's Julia ``Conv_backward_v5``::

    grad_input = zeros(size(input)); grad_weights = zeros(size(weights))
    for k in input_channels, c in output_channels, i in output_height, j in output_width
        grad_input[i:i+kh-1, j:j+kw-1, k] += weights[:, :, k, c] * gradient[i, j, c]
    for k in input_channels, c in output_channels
        Convolution_2d!(tmp, input[:, :, k], gradient[:, :, c])   # valid correlation
        grad_weights[:, :, k, c] += tmp
    grad_bias = sum(gradient, dims=(1, 2))

where ``Convolution_2d!(ret, input, kernel)`` computes
``ret[r, c] = sum(input[r:r+kh-1, c:c+kw-1] .* kernel)`` with the gradient
plane as the kernel, so ``tmp`` is (28 - 26 + 1) x (28 - 26 + 1) = 3x3.
"""

import math

import numpy as np
import pytest

import convgrad


def convolution_2d(input_plane, kernel):
    """The notebook's Convolution_2d!: valid cross-correlation of a plane with a kernel."""
    kh, kw = kernel.shape
    out_h = input_plane.shape[0] - kh + 1
    out_w = input_plane.shape[1] - kw + 1
    ret = np.zeros((out_h, out_w), dtype=input_plane.dtype)
    for r in range(out_h):
        for c in range(out_w):
            ret[r, c] = np.sum(input_plane[r : r + kh, c : c + kw] * kernel)
    return ret


def conv_backward_v5(gradient, input, weights):
    """0-based port of the notebook's Conv_backward_v5 (HWC input, HWIO weights)."""
    kh, kw, input_channels, output_channels = weights.shape
    output_height, output_width, _ = gradient.shape
    grad_input = np.zeros(input.shape, dtype=input.dtype)
    grad_weights = np.zeros(weights.shape, dtype=weights.dtype)
    for k in range(input_channels):
        for c in range(output_channels):
            for i in range(output_height):
                for j in range(output_width):
                    grad_input[i : i + kh, j : j + kw, k] += weights[:, :, k, c] * gradient[i, j, c]
    for k in range(input_channels):
        for c in range(output_channels):
            grad_weights[:, :, k, c] += convolution_2d(input[:, :, k], gradient[:, :, c])
    grad_bias = np.sum(gradient, axis=(0, 1))
    return grad_input, grad_weights, grad_bias


def _seed_arrays(dtype, n=None, seed=0):
    rng = np.random.default_rng(seed)
    lead = () if n is None else (n,)
    input = rng.standard_normal((*lead, 28, 28, 1)).astype(dtype)
    weights = rng.standard_normal((3, 3, 1, 6)).astype(dtype)
    gradient = rng.standard_normal((*lead, 26, 26, 6)).astype(dtype)
    return input, weights, gradient


def _tolerance(dtype, terms):
    if dtype == np.float32:
        # Both sides round in float32; entries are sums of ``terms`` products of N(0, 1)s.
        return {"rtol": 1e-5, "atol": 1e-5 * math.sqrt(terms) * 20}
    return {"rtol": 1e-12, "atol": 1e-12 * terms}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_seed_notebook_case(dtype):
    input, weights, gradient = _seed_arrays(dtype)
    gi, gw, gb = convgrad.conv2d_backward(gradient, input, weights, layout="NHWC")
    ref_gi, ref_gw, ref_gb = conv_backward_v5(gradient, input, weights)

    assert (gi.shape, gw.shape, gb.shape) == ((28, 28, 1), (3, 3, 1, 6), (6,))
    assert gi.dtype == gw.dtype == gb.dtype == np.dtype(dtype)
    np.testing.assert_allclose(gi, ref_gi, **_tolerance(dtype, 6 * 9))
    np.testing.assert_allclose(gw, ref_gw, **_tolerance(dtype, 26 * 26))
    np.testing.assert_allclose(gb, ref_gb, **_tolerance(dtype, 26 * 26))

    # The same through the single-gradient entry points.
    gi1 = convgrad.conv2d_grad_input(gradient, weights, input.shape, layout="NHWC")
    gw1 = convgrad.conv2d_grad_weight(gradient, input, weights.shape, layout="NHWC")
    gb1 = convgrad.conv2d_grad_bias(gradient, layout="NHWC")
    np.testing.assert_allclose(gi1, gi, **_tolerance(dtype, 6 * 9))
    np.testing.assert_allclose(gw1, gw, **_tolerance(dtype, 26 * 26))
    np.testing.assert_allclose(gb1, gb, **_tolerance(dtype, 26 * 26))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_seed_notebook_case_batched(dtype):
    n = 3
    input, weights, gradient = _seed_arrays(dtype, n=n, seed=1)
    gi, gw, gb = convgrad.conv2d_backward(gradient, input, weights, layout="NHWC")

    per_image = [conv_backward_v5(gradient[k], input[k], weights) for k in range(n)]
    ref_gi = np.stack([r[0] for r in per_image])
    ref_gw = sum(r[1].astype(np.float64) for r in per_image)
    ref_gb = sum(r[2].astype(np.float64) for r in per_image)

    assert (gi.shape, gw.shape, gb.shape) == ((n, 28, 28, 1), (3, 3, 1, 6), (6,))
    assert gi.dtype == gw.dtype == gb.dtype == np.dtype(dtype)
    np.testing.assert_allclose(gi, ref_gi, **_tolerance(dtype, 6 * 9))
    np.testing.assert_allclose(gw, ref_gw, **_tolerance(dtype, n * 26 * 26))
    np.testing.assert_allclose(gb, ref_gb, **_tolerance(dtype, n * 26 * 26))

    # Image k of the batch gets the unbatched call's grad_input.
    for k in range(n):
        gi_k, _, _ = convgrad.conv2d_backward(gradient[k], input[k], weights, layout="NHWC")
        np.testing.assert_allclose(gi[k], gi_k, **_tolerance(dtype, 6 * 9))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_seed_notebook_case_forward_shape(dtype):
    """The forward pass of the seed case gives the 26x26x6 map the gradient belongs to."""
    input, weights, _ = _seed_arrays(dtype)
    y = convgrad.conv2d(input, weights, layout="NHWC")
    assert y.shape == (26, 26, 6)
    assert y.dtype == np.dtype(dtype)
    ref = np.zeros((26, 26, 6))
    for c in range(6):
        ref[:, :, c] = convolution_2d(input[:, :, 0].astype(np.float64), weights[:, :, 0, c])
    np.testing.assert_allclose(y, ref, **_tolerance(dtype, 9))
