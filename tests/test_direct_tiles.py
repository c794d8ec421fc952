"""Stride-1 gradients by direct register tiles (kernels/direct_tiles.py) and their dispatch."""

import numba
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from numba import njit

import convgrad
from convgrad import _dispatch
from convgrad._layouts import NCHW, NHWC
from convgrad._problem import describe
from convgrad.kernels import direct_tiles, im2col
from convgrad.kernels._columns import VECTOR_BYTES, VECTOR_REGISTERS
from convgrad.kernels._tile import SHORT_TAP_TILE_ROWS, TAP_TILE_ROWS
from convgrad.reference import conv2d_backward_reference

AVX512 = pytest.mark.skipif(VECTOR_REGISTERS < 32, reason="the direct tiles run on 32 registers")


@njit
def _taps_into(mr, vectors, tile, a, a_at, a_row, a_step, taps, b, b_at, b_row, count):
    direct_tiles._add_weight_taps(
        mr, vectors, tile, 0, a, a_at, a_row, a_step, taps, b, b_at, b_row, count
    )


TILE_HEIGHTS = [(v, TAP_TILE_ROWS[v]) for v in (4, 2, 1)] + sorted(SHORT_TAP_TILE_ROWS.items())


@pytest.mark.parametrize("vectors, mr", TILE_HEIGHTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("taps, count", [([0], 0), ([0], 7), ([5, 0, 301], 4), ([9, 70], 65)])
def test_tile_add_taps_adds_each_windows_product(vectors, mr, dtype, taps, count):
    nr = vectors * VECTOR_BYTES // np.dtype(dtype).itemsize
    rng = np.random.default_rng(count)
    a = rng.standard_normal(2000).astype(dtype)
    b_row = nr + 5
    b = rng.standard_normal(3 + len(taps) * count * b_row + nr).astype(dtype)
    start = rng.standard_normal(mr * nr).astype(dtype)
    tile = start.copy()
    a_row, a_step = 11, 2
    _taps_into(mr, vectors, tile, a, 4, a_row, a_step, np.array(taps, np.intp), b, 3, b_row, count)
    expected = start.astype(np.float64).reshape(mr, nr)
    rows, terms = np.arange(mr)[:, None], np.arange(count)[None, :]
    for s, offset in enumerate(taps):
        a_part = a[4 + offset + rows * a_row + terms * a_step].astype(np.float64)
        first = 3 + s * count * b_row
        b_rows = first + np.arange(count)[:, None] * b_row + np.arange(nr)[None, :]
        expected += a_part @ b[b_rows].astype(np.float64)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(tile.reshape(mr, nr), expected, rtol=rtol, atol=rtol * 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("columns", [1, 8, 16, 17, 24, 32, 33, 48, 64, 80, 96, 112, 128, 160, 256])
def test_tap_tiles_take_the_width_quickest_over_its_padding(columns, dtype):
    mr, vectors, nr = direct_tiles.tap_tile_shape(columns, dtype)
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    assert nr == vectors * lanes and mr == TAP_TILE_ROWS[vectors]

    def time(v):  # the columns padded to whole panels, at the tile's speed
        return -(-columns // (v * lanes)) * v * lanes / direct_tiles.TILE_SPEED[v]

    assert all(time(vectors) <= time(v) for v in (1, 2, 4))
    assert all(time(vectors) < time(v) for v in (1, 2, 4) if v > vectors)  # wider on a tie


def test_tap_tiles_pad_96_and_80_channels_least():
    assert direct_tiles.tap_tile_shape(96, np.float32)[2] == 32  # 3 panels, not 2 of 64
    assert direct_tiles.tap_tile_shape(80, np.float32)[2] == 16
    assert direct_tiles.tap_tile_shape(64, np.float32)[2] == 64


@pytest.mark.parametrize("rows", [1, 7, 24, 32, 48, 96, 112, 130])
@pytest.mark.parametrize("columns", [8, 16, 32, 64])
def test_weight_tiles_take_the_height_padding_their_rows_least(rows, columns):
    full, vectors, nr = direct_tiles.tap_tile_shape(columns, np.float32)
    mr, shape_vectors, shape_nr = direct_tiles.weight_tile_shape(rows, columns, np.float32)
    assert (shape_vectors, shape_nr) == (vectors, nr)
    heights = {full, SHORT_TAP_TILE_ROWS.get(vectors, full)}
    assert mr in heights
    padded = {h: -(-rows // h) * h for h in heights}
    assert padded[mr] == min(padded.values())
    assert mr == full or padded[mr] < padded[full]  # the full height on a tie


@st.composite
def direct_cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    groups = draw(st.sampled_from([1, 1, 2]))
    cin_g, cout_g = draw(st.integers(1, 70)), draw(st.integers(1, 70))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = [draw(st.integers(0, (kh - 1) * dh)) for _ in range(2)]
    pads += [draw(st.integers(0, (kw - 1) * dw)) for _ in range(2)]
    height = draw(st.integers((kh - 1) * dh + 1 - pads[0] - pads[1], 13))
    width = draw(st.integers(max(1, (kw - 1) * dw + 1 - pads[2] - pads[3]), 13))
    n = draw(st.integers(1, 3))
    band_rows, parts, slices, seed = (
        draw(st.integers(1, 6)),
        draw(st.integers(1, 4)),
        draw(st.integers(1, 3)),
        draw(st.integers(0, 99)),
    )
    dims = (n, groups * cin_g, groups * cout_g, max(height, 1), width, kh, kw)
    nchw = draw(st.booleans())
    return dtype, groups, dims, (dh, dw), tuple(pads), band_rows, parts, slices, seed, nchw


def _case_arrays(dtype, groups, dims, seed):
    n, c_in, c_out, height, width, kh, kw = dims
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, height, width, c_in)).astype(dtype)
    w = rng.standard_normal((kh, kw, c_in // groups, c_out)).astype(dtype)
    return x, w, rng


def _run_direct(x, w, g, pads, dilation, groups, band_rows, parts, nchw=False, slices=1):
    """The three gradients of NHWC arrays by backward_direct, on NCHW copies if ``nchw``."""
    top, _, left, _ = pads
    if nchw:
        x, g = (np.ascontiguousarray(a.transpose(0, 3, 1, 2)) for a in (x, g))
        w = np.ascontiguousarray(w.transpose(3, 2, 0, 1))
    gi = np.full(x.shape, np.nan, x.dtype)  # every value must be written
    gw, gb = np.zeros(w.shape, w.dtype), np.zeros(w.shape[0 if nchw else 3], g.dtype)
    args = (top, left, *dilation, groups, band_rows, parts, int(nchw), slices)
    direct_tiles.backward_direct(x, g, w, gi, gw, gb, *args)
    if nchw:
        return gi.transpose(0, 2, 3, 1), gw.transpose(2, 3, 1, 0), gb
    return gi, gw, gb


@settings(deadline=None, max_examples=60)
@given(direct_cases())
# a band pitch (3 + 2 pixels) shorter than the kernel's reach (6): grad_weight's
# dropped pixels read past the last row by more than a row (found reading past
# the workspace, NaN garbage times zero)
@example((np.float32, 1, (1, 64, 1, 10, 3, 2, 4), (2, 2), (0, 0, 2, 2), 3, 1, 1, 14, False))
def test_direct_kernels_match_the_reference(case):
    dtype, groups, dims, dilation, pads, band_rows, parts, slices, seed, nchw = case
    x, w, rng = _case_arrays(dtype, groups, dims, seed)
    top, bottom, left, right = pads
    out_h = x.shape[1] + top + bottom - (w.shape[0] - 1) * dilation[0]
    out_w = x.shape[2] + left + right - (w.shape[1] - 1) * dilation[1]
    g = rng.standard_normal((x.shape[0], out_h, out_w, w.shape[3])).astype(dtype)
    gi, gw, gb = _run_direct(x, w, g, pads, dilation, groups, band_rows, parts, nchw, slices)
    padding = ((top, bottom), (left, right))
    gi_ref, gw_ref, gb_ref = conv2d_backward_reference(
        g, x, w, padding=padding, dilation=dilation, groups=groups, layout="NHWC"
    )
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    scale_i, scale_w = np.abs(gi_ref).max() + 1, np.abs(gw_ref).max() + 1
    np.testing.assert_allclose(gi, gi_ref, rtol=rtol, atol=rtol * scale_i)
    np.testing.assert_allclose(gw, gw_ref, rtol=rtol, atol=rtol * scale_w)
    np.testing.assert_allclose(gb, gb_ref, rtol=rtol, atol=rtol * (np.abs(gb_ref).max() + 1))


def test_direct_kernels_give_the_same_bits_at_any_thread_count():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 17, 19, 64)).astype(np.float32)
    w = rng.standard_normal((3, 3, 64, 70)).astype(np.float32)
    g = rng.standard_normal((3, 17, 19, 70)).astype(np.float32)
    before = numba.get_num_threads()
    try:
        results = []
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            for nchw in (False, True):
                results.append(_run_direct(x, w, g, (1, 1, 1, 1), (1, 1), 1, 4, 3, nchw))
    finally:
        numba.set_num_threads(before)
    for k in range(2, len(results)):  # each layout's bits at every thread count
        same = zip(results[k], results[k % 2], strict=True)
        assert all(np.array_equal(a, b) for a, b in same)


@pytest.mark.parametrize("groups", [1, 2])
def test_grad_weight_gives_the_same_bits_however_its_tiles_are_cut(groups):
    # one part's tiles cut into runs, one task each with the run's own totals: every
    # tile sums its terms as uncut (a cut problem is one part whatever ``parts`` says)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 11, 13, 96)).astype(np.float32)
    w = rng.standard_normal((3, 3, 96 // groups, 80)).astype(np.float32)
    g = rng.standard_normal((2, 11, 13, 80)).astype(np.float32)
    uncut = _run_direct(x, w, g, (1, 1, 1, 1), (1, 1), groups, 4, 1)
    for parts in (1, 2):
        for slices in (2, 3, 7, 10_000):  # more runs than tiles: one tile each
            cut = _run_direct(x, w, g, (1, 1, 1, 1), (1, 1), groups, 4, parts, slices=slices)
            assert all(np.array_equal(a, b) for a, b in zip(cut, uncut, strict=True))


def test_grad_weight_adds_into_what_is_there():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 9, 9, 64)).astype(np.float64)
    w = rng.standard_normal((3, 3, 64, 64)).astype(np.float64)
    g = rng.standard_normal((2, 9, 9, 64)).astype(np.float64)
    start = rng.standard_normal(w.shape)
    gw = start.copy()
    direct_tiles.grad_weight_direct(x, g, gw, 1, 1, 1, 1, 1, 3, 2, 0)
    _, gw_ref, _ = conv2d_backward_reference(g, x, w, padding=1, layout="NHWC")
    np.testing.assert_allclose(gw, start + gw_ref, rtol=1e-12, atol=1e-11)


def test_the_wrappers_take_arrays_of_any_strides():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 8, 8, 64)).astype(np.float32)
    w = rng.standard_normal((3, 3, 64, 64)).astype(np.float32)
    g = rng.standard_normal((2, 8, 8, 128)).astype(np.float32)[..., ::2]  # strided
    gi = np.zeros((2, 8, 8, 128), np.float32)[..., ::2]
    gw = np.zeros((3, 3, 64, 128), np.float32)[..., ::2]
    direct_tiles.grad_input_direct(g, w, gi, 1, 1, 1, 1, 1, 3, 0)
    direct_tiles.grad_weight_direct(x, g, gw, 1, 1, 1, 1, 1, 3, 2, 0)
    gi_ref, gw_ref, _ = conv2d_backward_reference(g, x, w, padding=1, layout="NHWC")
    np.testing.assert_allclose(gi, gi_ref, rtol=2e-5, atol=1e-4)
    np.testing.assert_allclose(gw, gw_ref, rtol=2e-5, atol=1e-4)


def _problem(layout, n, c_in, c_out, size, k=3, padding=1, stride=1, dtype=np.float32, groups=1):
    image = layout.image_shape(n, c_in, size, size)
    weight = layout.weight_shape(c_out, c_in // groups, k, k)
    return describe(
        layout, np.dtype(dtype), image, weight,
        stride=stride, padding=padding, dilation=1, groups=groups,
    )  # fmt: skip


def _dense_arrays(spec, n, channels, size, seed):
    """Random float32 (input, weight, grad_output) of a 3 x 3, padding-1 layer in ``spec``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.image_shape(n, channels, size, size)).astype(np.float32)
    w = rng.standard_normal(spec.weight_shape(channels, channels, 3, 3)).astype(np.float32)
    g = rng.standard_normal(spec.image_shape(n, channels, size, size)).astype(np.float32)
    return x, w, g


@AVX512
@pytest.mark.parametrize("layout", [NHWC, NCHW])
@pytest.mark.parametrize("operation", ["grad_input", "grad_weight"])
def test_dense_stride_1_problems_take_the_direct_tiles_in_their_layout(layout, operation):
    problem = _problem(layout, 8, 64, 64, 56)  # the suite's resnet_3x3
    choice = _dispatch.select_kernel(operation, problem)
    assert choice.kernel in (direct_tiles.grad_input_direct, direct_tiles.grad_weight_direct)
    assert choice.layout is layout and choice.exact is not None
    fused = _dispatch.select_backward_kernel(problem)  # grad_bias summed with grad_weight
    assert fused.kernel is direct_tiles.backward_direct and fused.finite_only
    assert fused.layout is layout and fused.writes_input
    assert _dispatch.direct_suits(_problem(layout, 8, 64, 64, 56, dtype=np.float64))


@pytest.mark.parametrize(
    "problem",
    [
        _problem(NCHW, 8, 16, 64, 56),  # NCHW: one vector of input channels
        _problem(NHWC, 8, 8, 64, 56),  # half a vector
        _problem(NHWC, 8, 64, 64, 56, stride=2),
        _problem(NHWC, 8, 64, 64, 56, padding=3),  # past the kernel's reach
        _problem(NHWC, 8, 64, 64, 56, k=1, padding=0),  # a matrix product
        _problem(NHWC, 1, 64, 64, 3),  # tiny: the serial fused kernel
        _problem(NHWC, 2, 128, 128, 28, groups=128),  # depthwise
        _problem(NHWC, 8, 512, 512, 7),  # its float64 totals pass the budget
    ],
)
def test_other_problems_keep_their_kernels(problem):
    assert not _dispatch.direct_suits(problem)


@pytest.mark.parametrize("k, dilation", [(1, 1), (3, 1), (7, 1), (3, 2), (5, 3)])
def test_band_rows_share_one_padding_between_them(k, dilation):
    reach = (k - 1) * dilation
    for left in range(reach + 1):
        for right in range(reach + 1):
            width = 20
            out_w = width + left + right - reach
            pitch = direct_tiles.band_pitch(width, out_w, left, reach)
            assert pitch == width + max(left, right)
            problem = describe(
                NHWC, np.dtype(np.float32), (1, width, width, 4), (k, k, 4, 4),
                stride=1, padding=((0, 0), (left, right)), dilation=dilation, groups=1,
            )  # fmt: skip
            assert _dispatch._direct_pitch(problem) == pitch


@AVX512
@pytest.mark.parametrize(
    "n, c_in, c_out, size, direct",
    [
        (64, 64, 64, 8, True),  # short planes the unfolded products would take
        (8, 64, 64, 16, True),
        (8, 48, 64, 16, True),  # a seventh of the tiles' columns padding
        (8, 96, 96, 14, False),  # a third
        (16, 64, 64, 8, False),  # 1024 output pixels: their fixed costs lose
        (1, 64, 64, 7, False),
    ],
)
def test_direct_tiles_take_short_planes_with_full_columns_and_pixels_enough(
    n, c_in, c_out, size, direct
):
    p = _problem(NHWC, n, c_in, c_out, size)
    assert _dispatch.im2col_suits(p)
    threads = numba.config.NUMBA_NUM_THREADS
    enough = n * p.out_h * p.out_w >= _dispatch.DIRECT_SHORT_PIXELS * threads
    assert _dispatch.direct_takes_short_planes(p) == (direct and enough)
    assert _dispatch.direct_suits(p) == (direct and enough)


@AVX512
@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS != 2, reason="pixels sized for 2 threads")
@pytest.mark.parametrize(
    "layout, n, c_in, c_out, size, direct",
    [
        (NHWC, 8, 256, 256, 14, True),  # the backward's unfolded products: cut too fine
        (NHWC, 16, 256, 256, 14, True),
        (NCHW, 8, 64, 64, 14, True),  # the backward: too few pixels for the direct tiles
        (NHWC, 4, 256, 256, 14, True),  # 392 output pixels a thread
        (NHWC, 2, 256, 256, 14, False),  # 196
        (NHWC, 16, 128, 128, 8, False),  # rows of 8 pixels
        (NCHW, 32, 128, 128, 7, False),
    ],
)
def test_grad_input_alone_takes_the_direct_tiles_on_short_planes_with_pixels_enough(
    layout, n, c_in, c_out, size, direct
):
    p = _problem(layout, n, c_in, c_out, size)
    assert _dispatch.im2col_suits(p) and not _dispatch.direct_suits(p)
    assert _dispatch.direct_input_suits(p) == direct
    choice = _dispatch.select_kernel("grad_input", p)
    if direct:
        assert choice.kernel is direct_tiles.grad_input_direct and choice.exact is not None
        assert choice.layout is layout and choice.writes_input
    else:
        assert choice.kernel is im2col.grad_input_im2col
    # grad_weight and the backward keep the unfolded products
    assert _dispatch.select_kernel("grad_weight", p).kernel is im2col.grad_weight_im2col
    assert _dispatch.select_backward_kernel(p).kernel is im2col.backward_im2col


@AVX512
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_grad_input_alone_on_short_planes_matches_the_reference_keeping_inf_exact(layout):
    spec = NCHW if layout == "NCHW" else NHWC
    x, w, g = _dense_arrays(spec, 8, 64, 14, seed=12)
    problem = _problem(spec, 8, 64, 64, 14)
    assert _dispatch.select_kernel("grad_input", problem).kernel is direct_tiles.grad_input_direct
    for step in ("finite", "inf"):
        if step == "inf":  # the kernel would multiply it by grad_output's zero padding
            w[(3, 5, 0, 0) if layout == "NCHW" else (0, 0, 5, 3)] = np.inf
        want = conv2d_backward_reference(g, x, w, padding=1, layout=layout)[0]
        got = convgrad.conv2d_grad_input(g, w, x.shape, padding=1, layout=layout)
        for test in (np.isnan, np.isposinf, np.isneginf):
            np.testing.assert_array_equal(test(got), test(want))
        finite = np.isfinite(want)
        assert finite.any() and (step == "finite") == finite.all()
        np.testing.assert_allclose(got[finite], want[finite], rtol=2e-5, atol=2e-4)


@AVX512
def test_the_direct_workspaces_fit_the_budget():
    for problem in (
        _problem(NHWC, 8, 64, 64, 56),
        _problem(NCHW, 8, 64, 64, 56, dtype=np.float64),
        _problem(NHWC, 8, 128, 128, 28),  # two parts' totals would not fit
        _problem(NHWC, 4, 256, 256, 28),  # nor one copy: runs' totals, a row per thread
    ):
        if not _dispatch.direct_suits(problem):
            assert problem.c_in >= 128 and numba.config.NUMBA_NUM_THREADS > 2
            continue  # many threads' tasks leave no room for its totals
        rows, slices = _dispatch.direct_band_rows(problem), _dispatch.direct_weight_slices(problem)
        threads = numba.config.NUMBA_NUM_THREADS
        tasks = threads * _dispatch._direct_task_bytes(problem, rows, slices)
        totals = _dispatch.direct_weight_parts(problem) * 8 * _dispatch._weight_values(problem)
        if slices > 1:
            totals = threads * 8 * _dispatch._run_values(problem, slices)
        budget = _dispatch._workspace_budget(problem)
        assert rows >= 1 and tasks + totals <= budget
        assert tasks + _dispatch._packed_weight_bytes(problem) <= budget  # grad_input's


@AVX512
@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS != 2, reason="sized for 2 threads' tasks")
def test_grad_weight_cuts_its_tiles_where_the_parts_totals_do_not_fit():
    wide = _problem(NHWC, 8, 128, 128, 28)  # float64 totals 1.2 MB a part; budget 4 MiB
    assert _dispatch.direct_weight_slices(wide) == 2 and _dispatch.direct_weight_parts(wide) == 1
    choice = _dispatch.select_backward_kernel(wide)
    assert choice.kernel is direct_tiles.backward_direct and choice.args[-2:] == (0, 2)
    narrow = _problem(NHWC, 8, 64, 64, 56)
    assert (
        _dispatch.direct_weight_slices(narrow) == 1 and _dispatch.direct_weight_parts(narrow) == 2
    )
    # a 256 x 256 weight: 4.7 MB of totals in one copy; runs of a sixteenth or less
    assert _dispatch.direct_weight_slices(_problem(NHWC, 4, 256, 256, 28)) >= 16
    # NCHW gathers its bands: one run per thread at most, else not the direct tiles
    assert not _dispatch.direct_suits(_problem(NCHW, 4, 256, 256, 28))
    # cut into 32 runs a thread: the backward takes them (grad_input's gain), grad_weight
    # alone not
    wide = _problem(NHWC, 2, 256, 256, 56)
    assert _dispatch.direct_weight_slices(wide) > 2 * _dispatch.DIRECT_WEIGHT_ALONE_MAX_RUNS
    assert _dispatch.select_backward_kernel(wide).kernel is direct_tiles.backward_direct
    assert _dispatch.select_kernel("grad_input", wide).kernel is direct_tiles.grad_input_direct
    assert (
        _dispatch.select_kernel("grad_weight", wide).kernel is not direct_tiles.grad_weight_direct
    )
    # short planes cut finer than DIRECT_SHORT_MAX_RUNS a thread: the unfolded products
    short = _problem(NHWC, 16, 256, 256, 14)
    assert _dispatch.direct_weight_slices(short) > 2 * _dispatch.DIRECT_SHORT_MAX_RUNS
    assert _dispatch.im2col_suits(short) and not _dispatch.direct_suits(short)


@AVX512
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("n, channels, size", [(2, 64, 20), (3, 128, 28)])  # 2nd: cut tiles
def test_non_finite_values_reach_only_their_dependants(layout, n, channels, size):
    rng = np.random.default_rng(6)
    spec = getattr(convgrad._layouts, layout)
    problem_shape = spec.image_shape(n, channels, size, size)
    x = rng.standard_normal(problem_shape).astype(np.float32)
    w_shape = spec.weight_shape(channels, channels, 3, 3)
    w = rng.standard_normal(w_shape).astype(np.float32)
    g = rng.standard_normal(problem_shape).astype(np.float32)
    x[(0, 0, 0, 0)] = np.inf  # a corner: the padding's zeros must not meet it
    w[(1, 1, 1, 1)] = np.nan
    problem = describe(
        getattr(convgrad._layouts, layout), np.dtype(np.float32), x.shape, w.shape,
        stride=1, padding=1, dilation=1, groups=1,
    )  # fmt: skip
    assert _dispatch.direct_suits(problem)
    if channels == 128 and numba.config.NUMBA_NUM_THREADS == 2:
        assert _dispatch.direct_weight_slices(problem) == 2  # runs with their own totals
    got = convgrad.conv2d_backward(g, x, w, padding=1, layout=layout)
    expected = conv2d_backward_reference(g, x, w, padding=1, layout=layout)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        finite = np.isfinite(b)
        np.testing.assert_allclose(a[finite], b[finite], rtol=2e-5, atol=2e-4)


def test_grad_weight_folds_long_parts_into_their_totals():
    # one part of 72 x 74 pixels: its tiles fold into the totals mid-part (BLOCK_TERMS)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 72, 72, 7)).astype(np.float32)
    w = rng.standard_normal((3, 3, 7, 9)).astype(np.float32)
    g = rng.standard_normal((1, 72, 72, 9)).astype(np.float32)
    assert direct_tiles.BLOCK_TERMS < 72 * 74
    gw = np.zeros(w.shape, np.float32)
    direct_tiles.grad_weight_direct(x, g, gw, 1, 1, 1, 1, 1, 5, 1, 0)
    _, gw_ref, _ = conv2d_backward_reference(g, x, w, padding=1, layout="NHWC")
    np.testing.assert_allclose(gw, gw_ref, rtol=1e-5, atol=1e-4)


@AVX512
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_single_gradients_with_non_finite_values_take_the_exact_kernels(layout):
    # the direct kernels multiply the padding's zeros: a NaN or Inf must send
    # grad_input and grad_weight alone to their exact alternatives
    spec = NCHW if layout == "NCHW" else NHWC
    x, w, g = _dense_arrays(spec, 2, 64, 20, seed=8)
    problem = describe(
        spec, np.dtype(np.float32), x.shape, w.shape,
        stride=1, padding=1, dilation=1, groups=1,
    )  # fmt: skip
    assert _dispatch.select_kernel("grad_input", problem).kernel is direct_tiles.grad_input_direct
    x.flat[0], w.flat[5] = np.inf, np.nan  # a corner of x: only the padding's zeros meet it
    g[(1, 5, 10, 10) if layout == "NCHW" else (1, 10, 10, 5)] = -np.inf  # inside: no padding
    expected = conv2d_backward_reference(g, x, w, padding=1, layout=layout)
    got = (
        convgrad.conv2d_grad_input(g, w, x.shape, padding=1, layout=layout),
        convgrad.conv2d_grad_weight(g, x, w.shape, padding=1, layout=layout),
    )
    for a, b in zip(got, expected[:2], strict=True):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        finite = np.isfinite(b)
        np.testing.assert_allclose(a[finite], b[finite], rtol=2e-5, atol=2e-4)
