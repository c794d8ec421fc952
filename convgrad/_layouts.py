"""The two supported memory layouts and where each puts N, C, H, W."""

from typing import NamedTuple

import numpy as np

from ._arrays import allocate
from ._threading import run_kernel
from .kernels import relayout

# Image arrays up to this many elements are relayouted by NumPy on the calling
# thread: for them a parallel copy costs more in starting threads than copying.
SMALL_COPY_ELEMENTS = 2**14


class Layout(NamedTuple):
    """Where a layout stores each logical axis.

    ``image_axes`` gives the positions of (N, C, H, W) in a batched image array
    (input, grad_output); ``weight_axes`` the positions of
    (C_out, C_in/groups, KH, KW) in the weight array.
    """

    name: str
    image_axes: tuple[int, int, int, int]
    weight_axes: tuple[int, int, int, int]
    image_order: str
    weight_order: str

    def image_dims(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(N, C, H, W) of a batched image shape."""
        n, c, h, w = self.image_axes
        return shape[n], shape[c], shape[h], shape[w]

    def image_shape(self, n: int, c: int, h: int, w: int) -> tuple[int, ...]:
        """Batched image shape in this layout."""
        return _place(self.image_axes, (n, c, h, w))

    def weight_dims(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(C_out, C_in/groups, KH, KW) of a weight shape."""
        o, i, kh, kw = self.weight_axes
        return shape[o], shape[i], shape[kh], shape[kw]

    def weight_shape(self, c_out: int, cin_g: int, kh: int, kw: int) -> tuple[int, ...]:
        """Weight shape in this layout."""
        return _place(self.weight_axes, (c_out, cin_g, kh, kw))


def relayout_image(array: np.ndarray, source: Layout, target: Layout) -> np.ndarray:
    """A C-contiguous batched image array in ``source`` layout, as one in ``target``.

    Returns ``array`` itself when the layouts agree, else a copy: parallel, or
    by NumPy for arrays so small that starting the thread pool costs more.
    """
    if source is target:
        return array
    if array.size <= SMALL_COPY_ELEMENTS:
        axes = tuple(source.image_axes[logical] for logical in _inverse(target.image_axes))
        return np.ascontiguousarray(array.transpose(axes))
    copy = relayout.nchw_to_nhwc if target.name == "NHWC" else relayout.nhwc_to_nchw
    n, c, h, w = source.image_dims(array.shape)
    result = allocate(target.image_shape(n, c, h, w), array.dtype, zero=False)
    if result.size:
        run_kernel(copy, array, result)
    return result


def convert_weight(array: np.ndarray, source: Layout, target: Layout) -> np.ndarray:
    """A view of a weight array in ``source`` layout, axes ordered as ``target``."""
    if source is target:
        return array
    oihw = array.transpose(source.weight_axes)
    return oihw.transpose(_inverse(target.weight_axes))


def _inverse(axes: tuple[int, ...]) -> tuple[int, ...]:
    inverse = [0] * len(axes)
    for logical, position in enumerate(axes):
        inverse[position] = logical
    return tuple(inverse)


def _place(axes: tuple[int, ...], values: tuple[int, ...]) -> tuple[int, ...]:
    shape = [0] * len(axes)
    for axis, value in zip(axes, values, strict=True):
        shape[axis] = value
    return tuple(shape)


NCHW = Layout("NCHW", (0, 1, 2, 3), (0, 1, 2, 3), "(N, C, H, W)", "(C_out, C_in/groups, KH, KW)")
NHWC = Layout("NHWC", (0, 3, 1, 2), (3, 2, 0, 1), "(N, H, W, C)", "(KH, KW, C_in/groups, C_out)")
LAYOUTS = {"NCHW": NCHW, "NHWC": NHWC}


def get_layout(layout: object) -> Layout:
    """The Layout named ``layout``, or a ValueError listing the valid names."""
    found = LAYOUTS.get(layout) if isinstance(layout, str) else None
    if found is None:
        raise ValueError(f"layout must be 'NCHW' or 'NHWC'; got {layout!r}")
    return found
