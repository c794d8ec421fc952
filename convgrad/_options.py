"""Normalise stride, padding, dilation and groups, and derive output sizes."""

from typing import NamedTuple

import numpy as np


class Geometry(NamedTuple):
    """Convolution options in normal form."""

    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, bottom, left, right
    dilation: tuple[int, int]
    groups: int


# Upper bound for stride, dilation, padding and groups: keeps every index the
# kernels compute far inside int64, and no real convolution comes near it.
MAX_OPTION = 2**31 - 1


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _pair(name: str, value: object) -> tuple[int, int]:
    """An int or an (h, w) pair of ints, each >= 1, as a pair."""
    if _is_int(value):
        pair = (int(value), int(value))  # type: ignore[call-overload]
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_is_int, value)):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints (h, w); got {value!r}")
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"{name} must be >= 1; got {value!r}")
    if max(pair) > MAX_OPTION:
        raise ValueError(f"{name} must be at most {MAX_OPTION}; got {value!r}")
    return pair


def _padding(
    value: object, stride: tuple[int, int], dilation: tuple[int, int], kernel: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Padding as (top, bottom, left, right)."""
    if isinstance(value, str):
        if value == "valid":
            return (0, 0, 0, 0)
        if value == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1; got stride={stride}")
            # Total padding d*(k-1); the odd extra row/column goes bottom/right, as in PyTorch.
            total_h = dilation[0] * (kernel[0] - 1)
            total_w = dilation[1] * (kernel[1] - 1)
            return (total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2)
        raise ValueError(
            f"padding must be an int, a pair, a pair of pairs, 'valid' or 'same'; got {value!r}"
        )
    if _is_int(value):
        pads = (int(value),) * 4  # type: ignore[call-overload]
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_is_int, value)):
        pads = (int(value[0]), int(value[0]), int(value[1]), int(value[1]))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(
            isinstance(v, (tuple, list)) and len(v) == 2 and all(map(_is_int, v)) for v in value
        )
    ):
        pads = (int(value[0][0]), int(value[0][1]), int(value[1][0]), int(value[1][1]))
    else:
        raise TypeError(
            "padding must be an int, (ph, pw), ((top, bottom), (left, right)), "
            f"'valid' or 'same'; got {value!r}"
        )
    if min(pads) < 0:
        raise ValueError(f"padding must be >= 0; got {value!r}")
    if max(pads) > MAX_OPTION:
        raise ValueError(f"padding must be at most {MAX_OPTION}; got {value!r}")
    return pads


def resolve_geometry(
    stride: object, padding: object, dilation: object, groups: object, kernel: tuple[int, int]
) -> Geometry:
    """Validate and normalise the convolution options for a (KH, KW) kernel."""
    stride_hw = _pair("stride", stride)
    dilation_hw = _pair("dilation", dilation)
    if not _is_int(groups):
        raise TypeError(f"groups must be an int; got {groups!r}")
    if groups < 1:  # type: ignore[operator]
        raise ValueError(f"groups must be >= 1; got {groups!r}")
    if groups > MAX_OPTION:  # type: ignore[operator]
        raise ValueError(f"groups must be at most {MAX_OPTION}; got {groups!r}")
    pads = _padding(padding, stride_hw, dilation_hw, kernel)
    return Geometry(stride_hw, pads, dilation_hw, int(groups))  # type: ignore[call-overload]


def output_size(size: int, kernel: int, stride: int, dilation: int, pad_total: int) -> int:
    """Output length along one axis; < 1 when the kernel does not fit."""
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1
