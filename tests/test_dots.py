"""``kernels/_dots.py``: sixteen dot products and four sums in registers, one transposing tree."""

import numpy as np
import pytest
from numba import njit

from convgrad.kernels._columns import VECTOR_BYTES
from convgrad.kernels._dots import dots4x4


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
