"""Mathematical identities that tie conv2d to its gradients, independent of naive.py.

(a) adjointness: <conv2d(x, w), g> == <x, grad_input> == <w, grad_weight>;
(b) float64 central finite differences of L = sum(conv2d(x, w, b) * g);
(c) linearity of the gradients in grad_output.
"""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import DTYPES, conv_configs, make_arrays, max_abs, tolerance

import convgrad

F64 = (np.dtype(np.float64),)


def inner(a, b):
    """<a, b> in float64, whatever the memory layouts of a and b."""
    return float(np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64)))


@settings(deadline=None, max_examples=100)
@given(cfg=conv_configs(dtypes=F64))
def test_adjoint_identity(cfg):
    arrays = make_arrays(cfg)
    x, w, g = arrays.x, arrays.w, arrays.g
    y = convgrad.conv2d(x, w, **cfg.options)
    gi, gw, gb = convgrad.conv2d_backward(g, x, w, **cfg.options)
    gi_alone = convgrad.conv2d_grad_input(g, w, cfg.input_shape, **cfg.options)
    gw_alone = convgrad.conv2d_grad_weight(g, x, cfg.weight_shape, **cfg.options)

    forward = inner(y, g)
    # Sum over every multiply-add of |x| |w| |g|: bounds each side's rounding error.
    bound = inner(convgrad.conv2d(np.abs(x), np.abs(w), **cfg.options), np.abs(g))
    atol = 1e-13 * (1 + bound) * max(1, cfg.forward_terms, cfg.grad_weight_terms)
    for value in (inner(x, gi), inner(w, gw), inner(x, gi_alone), inner(w, gw_alone)):
        assert math.isclose(value, forward, rel_tol=1e-11, abs_tol=atol), (value, forward)
    # The bias's adjoint: <1 (x) b, g> == <b, grad_bias>.
    ones = np.zeros_like(x)
    y_bias_only = convgrad.conv2d(ones, w, arrays.b, **cfg.options)
    assert math.isclose(inner(y_bias_only, g), inner(arrays.b, gb), rel_tol=1e-11, abs_tol=atol)


def _loss(cfg, x, w, b, g):
    return float(np.sum(convgrad.conv2d(x, w, b, **cfg.options) * g))


def _check_finite_differences(name, array, grad, loss_of, bound, rng, count=3):
    """Compare ``grad`` at ``count`` random entries of ``array`` with central differences.

    L is linear in any single entry of x, w or b (bilinear in x and w), so the
    central difference has no truncation error for any step; a moderate step
    keeps the rounding error (about eps * bound / step) far below the check.
    """
    if array.size == 0:
        assert grad.size == 0
        return
    step = 0.25
    for _ in range(count):
        index = tuple(int(rng.integers(0, d)) for d in array.shape)
        plus = np.array(array, copy=True)
        minus = np.array(array, copy=True)
        plus[index] += step
        minus[index] -= step
        estimate = (loss_of(plus) - loss_of(minus)) / (2 * step)
        abs_tol = 1e-13 * (1.0 + bound) / step
        assert math.isclose(grad[index], estimate, rel_tol=1e-7, abs_tol=abs_tol), (
            name,
            index,
            float(grad[index]),
            estimate,
        )


@settings(deadline=None, max_examples=60)
@given(cfg=conv_configs(dtypes=F64))
def test_finite_differences(cfg):
    arrays = make_arrays(cfg)
    x, w, b, g = arrays.x, arrays.w, arrays.b, arrays.g
    gi, gw, gb = convgrad.conv2d_backward(g, x, w, **cfg.options)
    rng = np.random.default_rng(cfg.seed + 1)
    # Sum over every term of L of its magnitude (with a margin for the perturbed entry).
    y_abs = convgrad.conv2d(np.abs(x) + 1, np.abs(w) + 1, np.abs(b) + 1, **cfg.options)
    bound = inner(y_abs, np.abs(g))
    for name, array, grad, loss_of in (
        ("x", x, gi, lambda xx: _loss(cfg, xx, w, b, g)),
        ("w", w, gw, lambda ww: _loss(cfg, x, ww, b, g)),
        ("b", b, gb, lambda bb: _loss(cfg, x, w, bb, g)),
    ):
        _check_finite_differences(name, array, grad, loss_of, bound, rng)


@settings(deadline=None, max_examples=60)
@given(cfg=conv_configs(dtypes=DTYPES), seed=st.integers(0, 2**32 - 1))
def test_gradients_are_linear_in_grad_output(cfg, seed):
    arrays = make_arrays(cfg)
    x, w, g1 = arrays.x, arrays.w, arrays.g
    g2 = np.random.default_rng(seed).standard_normal(g1.shape).astype(cfg.dtype)
    combined = (g1 + 2 * g2).astype(cfg.dtype)

    r1 = convgrad.conv2d_backward(g1, x, w, **cfg.options)
    r2 = convgrad.conv2d_backward(g2, x, w, **cfg.options)
    rc = convgrad.conv2d_backward(combined, x, w, **cfg.options)

    g_scale = 3 * max(max_abs(g1), max_abs(g2))
    terms = (cfg.grad_input_terms, cfg.grad_weight_terms, cfg.grad_weight_terms)
    scales = (max_abs(w) * g_scale, max_abs(x) * g_scale, g_scale)
    for a, b, c, n_terms, scale in zip(r1, r2, rc, terms, scales, strict=True):
        assert c.dtype == cfg.dtype
        tol = tolerance(cfg.dtype, n_terms, scale)
        # Both sides carry rounding error; double the float64 atol for that.
        tol["atol"] *= 2
        np.testing.assert_allclose(c, a + 2 * b, **tol)
