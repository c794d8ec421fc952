"""Weighted columns (``kernels/_columns.py``): the few-channel fused grad_input's register tile."""

import numpy as np
import pytest
from numba import njit

import convgrad
from convgrad.kernels import nchw_flat
from convgrad.kernels._columns import COLUMNS_MAX, VECTOR_BYTES, weighted_columns
from convgrad.reference import conv2d_backward_reference


@njit(cache=False)
def _tile(w, w_at, w_stride, count, g, g_at, g_stride, steps, cols, c_at, c_stride):
    weighted_columns(w, w_at, w_stride, count, g, g_at, g_stride, steps, cols, c_at, c_stride)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_count_computes_its_columns_and_writes_nothing_else(dtype):
    rng = np.random.default_rng(0)
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    steps, w_stride, g_stride, c_stride = 5, COLUMNS_MAX + 3, 3 * lanes + 1, 2 * lanes + 3
    w = rng.standard_normal(2 + steps * w_stride).astype(dtype)
    g = rng.standard_normal(7 + steps * g_stride).astype(dtype)
    for count in range(1, COLUMNS_MAX + 1):
        cols = np.full(4 + (COLUMNS_MAX + 1) * c_stride, -7.0, dtype)
        _tile(w, 2, w_stride, count, g, 7, g_stride, steps, cols, 4, c_stride)
        weights = np.stack([w[2 + m * w_stride : 2 + m * w_stride + count] for m in range(steps)])
        grads = np.stack([g[7 + m * g_stride : 7 + m * g_stride + lanes] for m in range(steps)])
        expected = weights.T.astype(np.float64) @ grads.astype(np.float64)
        written = np.zeros(cols.size, bool)
        for j in range(count):
            at = 4 + j * c_stride
            np.testing.assert_allclose(cols[at : at + lanes], expected[j], rtol=1e-5, atol=1e-5)
            written[at : at + lanes] = True
        assert (cols[~written] == -7.0).all(), count


def test_other_counts_write_nothing():
    w, g = np.ones(64, np.float32), np.ones(64, np.float32)
    for count in (0, COLUMNS_MAX + 1):
        cols = np.full(64, -7.0, np.float32)
        _tile(w, 0, 1, count, g, 0, 1, 2, cols, 0, 1)
        assert (cols == -7.0).all()


# (C_in/groups, kernel, dilation, groups): one pass of columns, two passes, the
# most columns that take them, and one more (the axpys)
CASES = [(1, 3, 1, 1), (3, 3, 1, 1), (1, 5, 2, 1), (2, 5, 1, 1), (3, 3, 1, 2), (6, 3, 1, 1)]


@pytest.mark.parametrize("cin_g, k, dilation, groups", CASES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_api_columns_over_pieces_and_tails(cin_g, k, dilation, groups, layout, dtype):
    """Images whose planes are several COLUMNS_PIECE pixels long and no whole number of vectors
    (23 x 23 outputs: 529 pixels), in both layouts, through conv2d_backward."""
    columns = cin_g * k * k
    takes_columns = nchw_flat.fused_columns_shape(cin_g, k, k, np.dtype(dtype).itemsize)[0] > 0
    assert takes_columns == (columns <= nchw_flat.COLUMNS_PASSES * COLUMNS_MAX)
    rng = np.random.default_rng(columns)
    pad = dilation * (k - 1) // 2
    x = rng.standard_normal((3, groups * cin_g, 23, 23)).astype(dtype)
    w = rng.standard_normal((5 * groups, cin_g, k, k)).astype(dtype)
    g = rng.standard_normal((3, 5 * groups, 23, 23)).astype(dtype)
    options = {"padding": pad, "dilation": dilation, "groups": groups}
    expected = conv2d_backward_reference(g, x, w, **options)
    if layout == "NHWC":
        gi, gw, gb = convgrad.conv2d_backward(
            g.transpose(0, 2, 3, 1).copy(),
            x.transpose(0, 2, 3, 1).copy(),
            w.transpose(2, 3, 1, 0).copy(),
            layout="NHWC",
            **options,
        )
        gi, gw = gi.transpose(0, 3, 1, 2), gw.transpose(3, 2, 0, 1)
    else:
        gi, gw, gb = convgrad.conv2d_backward(g, x, w, **options)
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    for got, want in zip((gi, gw, gb), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


# (C_in, kernel, stride, groups): blocks of four input channels (36 columns
# for 3 x 3), a block of three left over, 5 x 5 on two channels per group (50)
# and 7 x 7 (the axpys)
SINGLE_CASES = [(8, 3, 1, 1), (7, 3, 2, 1), (4, 5, 1, 2), (4, 7, 2, 1)]


@pytest.mark.parametrize("c_in, k, stride, groups", SINGLE_CASES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_api_grad_input_by_columns(c_in, k, stride, groups, layout, dtype):
    """The single-gradient flat grad_input, whose blocks of input channels take weighted
    columns: planes several pieces long and no whole number of vectors, strides 1 and 2."""
    rng = np.random.default_rng(c_in * k + stride)
    pad = (k - 1) // 2
    x_shape = (2, c_in, 41, 37)
    w = rng.standard_normal((12, c_in // groups, k, k)).astype(dtype)
    out = [(size + 2 * pad - k) // stride + 1 for size in x_shape[2:]]
    g = rng.standard_normal((2, 12, *out)).astype(dtype)
    options = {"stride": stride, "padding": pad, "groups": groups}
    expected = conv2d_backward_reference(g, np.zeros(x_shape, dtype), w, **options)[0]
    if layout == "NHWC":
        got = convgrad.conv2d_grad_input(
            g.transpose(0, 2, 3, 1).copy(),
            w.transpose(2, 3, 1, 0).copy(),
            (x_shape[0], *x_shape[2:], x_shape[1]),
            layout="NHWC",
            **options,
        ).transpose(0, 3, 1, 2)
    else:
        got = convgrad.conv2d_grad_input(g, w, x_shape, **options)
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * np.abs(expected).max())
