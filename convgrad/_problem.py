"""One convolution problem: every size, validated once, in logical (N, C, H, W) terms."""

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from ._layouts import Layout
from ._options import Geometry, output_size, resolve_geometry


class Problem(NamedTuple):
    """Sizes and options of one 2-D convolution, independent of memory layout."""

    layout: Layout
    dtype: np.dtype
    batched: bool
    n: int
    c_in: int
    height: int
    width: int
    c_out: int
    kh: int
    kw: int
    out_h: int
    out_w: int
    geometry: Geometry

    @property
    def kernel_args(self) -> tuple[int, ...]:
        """Geometry as the kernels take it: (sh, sw, pad_top, pad_left, dh, dw, groups)."""
        (sh, sw), (top, _, left, _), (dh, dw), groups = self.geometry
        return sh, sw, top, left, dh, dw, groups

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of input and grad_input, as the user sees them."""
        return _user_shapes(self)[0]

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of the forward output and grad_output, as the user sees them."""
        return _user_shapes(self)[1]

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of weight and grad_weight."""
        return _user_shapes(self)[2]

    @property
    def terms(self) -> int:
        """Multiply-adds in one pass of the forward convolution."""
        return (
            self.n
            * self.c_out
            * self.out_h
            * self.out_w
            * (self.c_in // self.geometry.groups)
            * self.kh
            * self.kw
        )


# Every call asks for a problem's shapes a few times: worked out once.
@lru_cache(maxsize=512)
def _user_shapes(problem: Problem) -> tuple[tuple[int, ...], ...]:
    """(input, output, weight) shapes of ``problem`` as the user sees them (unbatched or not)."""
    layout, skip = problem.layout, 0 if problem.batched else 1
    image = layout.image_shape(problem.n, problem.c_in, problem.height, problem.width)
    output = layout.image_shape(problem.n, problem.c_out, problem.out_h, problem.out_w)
    cin_g = problem.c_in // problem.geometry.groups
    weight = layout.weight_shape(problem.c_out, cin_g, problem.kh, problem.kw)
    return image[skip:], output[skip:], weight


def describe(
    layout: Layout,
    dtype: np.dtype,
    input_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    *,
    stride: object,
    padding: object,
    dilation: object,
    groups: object,
    input_name: str = "input",
    weight_name: str = "weight",
) -> Problem:
    """Validate sizes and options and return the Problem they define.

    ``input_shape`` may be batched (4-D) or unbatched (3-D); ``weight_shape`` is 4-D;
    both tuples of ints (an array's ``shape``, or ``check_shape_tuple``'s result).
    A training loop asks about the same few problems over and over: problems
    whose options are plain ints and strings are remembered (other types,
    where ``True == 1`` or ``1.0 == 1`` could let a remembered answer skip a
    check that must fail, are validated every time).
    """
    key = (layout, dtype, input_shape, weight_shape, stride, padding, dilation, groups)
    key = (*key, input_name, weight_name)
    plain = plain_value
    if not (plain(stride) and plain(padding) and plain(dilation) and plain(groups)):
        return _describe(*key)
    problem = _REMEMBERED.get(key)
    if problem is None:
        problem = _describe(*key)
        if len(_REMEMBERED) >= MAX_REMEMBERED:
            _REMEMBERED.clear()
        _REMEMBERED[key] = problem
    return problem


# Problems remembered by ``describe`` (forgotten all at once when full).
MAX_REMEMBERED = 256
_REMEMBERED: dict[tuple[object, ...], "Problem"] = {}


def plain_value(value: object) -> bool:
    """An int, a str, or a tuple of ints or of tuples of ints: types whose equality is exact.

    (Tuples of pairs: padding as ((top, bottom), (left, right)), as ``Conv2d`` passes it.)
    """
    kind = type(value)
    if kind is int or kind is str:
        return True
    return kind is tuple and all(
        type(v) is int or (type(v) is tuple and all(type(u) is int for u in v)) for v in value
    )


def _describe(
    layout: Layout,
    dtype: np.dtype,
    input_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    stride: object,
    padding: object,
    dilation: object,
    groups: object,
    input_name: str,
    weight_name: str,
) -> Problem:
    """``describe`` without the memory."""
    batched = len(input_shape) == 4
    n, c_in, height, width = layout.image_dims(input_shape if batched else (1, *input_shape))
    c_out, cin_g, kh, kw = layout.weight_dims(weight_shape)
    if kh < 1 or kw < 1:
        raise ValueError(
            f"{weight_name} must have a kernel of at least 1x1; got KH={kh}, "
            f"KW={kw} from shape {tuple(weight_shape)} ({layout.weight_order})"
        )
    geometry = resolve_geometry(stride, padding, dilation, groups, (kh, kw))
    g = geometry.groups
    if c_in % g or c_out % g:
        raise ValueError(
            f"groups={g} must divide both the input channels C_in={c_in} and "
            f"the output channels C_out={c_out}"
        )
    if cin_g * g != c_in:
        raise ValueError(
            f"{weight_name} has C_in/groups={cin_g}, so {input_name} must have "
            f"{cin_g * g} channels with groups={g}; got C_in={c_in}"
        )
    top, bottom, left, right = geometry.padding
    out_h = output_size(height, kh, geometry.stride[0], geometry.dilation[0], top + bottom)
    out_w = output_size(width, kw, geometry.stride[1], geometry.dilation[1], left + right)
    if out_h < 1 or out_w < 1:
        dilated = (geometry.dilation[0] * (kh - 1) + 1, geometry.dilation[1] * (kw - 1) + 1)
        padded = (height + top + bottom, width + left + right)
        raise ValueError(
            f"kernel is larger than the padded {input_name}: dilated kernel size "
            f"{dilated[0]}x{dilated[1]}, padded {input_name} size "
            f"{padded[0]}x{padded[1]} ({height}x{width} with padding "
            f"(top, bottom, left, right) = {geometry.padding})"
        )
    return Problem(
        layout, dtype, batched, n, c_in, height, width, c_out, kh, kw, out_h, out_w, geometry
    )
