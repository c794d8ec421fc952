"""Hypothesis: every public function matches the naive loop reference in tests/naive.py.

Random sizes, groups (including depthwise), strides, dilations, asymmetric
padding, both layouts, both dtypes, batched and unbatched, and inputs that are
Fortran-ordered, strided, negatively strided or read-only.
"""

import naive
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (
    assert_close,
    conv_configs,
    image_to_nchw,
    make_arrays,
    max_abs,
    weight_to_oihw,
)

import convgrad

SETTINGS = settings(deadline=None, max_examples=80)


def naive_forward(cfg, arrays, with_bias):
    b = arrays.b_ref if with_bias else None
    return naive.conv2d_nchw(arrays.x_nchw, arrays.w_oihw, b, *cfg.naive_options)


def naive_grad_input(cfg, arrays):
    shape = arrays.x_nchw.shape
    return naive.grad_input_nchw(arrays.g_nchw, arrays.w_oihw, shape, *cfg.naive_options)


def naive_grad_weight(cfg, arrays):
    shape = arrays.w_oihw.shape
    return naive.grad_weight_nchw(arrays.g_nchw, arrays.x_nchw, shape, *cfg.naive_options)


def check_grad_input(cfg, arrays, gi):
    assert isinstance(gi, np.ndarray)
    assert gi.dtype == cfg.dtype
    assert gi.shape == cfg.input_shape
    expected = naive_grad_input(cfg, arrays)
    scale = max_abs(arrays.w_oihw, arrays.g_nchw)
    assert_close(image_to_nchw(gi, cfg), expected, cfg.dtype, cfg.grad_input_terms, scale)


def check_grad_weight(cfg, arrays, gw):
    assert isinstance(gw, np.ndarray)
    assert gw.dtype == cfg.dtype
    assert gw.shape == cfg.weight_shape
    expected = naive_grad_weight(cfg, arrays)
    scale = max_abs(arrays.x_nchw, arrays.g_nchw)
    assert_close(weight_to_oihw(gw, cfg), expected, cfg.dtype, cfg.grad_weight_terms, scale)


def check_grad_bias(cfg, arrays, gb):
    assert isinstance(gb, np.ndarray)
    assert gb.dtype == cfg.dtype
    assert gb.shape == (cfg.c_out,)
    expected = naive.grad_bias_nchw(arrays.g_nchw)
    scale = max_abs(arrays.g_nchw)
    assert_close(gb, expected, cfg.dtype, cfg.grad_weight_terms, scale)


@SETTINGS
@given(cfg=conv_configs(), with_bias=st.booleans())
def test_conv2d_matches_naive(cfg, with_bias):
    arrays = make_arrays(cfg)
    bias = arrays.b if with_bias else None
    y = convgrad.conv2d(arrays.x, arrays.w, bias, **cfg.options)
    assert isinstance(y, np.ndarray)
    assert y.dtype == cfg.dtype
    assert y.shape == cfg.output_shape
    expected = naive_forward(cfg, arrays, with_bias)
    scale = max_abs(arrays.x_nchw, arrays.w_oihw) + (max_abs(arrays.b_ref) if with_bias else 0)
    assert_close(image_to_nchw(y, cfg), expected, cfg.dtype, cfg.forward_terms + 1, scale)


@SETTINGS
@given(cfg=conv_configs(), mask=st.tuples(st.booleans(), st.booleans(), st.booleans()))
def test_conv2d_backward_matches_naive(cfg, mask):
    arrays = make_arrays(cfg)
    gi, gw, gb = convgrad.conv2d_backward(
        arrays.g, arrays.x, arrays.w, output_mask=mask, **cfg.options
    )
    for wanted, result in zip(mask, (gi, gw, gb), strict=True):
        assert (result is not None) == wanted
    if mask[0]:
        check_grad_input(cfg, arrays, gi)
    if mask[1]:
        check_grad_weight(cfg, arrays, gw)
    if mask[2]:
        check_grad_bias(cfg, arrays, gb)


@SETTINGS
@given(cfg=conv_configs())
def test_conv2d_backward_default_mask_matches_naive(cfg):
    arrays = make_arrays(cfg)
    gi, gw, gb = convgrad.conv2d_backward(arrays.g, arrays.x, arrays.w, **cfg.options)
    check_grad_input(cfg, arrays, gi)
    check_grad_weight(cfg, arrays, gw)
    check_grad_bias(cfg, arrays, gb)


@SETTINGS
@given(cfg=conv_configs())
def test_conv2d_grad_input_matches_naive(cfg):
    arrays = make_arrays(cfg)
    gi = convgrad.conv2d_grad_input(arrays.g, arrays.w, cfg.input_shape, **cfg.options)
    check_grad_input(cfg, arrays, gi)


@SETTINGS
@given(cfg=conv_configs())
def test_conv2d_grad_weight_matches_naive(cfg):
    arrays = make_arrays(cfg)
    gw = convgrad.conv2d_grad_weight(arrays.g, arrays.x, cfg.weight_shape, **cfg.options)
    check_grad_weight(cfg, arrays, gw)


@SETTINGS
@given(cfg=conv_configs())
def test_conv2d_grad_bias_matches_naive(cfg):
    arrays = make_arrays(cfg)
    gb = convgrad.conv2d_grad_bias(arrays.g, layout=cfg.layout)
    check_grad_bias(cfg, arrays, gb)


@SETTINGS
@given(cfg=conv_configs())
def test_inputs_are_not_modified(cfg):
    arrays = make_arrays(cfg)
    before = [np.array(a, copy=True) for a in (arrays.x, arrays.w, arrays.b, arrays.g)]
    convgrad.conv2d(arrays.x, arrays.w, arrays.b, **cfg.options)
    convgrad.conv2d_backward(arrays.g, arrays.x, arrays.w, **cfg.options)
    for old, new in zip(before, (arrays.x, arrays.w, arrays.b, arrays.g), strict=True):
        np.testing.assert_array_equal(old, new)
