"""convgrad.Conv2d against the functional API (and torch.nn.Conv2d where torch is installed)."""

import math

import numpy as np
import pytest

import convgrad
from convgrad import Conv2d

OPTIONS = [
    {},
    {"stride": 2, "padding": 1},
    {"stride": (1, 2), "padding": ((0, 2), (1, 0)), "dilation": (2, 1)},
    {"padding": "same", "dilation": 2},
    {"groups": 2, "padding": 1},
]


def image(layout, n, c, h, w, dtype, rng):
    shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batched", [True, False])
def test_forward_and_backward_match_the_functions(options, layout, dtype, batched):
    rng = np.random.default_rng(0)
    layer = Conv2d(4, 6, (3, 2), layout=layout, dtype=dtype, rng=1, **options)
    x = image(layout, 3, 4, 9, 8, dtype, rng)
    x = x if batched else x[0]
    kwargs = {**layer.options}
    y = layer.forward(x)
    np.testing.assert_array_equal(y, convgrad.conv2d(x, layer.weight, layer.bias, **kwargs))
    g = rng.standard_normal(y.shape).astype(dtype)
    gx = layer.backward(g)
    want = convgrad.conv2d_backward(g, x, layer.weight, **kwargs)
    for got, expected in zip((gx, layer.grad_weight, layer.grad_bias), want, strict=True):
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, expected)


def test_backward_accumulates_until_zero_grad():
    rng = np.random.default_rng(2)
    layer = Conv2d(2, 3, 3, padding=1, rng=0)
    x1, x2 = (rng.standard_normal((2, 2, 5, 5)).astype(np.float32) for _ in range(2))
    g1, g2 = (rng.standard_normal((2, 3, 5, 5)).astype(np.float32) for _ in range(2))
    layer.forward(x1)
    layer.backward(g1)
    layer.forward(x2)
    gx2 = layer.backward(g2)
    _, w1, b1 = convgrad.conv2d_backward(g1, x1, layer.weight, padding=1)
    want_x2, w2, b2 = convgrad.conv2d_backward(g2, x2, layer.weight, padding=1)
    np.testing.assert_allclose(layer.grad_weight, w1 + w2, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer.grad_bias, b1 + b2, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(gx2, want_x2)  # grad_input is not accumulated
    grad_weight = layer.grad_weight
    layer.zero_grad()
    assert layer.grad_weight is grad_weight  # zeroed in place: optimisers may hold it
    assert not layer.grad_weight.any() and not layer.grad_bias.any()


def test_parameters_update_in_place():
    layer = Conv2d(1, 2, 3, rng=0)
    x = np.ones((1, 1, 5, 5), np.float32)
    before = layer.forward(x)
    layer.backward(np.ones_like(before))
    assert [p.shape for p, _ in layer.parameters()] == [(2, 1, 3, 3), (2,)]
    for param, grad in layer.parameters():
        param -= 0.1 * grad
    assert not np.allclose(layer.forward(x), before)


def test_without_bias():
    layer = Conv2d(2, 4, 1, bias=False, layout="NHWC", rng=0)
    assert layer.bias is None and layer.grad_bias is None
    assert len(layer.parameters()) == 1
    x = np.ones((3, 3, 2), np.float32)
    y = layer.forward(x)
    np.testing.assert_allclose(y[0, 0], layer.weight[0, 0].sum(axis=0), rtol=1e-6)
    layer.backward(np.ones_like(y))
    np.testing.assert_allclose(layer.grad_weight[0, 0], np.full((2, 4), 9.0))
    assert "bias=False" in repr(layer)


def test_pytorch_like_initialisation():
    layer = Conv2d(8, 16, (3, 5), groups=2, layout="NHWC", dtype=np.float64, rng=7)
    assert layer.weight.shape == (3, 5, 4, 16)  # HWIO
    bound = 1 / math.sqrt(4 * 3 * 5)
    assert np.abs(layer.weight).max() <= bound and np.abs(layer.bias).max() <= bound
    assert np.abs(layer.weight).max() > 0.95 * bound  # uniform over the whole range
    assert abs(layer.weight.mean()) < 0.1 * bound
    again = Conv2d(8, 16, (3, 5), groups=2, layout="NHWC", dtype=np.float64, rng=7)
    np.testing.assert_array_equal(layer.weight, again.weight)
    other = Conv2d(8, 16, (3, 5), groups=2, layout="NHWC", dtype=np.float64, rng=8)
    assert not np.array_equal(layer.weight, other.weight)
    assert layer.weight.dtype == np.float64 and not layer.grad_weight.any()


def test_repr_and_call():
    layer = Conv2d(3, 8, 3, stride=2, padding=((0, 1), (0, 1)), dilation=(1, 2), groups=1, rng=0)
    assert repr(layer) == (
        "Conv2d(3, 8, kernel_size=3, stride=2, padding=((0, 1), (0, 1)), dilation=(1, 2), "
        "layout='NCHW', dtype=float32)"
    )
    x = np.ones((3, 9, 9), np.float32)
    np.testing.assert_array_equal(layer(x), layer.forward(x))


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: Conv2d(3, 8, 0), ValueError, "kernel_size must be >= 1"),
        (lambda: Conv2d(3, 8, "3"), TypeError, "kernel_size must be an int or a pair"),
        (lambda: Conv2d(0, 8, 3), ValueError, "in_channels must be >= 1"),
        (lambda: Conv2d(3, 8.0, 3), TypeError, "out_channels must be an int"),
        (lambda: Conv2d(3, 8, 3, groups=2), ValueError, "groups=2 must divide in_channels=3"),
        (lambda: Conv2d(3, 8, 3, stride=0), ValueError, "stride must be >= 1"),
        (lambda: Conv2d(3, 8, 3, layout="CHWN"), ValueError, "layout"),
        (lambda: Conv2d(3, 8, 3, dtype=np.float16), TypeError, "dtype must be float32 or float64"),
        (lambda: Conv2d(3, 8, 3, dtype="nonsense"), TypeError, "dtype must be float32 or float64"),
        (lambda: Conv2d(3, 8, 3, dtype=None), TypeError, "dtype must be float32 or float64"),
        (lambda: Conv2d(3, 8, 3, bias=None), TypeError, "bias must be a bool"),
    ],
)
def test_constructor_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_call_errors():
    layer = Conv2d(3, 4, 3, rng=0)
    with pytest.raises(RuntimeError, match=r"call forward\(x\) first"):
        layer.backward(np.ones((1, 4, 3, 3), np.float32))
    with pytest.raises(TypeError, match=r"numpy\.ndarray"):
        layer.forward([[1.0]])
    with pytest.raises(ValueError, match="must be 4-D"):
        layer.forward(np.ones((5, 5), np.float32))
    with pytest.raises(TypeError, match=r"dtype float32; got float64 \(convert with"):
        layer.forward(np.ones((1, 3, 5, 5)))
    with pytest.raises(
        ValueError, match=r"3 channels on axis 1 \(NCHW\); got shape \(1, 5, 5, 3\)"
    ):
        layer.forward(np.ones((1, 5, 5, 3), np.float32))
    with pytest.raises(ValueError, match=r"3 channels on axis 2 \(NHWC\); got shape \(5, 3, 5\)"):
        Conv2d(3, 4, 3, layout="NHWC").forward(np.ones((5, 3, 5), np.float32))
    layer.forward(np.ones((2, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2, 4, 3, 3\)"):
        layer.backward(np.ones((2, 4, 5, 5), np.float32))


@pytest.mark.parametrize("options", [o for o in OPTIONS if not isinstance(o.get("padding"), tuple)])
def test_matches_torch_nn_conv2d(options):
    torch = pytest.importorskip("torch")
    layer = Conv2d(4, 6, (3, 2), dtype=np.float64, rng=3, **options)
    reference = torch.nn.Conv2d(4, 6, (3, 2), dtype=torch.float64, **options)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(layer.weight))
        reference.bias.copy_(torch.from_numpy(layer.bias))
    x = np.random.default_rng(4).standard_normal((2, 4, 9, 8))
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = reference(xt)
    y = layer.forward(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    g = np.random.default_rng(5).standard_normal(y.shape)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(layer.backward(g), xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grad_weight, reference.weight.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(layer.grad_bias, reference.bias.grad.numpy(), atol=1e-12)
