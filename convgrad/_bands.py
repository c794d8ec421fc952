"""Bands of output rows: single gradients of images too big for the memory budget.

The flat kernels pad whole images into planes, at least one image at a time.
When one image's planes alone pass the working-memory budget (few big images),
the gradients are computed a band of output rows at a time instead. A band of
output rows [i0, i1) reads input rows [i0*sh - top, (i1-1)*sh - top + (KH-1)*dh]
(some of them padding): it is a convolution problem of its own, with its own
height and top/bottom padding, and the flat kernels run on it unchanged.
grad_weight is the sum of the bands' (each adds into the result); grad_input
is the bands' results added into their input rows, band after band (bands
overlap by the kernel's reach). The bands depend only on the problem.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from ._arrays import allocate
from ._dispatch import flat_choice
from ._layouts import Layout
from ._problem import Problem
from ._threading import run_kernel
from .kernels.nchw_flat import band_rows


class Band(NamedTuple):
    """One band: its problem, and the rows of the full problem's arrays it covers."""

    problem: Problem
    out_rows: slice  # rows of grad_output
    in_rows: slice  # rows of input / grad_input


def bands(problem: Problem, count: int) -> Iterator[Band]:
    """``count`` bands of (within one) equally many output rows, those that read an input row."""
    (stride_h, _), (top, _, left, right), (dilation_h, _), _ = problem.geometry
    reach = (problem.kh - 1) * dilation_h + 1
    for k in range(count):
        rows = band_rows(k, count, problem.out_h, stride_h, top, reach, problem.height)
        i0, i1, lo, hi, top_b, bottom_b = (int(v) for v in rows)
        if hi <= lo:
            continue  # the band reads only padding: it adds nothing to either gradient
        geometry = problem.geometry._replace(padding=(top_b, bottom_b, left, right))
        band = problem._replace(height=hi - lo, out_h=i1 - i0, batched=True, geometry=geometry)
        yield Band(band, slice(i0, i1), slice(lo, hi))


def _rows(array: np.ndarray, layout: Layout, rows: slice) -> np.ndarray:
    """The image rows ``rows`` of a batched image array (a view)."""
    index = [slice(None)] * 4
    index[layout.image_axes[2]] = rows
    return array[tuple(index)]


def grad_input_by_bands(
    problem: Problem, count: int, g: np.ndarray, w: np.ndarray, gi: np.ndarray
) -> None:
    """gi += the input gradient, in ``count`` bands (batched arrays, user layout, finite)."""
    for band in bands(problem, count):
        choice = flat_choice("grad_input", band.problem)
        g_band = np.ascontiguousarray(_rows(g, problem.layout, band.out_rows))
        gi_band = allocate(band.problem.input_shape, problem.dtype)  # batched, like the band
        run_kernel(choice.kernel, g_band, w, gi_band, *choice.args)
        _rows(gi, problem.layout, band.in_rows)[...] += gi_band


def grad_weight_by_bands(
    problem: Problem, count: int, x: np.ndarray, g: np.ndarray, gw: np.ndarray
) -> None:
    """gw += the weight gradient, in ``count`` bands (batched arrays, user layout, finite)."""
    for band in bands(problem, count):
        choice = flat_choice("grad_weight", band.problem)
        x_band = np.ascontiguousarray(_rows(x, problem.layout, band.in_rows))
        g_band = np.ascontiguousarray(_rows(g, problem.layout, band.out_rows))
        run_kernel(choice.kernel, x_band, g_band, gw, *choice.args)
