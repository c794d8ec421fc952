"""The 1x1 products on numba's threads: BLAS held at one thread, gemm called by address."""

import json
import threading

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from subprocess_helpers import run_python
from test_gemm import make

import convgrad
from convgrad import _blas, _dispatch
from convgrad._layouts import NCHW, NHWC
from convgrad.kernels import gemm, gemm_blas
from convgrad.reference import conv2d_backward_reference

needs_openblas = pytest.mark.skipif(
    _blas.gemm_for(np.float32) is None, reason="no OpenBLAS with cblas gemm and thread controls"
)


def expected_and_batched(layout, dtype, dims, seed):
    x, w, g, opts = make(layout, dtype, dims, True, seed)
    expected = conv2d_backward_reference(*(a.astype(np.float64) for a in (g, x, w)), **opts)
    return x, w, g, opts["groups"], expected


def blas_products(layout, x, w, g, groups, rows_per_tile, parts):
    """(grad_input, grad_weight - 1) by the numba kernels, cut into ``parts`` per group."""
    name = layout.name.lower()
    gi, gw = np.full_like(x, np.nan), np.ones_like(w)
    with _blas.one_blas_thread():
        getattr(gemm_blas, f"grad_input_{name}")(
            g, w, gi, groups, rows_per_tile, parts, *_blas.gemm_for(x.dtype)
        )
        getattr(gemm_blas, f"grad_weight_{name}")(
            x, g, gw, groups, rows_per_tile, parts, *_blas.gemm_for(x.dtype)
        )
    return gi, gw - 1


@needs_openblas
@settings(deadline=None, max_examples=60)
@given(
    layout=st.sampled_from([NCHW, NHWC]),
    dtype=st.sampled_from([np.float32, np.float64]),
    groups=st.integers(1, 3),
    channels=st.tuples(st.integers(4, 12), st.integers(4, 12)),
    image=st.tuples(st.integers(1, 4), st.integers(1, 9), st.integers(1, 9)),
    rows_per_tile=st.integers(1, 64),
    seed=st.integers(0, 2**32 - 1),
)
def test_blas_kernels_match_reference_for_any_cut_and_repeat_their_bits(
    layout, dtype, groups, channels, image, rows_per_tile, seed
):
    """Cut into 1 to 5 tasks per group (and several float64 tiles where rows_per_tile is
    small), the products agree with the reference, and one cut gives the same bits again.

    Different cuts may differ in the last bits: OpenBLAS sums small blocks with other
    kernels than large ones (seen here: NCHW grad_weight cut in 1 and 2 output-channel
    spans). Hence the README's "the same bits for one thread count" for the 1x1 path."""
    (cin_g, cout_g), (n, height, width) = channels, image
    dims = (n, groups * cin_g, groups * cout_g, height, width, groups)
    x, w, g, groups, expected = expected_and_batched(layout, dtype, dims, seed)
    rtol = 1e-4 if dtype == np.float32 else 1e-12
    for parts in range(1, 6):
        gi, gw = blas_products(layout, x, w, g, groups, rows_per_tile, parts)
        np.testing.assert_allclose(gi, expected[0], rtol=rtol, atol=rtol)
        np.testing.assert_allclose(gw, expected[1], rtol=rtol, atol=rtol)
        again = blas_products(layout, x, w, g, groups, rows_per_tile, parts)
        assert (gi.tobytes(), gw.tobytes()) == tuple(a.tobytes() for a in again), parts


@needs_openblas
@pytest.mark.parametrize("dims", [(3, 8, 12, 5, 6, 2), (3, 12, 8, 5, 6, 2)], ids=["outs", "ins"])
@pytest.mark.parametrize("layout", [NCHW, NHWC])
def test_blas_kernels_put_nan_and_inf_where_the_reference_has_them(layout, dims):
    """A NaN in grad_output and an Inf in the input, through 3 tasks per group and
    several float64 tiles (grad_weight cut along its output channels, or its input
    channels where a group has more): the same NaN/Inf entries as the reference, the
    rest close."""
    x, w, g, groups, _ = expected_and_batched(layout, np.float32, dims, 7)
    g[(1, 4, 2, 3) if layout is NCHW else (1, 2, 3, 4)] = np.nan
    x[(2, 1, 0, 5) if layout is NCHW else (2, 0, 5, 1)] = np.inf
    expected = conv2d_backward_reference(
        *(a.astype(np.float64) for a in (g, x, w)), groups=groups, layout=layout.name
    )
    got = blas_products(layout, x, w, g, groups, rows_per_tile=7, parts=3)
    for result, want in zip(got, expected[:2], strict=True):
        assert np.isnan(want).any()
        np.testing.assert_array_equal(np.isnan(result), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(result), np.isinf(want))
        finite = np.isfinite(want)
        np.testing.assert_allclose(result[finite], want[finite], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", [NCHW, NHWC])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_path_matches_reference(layout, dtype):
    """The np.matmul functions (used without OpenBLAS's controls), several tiles and groups."""
    x, w, g, groups, expected = expected_and_batched(layout, dtype, (3, 8, 12, 5, 7, 2), 3)
    name = layout.name.lower()
    gi, gw = np.full_like(x, np.nan), np.ones_like(w)
    getattr(gemm, f"_grad_input_{name}_matmul")(g, w, gi, groups, 16)
    getattr(gemm, f"_grad_weight_{name}_matmul")(x, g, gw, groups, 16)
    rtol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(gi, expected[0], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(gw - 1, expected[1], rtol=rtol, atol=rtol)


@pytest.mark.parametrize("layout", [NCHW, NHWC])
def test_arrays_that_are_not_c_contiguous_go_through_matmul(layout):
    x, w, g, groups, expected = expected_and_batched(layout, np.float32, (2, 8, 8, 4, 6, 1), 4)
    wide = np.full((*x.shape[:-1], 2 * x.shape[-1]), np.nan, np.float32)
    gi = wide[..., ::2]  # every other element: not C-contiguous
    getattr(gemm, f"grad_input_gemm_{layout.name.lower()}")(g, w, gi, groups, 16)
    np.testing.assert_allclose(gi, expected[0], rtol=1e-4, atol=1e-4)
    assert np.isnan(wide[..., 1::2]).all()  # nothing written beside it


@needs_openblas
def test_one_blas_thread_holds_one_and_gives_back_the_count_after_the_last_holder():
    before = _blas._openblas.get_threads()
    errors = []

    def hold(times):
        try:
            for _ in range(times):
                with _blas.one_blas_thread():
                    if _blas._openblas.get_threads() != 1:
                        errors.append("not one thread inside")
        except Exception as error:  # pragma: no cover - reported below
            errors.append(repr(error))

    with _blas.one_blas_thread():
        assert _blas._openblas.get_threads() == 1
        with _blas.one_blas_thread():
            assert _blas._openblas.get_threads() == 1
        assert _blas._openblas.get_threads() == 1  # the outer holder is still inside
    assert _blas._openblas.get_threads() == before
    workers = [threading.Thread(target=hold, args=(300,)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert _blas._openblas.get_threads() == before


@pytest.fixture
def through_blas(monkeypatch):
    """The 1x1 products through BLAS, whatever this machine's BLAS kernels (``GEMM_BY_TILES``)."""
    monkeypatch.setattr(_dispatch, "GEMM_BY_TILES", False)
    _dispatch.select_kernel.cache_clear()
    yield
    monkeypatch.undo()
    _dispatch.select_kernel.cache_clear()


@needs_openblas
@pytest.mark.parametrize("layout", [NCHW, NHWC])
def test_backward_runs_the_products_at_one_blas_thread_on_numbas_threads(
    layout, monkeypatch, through_blas
):
    """The API's 1x1 products go to the numba kernels, with OpenBLAS at one thread inside and
    its count unchanged after; the cut follows numba's pool, not the threads in use."""
    seen = []
    name = layout.name.lower()
    for what in ("input", "weight"):
        kernel = getattr(gemm_blas, f"grad_{what}_{name}")

        def recording(*args, kernel=kernel, what=what):
            seen.append((what, _blas._openblas.get_threads(), numba.get_num_threads(), args))
            return kernel(*args)

        monkeypatch.setattr(gemm_blas, f"grad_{what}_{name}", recording)
    monkeypatch.setattr(gemm, "TASK_MULTIPLY_ADDS", 1)  # cut even this small problem
    x, w, g, opts = make(layout, np.float32, (2, 16, 16, 4, 4, 1), True, 0)
    before = _blas._openblas.get_threads()
    threads = numba.get_num_threads()
    try:
        for count in sorted({1, threads}):
            numba.set_num_threads(count)
            convgrad.conv2d_backward(g, x, w, **opts)
    finally:
        numba.set_num_threads(threads)
    assert _blas._openblas.get_threads() == before
    assert [(what, blas) for what, blas, _, _ in seen] == [("input", 1), ("weight", 1)] * len(
        {1, threads}
    )
    # parts (the kernels' 6th argument) is numba's pool size at any thread count
    for _, _, _, args in seen:
        assert args[5] == numba.config.NUMBA_NUM_THREADS


@needs_openblas
@pytest.mark.parametrize("layout", [NCHW, NHWC])
def test_products_cut_into_tasks_give_the_same_bits_at_any_thread_count(layout, through_blas):
    # 4 x 128 -> 128 @ 16 x 16: 33.5e6 multiply-adds, a task per thread of the pool
    x, w, g, opts = make(layout, np.float32, (4, 128, 128, 16, 16, 1), True, 0)
    threads = numba.get_num_threads()
    results = {}
    try:
        for count in sorted({1, 2, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
            results[count] = convgrad.conv2d_backward(g, x, w, **opts)
    finally:
        numba.set_num_threads(threads)
    first = results[1]
    for count, gradients in results.items():
        for got, want in zip(gradients, first, strict=True):
            assert got.tobytes() == want.tobytes(), count


def test_library_threading_when_asked():
    done = run_python(
        """
        import json, numpy as np, convgrad
        from convgrad import _blas, _dispatch
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 16, 5, 5)).astype(np.float32)
        w = rng.standard_normal((8, 16, 1, 1)).astype(np.float32)
        g = rng.standard_normal((2, 8, 5, 5)).astype(np.float32)
        gi, gw, gb = convgrad.conv2d_backward(g, x, w)
        want = np.einsum("nohw,oi->nihw", g, w[:, :, 0, 0])
        print(json.dumps([_blas.gemm_for(np.float32) is None, _blas.blas_info(),
                          float(abs(gi - want).max())]))
        """,
        env={"CONVGRAD_BLAS_THREADS": "library"},
    )
    assert done.returncode == 0, done.stderr
    fallback, info, error = json.loads(done.stdout)
    assert fallback and not info["numba_threads"] and "CONVGRAD_BLAS_THREADS" in info["why"]
    assert error < 1e-4


def test_the_kernels_openblas_runs_are_named_and_a_pinned_core_type_says_so():
    # OPENBLAS_CORETYPE is read when OpenBLAS loads: each case in its own process
    script = """
        import json, numpy as np
        from convgrad import _blas, _dispatch
        print(json.dumps([_blas.blas_info(), _blas.blas_kernels()]))
        """
    unset = run_python(script, env={"OPENBLAS_CORETYPE": None})
    pinned = run_python(script, env={"OPENBLAS_CORETYPE": "Sandybridge"})
    assert unset.returncode == 0 and pinned.returncode == 0, unset.stderr + pinned.stderr
    (info, kernels), (pinned_info, pinned_kernels) = map(json.loads, (unset.stdout, pinned.stdout))
    if not info["numba_threads"]:
        pytest.skip("no OpenBLAS with cblas gemm loaded: " + info["why"])
    assert info["core"] and kernels == f"OpenBLAS {info['core']}"
    # the core asked for is the core reported: the name comes from the library
    assert pinned_info["core"].lower() == "sandybridge"
    assert pinned_kernels == f"OpenBLAS {pinned_info['core']}, OPENBLAS_CORETYPE=Sandybridge"
