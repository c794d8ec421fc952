"""``kernels/_rows.py``: shifted plane rows copied and added back with masked vectors."""

import numpy as np
import pytest
from numba import njit

from convgrad.kernels._rows import add_column_taps, add_shifted_rows, shifted_rows


@njit(cache=False)
def _shifted(dst, dst_at, rows, pitch, src, src_at, src_step, top, height, width, move):
    shifted_rows(dst, dst_at, rows, pitch, src, src_at, src_step, top, height, width, move)


@njit(cache=False)
def _add(dst, dst_at, dst_step, rows, width, src, src_at, pitch, plane_step, planes, pl, dw):
    add_shifted_rows(
        dst, dst_at, dst_step, rows, width, src, src_at, pitch, plane_step, planes, pl, dw
    )


@njit(cache=False)
def _add_taps(dst, dst_at, dst_step, rows, width, src, src_at, column_step, out_rows, pitch, top,
              kh, kw, dh, pl, dw):  # fmt: skip
    add_column_taps(
        dst, dst_at, dst_step, rows, width, src, src_at, column_step, out_rows, pitch, top, kh,
        kw, dh, pl, dw,
    )  # fmt: skip


# (rows, pitch, top, height, width, move): inside, padded on every side, moved past the
# image (all zeros), rows longer than a vector, a plane wider than its image
PLANES = [
    (12, 8, 0, 12, 12, 0),
    (12, 8, 0, 12, 12, -4),
    (9, 7, 2, 5, 5, 1),
    (6, 20, -3, 9, 19, 2),
    (4, 5, 1, 3, 3, 9),
    (4, 5, 1, 3, 3, -9),
    (3, 37, 0, 3, 40, -2),
]


@pytest.mark.parametrize("rows, pitch, top, height, width, move", PLANES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shifted_rows_copy_the_moved_image_and_zero_the_rest(
    rows, pitch, top, height, width, move, dtype
):
    rng = np.random.default_rng(rows * pitch)
    step = width + 3  # rows apart in a bigger array (a strided view's rows)
    src = np.full(2 + height * step + 8, np.nan, dtype)  # NaN wherever the copy must not read
    image = rng.standard_normal((height, width)).astype(dtype)
    for r in range(height):
        src[2 + r * step : 2 + r * step + width] = image[r]
    dst = np.full(5 + rows * pitch + 5, -7.0, dtype)
    _shifted(dst, 5, rows, pitch, src, 2, step, top, height, width, move)
    want = np.zeros((rows, pitch), dtype)
    for u in range(rows):
        for v in range(pitch):
            if 0 <= u - top < height and 0 <= v - move < width:
                want[u, v] = image[u - top, v - move]
    np.testing.assert_array_equal(dst[5:-5].reshape(rows, pitch), want)
    assert (dst[:5] == -7.0).all() and (dst[-5:] == -7.0).all()


@pytest.mark.parametrize("planes, pl, dw, pitch, width", [(5, 0, 1, 8, 12), (3, 1, 1, 28, 28),
                                                           (3, 2, 2, 30, 30), (7, 3, 1, 17, 17),
                                                           (2, 0, 3, 20, 23)])  # fmt: skip
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_shifted_rows_adds_each_plane_where_its_column_exists(
    planes, pl, dw, pitch, width, dtype
):
    rng = np.random.default_rng(planes * pitch)
    rows, plane_rows = 4, 6
    plane_step = plane_rows * pitch
    src = rng.standard_normal(planes * plane_step + 2 * pitch).astype(dtype)
    dst_step = width + 5  # a strided view's rows
    dst = rng.standard_normal(3 + rows * dst_step).astype(dtype)
    before = dst.copy()
    first = pitch  # the planes' row 1
    _add(dst, 3, dst_step, rows, width, src, first, pitch, plane_step, planes, pl, dw)
    want = before.astype(np.float64)
    for r in range(rows):
        for c in range(width):
            for q in range(planes):
                column = c + pl - q * dw
                if 0 <= column < pitch:
                    want[3 + r * dst_step + c] += src[first + q * plane_step + r * pitch + column]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dst, want, rtol=tol, atol=tol)
    gaps = np.ones(dst.size, bool)
    for r in range(rows):
        gaps[3 + r * dst_step : 3 + r * dst_step + width] = False
    np.testing.assert_array_equal(dst[gaps], before[gaps])  # only the rows' values change


# (kh, kw, dh, dw, pl, top, out_rows, pitch, width): a 3 x 3 and a 5 x 5 kernel unpadded
# and padded, dilated, a row longer than a vector, rows starting past the first output row
TAPS = [
    (3, 3, 1, 1, 0, 0, 26, 26, 28),
    (5, 5, 1, 1, 2, 2, 12, 12, 12),
    (3, 3, 2, 2, 2, 1, 9, 9, 9),
    (3, 2, 1, 3, 0, 0, 5, 37, 40),
    (2, 3, 1, 1, 1, 3, 7, 20, 20),
]


@pytest.mark.parametrize("kh, kw, dh, dw, pl, top, out_rows, pitch, width", TAPS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_column_taps_matches_the_planes_it_replaces(
    kh, kw, dh, dw, pl, top, out_rows, pitch, width, dtype
):
    """The sums of the formula, with the bits of shifted planes added back by add_shifted_rows."""
    rng = np.random.default_rng(kh * pitch + top)
    rows = out_rows + (kh - 1) * dh - top  # every row that some tap reaches
    step = out_rows * pitch + 3  # columns apart, with a gap the masks must never read
    src = np.full(5 + kh * kw * step + 5, np.nan, dtype)
    columns = rng.standard_normal((kh * kw, out_rows, pitch)).astype(dtype)
    for j in range(kh * kw):
        src[5 + j * step : 5 + j * step + out_rows * pitch] = columns[j].ravel()
    dst_step = width + 4  # a strided view's rows
    dst = np.full(2 + rows * dst_step + 2, np.nan, dtype)
    image = rng.standard_normal((rows, width)).astype(dtype)
    for r in range(rows):
        dst[2 + r * dst_step : 2 + r * dst_step + width] = image[r]
    before = dst.copy()
    _add_taps(dst, 2, dst_step, rows, width, src, 5, step, out_rows, pitch, top, kh, kw, dh, pl, dw)
    got = np.stack([dst[2 + r * dst_step : 2 + r * dst_step + width] for r in range(rows)])
    gaps = np.ones(dst.size, bool)
    for r in range(rows):
        gaps[2 + r * dst_step : 2 + r * dst_step + width] = False
    np.testing.assert_array_equal(dst[gaps], before[gaps])  # only the rows' values change

    want = image.astype(np.float64)
    for r in range(rows):
        for c in range(width):
            for p in range(kh):
                for q in range(kw):
                    o, v = r + top - p * dh, c + pl - q * dw
                    if 0 <= o < out_rows and 0 <= v < pitch:
                        want[r, c] += columns[p * kw + q, o, v]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)

    # the planes route: the taps added into zeroed planes in tap order, planes added back
    plane_rows = out_rows + (kh - 1) * dh
    planes = np.zeros((kw, plane_rows, pitch), dtype)
    for j in range(kh * kw):
        p, q = divmod(j, kw)
        planes[q, p * dh : p * dh + out_rows] += columns[j]
    routed = image.copy()
    _add(routed, 0, width, rows, width, planes.ravel(), top * pitch, pitch, plane_rows * pitch,
         kw, pl, dw)  # fmt: skip
    np.testing.assert_array_equal(got, routed)
