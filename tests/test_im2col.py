"""The unfolded products (``kernels/im2col.py``): the kernel against the reference, its
dispatch rule and its working memory."""

import itertools
import tracemalloc

import numba
import numpy as np
import pytest

from convgrad import _dispatch
from convgrad._layouts import NCHW, NHWC
from convgrad._problem import describe
from convgrad.kernels import gemm_tiles, im2col
from convgrad.reference import conv2d_backward_reference


def problem(layout, n, c_in, c_out, size, k=3, dtype=np.float32, **opts):
    kh, kw = (k, k) if isinstance(k, int) else k
    opts = {"stride": 1, "padding": 1, "dilation": 1, "groups": 1} | opts
    image = layout.image_shape(n, c_in, size, size)
    weight = layout.weight_shape(c_out, c_in // opts["groups"], kh, kw)
    return describe(layout, np.dtype(dtype), image, weight, **opts)


def arrays(p, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(
        rng.standard_normal(shape).astype(p.dtype)
        for shape in (p.output_shape, p.input_shape, p.weight_shape)
    )


def run(p, g, x, w, images_per_tile, parts, fold_spans, gw=None, gb=None, by_tiles=0):
    """The kernel's three results; grad_input starts as garbage (the kernel writes it).

    ``by_tiles``: the products by register tiles (``gemm_tiles``), else by BLAS.
    """
    gi = np.full(p.input_shape, np.nan, p.dtype)
    gw = np.zeros(p.weight_shape, p.dtype) if gw is None else gw
    gb = np.zeros(p.c_out, p.dtype) if gb is None else gb
    (sh, sw), padding, (dh, dw), _ = p.geometry
    nhwc = int(p.layout is NHWC)
    args = (sh, sw, *padding, dh, dw, images_per_tile, parts, fold_spans, nhwc, by_tiles)
    assert im2col.backward_im2col(x, g, w, gi, gw, gb, *args) is None
    return gi, gw, gb


def assert_matches_reference(p, got, g, x, w):
    opts = dict(zip(("stride", "padding", "dilation"), p.geometry[:3], strict=True))
    pads = opts["padding"]
    opts["padding"] = ((pads[0], pads[1]), (pads[2], pads[3]))
    wide = (a.astype(np.float64) for a in (g, x, w))
    want = conv2d_backward_reference(*wide, layout=p.layout.name, **opts)
    reduction = max(p.n * p.out_h * p.out_w, p.c_out * p.kh * p.kw)
    rtol, atol = (1e-11, 1e-10) if p.dtype == np.float64 else (1e-4, 4e-6 * reduction**0.5)
    for got_part, want_part in zip(got, want, strict=True):
        assert got_part.dtype == p.dtype
        np.testing.assert_allclose(got_part, want_part, rtol=rtol, atol=atol)


# layout, n, c_in, c_out, size, k, options: asymmetric padding, strides, dilation,
# non-square kernels, padding wider than the windows reach and windows past the
# input (NCHW's padded planes), a short last tile
CASES = [
    (NHWC, 3, 5, 7, 9, 3, {}),
    (NCHW, 3, 5, 7, 9, 3, {}),
    (NCHW, 1, 6, 40, 4, 3, {}),
    (NHWC, 2, 4, 6, 11, (3, 2), {"stride": 2, "padding": ((1, 0), (2, 1)), "dilation": (1, 2)}),
    (NCHW, 2, 4, 6, 11, (3, 2), {"stride": 2, "padding": ((1, 0), (2, 1)), "dilation": (1, 2)}),
    (NCHW, 2, 3, 64, 6, (2, 3), {"stride": (1, 2), "padding": 0}),
    (NCHW, 2, 3, 5, 10, 3, {"stride": 3, "padding": 2}),
    (NCHW, 1, 2, 4, 5, (2, 3), {"padding": ((0, 3), (3, 0)), "dilation": 2}),
    (NHWC, 5, 8, 16, 7, 5, {"padding": 2, "dilation": 2}),
]


@pytest.mark.parametrize("by_tiles", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("tiling", [(1, 1, 1), (2, 3, 2), (8, 16, 8)])
def test_kernel_matches_the_reference(case, dtype, tiling, by_tiles):
    layout, n, c_in, c_out, size, k, opts = CASES[case]
    p = problem(layout, n, c_in, c_out, size, k, dtype, **opts)
    g, x, w = arrays(p)
    before = tuple(a.copy() for a in (g, x, w))
    got = run(p, g, x, w, *tiling, by_tiles=by_tiles)
    assert_matches_reference(p, got, g, x, w)
    for a, b in zip((g, x, w), before, strict=True):
        assert np.array_equal(a, b)  # inputs untouched


@pytest.mark.parametrize("layout", [NCHW, NHWC])
def test_kernel_adds_into_grad_weight_and_grad_bias(layout):
    p = problem(layout, 3, 5, 7, 9)
    g, x, w = arrays(p)
    _, gw, gb = run(p, g, x, w, 2, 2, 1)
    _, gw2, gb2 = run(p, g, x, w, 2, 2, 1, gw=np.ones_like(gw), gb=np.ones_like(gb))
    # 1 + sum is rounded once, (sum rounded) + 1 twice: a few units of gw's last
    # place apart, which near gw = -1 is far more than gw + 1's own relative 1e-6
    eps = np.finfo(gw.dtype).eps
    for added, alone in ((gw2, gw), (gb2, gb)):
        assert np.all(np.abs(added - (alone + 1)) <= 2 * eps * (np.abs(alone) + 1))


@pytest.mark.parametrize("layout", [NCHW, NHWC])
def test_without_blas_the_products_go_through_matmul(layout, monkeypatch):
    p = problem(layout, 3, 6, 40, 6, stride=2)
    g, x, w = arrays(p)
    with_blas = run(p, g, x, w, 2, 4, 2)
    monkeypatch.setattr(im2col, "gemm_for", lambda dtype: None)
    without = run(p, g, x, w, 2, 4, 2)
    assert_matches_reference(p, without, g, x, w)
    for a, b in zip(with_blas, without, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", [NCHW, NHWC])
def test_same_bits_for_any_tile_span_split(layout):
    """Spans of the products' columns and of the folded channels split the work, not the sums.

    The folding is ours: the same bits for any spans. A product cut into spans
    is as many gemm calls, and OpenBLAS may sum an entry in another order for
    another shape of call (its Haswell kernels did, for spans of 7-64 columns,
    on a 2-core AMD EPYC with ``OPENBLAS_CORETYPE=Haswell``; its SkylakeX
    kernels did not): those agree to rounding. The dispatch fixes the spans
    by the problem, so the thread count never changes them.
    """
    p = problem(layout, 2, 64, 64, 7)
    g, x, w = arrays(p)
    first = run(p, g, x, w, 2, 1, 1)
    for fold_spans in (2, 3, 8):
        gi, _, gb = run(p, g, x, w, 2, 1, fold_spans)
        assert gi.tobytes() == first[0].tobytes() and gb.tobytes() == first[2].tobytes()
    scale = np.abs(first[0]).max()
    for parts, fold_spans in ((2, 2), (9, 3), (16, 8)):
        gi, _, gb = run(p, g, x, w, 2, parts, fold_spans)
        np.testing.assert_allclose(gi, first[0], rtol=1e-5, atol=1e-6 * scale)
        assert gb.tobytes() == first[2].tobytes()
        again = run(p, g, x, w, 2, parts, fold_spans)[0]
        assert again.tobytes() == gi.tobytes()  # the same spans: the same bits


def test_one_span_products_are_cut_in_two():
    """A product of one span of columns is two BLAS tasks, whatever the thread count."""
    assert im2col.product_splits(1) == im2col.PRODUCT_MIN_TASKS == 2
    assert [im2col.product_splits(parts) for parts in (2, 3, 8)] == [1, 1, 1]


@pytest.mark.parametrize("layout", [NCHW, NHWC])
@pytest.mark.parametrize("c_out", [7, 70])
def test_blas_products_cut_for_idle_threads(layout, c_out, monkeypatch):
    """A span's BLAS products cut again (grad_weight's by output channels, grad_input's
    by pixels) agree with the uncut ones to rounding, keep grad_bias's bits, and do
    not depend on the thread count."""
    p = problem(layout, 3, 40, c_out, 15, k=1, padding=0, stride=2)  # 40 columns: one span
    g, x, w = arrays(p)
    monkeypatch.setattr(im2col, "PRODUCT_MIN_TASKS", 1)
    uncut = run(p, g, x, w, 2, 1, 1)
    scale = [np.abs(a).max() for a in uncut]
    threads = numba.get_num_threads()
    for tasks in (2, 5):
        monkeypatch.setattr(im2col, "PRODUCT_MIN_TASKS", tasks)
        try:
            numba.set_num_threads(1)
            alone = run(p, g, x, w, 2, 1, 1)
            numba.set_num_threads(max(2, threads))
            got = run(p, g, x, w, 2, 1, 1)
        finally:
            numba.set_num_threads(threads)
        for a, b in zip(got, alone, strict=True):
            assert a.tobytes() == b.tobytes()
        for a, b, top in zip(got, uncut, scale, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * top)
        assert got[2].tobytes() == uncut[2].tobytes()
    assert_matches_reference(p, uncut, g, x, w)


@pytest.mark.parametrize("layout", [NCHW, NHWC])
def test_tile_products_give_the_same_bits_for_any_parts(layout):
    """By register tiles every entry is summed in the same order whatever the spans."""
    p = problem(layout, 2, 64, 64, 7)  # 576 columns: 9 panels of 64 float32 values
    g, x, w = arrays(p)
    first = run(p, g, x, w, 2, 1, 1, by_tiles=1)
    assert_matches_reference(p, first, g, x, w)
    for parts in (2, 4, 5, 8, 16):
        got = run(p, g, x, w, 2, parts, 1, by_tiles=1)
        for a, b in zip(got, first, strict=True):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("layout", [NCHW, NHWC])
@pytest.mark.parametrize("c_out", [70, 150])
def test_tile_products_cut_for_idle_threads_give_the_same_bits(layout, c_out):
    """Fewer column spans than threads: each span's products are cut again, never a sum.

    A 1 x 1 kernel on 40 input channels is one span; on 2 or more threads its
    grad_weight product is cut by output channels and grad_input's by pixels.
    """
    p = problem(layout, 3, 40, c_out, 15, k=1, padding=0, stride=2)
    g, x, w = arrays(p)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        alone = run(p, g, x, w, 2, 1, 1, by_tiles=1)
        numba.set_num_threads(max(2, threads))
        for parts in (1, 2):
            got = run(p, g, x, w, 2, parts, 1, by_tiles=1)
            for a, b in zip(got, alone, strict=True):
                assert a.tobytes() == b.tobytes()
    finally:
        numba.set_num_threads(threads)
    assert_matches_reference(p, alone, g, x, w)


def test_tile_spans_are_whole_panels():
    """Spans of the columns start on a panel (the last one may end short) and cover them all."""

    def panel_span(part, parts, length, unit):  # as the unfolded products cut their columns
        return gemm_tiles._span(part, parts, -(-length // unit), unit, length)

    for length, parts, unit in ((1152, 8, 64), (576, 5, 64), (100, 4, 32), (10, 3, 64)):
        spans = [panel_span(part, parts, length, unit) for part in range(parts)]
        assert spans[0][0] == 0 and spans[-1][1] == length
        for (_, stop), (start, _) in itertools.pairwise(spans):
            assert stop == start
        assert all(start % unit == 0 for start, _ in spans)
    # resnet_s2: 1152 columns in 8 parts of 2 or 3 panels, not 144 columns each
    spans = [panel_span(part, 8, 1152, 64) for part in range(8)]
    assert {stop - start for start, stop in spans} == {128, 192}


@pytest.mark.parametrize("layout", [NCHW, NHWC])
@pytest.mark.parametrize(
    "n, c_in, c_out, size, stride, unfolded",
    [
        (8, 128, 256, 28, 2, True),  # resnet_s2: stride 2, any plane
        (8, 256, 256, 4, 1, True),  # 4 x 4 planes
        (1, 64, 64, 7, 1, True),
        (8, 16, 64, 32, 2, True),  # the fewest channels it takes
        (8, 8, 64, 28, 2, False),  # too few input channels
        (8, 64, 32, 28, 2, True),  # at strides, from 32 input and 8 output channels
        (8, 32, 8, 28, 2, True),
        (8, 16, 32, 28, 2, False),  # narrow output needs 32 input channels
        (8, 64, 4, 28, 2, False),  # too few output channels even at a stride
        (8, 64, 32, 7, 1, False),  # stride 1: 64 output channels
        (8, 64, 64, 56, 1, False),  # resnet_3x3: long planes keep the flat kernels
        (2, 64, 64, 28, 1, False),  # 28 x 28 at stride 1 neither
    ],
)
def test_dispatch_unfolds_short_planes_and_strides(n, c_in, c_out, size, stride, unfolded, layout):
    p = problem(layout, n, c_in, c_out, size, stride=stride)
    choice = _dispatch.select_backward_kernel(p)
    assert (choice is not None and choice.kernel is im2col.backward_im2col) == unfolded
    if unfolded:
        assert choice.finite_only and choice.writes_input and choice.layout is layout


def test_dispatch_plane_limits_per_layout():
    # stride 1: NHWC up to 16 x 16 output planes, NCHW up to 14 x 14 (12 x 12 below
    # 32 input channels)
    def unfolded(layout, c_in, size):  # (the direct tiles may take it all the same)
        return _dispatch.im2col_suits(problem(layout, 4, c_in, 64, size))

    assert unfolded(NHWC, 32, 16) and not unfolded(NCHW, 32, 16)
    assert unfolded(NCHW, 32, 14) and not unfolded(NHWC, 32, 20)
    assert unfolded(NCHW, 16, 12) and not unfolded(NCHW, 16, 14) and unfolded(NHWC, 16, 14)
    # both up to 28 x 28 from 128 input channels
    for layout in (NCHW, NHWC):
        assert unfolded(layout, 128, 28) and not unfolded(layout, 128, 30)


def test_dispatch_leaves_groups_and_1x1_alone():
    grouped = _dispatch.select_backward_kernel(problem(NHWC, 8, 128, 256, 28, stride=2, groups=2))
    assert grouped is None or grouped.kernel is not im2col.backward_im2col
    pointwise = problem(NHWC, 8, 256, 256, 14, k=1, padding=0)
    assert _dispatch.select_backward_kernel(pointwise) is None  # BLAS, one gradient each


def test_dispatch_tiles_fit_the_budget():
    # 6 images of 256 channels x 144 pixels: 4 MiB of budget holds two images' columns
    # (below 1,024 output pixels a thread: not the direct tiles)
    for layout in (NCHW, NHWC):
        p = problem(layout, 6, 256, 96, 12)
        tile = _dispatch.im2col_tile_images(p)
        assert 1 <= tile < p.n
        choice = _dispatch.select_backward_kernel(p)
        assert choice.layout is layout and choice.args[8] == tile  # images_per_tile
    # one image's columns over the budget: not unfolded
    big = problem(NHWC, 1, 512, 512, 64, stride=2)
    assert _dispatch.im2col_tile_images(big) == 0
    assert not _dispatch.im2col_suits(big)


def test_nchw_short_rows_run_on_nhwc_copies_when_they_fit():
    """Output rows of at most 10 pixels: NHWC copies, if they and a tile fit the budget."""
    p = problem(NCHW, 32, 64, 64, 7)  # 32 images, 7-pixel rows
    choice = _dispatch.select_backward_kernel(p)
    assert choice.layout is NHWC and choice.args[11] == 1  # nhwc (args[-1] is by_tiles)
    tile = choice.args[8]
    assert 1 <= tile < p.n
    item = p.dtype.itemsize
    inputs, outputs = p.n * p.c_in * p.height * p.width, p.n * p.c_out * p.out_h * p.out_w
    copies = (2 * inputs + outputs + 2 * p.c_out * p.c_in * p.kh * p.kw) * item
    per_image = im2col.tile_values(p.c_in, p.c_out, p.kh, p.kw, p.out_h, p.out_w, 1) * item
    assert copies + tile * per_image <= _dispatch._workspace_budget(p)
    # the single gradients stay in NCHW (their kernels share the user's layout)
    assert _dispatch.select_kernel("grad_input", p).layout is NCHW
    # one image, 12-pixel rows, or a weight whose copies pass the budget: the rows
    for kept in (
        problem(NCHW, 1, 64, 64, 7),
        problem(NCHW, 8, 64, 64, 12),
        problem(NCHW, 8, 256, 256, 4),  # 2 x 2.4 MB of weight copies
    ):
        assert _dispatch.select_backward_kernel(kept).layout is NCHW


@pytest.mark.parametrize("layout", [NCHW, NHWC])
def test_workspace_estimate_matches_the_kernel(layout):
    """The dispatch's tile size against what the kernel allocates (tracemalloc)."""
    p = problem(layout, 6, 256, 96, 12)  # two images' columns a tile
    g, x, w = arrays(p)
    choice = _dispatch.select_backward_kernel(p)
    assert choice.layout is layout
    assert choice.args[-1] == int(_dispatch.tiles_suit(p))  # products by tiles or by BLAS
    gi, gw, gb = np.empty_like(x), np.zeros_like(w), np.zeros(p.c_out, p.dtype)
    choice.kernel(x, g, w, gi, gw, gb, *choice.args)  # compiled before measuring
    tracemalloc.start()
    choice.kernel(x, g, w, gi, gw, gb, *choice.args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    nhwc = int(layout is NHWC)
    per_image = im2col.tile_values(p.c_in, p.c_out, p.kh, p.kw, p.out_h, p.out_w, nhwc)
    products = _dispatch.im2col_products_bytes(p)  # by tiles: their workspaces
    estimate = choice.args[8] * per_image * p.dtype.itemsize + products
    assert 0.9 * peak <= estimate <= 1.1 * peak + 4096, (peak, estimate)
    assert estimate <= _dispatch._workspace_budget(p)


@pytest.mark.parametrize("by_tiles", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_single_gradient_kernels_match_the_reference(case, dtype, by_tiles):
    layout, n, c_in, c_out, size, k, opts = CASES[case]
    p = problem(layout, n, c_in, c_out, size, k, dtype, **opts)
    g, x, w = arrays(p)
    (sh, sw), padding, (dh, dw), _ = p.geometry
    args = (sh, sw, *padding, dh, dw, 2, 3, 2, int(layout is NHWC), by_tiles)
    gi = np.full(p.input_shape, np.nan, p.dtype)
    assert im2col.grad_input_im2col(g, w, gi, *args) is None
    gw = np.ones(p.weight_shape, p.dtype)  # added into
    assert im2col.grad_weight_im2col(x, g, gw, *args) is None
    _, _, gb = run(p, g, x, w, 2, 3, 2)
    assert_matches_reference(p, (gi, gw - 1, gb), g, x, w)


@pytest.mark.parametrize("layout", [NCHW, NHWC])
def test_single_gradients_dispatch_to_the_unfolded_kernels(layout):
    p = problem(layout, 8, 128, 256, 28, stride=2)  # resnet_s2
    gi_choice = _dispatch.select_kernel("grad_input", p)
    gw_choice = _dispatch.select_kernel("grad_weight", p)
    assert gi_choice.kernel is im2col.grad_input_im2col and gi_choice.exact is None
    assert gi_choice.writes_input and not gi_choice.finite_only
    assert gw_choice.kernel is im2col.grad_weight_im2col and not gw_choice.writes_input
    # the padding's zeros meet grad_output in grad_weight's product: an exact alternative
    assert gw_choice.exact is not None and gw_choice.exact.exact is None
    assert gw_choice.exact.layout is layout
    assert _dispatch.kernel_layout(p) is layout  # no relayouted copies
    assert _dispatch.select_kernel("forward", p).kernel is not im2col.grad_input_im2col


def test_narrow_strided_grad_input_alone_unfolds_in_nchw_only():
    """NHWC's grad_input alone on 32 output channels kept its kernels (C_out-deep product)."""
    for layout, unfolded in ((NCHW, True), (NHWC, False)):
        p = problem(layout, 8, 64, 32, 28, stride=2)
        gi_choice = _dispatch.select_kernel("grad_input", p)
        assert (gi_choice.kernel is im2col.grad_input_im2col) == unfolded
        assert _dispatch.select_kernel("grad_weight", p).kernel is im2col.grad_weight_im2col
        assert _dispatch.select_backward_kernel(p).kernel is im2col.backward_im2col
        assert _dispatch.kernel_layout(p) is layout


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_single_gradients_keep_nan_and_inf_exact(layout):
    """grad_input alone needs no fallback; grad_weight alone falls back to exact kernels."""
    import convgrad

    spec = NCHW if layout == "NCHW" else NHWC
    p = problem(spec, 4, 32, 64, 7, dtype=np.float64)
    g, x, w = (np.abs(a) + 0.5 for a in arrays(p))
    bad_g = (1, 3, 0, 6) if layout == "NCHW" else (1, 0, 6, 3)  # a corner: its window reads padding
    g[bad_g] = np.inf
    opts = {"padding": 1, "layout": layout}
    want = conv2d_backward_reference(g, x, w, **opts)
    gi = convgrad.conv2d_grad_input(g, w, x.shape, **opts)
    gw = convgrad.conv2d_grad_weight(g, x, w.shape, **opts)
    for got, expected in ((gi, want[0]), (gw, want[1])):
        np.testing.assert_array_equal(np.isposinf(got), np.isposinf(expected))
        assert not np.isnan(got).any()  # the padding's zeros never met the Inf


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("size", [7, 12])  # NCHW: on NHWC copies (7-pixel rows), on its rows (12)
def test_nchw_backward_into_out_arrays(size, accumulate):
    """out= and accumulate= through both NCHW routes of the unfolded products."""
    import convgrad

    p = problem(NCHW, 4, 32, 64, size)
    choice = _dispatch.select_backward_kernel(p)
    assert choice.kernel is im2col.backward_im2col
    assert choice.layout is (NHWC if size == 7 else NCHW)
    g, x, w = arrays(p)
    outs = (np.ones_like(x), np.ones_like(w), np.ones(p.c_out, p.dtype))
    got = convgrad.conv2d_backward(g, x, w, padding=1, out=outs, accumulate=accumulate)
    assert all(a is b for a, b in zip(got, outs, strict=True))
    want = conv2d_backward_reference(*(a.astype(np.float64) for a in (g, x, w)), padding=1)
    for got_part, want_part in zip(got, want, strict=True):
        np.testing.assert_allclose(got_part, want_part + accumulate, rtol=1e-4, atol=2e-3)
