"""``Conv2d``: a convolution layer for NumPy networks, holding its weights and gradients."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ._api import ALL_GRADIENTS, conv2d, conv2d_backward
from ._arrays import FLOAT_DTYPES
from ._layouts import get_layout
from ._options import resolve_geometry


def _kernel_size(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"kernel_size must be an int or a pair of ints (kh, kw); got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"kernel_size must be >= 1; got {value!r}")
    return pair


def _channels(name: str, value: object) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int; got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1; got {value!r}")
    return int(value)


class Conv2d:
    """A 2-D convolution layer: weight and bias, forward, backward, accumulated gradients.

    The layer calls :func:`convgrad.conv2d` in :meth:`forward`, keeps the input,
    and calls :func:`convgrad.conv2d_backward` in :meth:`backward`, which returns
    the gradient with respect to the input and *adds* the gradients of the
    weight and bias into :attr:`grad_weight` and :attr:`grad_bias` (call
    :meth:`zero_grad` between optimiser steps, as in PyTorch).

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and of the output.
    kernel_size : int or (int, int)
        (KH, KW).
    stride, padding, dilation, groups
        As in :func:`convgrad.conv2d` (``padding`` may be an int, a pair, a
        pair of pairs, ``"valid"`` or ``"same"``).
    bias : bool
        Whether the layer adds a learnable bias.
    layout : {"NCHW", "NHWC"}
        Layout of the images; the weight follows it: (C_out, C_in/groups, KH, KW)
        for NCHW, (KH, KW, C_in/groups, C_out) for NHWC.
    dtype : float32 or float64
        Dtype of the parameters; inputs must have it too.
    rng : numpy.random.Generator or int, optional
        Source of the initial values (a seed, or a generator); fresh entropy by default.

    Attributes
    ----------
    weight, bias : ndarray
        The parameters (``bias`` is None without one), initialised as PyTorch
        does: uniform in ``±1/sqrt(fan_in)``, ``fan_in = C_in/groups·KH·KW``
        (Kaiming-uniform with ``a=√5`` for the weight).
    grad_weight, grad_bias : ndarray
        Accumulated gradients of the loss with respect to ``weight`` and ``bias``.

    Notes
    -----
    :meth:`backward` uses the input kept by the last :meth:`forward` and the
    weight as it is *then*: update the weights after ``backward``, and do not
    write into the input array in between.

    Examples
    --------
    >>> import numpy as np, convgrad
    >>> layer = convgrad.Conv2d(3, 8, kernel_size=3, padding=1, rng=0)
    >>> layer
    Conv2d(3, 8, kernel_size=3, padding=1, layout='NCHW', dtype=float32)
    >>> x = np.random.default_rng(1).standard_normal((4, 3, 16, 16), dtype=np.float32)
    >>> y = layer.forward(x)
    >>> y.shape
    (4, 8, 16, 16)
    >>> grad_x = layer.backward(np.ones_like(y))      # dLoss/dy = 1 everywhere
    >>> grad_x.shape, layer.grad_weight.shape, float(layer.grad_bias[0])
    ((4, 3, 16, 16), (8, 3, 3, 3), 1024.0)
    >>> for param, grad in layer.parameters():        # one SGD step
    ...     param -= 0.01 * grad
    >>> layer.zero_grad()
    >>> float(np.abs(layer.grad_weight).max())
    0.0
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: object = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        layout: str = "NCHW",
        dtype: type | np.dtype = np.float32,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        self.in_channels = _channels("in_channels", in_channels)
        self.out_channels = _channels("out_channels", out_channels)
        self.kernel_size = _kernel_size(kernel_size)
        geometry = resolve_geometry(stride, padding, dilation, groups, self.kernel_size)
        if in_channels % geometry.groups or out_channels % geometry.groups:
            raise ValueError(
                f"groups={geometry.groups} must divide in_channels={in_channels} "
                f"and out_channels={out_channels}"
            )
        self.stride = geometry.stride
        top, bottom, left, right = geometry.padding
        self.padding = ((top, bottom), (left, right))
        self.dilation = geometry.dilation
        self.groups = geometry.groups
        self._spec = get_layout(layout)
        self.layout = self._spec.name
        try:
            float_dtype = np.dtype(dtype) in FLOAT_DTYPES
        except TypeError:
            float_dtype = False
        if dtype is None or not float_dtype:  # np.dtype(None) would be float64
            raise TypeError(f"dtype must be float32 or float64; got {dtype!r}")
        self.dtype = np.dtype(dtype)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias must be a bool (whether to learn one); got {bias!r}")
        generator = np.random.default_rng(rng)
        kh, kw = self.kernel_size
        fan_in = in_channels // self.groups * kh * kw
        bound = 1.0 / math.sqrt(fan_in)
        shape = self._spec.weight_shape(out_channels, in_channels // self.groups, kh, kw)
        self.weight = generator.uniform(-bound, bound, shape).astype(self.dtype)
        self.bias = (
            generator.uniform(-bound, bound, out_channels).astype(self.dtype) if bias else None
        )
        self.grad_weight = np.zeros_like(self.weight)
        self.grad_bias = None if self.bias is None else np.zeros_like(self.bias)
        self._input: np.ndarray | None = None

    @property
    def options(self) -> dict[str, object]:
        """Keyword options for convgrad's functions (stride, padding, dilation, groups, layout)."""
        return {
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "groups": self.groups,
            "layout": self.layout,
        }

    def _check_input(self, x: object) -> None:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"input must be a numpy.ndarray; got {type(x).__name__}")
        if x.ndim not in (3, 4):
            raise ValueError(
                f"input must be 4-D {self._spec.image_order} or 3-D without N; got shape {x.shape}"
            )
        if x.dtype.newbyteorder("=") != self.dtype:
            raise TypeError(
                f"input must have the layer's dtype {self.dtype}; got {x.dtype} "
                f"(convert with x.astype(np.{self.dtype}))"
            )
        axis = self._spec.image_axes[1] - (4 - x.ndim)
        if x.shape[axis] != self.in_channels:
            raise ValueError(
                f"input must have {self.in_channels} channels on axis {axis} "
                f"({self.layout}); got shape {x.shape}"
            )

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The convolution of ``x`` (batched or a single image); keeps ``x`` for backward.

        Parameters
        ----------
        x : ndarray
            (N, C_in, H, W) for NCHW, (N, H, W, C_in) for NHWC, or without N,
            in the layer's dtype.

        Returns
        -------
        ndarray
            (N, C_out, OH, OW) for NCHW, (N, OH, OW, C_out) for NHWC (without N
            if ``x`` has none).
        """
        self._check_input(x)
        y = conv2d(x, self.weight, self.bias, **self.options)
        self._input = x
        return y

    __call__ = forward

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """Gradient with respect to the last forward's input; adds into the parameter gradients.

        Parameters
        ----------
        grad_output : ndarray
            Gradient of the loss with respect to the last :meth:`forward`'s output
            (same shape and dtype).

        Returns
        -------
        ndarray
            Gradient with respect to the input of the last :meth:`forward`. The
            weight and bias gradients are added into :attr:`grad_weight` and
            :attr:`grad_bias`.
        """
        if self._input is None:
            raise RuntimeError(
                "backward() needs the input of a forward() call first; call forward(x) first"
            )
        # Fresh results, then added into the gradient arrays: accumulate=True would
        # add grad_input into a zeroed buffer too, and check every input value for
        # NaN/Inf before a fused kernel (2.4 ms more than the 1.7 ms backward on the
        # suite's depthwise layer, 2-core Intel Xeon); the small arrays are cheap to add.
        grad_input, grad_weight, grad_bias = conv2d_backward(
            grad_output,
            self._input,
            self.weight,
            # the default mask by identity: tiny problems' calls may skip the checks (_plans)
            output_mask=ALL_GRADIENTS if self.bias is not None else (True, True, False),
            **self.options,
        )
        self.grad_weight += grad_weight
        if self.grad_bias is not None and grad_bias is not None:
            self.grad_bias += grad_bias
        return grad_input

    def zero_grad(self) -> None:
        """Set :attr:`grad_weight` and :attr:`grad_bias` to zero (in place)."""
        self.grad_weight[...] = 0
        if self.grad_bias is not None:
            self.grad_bias[...] = 0

    def parameters(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(parameter, gradient)`` pairs: the weight and, if any, the bias.

        Update the parameters in place (``param -= lr * grad``) so the layer sees it.
        """
        pairs = [(self.weight, self.grad_weight)]
        if self.bias is not None and self.grad_bias is not None:
            pairs.append((self.bias, self.grad_bias))
        return pairs

    def __repr__(self) -> str:
        # PyTorch's style: options only where they differ from the defaults, compactly.
        (top, bottom), (left, right) = self.padding
        parts = [str(self.in_channels), str(self.out_channels)]
        parts.append(f"kernel_size={_compact(self.kernel_size)}")
        if self.stride != (1, 1):
            parts.append(f"stride={_compact(self.stride)}")
        if (top, bottom, left, right) != (0, 0, 0, 0):
            symmetric = top == bottom and left == right
            parts.append(f"padding={_compact((top, left)) if symmetric else self.padding}")
        if self.dilation != (1, 1):
            parts.append(f"dilation={_compact(self.dilation)}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.bias is None:
            parts.append("bias=False")
        parts += [f"layout={self.layout!r}", f"dtype={self.dtype}"]
        return f"Conv2d({', '.join(parts)})"


def _compact(pair: tuple) -> object:
    """``(a, a)`` as ``a``: the short form the constructor also takes."""
    return pair[0] if pair[0] == pair[1] else pair
