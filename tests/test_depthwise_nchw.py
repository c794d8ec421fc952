"""The NCHW depthwise backward (``kernels/nchw_depthwise.py``) against the naive loops.

Any kernel size, padding and dilation: at stride 1 the taps in threes and one
by one, the 3 x 3 kernel's one-pass paths, and planes longer than one float32
dot product (``DOT_TERMS``); at any stride the phase-plane kernel; grad_weight or
grad_input alone by either, without the other (``grad_weight_nchw_depthwise``,
``grad_input_nchw_depthwise``). The dispatch
sends NCHW depthwise problems to them through ``conv2d_backward`` (images of
more than 14 x 14 pixels at stride 1: smaller ones, and kernels of more than
nine taps, take the tiles of ``test_depthwise_tiles.py``).
"""

import naive
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convgrad
from convgrad import _dispatch
from convgrad._layouts import NCHW, NHWC
from convgrad._problem import describe
from convgrad.kernels import nchw_depthwise, nchw_flat, nhwc_depthwise


@st.composite
def depthwise_problems(draw, strides=(1, 1)):
    channels, n = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    stride = (draw(st.integers(*strides)), draw(st.integers(*strides)))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = tuple(draw(st.integers(0, 3)) for _ in range(4))
    height = draw(st.integers(max(1, dh * (kh - 1) + 1 - pads[0] - pads[1]), 16))
    width = draw(st.integers(max(1, dw * (kw - 1) + 1 - pads[2] - pads[3]), 16))
    return n, channels, height, width, (kh, kw), pads, (dh, dw), stride


def expected_gradients(g, x, w, pads, dilation, stride=(1, 1)):
    geometry = {"stride": stride, "padding": pads, "dilation": dilation, "groups": x.shape[1]}
    return (
        naive.grad_input_nchw(g, w, x.shape, **geometry),
        naive.grad_weight_nchw(g, x, w.shape, **geometry),
        naive.grad_bias_nchw(g),
    )


def run_kernel(
    g, x, w, pads, dilation, stride=(1, 1), kernel=nchw_depthwise.backward_nchw_depthwise
):
    """The kernel's (gi, gw, gb). gi starts as NaN: the kernel must set every value of it."""
    gi, gw, gb = np.full_like(x, np.nan), np.zeros_like(w), np.zeros(x.shape[1], x.dtype)
    kernel(x, g, w, gi, gw, gb, *stride, *pads, *dilation, x.shape[1])
    return gi, gw, gb


def random_problem(
    rng, n, channels, height, width, kernel, pads, dilation, stride=(1, 1), dtype=np.float64
):
    x = rng.standard_normal((n, channels, height, width)).astype(dtype)
    w = rng.standard_normal((channels, 1, *kernel)).astype(dtype)
    out_h = naive.output_size(height, kernel[0], stride[0], dilation[0], pads[0], pads[1])
    out_w = naive.output_size(width, kernel[1], stride[1], dilation[1], pads[2], pads[3])
    g = rng.standard_normal((n, channels, out_h, out_w)).astype(dtype)
    return g, x, w


@settings(max_examples=150, deadline=None)
@given(problem=depthwise_problems(), seed=st.integers(0, 2**16))
def test_matches_the_naive_loops(problem, seed):
    *_, pads, dilation, _ = problem
    g, x, w = random_problem(np.random.default_rng(seed), *problem)
    got = run_kernel(g, x, w, pads, dilation)
    for a, b in zip(got, expected_gradients(g, x, w, pads, dilation), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@settings(max_examples=150, deadline=None)
@given(problem=depthwise_problems(strides=(1, 3)), seed=st.integers(0, 2**16))
def test_phase_planes_match_the_naive_loops(problem, seed):
    *_, pads, dilation, stride = problem
    g, x, w = random_problem(np.random.default_rng(seed), *problem)
    kernel = nchw_depthwise.backward_nchw_depthwise_strided
    got = run_kernel(g, x, w, pads, dilation, stride, kernel)
    for a, b in zip(got, expected_gradients(g, x, w, pads, dilation, stride), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(problem=depthwise_problems(strides=(1, 3)), seed=st.integers(0, 2**16))
def test_planes_gradients_alone_match_the_naive_loops(problem, seed):
    """``grad_weight_nchw_depthwise`` and ``grad_input_nchw_depthwise`` (the stride-1 planes
    or the phase planes): gw added into, from nonzero; every value of gi set, from NaN."""
    *_, pads, dilation, stride = problem
    g, x, w = random_problem(np.random.default_rng(seed), *problem)
    expected = expected_gradients(g, x, w, pads, dilation, stride)
    start = np.random.default_rng(seed + 1).standard_normal(w.shape)
    gw, gi = start.copy(), np.full_like(x, np.nan)
    geometry = (*stride, *pads, *dilation, x.shape[1])
    nchw_depthwise.grad_weight_nchw_depthwise(x, g, gw, *geometry)
    nchw_depthwise.grad_input_nchw_depthwise(g, w, gi, *geometry)
    np.testing.assert_allclose(gw, start + expected[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gi, expected[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("operation", ["grad_input", "grad_weight"])
def test_api_gradient_alone_by_planes(operation, dtype):
    """One of grad_input and grad_weight (with and without grad_bias) through the API: the
    planes kernels where the dispatch sends them, the row kernels when an input they
    multiply into the planes' zeros has an Inf."""
    rng = np.random.default_rng(5)
    pads, dilation, strides = (1, 1, 1, 1), (1, 1), (2, 2)
    g, x, w = random_problem(rng, 2, 6, 31, 30, (3, 3), pads, dilation, strides, dtype)
    options = {"padding": 1, "groups": 6, "stride": 2}
    problem = describe(NCHW, np.dtype(dtype), x.shape, w.shape, **options, dilation=1)
    choice = _dispatch.select_kernel(operation, problem)
    assert choice.kernel is getattr(nchw_depthwise, f"{operation}_nchw_depthwise")
    assert choice.exact is not None  # finite inputs only
    k = 0 if operation == "grad_input" else 1
    wide = [a.astype(np.float64) for a in (g, x, w)]
    expected = expected_gradients(*wide, pads, dilation, strides)
    rtol, atol = (1e-12, 1e-12) if dtype == np.float64 else (1e-5, 1e-4)
    for with_bias in (False, True):
        mask = (k == 0, k == 1, with_bias)
        got = convgrad.conv2d_backward(g, x, w, **options, output_mask=mask)
        assert got[1 - k] is None and (got[2] is None) == (not with_bias)
        np.testing.assert_allclose(got[k], expected[k], rtol=rtol, atol=atol)
    # an Inf in the input (grad_weight) or the weight (grad_input) meets only grad_output
    # values: no NaN (the planes' zeros would make one), the row kernel's result
    if operation == "grad_weight":
        x[1, 4, 2, 3] = np.inf
    else:
        w[4, 0, 1, 1] = np.inf
    mask = (k == 0, k == 1, False)
    got = convgrad.conv2d_backward(g, x, w, **options, output_mask=mask)[k]
    exact = np.zeros_like(got)
    row_kernel = _dispatch._loop_kernel(operation, problem, NCHW)
    operands = (x, g) if operation == "grad_weight" else (g, w)
    row_kernel.kernel(*operands, exact, *row_kernel.args)
    np.testing.assert_array_equal(got, exact)
    assert np.isinf(got[:, 4] if k == 0 else got[4]).any() and not np.isnan(got).any()
    # stride 1 too (the stride-1 planes); NHWC keeps its channel kernels
    stride_1 = describe(
        NCHW, np.dtype(dtype), x.shape, w.shape, stride=1, padding=1, dilation=1, groups=6
    )
    assert _dispatch.select_kernel(operation, stride_1).kernel is choice.kernel
    nhwc = describe(
        NHWC, np.dtype(dtype), NHWC.image_shape(2, 6, 31, 30), NHWC.weight_shape(6, 1, 3, 3),
        **options, dilation=1,
    )  # fmt: skip
    assert _dispatch.select_kernel(operation, nhwc).kernel is not choice.kernel


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("kernel", "dilation"), [((3, 3), (1, 1)), ((3, 3), (2, 1)), ((5, 4), (1, 2))]
)
def test_planes_longer_than_one_dot(kernel, dilation, dtype):
    """A 70 x 75 image: grad_weight's dots run over several chunks of rows."""
    pads = (1, 2, 2, 1)
    rng = np.random.default_rng(7)
    g, x, w = random_problem(rng, 2, 3, 70, 75, kernel, pads, dilation, dtype=dtype)
    assert g.shape[2] * (75 + 3) > nchw_depthwise.DOT_TERMS
    got = run_kernel(g, x, w, pads, dilation)
    wide = [a.astype(np.float64) for a in (g, x, w)]
    rtol, atol = (1e-12, 1e-11) if dtype == np.float64 else (2e-5, 2e-4)
    for a, b in zip(got, expected_gradients(*wide, pads, dilation), strict=True):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def test_dispatch_sends_nchw_depthwise_at_stride_1_here():
    def picked(layout=NCHW, stride=1, channels=32, multiplier=1):
        problem = describe(
            layout,
            np.dtype(np.float32),
            layout.image_shape(8, channels, 28, 28),
            layout.weight_shape(channels * multiplier, 1, 3, 3),
            stride=stride,
            padding=1,
            dilation=1,
            groups=channels,
        )
        choice = _dispatch.select_backward_kernel(problem)
        return None if choice is None else choice.kernel

    kernel = nchw_depthwise.backward_nchw_depthwise
    assert picked() is kernel
    assert picked(stride=2) is nchw_depthwise.backward_nchw_depthwise_strided
    # two output channels per group: not depthwise, but few channel pairs: the fused flat kernel
    assert picked(multiplier=2) is nchw_flat.backward_nchw_flat
    assert picked(layout=NHWC) is nhwc_depthwise.backward_nhwc_depthwise  # NHWC's own


@pytest.mark.parametrize("stride", [1, 2])
def test_api_result_matches_the_naive_loops_and_keeps_nan_exact(stride):
    """16 x 17 images: the planes kernels' (stride 1) and phase planes' (stride 2)."""
    rng = np.random.default_rng(3)
    pads, dilation, strides = (1, 1, 1, 1), (1, 1), (stride, stride)
    g, x, w = random_problem(rng, 2, 6, 16, 17, (3, 3), pads, dilation, strides)
    options = {"padding": 1, "groups": 6, "stride": stride}
    got = convgrad.conv2d_backward(g, x, w, **options)
    for a, b in zip(got, expected_gradients(g, x, w, pads, dilation, strides), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    # an Inf in grad_output would meet the zero padding (Inf * 0 = NaN in grad_weight's tap
    # (0, 0)): the exact kernels, one gradient each, run instead
    g[1, 2, 0, 0] = np.inf
    got = convgrad.conv2d_backward(g, x, w, **options)
    masks = [(True, False, False), (False, True, False), (False, False, True)]
    for k, mask in enumerate(masks):
        exact = convgrad.conv2d_backward(g, x, w, **options, output_mask=mask)[k]
        np.testing.assert_array_equal(got[k], exact)
    assert np.isinf(got[1][2]).any() and not np.isnan(got[1]).any()


@settings(max_examples=150, deadline=None)
@given(
    problem=depthwise_problems(strides=(1, 3)),
    n_chunks=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_nhwc_backward_matches_the_naive_loops(problem, n_chunks, seed):
    """NHWC's depthwise backward: grad_input set everywhere (it starts as NaN), grad_weight
    and grad_bias added into what they held, for any number of weight chunks."""
    *_, pads, dilation, stride = problem
    g, x, w = random_problem(np.random.default_rng(seed), *problem)
    to_nhwc = (0, 2, 3, 1)
    x_, g_ = (np.ascontiguousarray(a.transpose(to_nhwc)) for a in (x, g))
    w_ = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    gi, gw, gb = np.full_like(x_, np.nan), np.ones_like(w_), np.ones(x.shape[1])
    geometry = (*stride, pads[0], pads[2], *dilation, x.shape[1])
    nhwc_depthwise.backward_nhwc_depthwise(x_, g_, w_, gi, gw, gb, *geometry, n_chunks)
    want_gi, want_gw, want_gb = expected_gradients(g, x, w, pads, dilation, stride)
    np.testing.assert_allclose(gi, want_gi.transpose(to_nhwc), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gw, 1 + want_gw.transpose(2, 3, 1, 0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gb, 1 + want_gb, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("where", ["input", "weight"])
def test_api_keeps_nan_exact_for_a_non_finite_input_or_weight(where, layout):
    """The fused NCHW kernel's finiteness check reads the weight, grad_weight and grad_bias,
    not grad_input: an Inf in the input or the weight must still send the call to the exact
    kernels (the padded planes would turn it into NaNs the exact answer does not have). The
    NHWC backward, exact for any input, must give the same answer as its own gradients."""
    rng = np.random.default_rng(5)
    pads, dilation = (1, 1, 1, 1), (1, 1)
    g, x, w = random_problem(rng, 2, 6, 16, 17, (3, 3), pads, dilation)
    if where == "input":
        x[1, 2, 0, 0] = np.inf
    else:
        w[2, 0, 0, 0] = np.inf
    if layout == "NHWC":
        g, x = (np.ascontiguousarray(a.transpose(0, 2, 3, 1)) for a in (g, x))
        w = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    options = {"padding": 1, "groups": 6, "layout": layout}
    got = convgrad.conv2d_backward(g, x, w, **options)
    masks = [(True, False, False), (False, True, False), (False, False, True)]
    for k, mask in enumerate(masks):
        exact = convgrad.conv2d_backward(g, x, w, **options, output_mask=mask)[k]
        np.testing.assert_array_equal(got[k], exact)
    # only the taps that meet the Inf go non-finite; the padding adds no NaN
    assert not np.isfinite(got[0 if where == "weight" else 1]).all()
    assert np.isfinite(got[2]).all()


def test_stride_1_kernel_refuses_other_strides():
    """The dispatch sends strided problems to the phase-plane kernel; called directly, the
    stride-1 kernel says it is for stride 1 instead of reading past its planes."""
    x, g = np.zeros((1, 2, 6, 6)), np.zeros((1, 2, 3, 3))
    w, gi, gw, gb = np.zeros((2, 1, 2, 2)), np.zeros_like(x), np.zeros((2, 1, 2, 2)), np.zeros(2)
    with pytest.raises(ValueError, match=r"^backward_nchw_depthwise is for stride 1$"):
        nchw_depthwise.backward_nchw_depthwise(x, g, w, gi, gw, gb, 2, 2, 0, 0, 0, 0, 1, 1, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("count", [1, 15, 3364])
def test_planes_start_on_a_line_and_are_zero(count, dtype):
    like = np.empty(1, dtype)
    for _ in range(8):  # numba aligns to 32 bytes: half its allocations start off a line
        plane = nchw_depthwise._line_aligned_zeros(count, like)
        assert plane.shape == (count,) and plane.dtype == dtype
        assert plane.ctypes.data % nchw_depthwise.LINE_BYTES == 0
        assert not plane.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_runs_of_channels_never_change_a_value(dtype):
    """The stride-1 kernel's tasks own runs of channels, cut by the thread count: any cut
    (a channel per task, runs of 3 with a short last one, all in one run) gives the same bits."""
    rng = np.random.default_rng(5)
    pads, dilation = (1, 2, 0, 1), (1, 2)
    g, x, w = random_problem(rng, 3, 7, 40, 37, (3, 3), pads, dilation, dtype=dtype)
    results = []
    for run in (1, 3, 7):
        gi, gw, gb = np.full_like(x, np.nan), np.zeros_like(w), np.zeros(7, dtype)
        nchw_depthwise._backward_runs(x, g, w, gi, gw, gb, *pads, *dilation, run)
        results.append((gi, gw, gb))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert a.tobytes() == b.tobytes()
    want = expected_gradients(g, x, w, pads, dilation)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for got, expected in zip(results[0], want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


# stride, dilation, kernel, padding (top, bottom, left, right): every step pair the
# three-tap grad_weight loop specialises ((1, 1), (2, 1), (1, d), other), kernels of
# one, two and three taps a phase at stride 2 and 3, and padding that shifts the phases
NHWC_STEPS = [
    ((1, 1), (1, 1), (3, 3), (1, 1, 1, 1)),
    ((1, 1), (1, 2), (3, 5), (1, 2, 4, 3)),
    ((2, 2), (1, 1), (3, 3), (1, 1, 1, 1)),
    ((2, 2), (1, 1), (3, 3), (0, 1, 0, 1)),
    ((2, 2), (2, 2), (3, 3), (2, 2, 2, 2)),
    ((2, 2), (1, 1), (5, 5), (2, 2, 2, 2)),
    ((1, 2), (1, 1), (3, 4), (1, 0, 2, 1)),
    ((3, 3), (1, 1), (5, 7), (2, 2, 3, 0)),
]


def _nhwc_call(g, x, w, stride, dilation, pads):
    """NCHW test arrays in NHWC order, and conv2d_backward's options for them (37 channels)."""
    g_, x_ = (np.ascontiguousarray(a.transpose(0, 2, 3, 1)) for a in (g, x))
    w_ = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    options = {
        "stride": stride, "padding": (pads[:2], pads[2:]), "dilation": dilation, "groups": 37,
        "layout": "NHWC",
    }  # fmt: skip
    return g_, x_, w_, options


@pytest.mark.parametrize("float32", [False, True])
@pytest.mark.parametrize("case", range(len(NHWC_STEPS)))
def test_nhwc_gradients_at_every_step_match_the_naive_loops(case, float32):
    """NHWC depthwise through the API, all three gradients and each alone, on 37 channels
    (whole vectors and a remainder) and images wide enough for the runs of four pixels and
    the phases' inner pixels: grad_input is written (never read), grad_weight's taps go
    three at a time where all three are inside the image."""
    stride, dilation, kernel, pads = NHWC_STEPS[case]
    rng = np.random.default_rng(case)
    g, x, w = random_problem(rng, 2, 37, 19, 33, kernel, pads, dilation, stride)
    want = expected_gradients(g, x, w, pads, dilation, stride)
    if float32:
        g, x, w = (a.astype(np.float32) for a in (g, x, w))
    g_, x_, w_, options = _nhwc_call(g, x, w, stride, dilation, pads)
    tol = {"rtol": 1e-4, "atol": 1e-4} if float32 else {"rtol": 1e-12, "atol": 1e-12}
    backward = convgrad.conv2d_backward(g_, x_, w_, **options)
    for k, mask in enumerate([(True, False, False), (False, True, False), (False, False, True)]):
        alone = convgrad.conv2d_backward(g_, x_, w_, **options, output_mask=mask)[k]
        for got in (backward[k], alone):
            got = got.transpose((0, 3, 1, 2) if k == 0 else (3, 2, 0, 1)) if k < 2 else got
            np.testing.assert_allclose(got, want[k], **tol)


@pytest.mark.parametrize("case", [2, 5, 7])  # strides 2 and 3: the phase passes, three-tap runs
def test_nhwc_strided_gradients_keep_nan_and_inf_exact(case):
    """The strided NHWC passes read only pixels inside the image: an Inf in the input and a
    NaN in grad_output reach exactly the values the naive loops give them."""
    stride, dilation, kernel, pads = NHWC_STEPS[case]
    g, x, w = random_problem(
        np.random.default_rng(case), 2, 37, 19, 33, kernel, pads, dilation, stride
    )
    x[1, 5, 9, 16] = np.inf
    g[0, 3, 4, 2] = np.nan
    want = expected_gradients(g, x, w, pads, dilation, stride)
    g_, x_, w_, options = _nhwc_call(g, x, w, stride, dilation, pads)
    gi, gw, gb = convgrad.conv2d_backward(g_, x_, w_, **options)
    for got, expected in ((gi.transpose(0, 3, 1, 2), want[0]), (gw.transpose(3, 2, 0, 1), want[1])):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
        finite = np.isfinite(expected)
        np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.isnan(gb), np.isnan(want[2]))
