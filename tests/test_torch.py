"""Cross-check against PyTorch: F.conv2d and aten.convolution_backward.

PyTorch takes only symmetric padding, so asymmetric padding is applied to the
input with F.pad and grad_input is cropped back. NHWC arrays are permuted to
NCHW for PyTorch. The PyTorch side always runs in float64 (from the exact
float32 values when the config is float32), so it is an accurate reference.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import ConvConfig, assert_close, conv_configs, make_arrays, max_abs

import convgrad

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _t(a):
    return torch.from_numpy(np.array(a, dtype=np.float64, copy=True))


def _image_to_torch(a, cfg):
    """Image in cfg's layout (maybe unbatched) -> float64 NCHW batched tensor."""
    t = _t(a)
    if not cfg.batched:
        t = t.unsqueeze(0)
    return t if cfg.layout == "NCHW" else t.permute(0, 3, 1, 2).contiguous()


def _weight_to_torch(a, cfg):
    t = _t(a)
    return t if cfg.layout == "NCHW" else t.permute(3, 2, 0, 1).contiguous()


def _image_from_torch(t, cfg):
    """float64 NCHW batched tensor -> numpy array in cfg's layout."""
    if cfg.layout == "NHWC":
        t = t.permute(0, 2, 3, 1)
    a = t.contiguous().numpy()
    return a if cfg.batched else a[0]


def _weight_from_torch(t, cfg):
    return (t if cfg.layout == "NCHW" else t.permute(2, 3, 1, 0)).contiguous().numpy()


def torch_reference(cfg, x, w, b, g):
    """(y, grad_input, grad_weight, grad_bias) from PyTorch, in cfg's layout, float64."""
    top, bottom, left, right = cfg.padding
    xt = F.pad(_image_to_torch(x, cfg), (left, right, top, bottom))
    wt = _weight_to_torch(w, cfg)
    bt = None if b is None else _t(b)
    yt = F.conv2d(xt, wt, bt, stride=cfg.stride, dilation=cfg.dilation, groups=cfg.groups)
    gt = _image_to_torch(g, cfg)
    gi, gw, gb = torch.ops.aten.convolution_backward(
        gt,
        xt,
        wt,
        [cfg.c_out],
        list(cfg.stride),
        [0, 0],
        list(cfg.dilation),
        False,
        [0, 0],
        cfg.groups,
        [True, True, True],
    )
    gi = gi[:, :, top : top + cfg.h, left : left + cfg.w]
    return (
        _image_from_torch(yt, cfg),
        _image_from_torch(gi, cfg),
        _weight_from_torch(gw, cfg),
        gb.numpy(),
    )


def check_against_torch(cfg, x, w, b, g):
    y = convgrad.conv2d(x, w, b, **cfg.options)
    gi, gw, gb = convgrad.conv2d_backward(g, x, w, **cfg.options)
    ty, tgi, tgw, tgb = torch_reference(cfg, x, w, b, g)
    results = (y, gi, gw, gb)
    shapes = (cfg.output_shape, cfg.input_shape, cfg.weight_shape, (cfg.c_out,))
    for result, shape in zip(results, shapes, strict=True):
        assert result.dtype == cfg.dtype
        assert result.shape == shape
    b_scale = 0.0 if b is None else max_abs(b)
    assert_close(y, ty, cfg.dtype, cfg.forward_terms + 1, max_abs(x, w) + b_scale)
    assert_close(gi, tgi, cfg.dtype, cfg.grad_input_terms, max_abs(w, g))
    assert_close(gw, tgw, cfg.dtype, cfg.grad_weight_terms, max_abs(x, g))
    assert_close(gb, tgb, cfg.dtype, cfg.grad_weight_terms, max_abs(g))


@settings(deadline=None, max_examples=100)
@given(cfg=conv_configs(), with_bias=st.booleans())
def test_matches_torch(cfg, with_bias):
    arrays = make_arrays(cfg)
    check_against_torch(cfg, arrays.x, arrays.w, arrays.b if with_bias else None, arrays.g)


@settings(deadline=None, max_examples=30)
@given(cfg=conv_configs(max_n=5, max_size=24, max_per_group=8), with_bias=st.booleans())
def test_larger_matches_torch(cfg, with_bias):
    """Bigger images, batches and channel counts than naive.py can afford."""
    arrays = make_arrays(cfg)
    check_against_torch(cfg, arrays.x, arrays.w, arrays.b if with_bias else None, arrays.g)


def _fixed(n, c_in, c_out, hw, k, *, stride=1, pad=0, dil=1, groups=1, layout, dtype):
    return ConvConfig(
        n=n,
        batched=True,
        groups=groups,
        c_in=c_in,
        c_out=c_out,
        h=hw,
        w=hw,
        kh=k,
        kw=k,
        stride=(stride, stride),
        dilation=(dil, dil),
        padding=(pad,) * 4,
        layout=layout,
        dtype=np.dtype(dtype),
        mangles=tuple((name, "contiguous") for name in ("input", "weight", "bias", "grad_output")),
        compact_options=True,
        seed=1234,
    )


REALISTIC = {
    "resnet_3x3_stride2": {"n": 2, "c_in": 8, "c_out": 16, "hw": 8, "k": 3, "stride": 2, "pad": 1},
    "resnet_3x3": {"n": 2, "c_in": 16, "c_out": 16, "hw": 8, "k": 3, "pad": 1},
    "depthwise_3x3": {"n": 2, "c_in": 8, "c_out": 8, "hw": 9, "k": 3, "pad": 1, "groups": 8},
    "depthwise_mult2": {"n": 1, "c_in": 4, "c_out": 8, "hw": 7, "k": 3, "groups": 4},
    "dilated_3x3": {"n": 2, "c_in": 4, "c_out": 6, "hw": 12, "k": 3, "pad": 2, "dil": 2},
    "pointwise_1x1": {"n": 3, "c_in": 16, "c_out": 8, "hw": 6, "k": 1},
    "pointwise_1x1_stride2": {"n": 2, "c_in": 8, "c_out": 16, "hw": 7, "k": 1, "stride": 2},
    "stem_7x7_stride2": {"n": 1, "c_in": 3, "c_out": 8, "hw": 16, "k": 7, "stride": 2, "pad": 3},
    "grouped": {"n": 2, "c_in": 8, "c_out": 12, "hw": 6, "k": 3, "pad": 1, "groups": 4},
    # the unfolded products (im2col and BLAS): short planes, and stride 2
    "late_layer_unfolded": {"n": 4, "c_in": 32, "c_out": 64, "hw": 7, "k": 3, "pad": 1},
    "stride2_unfolded": {"n": 2, "c_in": 16, "c_out": 64, "hw": 15, "k": 3, "stride": 2, "pad": 1},
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", sorted(REALISTIC))
def test_realistic_cases_match_torch(case, layout, dtype):
    cfg = _fixed(**REALISTIC[case], layout=layout, dtype=dtype)
    arrays = make_arrays(cfg)
    check_against_torch(cfg, arrays.x, arrays.w, arrays.b, arrays.g)


@st.composite
def same_configs(draw):
    """Stride-1 configs (padding='same' needs stride 1), kernels 1..5 incl. even sizes."""
    cfg = draw(conv_configs())
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    total_h, total_w = dh * (kh - 1), dw * (kw - 1)
    # padding="same" keeps the size: pad total d*(k-1), odd extra at the bottom/right.
    padding = (total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2)
    return ConvConfig(
        **{
            **cfg.__dict__,
            "kh": kh,
            "kw": kw,
            "stride": (1, 1),
            "dilation": (dh, dw),
            "padding": padding,
        }
    )


# PyTorch warns that even kernels with padding="same" cost an extra padded copy.
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@settings(deadline=None, max_examples=80)
@given(cfg=same_configs(), with_bias=st.booleans())
def test_padding_same_matches_torch(cfg, with_bias):
    assert (cfg.oh, cfg.ow) == (cfg.h, cfg.w)
    arrays = make_arrays(cfg)
    x, w, g = arrays.x, arrays.w, arrays.g
    b = arrays.b if with_bias else None
    options = {**cfg.options, "padding": "same"}
    y = convgrad.conv2d(x, w, b, **options)
    assert y.dtype == cfg.dtype
    assert y.shape == cfg.output_shape

    xt = _image_to_torch(x, cfg).requires_grad_(True)
    wt = _weight_to_torch(w, cfg).requires_grad_(True)
    bt = None if b is None else _t(b)
    yt = F.conv2d(xt, wt, bt, padding="same", dilation=cfg.dilation, groups=cfg.groups)
    b_scale = 0.0 if b is None else max_abs(b)
    ty = _image_from_torch(yt.detach(), cfg)
    assert_close(y, ty, cfg.dtype, cfg.forward_terms + 1, max_abs(x, w) + b_scale)

    # The gradients with padding="same" as well, through torch autograd.
    gi, gw, gb = convgrad.conv2d_backward(g, x, w, **options)
    yt.backward(_image_to_torch(g, cfg))
    assert_close(
        gi, _image_from_torch(xt.grad, cfg), cfg.dtype, cfg.grad_input_terms, max_abs(w, g)
    )
    gw_ref = _weight_from_torch(wt.grad, cfg)
    assert_close(gw, gw_ref, cfg.dtype, cfg.grad_weight_terms, max_abs(x, g))
    assert_close(
        gb,
        arrays.g_nchw.sum(axis=(0, 2, 3), dtype=np.float64),
        cfg.dtype,
        cfg.grad_weight_terms,
        1.0,
    )
