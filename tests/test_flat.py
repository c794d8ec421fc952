"""The flat-plane kernels against the row kernels, over random geometry and strides.

The row kernels are checked against the naive reference elsewhere; here the flat
kernels must agree with them for any padding, dilation, groups, channel count and
image chunk, and the API must fall back to the exact kernels on NaN or Inf.
"""

import naive
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convgrad
from convgrad import _api, _dispatch
from convgrad._layouts import NCHW
from convgrad._problem import describe
from convgrad.kernels import nchw, nchw_flat


@st.composite
def flat_problems(draw):
    groups = draw(st.integers(1, 3))
    cin_g, cout_g = draw(st.integers(1, 6)), draw(st.integers(1, 9))
    n = draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = tuple(draw(st.integers(0, 3)) for _ in range(4))
    height = draw(st.integers(max(1, dh * (kh - 1) + 1 - pads[0] - pads[1]), 12))
    width = draw(st.integers(max(1, dw * (kw - 1) + 1 - pads[2] - pads[3]), 12))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    chunk = draw(st.integers(1, n))
    # grad_weight's output-channel blocks per slice of float64 totals
    slice_blocks = draw(st.integers(1, groups * -(-cout_g // nchw_flat.BLOCK)))
    problem = describe(
        NCHW,
        np.dtype(dtype),
        (n, groups * cin_g, height, width),
        (groups * cout_g, cin_g, kh, kw),
        stride=(sh, sw),
        padding=(pads[:2], pads[2:]),
        dilation=(dh, dw),
        groups=groups,
    )
    return problem, chunk, slice_blocks, draw(st.integers(0, 2**32 - 1)), draw(st.booleans())


def to_nhwc(image):
    return np.ascontiguousarray(image.transpose(0, 2, 3, 1))


def from_nhwc(image):
    return np.ascontiguousarray(image.transpose(0, 3, 1, 2))


def weight_to_nhwc(w):
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def weight_from_nhwc(w):
    return np.ascontiguousarray(w.transpose(3, 2, 0, 1))


def arrays(problem, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((problem.n, problem.c_in, problem.height, problem.width))
    w = rng.standard_normal(problem.weight_shape)
    g = rng.standard_normal((problem.n, problem.c_out, problem.out_h, problem.out_w))
    return (a.astype(problem.dtype) for a in (x, w, g))


def tolerance(problem):
    return (1e-4, 1e-4) if problem.dtype == np.float32 else (1e-11, 1e-11)


@settings(deadline=None, max_examples=150)
@given(flat_problems())
def test_flat_kernels_match_row_kernels(case):
    """Both layouts: NHWC arrays are gathered into the planes and scattered back."""
    problem, chunk, slice_blocks, seed, nhwc = case
    x, w, g = arrays(problem, seed)
    (sh, sw), padding, (dh, dw), groups = problem.geometry
    flat_args = (sh, sw, *padding, dh, dw, groups, chunk)
    rtol, atol = tolerance(problem)
    xk, gk = (to_nhwc(x), to_nhwc(g)) if nhwc else (x, g)
    wk = weight_to_nhwc(w) if nhwc else w

    expected = np.zeros_like(w)
    nchw.grad_weight_nchw(x, g, expected, *problem.kernel_args)
    got = np.ones_like(wk)  # the kernels add into what is there
    nchw_flat.grad_weight_nchw_flat(xk, gk, got, *flat_args, slice_blocks, int(nhwc))
    got = weight_from_nhwc(got) if nhwc else got
    np.testing.assert_allclose(got - 1, expected, rtol=rtol, atol=atol)

    expected = np.zeros_like(x)
    nchw.grad_input_nchw(g, w, expected, *problem.kernel_args)
    got = np.ones_like(xk)
    nchw_flat.grad_input_nchw_flat(gk, wk, got, *flat_args, int(nhwc))
    got = from_nhwc(got) if nhwc else got
    np.testing.assert_allclose(got - 1, expected, rtol=rtol, atol=atol)


@settings(deadline=None, max_examples=100)
@given(flat_problems())
def test_fused_backward_matches_row_kernels(case):
    problem, blocks, bands, seed, nhwc = case
    x, w, g = arrays(problem, seed)
    (sh, sw), padding, (dh, dw), groups = problem.geometry
    rtol, atol = tolerance(problem)
    expected_gw, expected_gi = np.zeros_like(w), np.zeros_like(x)
    nchw.grad_weight_nchw(x, g, expected_gw, *problem.kernel_args)
    nchw.grad_input_nchw(g, w, expected_gi, *problem.kernel_args)
    xk, gk = (to_nhwc(x), to_nhwc(g)) if nhwc else (x, g)
    wk = weight_to_nhwc(w) if nhwc else w
    # the kernel adds into what is there
    gi, gw, gb = np.ones_like(xk), np.ones_like(wk), np.ones(problem.c_out, x.dtype)
    geometry = (sh, sw, *padding, dh, dw, groups, blocks, bands, int(nhwc))
    nchw_flat.backward_nchw_flat(xk, gk, wk, gi, gw, gb, *geometry)
    gi, gw = (from_nhwc(gi), weight_from_nhwc(gw)) if nhwc else (gi, gw)
    np.testing.assert_allclose(gi - 1, expected_gi, rtol=rtol, atol=atol)
    np.testing.assert_allclose(gw - 1, expected_gw, rtol=rtol, atol=atol)
    np.testing.assert_allclose(gb - 1, g.sum(axis=(0, 2, 3)), rtol=rtol, atol=atol)


@settings(deadline=None, max_examples=100)
@given(flat_problems(), st.sampled_from(["", "input", "weight", "grad_output"]))
def test_serial_fused_backward_is_the_one_block_kernel(case, poison):
    """The serial kernels (shifted planes at stride 1, phase planes otherwise): the same bits
    as backward_nchw_flat in one block and one band (checked against the row kernels above;
    NHWC at stride 1 within rounding, see the next test),
    and they say whether their results are finite (a NaN in the weight reaches grad_input
    alone, one in the input grad_weight alone)."""
    problem, _, _, seed, nhwc = case
    shifted = problem.geometry.stride == (1, 1)
    serial = nchw_flat.backward_shifted_serial if shifted else nchw_flat.backward_padded_serial
    x, w, g = arrays(problem, seed)
    if poison:
        target = {"input": x, "weight": w, "grad_output": g}[poison]
        target.flat[seed % target.size] = np.nan
    xk, gk = (to_nhwc(x), to_nhwc(g)) if nhwc else (x, g)
    wk = weight_to_nhwc(w) if nhwc else w
    results = []
    for kernel, sizes in (
        (serial, ()),
        (nchw_flat.backward_nchw_flat, (1, 1)),
    ):
        gi, gw, gb = np.ones_like(xk), np.ones_like(wk), np.ones(problem.c_out, x.dtype)
        said = kernel(xk, gk, wk, gi, gw, gb, *_dispatch._flat_args(problem), *sizes, int(nhwc))
        results.append((said, gi, gw, gb))
    (finite, *serial), (_, *parallel) = results
    for got, expected in zip(serial, parallel, strict=True):
        if nhwc and shifted:
            # NHWC through NCHW copies (the next test): grad_input's sums may round apart
            # from the fused kernel's (NaN where it has NaN)
            rtol, atol = tolerance(problem)
            np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(got, expected)
    assert finite == all(np.isfinite(a).all() for a in serial)
    assert finite or poison


# (N, C_in, C_out, size, kernel, padding, dilation): lenet2, the seed, RGB, a wide image
NHWC_SERIAL = [
    (1, 6, 16, 12, 5, 0, 1),
    (1, 1, 6, 28, 3, 0, 1),
    (2, 3, 5, 11, 3, 1, 1),
    (1, 4, 8, 9, 3, 2, 2),
    (2, 2, 3, 37, 4, 1, 1),
]


@pytest.mark.parametrize("n, c_in, c_out, size, k, pad, dil", NHWC_SERIAL)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_serial_nhwc_through_nchw_copies_keeps_the_bits(n, c_in, c_out, size, k, pad, dil, dtype):
    """The serial shifted kernel takes NHWC images through NCHW copies (grad_input's values
    copied in and written back): the same bits as on the NCHW arrays, grad_input starting
    non-zero; and the one-block fused kernel, which gathers the channels into the planes
    directly, within rounding of them."""
    rng = np.random.default_rng(size * k)
    out = size + 2 * pad - dil * (k - 1)
    x = rng.standard_normal((n, c_in, size, size)).astype(dtype)
    g = rng.standard_normal((n, c_out, out, out)).astype(dtype)
    w = rng.standard_normal((c_out, c_in, k, k)).astype(dtype)
    geometry = (1, 1, pad, pad, pad, pad, dil, dil, 1)
    results = []
    for kernel, sizes, nhwc in (
        (nchw_flat.backward_shifted_serial, (), 0),
        (nchw_flat.backward_shifted_serial, (), 1),
        (nchw_flat.backward_nchw_flat, (1, 1), 1),
    ):
        xk, gk, wk = (to_nhwc(x), to_nhwc(g), weight_to_nhwc(w)) if nhwc else (x, g, w)
        gi, gw, gb = np.full_like(xk, 0.3), np.ones_like(wk), np.ones(c_out, dtype)
        kernel(xk, gk, wk, gi, gw, gb, *geometry, *sizes, nhwc)
        if nhwc:
            gi, gw = from_nhwc(gi), weight_from_nhwc(gw)
        results.append((gi, gw, gb))
    nchw_serial, nhwc_serial, nhwc_fused = results
    for got, expected in zip(nhwc_serial, nchw_serial, strict=True):
        np.testing.assert_array_equal(got, expected)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for got, expected in zip(nhwc_fused, nchw_serial, strict=True):
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("nhwc", [False, True])
def test_fused_backward_bands_that_read_only_padding(nhwc):
    """One-row bands under three rows of top padding at stride 2: the first band reads no
    input row (its slice of the input must be empty, not rows counted from the end)."""
    problem = describe(
        NCHW, np.dtype(np.float64), (3, 4, 8, 5), (18, 2, 1, 1),
        stride=2, padding=((3, 1), (2, 2)), dilation=(1, 2), groups=2,
    )  # fmt: skip
    assert problem.out_h == 6
    test_fused_backward_matches_row_kernels.hypothesis.inner_test((problem, 2, 6, 7, nhwc))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(28, 28, 32), (32, 32, 64), (5, 7, 3), (4, 4, 16), (3, 11, 40)])
def test_gather_grad_transposes_by_tiles_and_edges(shape, dtype):
    """NHWC grad_output into channel planes (register tiles where whole, the edges value by
    value); rows of the target keep what lies past the pixels."""
    image = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    pixels = shape[0] * shape[1]
    row = nchw_flat.spread_row(pixels, image.itemsize)
    target = np.full((shape[2], row), 7, dtype)
    nchw_flat._gather_grad(image, target)
    np.testing.assert_array_equal(target[:, :pixels], image.reshape(pixels, shape[2]).T)
    assert (target[:, pixels:] == 7).all()
    assert row * image.itemsize % 128 == 64  # an odd number of 64-byte lines


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape, c0, c1", [((5, 40, 64), 16, 48), ((3, 17, 20), 0, 20), ((4, 9, 16), 0, 16)]
)
def test_gather_channels_into_padded_planes(shape, c0, c1, dtype):
    """NHWC image rows into zero-padded channel planes of image slot 1 (register tiles where
    16 pixels x 16 channels are whole), channels c0..c1 at planes[c - c0], with sums."""
    height, width = shape[:2]
    image = np.random.default_rng(2).standard_normal(shape).astype(dtype)
    top, left, rows, pitch = 2, 1, height + 3, width + 3
    planes = np.full((c1 - c0, 1, 3, rows, pitch), 7, dtype)
    sums = np.ones(c1 - c0)
    nchw_flat._gather_channels(image, c0, c1, c0, top, left, planes, 1, sums)
    expected = np.zeros((c1 - c0, rows, pitch), dtype)
    expected[:, top : top + height, left : left + width] = image[:, :, c0:c1].transpose(2, 0, 1)
    np.testing.assert_array_equal(planes[:, 0, 1], expected)
    assert (planes[:, 0, [0, 2]] == 7).all()  # other images' slots untouched
    wide = image[:, :, c0:c1].astype(np.float64)
    np.testing.assert_allclose(sums, 1 + wide.sum(axis=(0, 1)), rtol=1e-12)


def test_api_fused_path_agrees_with_single_gradients():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 12, 12, 3)).astype(np.float32)  # NHWC: gathered, scattered
    w = rng.standard_normal((3, 3, 3, 16)).astype(np.float32)
    g = rng.standard_normal((8, 12, 12, 16)).astype(np.float32)
    problem = describe(
        convgrad._layouts.NHWC, x.dtype, x.shape, w.shape, stride=1, padding=1, dilation=1, groups=1
    )
    assert _dispatch.select_backward_kernel(problem) is not None
    opts = {"padding": 1, "layout": "NHWC"}
    gi, gw, gb = convgrad.conv2d_backward(g, x, w, **opts)
    # float32 sums of about a thousand unit terms, added in different orders
    close = {"rtol": 1e-5, "atol": 1e-4}
    np.testing.assert_allclose(gi, convgrad.conv2d_grad_input(g, w, x.shape, **opts), **close)
    np.testing.assert_allclose(gw, convgrad.conv2d_grad_weight(g, x, w.shape, **opts), **close)
    np.testing.assert_allclose(gb, convgrad.conv2d_grad_bias(g, layout="NHWC"), **close)
    # out= aliasing an input, accumulating: every kernel reads before anything is written
    xs = x.copy()
    out = (xs, np.ones_like(w), np.ones(16, np.float32))
    convgrad.conv2d_backward(g, xs, w, out=out, accumulate=True, **opts)
    np.testing.assert_allclose(out[0], x + gi, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1], 1 + gw, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out[2], 1 + gb, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_api_weight_totals_in_slices_and_image_chunks(layout):
    """Many channels on small images: totals a slice of output channels at a time, restacked.

    (The API now takes such problems to the unfolded products, ``test_im2col.py``,
    except where an NCHW weight too big to reorder keeps them here; the flat
    kernel runs on its own choice for the problem.)
    """
    from convgrad.reference import conv2d_backward_reference

    layout_obj = convgrad._layouts.NHWC if layout == "NHWC" else NCHW
    rng = np.random.default_rng(9)
    n, channels, size = 48, 256, 7  # the batch's planes alone exceed the budget
    x = rng.standard_normal(layout_obj.image_shape(n, channels, size, size)).astype(np.float32)
    w = rng.standard_normal(layout_obj.weight_shape(channels, channels, 3, 3)).astype(np.float32)
    g = rng.standard_normal(layout_obj.image_shape(n, channels, size, size)).astype(np.float32)
    opts = {"stride": 1, "padding": 1, "dilation": 1, "groups": 1}
    problem = describe(layout_obj, x.dtype, x.shape, w.shape, **opts)
    assert _dispatch.flat_suits(problem)
    choice = _dispatch.flat_choice("grad_weight", problem)
    chunk, slice_blocks = choice.args[-3:-1]
    assert chunk < n and slice_blocks < channels // nchw_flat.BLOCK  # both loops taken
    gw = np.zeros_like(w)
    choice.kernel(x, g, gw, *choice.args)
    expected = conv2d_backward_reference(g, x, w, padding=1, layout=layout)[1]
    np.testing.assert_allclose(gw, expected, rtol=1e-4, atol=2e-3)
    api = convgrad.conv2d_grad_weight(g, x, w.shape, padding=1, layout=layout)
    np.testing.assert_allclose(api, expected, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("stride", [1, 2])
def test_api_planes_longer_than_an_l1_piece(dtype, layout, stride):
    """Planes several L1_BYTES pieces long (and not a whole number of them), 4 x 4 blocks.

    Seven input channels: fewer than a float64 vector's, which NHWC runs on the
    direct tiles (AVX-512), so that both layouts and dtypes stay on the flat kernels.
    """
    from convgrad.reference import conv2d_backward_reference

    layout_obj = convgrad._layouts.NHWC if layout == "NHWC" else NCHW
    rng = np.random.default_rng(11)
    n, c_in, c_out, size = 2, 7, 12, 45 * stride + 1
    x = rng.standard_normal(layout_obj.image_shape(n, c_in, size, size)).astype(dtype)
    w = rng.standard_normal(layout_obj.weight_shape(c_out, c_in, 3, 3)).astype(dtype)
    opts = {"stride": stride, "padding": 1}
    g = rng.standard_normal(convgrad.conv2d(x, w, layout=layout, **opts).shape).astype(dtype)
    problem = describe(layout_obj, x.dtype, x.shape, w.shape, dilation=1, groups=1, **opts)
    for operation in ("grad_input", "grad_weight"):
        kernel = _dispatch.select_kernel(operation, problem).kernel
        assert kernel.__name__.endswith("_nchw_flat")
    piece = nchw_flat.L1_BYTES // np.dtype(dtype).itemsize
    assert problem.out_h * -(-(size + 2) // stride) > 2 * piece  # one image: 2-3 pieces
    expected = conv2d_backward_reference(g, x, w, layout=layout, **opts)
    gi = convgrad.conv2d_grad_input(g, w, x.shape, layout=layout, **opts)
    gw = convgrad.conv2d_grad_weight(g, x, w.shape, layout=layout, **opts)
    tolerance = {"rtol": 1e-4, "atol": 1e-3} if dtype == np.float32 else {"rtol": 1e-10}
    np.testing.assert_allclose(gi, expected[0], **tolerance)
    np.testing.assert_allclose(gw, expected[1], **tolerance)
    for got, want in zip(
        convgrad.conv2d_backward(g, x, w, layout=layout, **opts), expected, strict=True
    ):
        np.testing.assert_allclose(got, want, **tolerance)


@settings(deadline=None, max_examples=60)
@given(st.integers(0, 5000), st.sampled_from([np.nan, np.inf, -np.inf]))
def test_all_finite_finds_any_bad_value(position, bad):
    a = np.ones(5001)
    assert nchw_flat.all_finite(a) and nchw_flat.all_finite_serial(a)
    a[position] = bad
    assert not nchw_flat.all_finite(a)
    assert not nchw_flat.all_finite_serial(a)
    assert not nchw_flat.all_finite_serial(a.astype(np.float32).reshape(1, 5001))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_api_takes_the_exact_kernels_on_non_finite_input(layout):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 10, 10))
    w = rng.standard_normal((8, 4, 3, 3))
    g = rng.standard_normal((2, 8, 10, 10))
    problem = describe(NCHW, x.dtype, x.shape, w.shape, stride=1, padding=1, dilation=1, groups=1)
    assert _dispatch.flat_suits(problem)
    # Inf in the first column of a row: the flat kernels would multiply it by a
    # zero pad column of grad_output and leave NaN in grad_weight; exact kernels don't.
    x[0, 1, 4, 0] = np.inf
    x, w = np.abs(x), np.abs(w)
    if layout == "NHWC":
        x, w, g = to_nhwc(x), weight_to_nhwc(w), to_nhwc(g)
    _, gw, _ = convgrad.conv2d_backward(g, x, w, padding=1, layout=layout)
    _, exact, _ = convgrad.conv2d_backward(
        g, x, w, padding=1, layout=layout, output_mask=(False, True, False)
    )
    assert not np.isnan(gw).any()
    np.testing.assert_array_equal(gw, exact)


def test_grad_weight_alone_checks_its_result_instead_of_its_inputs(monkeypatch):
    # finite-only single-gradient kernels: every value grad_weight's kernel reads
    # lands in a sum of it, so the (smaller) result is checked afterwards
    rng = np.random.default_rng(5)
    x, g = rng.standard_normal((2, 4, 10, 10)), rng.standard_normal((2, 8, 10, 10))
    problem = describe(
        NCHW, x.dtype, x.shape, (8, 4, 3, 3), stride=1, padding=1, dilation=1, groups=1
    )
    assert _dispatch.select_kernel("grad_weight", problem).exact is not None
    checked = []
    finite = _api._finite
    monkeypatch.setattr(_api, "_finite", lambda *arrays: checked.append(arrays) or finite(*arrays))
    gw = convgrad.conv2d_grad_weight(g, x, (8, 4, 3, 3), padding=1)
    assert [[a.size for a in arrays] for arrays in checked] == [[gw.size]]
    # accumulating into out, the kernel adds to it: the inputs first then
    checked.clear()
    convgrad.conv2d_grad_weight(g, x, (8, 4, 3, 3), padding=1, out=gw, accumulate=True)
    assert [[a.size for a in arrays] for arrays in checked] == [[x.size, g.size]]
    # where the weight outnumbers input and grad_output, those are checked
    x, g = rng.standard_normal((1, 8, 6, 6)), rng.standard_normal((1, 16, 6, 6))
    problem = describe(
        NCHW, x.dtype, x.shape, (16, 8, 3, 3), stride=1, padding=1, dilation=1, groups=1
    )
    assert _dispatch.select_kernel("grad_weight", problem).exact is not None
    checked.clear()
    convgrad.conv2d_grad_weight(g, x, (16, 8, 3, 3), padding=1)
    assert [[a.size for a in arrays] for arrays in checked] == [[x.size, g.size]]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("where", ["input", "grad_output"])
def test_grad_weight_alone_rewrites_out_by_the_exact_kernel(layout, where):
    # a NaN left by the fast kernel in out= must not survive: out is zeroed again
    rng = np.random.default_rng(6)
    x, g = rng.standard_normal((2, 4, 10, 10)), rng.standard_normal((2, 8, 10, 10))
    (x if where == "input" else g)[1, 2, 0, 9] = np.inf  # a corner: meets the zero padding
    expected = naive.grad_weight_nchw(g, x, (8, 4, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    if layout == "NHWC":
        x, g, expected = to_nhwc(x), to_nhwc(g), weight_to_nhwc(expected)
    out = np.full(expected.shape, 7.0)
    got = convgrad.conv2d_grad_weight(g, x, expected.shape, padding=1, layout=layout, out=out)
    assert got is out
    for test in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(test(got), test(expected))
    finite = np.isfinite(expected)
    assert finite.any() and not finite.all()
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [20, 112], ids=["serial", "parallel"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("stride", [1, 2])
def test_fused_path_takes_the_exact_kernels_on_non_finite_input(layout, stride, size):
    """The fused kernel (shifted planes at stride 1, phase planes otherwise) is finite-only too."""
    rng = np.random.default_rng(4)
    x = np.abs(rng.standard_normal((2, 1, size, size)))
    w = np.abs(rng.standard_normal((16, 1, 3, 3)))
    out = (size + 2 - 3) // stride + 1
    g = np.abs(rng.standard_normal((2, 16, out, out)))
    problem = describe(
        NCHW, x.dtype, x.shape, w.shape, stride=stride, padding=1, dilation=1, groups=1
    )
    serial = (nchw_flat.backward_shifted_serial, nchw_flat.backward_padded_serial)[stride - 1]
    fused = serial if size == 20 else nchw_flat.backward_nchw_flat
    assert _dispatch.select_backward_kernel(problem).kernel is fused
    g[0, 3, 0, 0] = np.inf  # meets the zero padding: Inf * 0 would put NaN in grad_weight
    if layout == "NHWC":
        x, w, g = to_nhwc(x), weight_to_nhwc(w), to_nhwc(g)
    options = {"stride": stride, "padding": 1, "layout": layout}
    gi, gw, gb = convgrad.conv2d_backward(g, x, w, **options)
    exact = [
        convgrad.conv2d_backward(g, x, w, output_mask=mask, **options)[k]
        for k, mask in enumerate([(True, False, False), (False, True, False), (False, False, True)])
    ]
    assert not np.isnan(gw).any() and np.isinf(gw).any()
    for got, expected in zip((gi, gw, gb), exact, strict=True):
        np.testing.assert_array_equal(got, expected)
    # a NaN in the input; and accumulating into out= (the inputs are checked first then)
    x.flat[x.size // 2] = np.nan  # image 1, top left: read by some taps, and by the padding
    gi, gw, gb = convgrad.conv2d_backward(g, x, w, **options)
    exact = [
        convgrad.conv2d_backward(g, x, w, output_mask=mask, **options)[k]
        for k, mask in enumerate([(True, False, False), (False, True, False), (False, False, True)])
    ]
    assert np.isnan(gw).any() and not np.isnan(gw).all()  # only the taps that read the NaN
    out = tuple(np.ones_like(a) for a in exact)
    convgrad.conv2d_backward(g, x, w, out=out, accumulate=True, **options)
    for got, accumulated, expected in zip((gi, gw, gb), out, exact, strict=True):
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_allclose(accumulated, expected + 1, rtol=1e-12)  # NaN where expected


def test_shifted_serial_kernel_refuses_other_strides():
    """The dispatch sends strided problems to backward_padded_serial; called directly, the
    shifted kernel says it is for stride 1 instead of reading past its planes."""
    x, g = np.zeros((1, 1, 6, 6)), np.zeros((1, 2, 3, 3))
    w, gi, gw, gb = np.zeros((2, 1, 2, 2)), np.zeros_like(x), np.zeros((2, 1, 2, 2)), np.zeros(2)
    with pytest.raises(ValueError, match="backward_shifted_serial is for stride 1"):
        nchw_flat.backward_shifted_serial(x, g, w, gi, gw, gb, 2, 2, 0, 0, 0, 0, 1, 1, 1, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(0, 0, 0), (1, 3, 7), (8, 64, 1040)])
def test_line_aligned_workspaces(shape, dtype):
    """The NHWC grad_output transposes' target starts on a cache line, whatever NumPy gives."""
    for _ in range(4):
        a = nchw_flat.line_aligned_empty(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
        assert a.ctypes.data % nchw_flat.TILE_BYTES == 0 or a.size == 0
        a[...] = 1  # all of it writable, within its buffer


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plane_workspaces_start_on_a_line(dtype):
    """The flat kernels' phase planes start on a cache line: a 512-bit load of a window
    that starts off one reads two lines (cifar_b32 took up to 1.2x the time)."""
    for n_chunk in (1, 3):
        images, grads = nchw_flat._workspaces(n_chunk, 3, 5, 9, 11, 7, 2, 1, 1, 1, 1, 0, dtype)
        for a in (images, grads):
            assert a.ctypes.data % nchw_flat.TILE_BYTES == 0
            assert a.dtype == dtype and a.flags.c_contiguous
