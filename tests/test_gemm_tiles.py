"""1x1 gradients by register tiles (kernels/gemm_tiles.py, kernels/_tile.py) and their dispatch."""

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit
from test_gemm import make

import convgrad
from convgrad import _blas, _dispatch
from convgrad._layouts import NCHW, NHWC
from convgrad._problem import describe
from convgrad.kernels import gemm, gemm_tiles
from convgrad.kernels._columns import VECTOR_BYTES
from convgrad.kernels._tile import TILE_ROWS, TILE_VECTORS, tile_columns, tile_product
from convgrad.reference import conv2d_backward_reference


def _weight_nhwc(x, g, gw, groups, threads, parts=None):
    pixels = x.size // x.shape[-1]
    parts = gemm_tiles.weight_pixel_parts(pixels, gw.size) if parts is None else parts
    gemm_tiles.grad_weight_nhwc(x, g, gw, groups, parts, threads)


def _weight_nchw(x, g, gw, groups, threads, parts=None):
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    parts = gemm_tiles.weight_pixel_parts(pixels, gw.size) if parts is None else parts
    gemm_tiles.grad_weight_nchw(x, g, gw, groups, parts, threads)


TILES = {
    NHWC: (gemm_tiles.grad_input_nhwc, _weight_nhwc),
    NCHW: (gemm_tiles.grad_input_nchw, _weight_nchw),
}


@njit
def _tile_of(a, a_at, a_row, a_step, b, b_at, b_row, count):
    tile = np.full(TILE_ROWS * tile_columns(b), np.nan, b.dtype)
    tile_product(tile, a, a_at, a_row, a_step, b, b_at, b_row, count)
    return tile


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("count", [0, 1, 5, 130])
@pytest.mark.parametrize("a_row, a_step", [(1, TILE_ROWS), (300, 1), (1, 7)])
def test_the_register_tile_is_the_product_it_says(dtype, count, a_row, a_step):
    nr = TILE_VECTORS * VECTOR_BYTES // np.dtype(dtype).itemsize
    rng = np.random.default_rng(count)
    a = rng.standard_normal(3 + TILE_ROWS * 300 + 7 * 140).astype(dtype)
    b_row = nr + 3  # rows apart by more than the tile's columns
    b = rng.standard_normal(2 + (count + 1) * b_row).astype(dtype)
    tile = _tile_of(a, 3, a_row, a_step, b, 2, b_row, count).reshape(TILE_ROWS, nr)
    rows, terms = np.arange(TILE_ROWS)[:, None], np.arange(count)[None, :]
    a_tile = a[3 + rows * a_row + terms * a_step].astype(np.float64)  # (MR, count)
    b_tile = b[2 + np.arange(count)[:, None] * b_row + np.arange(nr)[None, :]].astype(np.float64)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(tile, a_tile @ b_tile, rtol=rtol, atol=rtol * max(count, 1))
    assert _columns_of(np.zeros(1, dtype)) == nr


@njit
def _columns_of(array):
    return tile_columns(array)


@st.composite
def tiles_cases(draw):
    """Sizes around the tiles and blocks: rows and columns past whole tiles, groups, many pixels.

    Output channels past KC_INPUT: grad_input's terms in more than one pass.
    """
    groups = draw(st.integers(1, 3))
    cin_g = draw(st.sampled_from([1, 5, 6, 7, 13, 48, 49, 70]))
    cout_g = draw(st.sampled_from([1, 3, 16, 33, 64, 65, 130, gemm_tiles.KC_INPUT + 3]))
    n, height, width = draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    layout = draw(st.sampled_from([NCHW, NHWC]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    dims = (n, groups * cin_g, groups * cout_g, height, width, groups)
    threads = draw(st.integers(1, 16))  # how C is cut for the tasks
    parts = draw(st.integers(1, 4))  # grad_weight's pixels, their totals apart
    return layout, dtype, dims, draw(st.integers(0, 2**32 - 1)), threads, parts


@settings(deadline=None, max_examples=80)
@given(tiles_cases())
def test_tiles_match_the_reference(case):
    layout, dtype, dims, seed, threads, parts = case
    x, w, g, opts = make(layout, dtype, dims, True, seed)
    expected = conv2d_backward_reference(*(a.astype(np.float64) for a in (g, x, w)), **opts)
    rtol = 1e-4 if dtype == np.float32 else 1e-12
    grad_input, grad_weight = TILES[layout]
    gi = np.full_like(x, np.nan)  # written: every value
    grad_input(g, w, gi, opts["groups"], threads)
    np.testing.assert_allclose(gi, expected[0], rtol=rtol, atol=rtol)
    gw = np.ones_like(w)  # added into
    grad_weight(x, g, gw, opts["groups"], threads, parts)
    np.testing.assert_allclose(gw - 1, expected[1], rtol=rtol, atol=rtol * (1 + x.shape[0]))
    # C cut for another thread count: the same values, bit for bit
    again = np.full_like(x, np.nan)
    grad_input(g, w, again, opts["groups"], 1 + threads % 7)
    assert again.tobytes() == gi.tobytes()
    gw_again = np.ones_like(w)
    grad_weight(x, g, gw_again, opts["groups"], 1 + threads % 7, parts)
    assert gw_again.tobytes() == gw.tobytes()


@pytest.mark.parametrize("layout", [NCHW, NHWC])
def test_tiles_through_the_api_and_the_same_bits_at_any_thread_count(layout, monkeypatch):
    monkeypatch.setattr(_dispatch, "GEMM_BY_TILES", True)  # whatever this machine's BLAS
    _dispatch.select_kernel.cache_clear()  # choices remembered with the other setting
    try:
        _api_on_tiles(layout)
    finally:
        monkeypatch.undo()
        _dispatch.select_kernel.cache_clear()


def _api_on_tiles(layout):
    # 3 x 100 -> 70 @ 19 x 19: many grad_input blocks, weight blocks past whole tiles
    x, w, g, opts = make(layout, np.float32, (3, 100, 70, 19, 19, 1), True, 1)
    problem = describe(layout, x.dtype, x.shape, w.shape, stride=1, padding=0, dilation=1, groups=1)
    assert _dispatch.select_kernel("grad_input", problem).kernel is _dispatch.gemm_kernel(
        "grad_input", layout, True
    )
    expected = conv2d_backward_reference(*(a.astype(np.float64) for a in (g, x, w)), **opts)
    threads = numba.get_num_threads()
    results = []
    try:
        for count in sorted({1, 2, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
            results.append(convgrad.conv2d_backward(g, x, w, **opts))
    finally:
        numba.set_num_threads(threads)
    for got, want in zip(results[0], expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    for gradients in results[1:]:
        for got, first in zip(gradients, results[0], strict=True):
            assert got.tobytes() == first.tobytes()


@pytest.mark.parametrize("layout", [NCHW, NHWC])
def test_nan_and_inf_reach_exactly_their_dependants(layout):
    x, w, g, opts = make(layout, np.float64, (2, 13, 70, 5, 6, 1), True, 3)
    g[(1, 2, 3, 4) if layout is NHWC else (1, 4, 2, 3)] = np.inf
    x[(0, 1, 1, 7) if layout is NHWC else (0, 7, 1, 1)] = np.nan
    w[(0, 0, 2, 5) if layout is NHWC else (5, 2, 0, 0)] = -np.inf
    expected = conv2d_backward_reference(g, x, w, **opts)
    grad_input, grad_weight = TILES[layout]
    gi = np.zeros_like(x)
    with np.errstate(invalid="ignore"):
        grad_input(g, w, gi, opts["groups"], 2)
    np.testing.assert_array_equal(np.isnan(gi), np.isnan(expected[0]))
    np.testing.assert_array_equal(np.isinf(gi), np.isinf(expected[0]))
    finite = np.isfinite(expected[0])
    np.testing.assert_allclose(gi[finite], expected[0][finite], rtol=1e-12, atol=1e-12)
    gw = np.zeros_like(w)
    grad_weight(x, g, gw, opts["groups"], 2)
    np.testing.assert_array_equal(np.isnan(gw), np.isnan(expected[1]))
    np.testing.assert_array_equal(np.isinf(gw), np.isinf(expected[1]))


def test_arrays_that_are_not_c_contiguous_go_to_blas():
    x, w, g, opts = make(NHWC, np.float32, (2, 16, 24, 5, 5, 1), True, 4)
    expected = conv2d_backward_reference(*(a.astype(np.float64) for a in (g, x, w)), **opts)
    gi = np.zeros((*x.shape[:3], 2 * x.shape[3]), np.float32)[..., ::2]  # strided out
    gemm_tiles.grad_input_tiles_nhwc(g, w, gi, 1, 64)
    np.testing.assert_allclose(gi, expected[0], rtol=1e-4, atol=1e-4)
    gw = np.zeros((1, 1, 16, 48), np.float32)[..., ::2]
    gemm_tiles.grad_weight_tiles_nhwc(x, g, gw, 1, 64)
    np.testing.assert_allclose(gw, expected[1], rtol=1e-4, atol=1e-3)


def test_tiles_where_blas_runs_narrower_kernels_than_the_cpu(monkeypatch):
    narrower = (_blas.blas_vector_bytes() or VECTOR_BYTES) < VECTOR_BYTES
    assert narrower == _dispatch.GEMM_BY_TILES
    # and only for groups of at least half a tile's columns (32 float32, 16 float64)
    monkeypatch.setattr(_dispatch, "GEMM_BY_TILES", True)
    for dtype, fewest in ((np.float32, 32), (np.float64, 16)):
        half = TILE_VECTORS * VECTOR_BYTES // np.dtype(dtype).itemsize // 2
        assert half == fewest or VECTOR_BYTES < 64
        for c_in, c_out, groups, suits in (
            (half, 4 * half, 1, True),
            (4 * half, half, 1, True),
            (half - 1, 4 * half, 1, False),
            (4 * half, 2 * half - 2, 2, False),
            (4 * half, 4 * half, 2, True),
        ):
            p = describe(NHWC, np.dtype(dtype), (2, 5, 5, c_in), (1, 1, c_in // groups, c_out),
                         stride=1, padding=0, dilation=1, groups=groups)  # fmt: skip
            assert _dispatch.tiles_suit(p) is suits, (c_in, c_out, groups)
    monkeypatch.setattr(_dispatch, "GEMM_BY_TILES", False)
    assert not _dispatch.tiles_suit(p)
    for layout in (NCHW, NHWC):
        assert _dispatch.gemm_kernel("grad_input", layout, False) is getattr(
            gemm, f"grad_input_gemm_{layout.name.lower()}"
        )
        tiles = _dispatch.gemm_kernel("grad_input", layout, True)
        assert tiles is getattr(gemm_tiles, f"grad_input_tiles_{layout.name.lower()}")
        weight = _dispatch.gemm_kernel("grad_weight", layout, True)
        assert weight is getattr(gemm_tiles, f"grad_weight_tiles_{layout.name.lower()}")


def test_pixel_parts_are_fixed_by_the_problem_and_bound_the_totals():
    parts = gemm_tiles.weight_pixel_parts
    assert parts(1, 64) == 1 and parts(gemm_tiles.WEIGHT_PART_PIXELS, 64) == 1
    assert parts(gemm_tiles.WEIGHT_PART_PIXELS + 1, 64) == 2
    assert parts(25088, 64 * 256) == 7  # 8 x 64 -> 256 @ 56 x 56
    weights = 2048 * 2048  # 32 MiB of totals per part: over PARTIALS_BYTES, one part
    assert parts(10**6, weights) == 1
    assert parts(10**6, 256 * 256) * 8 * 256 * 256 <= gemm_tiles.PARTIALS_BYTES


def test_blocks_are_balanced_into_whole_rounds_of_threads():
    balanced = gemm_tiles._balanced
    assert balanced(17, 1, 2, 262) == 18  # pointwise's grad_input: 9 + 9, not 9 + 8
    assert balanced(16, 1, 2, 262) == 16 and balanced(17, 1, 1, 262) == 17
    assert balanced(5, 3, 2, 9) == 6  # 18 tasks
    assert balanced(7, 1, 4, 8) == 8 and balanced(5, 1, 4, 7) == 5  # none up to 7: unchanged
    assert balanced(17, 1, 2, 17) == 17  # never past the units there are
    assert balanced(5, 8, 2, 100) == 5  # 40 tasks already
