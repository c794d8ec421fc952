"""Compile the kernels ahead of time: one tiny problem per kernel family the dispatch can pick."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ._api import (
    conv2d,
    conv2d_backward,
    conv2d_grad_bias,
    conv2d_grad_input,
    conv2d_grad_weight,
)
from ._arrays import FLOAT_DTYPES
from ._layouts import LAYOUTS, NCHW, NHWC, SMALL_COPY_ELEMENTS, Layout, relayout_image
from ._threading import kernel_guard, run_kernel
from .kernels.nchw_flat import all_finite

# (C_in, C_out, H=W, K, groups) picked so that, whatever the layout of the
# arrays, the dispatch runs each family: the row kernels (one channel, long
# rows), the channel kernels (short rows, many channels; from 16 input
# channels on, grad_weight by input channel), the flat planes (16
# channel pairs, long planes; run again with a NaN for their exact fallback),
# the fused flat backward (few input channels; stride 1 on shifted planes,
# stride 2 on phase planes; big enough to run in parallel blocks of images),
# the depthwise kernels (one fused backward: tiles on small images, NCHW's
# planes on larger ones, on phase planes at stride 2) and the BLAS products
# (1x1). The other problems
# are tiny: conv2d_backward runs the serial fused kernel on them (on phase
# planes for tiny_strided, on shifted planes for the rest). Between them
# they also run both relayout copies, both grad_bias kernels and the forward
# pass. Each problem has two images.
# (C_in, C_out, H=W, K, groups, stride)
PROBLEMS = {
    "rows": (1, 1, 12, 3, 1, 1),
    "channels": (8, 8, 6, 3, 1, 1),
    "channels_wide": (16, 8, 4, 3, 1, 1),
    "flat": (4, 4, 12, 3, 1, 1),
    "fused": (2, 8, 48, 3, 1, 1),
    "fused_strided": (2, 8, 96, 3, 1, 2),
    "tiny_strided": (2, 8, 12, 3, 1, 2),
    "depthwise": (4, 4, 6, 3, 4, 1),
    "depthwise_planes": (4, 4, 16, 3, 4, 1),
    "depthwise_strided": (4, 4, 7, 3, 4, 2),
    "gemm": (4, 4, 4, 1, 1, 1),
}


def _dtype(value: object) -> np.dtype:
    try:
        dtype = np.dtype(value)  # type: ignore[call-overload]
    except Exception:  # numpy raises TypeError or ValueError, or worse for odd objects
        dtype = None
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtypes must hold float32 or float64 dtypes; got {value!r}")
    return dtype


def _layout(value: object) -> Layout:
    if not isinstance(value, str) or value not in LAYOUTS:
        raise ValueError(f"layouts must hold 'NCHW' or 'NHWC'; got {value!r}")
    return LAYOUTS[value]


def _listed(name: str, value: object) -> list[object]:
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return value.tolist()
    raise TypeError(f"{name} must be a list; got {value!r}")


def warmup(
    dtypes: Iterable[object] = ("float32", "float64"),
    layouts: Iterable[str] = ("NCHW", "NHWC"),
    *,
    forward: bool = True,
) -> int:
    """Compile (or load from the disk cache) every kernel that calls in these settings can use.

    Runs one tiny problem per kernel family for each dtype and layout, so that
    later calls start at full speed: call it while building a container image
    (with the disk cache on, the compiled code is stored in it) or at the
    start of a server process. It also starts numba's threading layer (see
    the README's "Reliability" section).

    Parameters
    ----------
    dtypes : iterable of dtype-like
        Any of ``"float32"`` and ``"float64"`` (or ``np.float32``, ...).
    layouts : iterable of {"NCHW", "NHWC"}
        The layouts the arrays will come in.
    forward : bool
        Also compile :func:`conv2d`'s kernels.

    Returns
    -------
    int
        The number of problems run.

    Examples
    --------
    >>> import convgrad
    >>> convgrad.warmup(dtypes=["float32"], layouts=["NHWC"], forward=False)
    12
    """
    chosen_dtypes = [_dtype(d) for d in _listed("dtypes", dtypes)]
    chosen_layouts = [_layout(name) for name in _listed("layouts", layouts)]
    if not isinstance(forward, (bool, np.bool_)):
        raise TypeError(f"forward must be a bool; got {forward!r}")
    kernel_guard()
    runs = 0
    rng = np.random.default_rng(0)
    for dtype in chosen_dtypes:
        for layout in chosen_layouts:
            for name, (c_in, c_out, size, k, groups, stride) in PROBLEMS.items():
                x = rng.standard_normal(layout.image_shape(2, c_in, size, size)).astype(dtype)
                w = rng.standard_normal(layout.weight_shape(c_out, c_in // groups, k, k))
                w = w.astype(dtype)
                out = (size - k) // stride + 1
                g = rng.standard_normal(layout.image_shape(2, c_out, out, out))
                g = g.astype(dtype)
                options = {"groups": groups, "stride": stride, "layout": layout.name}
                # conv2d_backward may run one fused kernel; the single-gradient
                # functions run the per-gradient kernels of the same family
                conv2d_backward(g, x, w, **options)
                conv2d_grad_input(g, w, x.shape, **options)
                conv2d_grad_weight(g, x, w.shape, **options)
                conv2d_grad_bias(g, layout=layout.name)
                runs += 1
                if name == "flat":  # a NaN sends the flat kernels' work to the row kernels
                    g[(0,) * g.ndim] = np.nan
                    conv2d_backward(g, x, w, **options)
                    runs += 1
                if forward:
                    conv2d(x, w, **options)
        # the parallel relayout copies (small arrays are copied by NumPy) and the
        # parallel NaN/Inf check (small arrays are checked on the calling thread)
        big = np.zeros((1, 1, 2, SMALL_COPY_ELEMENTS), dtype)
        relayout_image(relayout_image(big, NCHW, NHWC), NHWC, NCHW)
        run_kernel(all_finite, big.reshape(-1))
    return runs
