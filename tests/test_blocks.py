"""``kernels/_blocks.py``: the flat kernels' channel-block steps (dot products, axpys) in IR."""

import numpy as np
import pytest
from numba import njit

from convgrad.kernels._blocks import axpys4x4, dots4x4
from convgrad.kernels._columns import VECTOR_BYTES


@njit(cache=False)
def _dots(x, xs, g, gs, count, windows=4):
    return dots4x4(x, xs[0], xs[1], xs[2], xs[3], g, gs[0], gs[1], gs[2], gs[3], count, windows)


@njit(cache=False)
def _dots_without_sums(x, xs, g, gs, count, windows):
    sums = dots4x4(x, xs[0], xs[1], xs[2], xs[3], g, gs[0], gs[1], gs[2], gs[3], count, windows)
    return sums[:16]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_count_gives_each_dot_product_and_sum(dtype):
    """Counts around whole vectors (the masked tail), windows at odd and repeated offsets."""
    rng = np.random.default_rng(1)
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    x = rng.standard_normal(600).astype(dtype)
    g = rng.standard_normal(500).astype(dtype)
    xs = np.array([3, 170, 170, 401])  # a short block repeats a window
    gs = np.array([0, 111, 237, 359])
    for count in [0, 1, lanes - 1, lanes, lanes + 1, 2 * lanes + 3, 5 * lanes, 99]:
        for n in range(1, 5):
            got = np.array(_dots(x, xs, g, gs, count, n))
            windows = np.stack([x[at : at + count] for at in xs]).astype(np.float64)
            windows[n:] = 0  # windows past n are not read: their products are 0
            planes = np.stack([g[at : at + count] for at in gs]).astype(np.float64)
            want = np.concatenate([(windows @ planes.T).ravel(), planes.sum(axis=1)])
            tol = 1e-5 if dtype == np.float32 else 1e-12
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * 10, err_msg=f"{count} {n}")
            alone = _dots_without_sums(x, xs, g, gs, count, n)
            np.testing.assert_array_equal(np.array(alone), got[:16])


def test_windows_past_the_count_are_not_read():
    """A window past ``windows`` may start anywhere (here past the array's end and NaN)."""
    x = np.ones(40, np.float32)
    x[20:] = np.nan
    g = np.ones(40, np.float32)
    got = _dots(x, np.array([0, 20, 10**9, 10**9]), g, np.zeros(4, np.int64), 16, 1)
    assert got == (16.0,) * 4 + (0.0,) * 12 + (16.0,) * 4


def test_reads_nothing_past_the_count():
    """Values past each window's count (here NaN) never reach a sum: the tail's loads are masked."""
    x = np.full(64, np.nan, np.float32)
    g = np.full(64, np.nan, np.float32)
    x[:5], g[32:37] = 2.0, 3.0
    got = _dots(x, np.zeros(4, np.int64), g, np.full(4, 32), 5)
    assert got == (30.0,) * 16 + (15.0,) * 4


@njit(cache=False)
def _axpys(d, ds, w, w_at, w_source_step, w_target_step, s, ss, count, targets, sources):
    axpys4x4(
        d, ds[0], ds[1], ds[2], ds[3], w, w_at, w_source_step, w_target_step,
        s, ss[0], ss[1], ss[2], ss[3], count, targets, sources,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_axpys_add_each_weighted_source_to_each_target_and_nothing_else(dtype):
    """Every (targets, sources) copy, counts around whole vectors, weights from a strided view."""
    rng = np.random.default_rng(2)
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    weight = rng.standard_normal((6, 5, 3, 3)).astype(dtype).transpose(1, 0, 2, 3)
    steps = [stride // weight.itemsize for stride in weight.strides]
    s = rng.standard_normal(400).astype(dtype)
    ds, ss = np.array([1, 90, 180, 270]), np.array([3, 100, 205, 300])
    for count in [0, 1, lanes - 1, lanes, lanes + 3, 4 * lanes, 77]:
        for targets in range(1, 5):
            for sources in range(1, 5):
                d = rng.standard_normal(400).astype(dtype)
                want = d.astype(np.float64)
                w_at = steps[0] + 2 * steps[2] + steps[3]  # weight[1 + i, j, 2, 1]
                _axpys(d, ds, weight, w_at, steps[1], steps[0], s, ss, count, targets, sources)
                for i in range(targets):
                    for j in range(sources):
                        window = s[ss[j] : ss[j] + count].astype(np.float64)
                        want[ds[i] : ds[i] + count] += weight[1 + i, j, 2, 1] * window
                tol = 1e-5 if dtype == np.float32 else 1e-12
                np.testing.assert_allclose(d, want, rtol=tol, atol=tol)


def test_axpys_touch_nothing_past_the_count_or_the_targets():
    """The tail's loads and stores are masked; targets and sources past their counts unread."""
    d = np.full(64, 1.0, np.float32)
    s = np.full(64, np.nan, np.float32)
    s[:5] = 2.0
    w = np.full(16, 3.0, np.float32)
    far = np.array([0, 10**9, 10**9, 10**9])
    _axpys(d, far, w, 0, 1, 4, s, far, 5, 1, 1)
    np.testing.assert_array_equal(d, [7.0] * 5 + [1.0] * 59)
