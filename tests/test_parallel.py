"""Larger problems, split across threads: checked against the NumPy reference and for
the same bits at every thread count."""

import numba
import numpy as np
import pytest

import convgrad
from convgrad import _dispatch
from convgrad._layouts import NCHW, NHWC
from convgrad._problem import describe
from convgrad.kernels import depthwise_tiles, im2col
from convgrad.kernels._columns import VECTOR_REGISTERS
from convgrad.reference import conv2d_backward_reference, conv2d_reference

# n, c_in, c_out, size, k, stride, padding, dilation, groups
CASES = {
    "dense": (4, 16, 16, 20, 3, 1, 1, 1, 1),  # NHWC kernels
    "strided-asym": (8, 8, 64, 9, 3, 2, ((1, 0), (2, 1)), 1, 1),  # 4 x 6 planes < 48
    "wide-channels": (16, 32, 16, 4, 3, 1, 1, 1, 1),  # NHWC grad_weight by input channel
    "wide-grouped": (6, 32, 64, 5, (3, 2), (2, 1), 1, (1, 2), 2),
    "strided-flat": (3, 4, 16, 40, 5, 2, ((2, 1), (0, 2)), (1, 2), 1),  # stride phases
    "dilated-grouped": (3, 16, 32, 18, (3, 2), 1, 2, (2, 1), 2),
    # NCHW kernels: too few channel pairs for the flat kernels, too big to fuse
    "few-channels": (16, 4, 2, 32, 5, 1, 2, 1, 1),
    "depthwise": (4, 32, 64, 24, 3, (1, 2), 1, 1, 32),  # row kernels, channel multiplier 2
    "depthwise-pure": (4, 48, 48, 22, (3, 2), 1, ((0, 2), (1, 1)), 2, 48),
    # conv2d_backward on depthwise tiles: 3 blocks of channels (the last one partial);
    # NCHW only for 3 x 3 on 9 x 9 images, both layouts for 5 x 5
    "depthwise-tiles": (4, 40, 40, 9, 3, 1, 1, 1, 40),
    "depthwise-tiles-5x5": (4, 40, 40, 9, 5, 1, ((2, 1), (0, 2)), (1, 2), 40),
    # BLAS matrix products, small enough for one gemm task each (larger 1x1 products are
    # cut into a task per thread, and then the bits may differ: see test_blas.py)
    "pointwise-grouped": (4, 32, 48, 12, 1, 1, 0, 1, 2),
    "fused": (16, 3, 32, 24, 3, 1, 1, 1, 1),  # conv2d_backward: the fused flat kernel
    "fused-grouped": (6, 4, 16, 20, 3, 1, ((1, 0), (0, 2)), (1, 2), 2),
    "fused-few-pairs": (16, 1, 8, 32, 5, 1, 2, 1, 1),  # 8 channel pairs: rows alone
    # conv2d_backward: BLAS products over the unfolded input (short planes, stride 2)
    "unfolded": (4, 32, 64, 7, 3, 1, 1, 1, 1),
    "unfolded-strided": (4, 16, 64, 15, (3, 2), 2, ((1, 0), (2, 1)), (1, 2), 1),
    "unfolded-narrow": (4, 32, 16, 14, 3, 2, 1, 1, 1),  # NHWC's grad_input alone: flat
    "unfolded-rows": (2, 32, 64, 12, 3, 1, 1, 1, 1),  # NCHW on channel-major rows, no copies
}
# Cases whose conv2d_backward runs the unfolded products (``kernels/im2col.py``).
UNFOLDED = {"unfolded", "unfolded-strided", "unfolded-narrow", "unfolded-rows"}


def make(case, layout, dtype, seed=0):
    n, c_in, c_out, size, k, stride, padding, dilation, groups = case
    kh, kw = (k, k) if isinstance(k, int) else k
    spec = NCHW if layout == "NCHW" else NHWC
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.image_shape(n, c_in, size, size)).astype(dtype)
    w = rng.standard_normal(spec.weight_shape(c_out, c_in // groups, kh, kw)).astype(dtype)
    opts = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    problem = describe(spec, np.dtype(dtype), x.shape, w.shape, **opts)
    g = rng.standard_normal(problem.output_shape).astype(dtype)
    return problem, x, w, g, opts | {"layout": layout}


FAMILIES = {  # which kernels each case runs on, for NCHW and NHWC arrays
    # float64's 16 channels fill two of the direct tiles' vectors on AVX-512
    "dense": ("direct", "direct") if VECTOR_REGISTERS >= 32 else ("flat", "flat"),
    "dilated-grouped": ("flat", "flat"),
    "strided-asym": ("channels", "channels"),
    "wide-channels": ("channels", "channels"),
    "wide-grouped": ("channels", "channels"),
    "strided-flat": ("flat", "flat"),
    "few-channels": ("rows", "rows"),
    "depthwise": ("rows", "rows"),
    "depthwise-pure": ("planes", "depthwise"),  # NCHW: the depthwise backward's planes
    "depthwise-tiles": ("planes", "depthwise"),
    "depthwise-tiles-5x5": ("planes", "depthwise"),
    "pointwise-grouped": ("gemm", "gemm"),
    "fused": ("flat", "flat"),
    "fused-grouped": ("flat", "flat"),
    "fused-few-pairs": ("rows", "rows"),
    "unfolded": ("unfolded", "unfolded"),
    "unfolded-strided": ("unfolded", "unfolded"),
    "unfolded-narrow": ("unfolded", "unfolded"),
    "unfolded-rows": ("unfolded", "unfolded"),
}


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_cases_cover_every_kernel_family(name, layout):
    problem, *_ = make(CASES[name], layout, np.float64)
    choice = _dispatch.select_kernel("grad_weight", problem)
    family = {
        "nchw_flat": "flat",
        "nchw": "rows",
        "nhwc": "channels",
        "nhwc_depthwise": "depthwise",
        "nchw_depthwise": "planes",
        "gemm": "gemm",
        "gemm_tiles": "gemm",
        "im2col": "unfolded",
        "direct_tiles": "direct",
    }[getattr(choice.kernel, "py_func", choice.kernel).__module__.rsplit(".", 1)[1]]
    assert family == FAMILIES[name][layout == "NHWC"]
    assert problem.n * problem.out_h >= 16  # enough tasks and weight chunks to split
    fused = _dispatch.select_backward_kernel(problem)
    # the depthwise backward is fused too (NHWC: grad_weight with grad_bias), and so
    # are NCHW groups of few channels (a channel multiplier)
    fuses = name.startswith(("fused", "depthwise-")) or name in UNFOLDED
    fuses |= FAMILIES[name][layout == "NHWC"] == "direct"  # grad_bias summed with grad_weight
    fuses |= name == "depthwise" and layout == "NCHW"
    assert (fused is not None) == fuses
    tiles = fused is not None and fused.kernel is depthwise_tiles.backward_depthwise_tiles
    assert tiles == (name == "depthwise-tiles-5x5" or (name, layout) == ("depthwise-tiles", "NCHW"))
    unfolded = fused is not None and fused.kernel is im2col.backward_im2col
    assert unfolded == (name in UNFOLDED)
    if name == "unfolded-rows":
        assert fused.layout is problem.layout
    elif unfolded and layout == "NCHW":  # short output rows: on NHWC copies
        assert fused.layout is NHWC


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_parallel_kernels_match_reference(name, layout, dtype):
    problem, x, w, g, opts = make(CASES[name], layout, dtype)
    wide = [a.astype(np.float64) for a in (g, x, w)]
    expected = conv2d_backward_reference(*wide, **opts)
    got = convgrad.conv2d_backward(g, x, w, **opts)
    # longest sum behind one result entry: grad_weight's, over (n, i, j)
    reduction = problem.n * problem.out_h * problem.out_w
    rtol, atol = (1e-11, 1e-10) if dtype == np.float64 else (1e-4, 4e-6 * reduction**0.5)
    for got_part, want in zip(got, expected, strict=True):
        assert got_part.dtype == dtype
        np.testing.assert_allclose(got_part, want, rtol=rtol, atol=atol)
    np.testing.assert_allclose(
        convgrad.conv2d(x, w, **opts),
        conv2d_reference(wide[1], wide[2], **opts),
        rtol=rtol,
        atol=atol,
    )


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_same_bits_for_any_thread_count(name, layout):
    _, x, w, g, opts = make(CASES[name], layout, np.float32)
    before = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, 2, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            results.append(
                (convgrad.conv2d_backward(g, x, w, **opts), convgrad.conv2d(x, w, **opts))
            )
    finally:
        numba.set_num_threads(before)
    (first_grads, first_y), *rest = results
    for grads, y in rest:
        for a, b in zip(grads, first_grads, strict=True):
            assert a.tobytes() == b.tobytes()
        assert y.tobytes() == first_y.tobytes()


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_nan_and_inf_reach_exactly_their_dependants(name, layout):
    """A NaN in input and an Inf in grad_output reach exactly the entries that read them.

    Expected masks come from the NumPy reference run on indicator arrays (1 at the
    bad entry, 0 elsewhere, all other operands positive): an entry depends on the
    bad value exactly when its indicator result is positive. Zero padding adds no
    terms, so an Inf never meets a padded zero.
    """
    _, x, w, g, opts = make(CASES[name], layout, np.float64)
    x, w, g = np.abs(x) + 0.5, np.abs(w) + 0.5, np.abs(g) + 0.5  # positive: no cancellation
    rng = np.random.default_rng(1)
    bad_x = tuple(int(rng.integers(s)) for s in x.shape)
    bad_g = tuple(int(rng.integers(s)) for s in g.shape)
    x_bad, g_bad = x.copy(), g.copy()
    x_bad[bad_x], g_bad[bad_g] = np.nan, np.inf

    def indicator(shape, index):
        marked = np.zeros(shape)
        marked[index] = 1.0
        return marked

    # NaN in the input: reaches grad_weight (and the forward output) only.
    _, gw, _ = convgrad.conv2d_backward(g, x_bad, w, **opts)
    _, expected_gw, _ = conv2d_backward_reference(g, indicator(x.shape, bad_x), w, **opts)
    np.testing.assert_array_equal(np.isnan(gw), expected_gw > 0)
    y = convgrad.conv2d(x_bad, w, **opts)
    np.testing.assert_array_equal(
        np.isnan(y), conv2d_reference(indicator(x.shape, bad_x), w, **opts) > 0
    )
    # +Inf in grad_output: +Inf in every gradient entry that reads it.
    gi, gw, gb = convgrad.conv2d_backward(g_bad, x, w, **opts)
    expected = conv2d_backward_reference(indicator(g.shape, bad_g), x, w, **opts)
    for got, want in zip((gi, gw, gb), expected, strict=True):
        np.testing.assert_array_equal(np.isposinf(got), want > 0)
        assert np.isfinite(got[want == 0]).all()
