"""Shared hypothesis strategies and array helpers for the convgrad property tests.

``conv_configs()`` draws a random :class:`ConvConfig` (sizes, options, layout,
dtype and a memory-layout "mangle" for every array). ``make_arrays(cfg)`` builds
the arrays for it from a seeded NumPy RNG, both as convgrad receives them (in the
config's layout, mangled) and as batched NCHW / OIHW copies for ``naive``.
``image_to_nchw`` and ``weight_to_oihw`` turn results back into NCHW terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import naive
import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

LAYOUTS = ("NCHW", "NHWC")
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# How an array is laid out in memory when it is handed to convgrad.
MANGLES = ("contiguous", "fortran", "strided", "negative", "readonly", "byteswapped", "unaligned")
ARRAY_NAMES = ("input", "weight", "bias", "grad_output")


@dataclass(frozen=True)
class ConvConfig:
    """One convolution problem, in logical (NCHW) terms plus how to present it."""

    n: int  # logical batch size; 1 when unbatched
    batched: bool
    groups: int
    c_in: int
    c_out: int
    h: int
    w: int
    kh: int
    kw: int
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, bottom, left, right
    layout: str
    dtype: np.dtype
    mangles: tuple[tuple[str, str], ...]  # (array name, mangle) for ARRAY_NAMES
    compact_options: bool  # pass int / (ph, pw) forms where they say the same
    seed: int

    # -- derived sizes --------------------------------------------------------

    @property
    def cin_g(self) -> int:
        return self.c_in // self.groups

    @property
    def cout_g(self) -> int:
        return self.c_out // self.groups

    @property
    def oh(self) -> int:
        top, bottom, _, _ = self.padding
        return naive.output_size(self.h, self.kh, self.stride[0], self.dilation[0], top, bottom)

    @property
    def ow(self) -> int:
        _, _, left, right = self.padding
        return naive.output_size(self.w, self.kw, self.stride[1], self.dilation[1], left, right)

    def mangle_of(self, name: str) -> str:
        return dict(self.mangles)[name]

    # -- shapes as convgrad sees them -----------------------------------------

    def image_shape(self, c: int, h: int, w: int) -> tuple[int, ...]:
        shape = (self.n, c, h, w) if self.layout == "NCHW" else (self.n, h, w, c)
        return shape if self.batched else shape[1:]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.image_shape(self.c_in, self.h, self.w)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.image_shape(self.c_out, self.oh, self.ow)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.layout == "NCHW":
            return (self.c_out, self.cin_g, self.kh, self.kw)
        return (self.kh, self.kw, self.cin_g, self.c_out)

    # -- options as convgrad takes them ---------------------------------------

    @property
    def padding_arg(self) -> object:
        top, bottom, left, right = self.padding
        if self.compact_options and top == bottom and left == right:
            return top if top == left else (top, left)
        return ((top, bottom), (left, right))

    def _pair_arg(self, pair: tuple[int, int]) -> object:
        return pair[0] if self.compact_options and pair[0] == pair[1] else pair

    @property
    def options(self) -> dict[str, object]:
        """Keyword options for conv2d and the gradient functions."""
        return {
            "stride": self._pair_arg(self.stride),
            "padding": self.padding_arg,
            "dilation": self._pair_arg(self.dilation),
            "groups": self.groups,
            "layout": self.layout,
        }

    @property
    def naive_options(self) -> tuple:
        """(stride, padding, dilation, groups) positional arguments for ``naive``."""
        return (self.stride, self.padding, self.dilation, self.groups)

    # -- reduction lengths (for float32 tolerances) ---------------------------

    @property
    def forward_terms(self) -> int:
        return self.cin_g * self.kh * self.kw

    @property
    def grad_input_terms(self) -> int:
        return self.cout_g * self.kh * self.kw

    @property
    def grad_weight_terms(self) -> int:
        return self.n * self.oh * self.ow


@st.composite
def conv_configs(
    draw: st.DrawFn,
    *,
    layouts: tuple[str, ...] = LAYOUTS,
    dtypes: tuple[np.dtype, ...] = DTYPES,
    max_n: int = 3,
    max_size: int = 9,
    max_per_group: int = 3,
    mangled: bool = True,
) -> ConvConfig:
    """A random convolution configuration whose output is at least 1x1.

    H and W are 1..``max_size``; each group has 1..``max_per_group`` input and
    output channels (depthwise configs have up to ``max_per_group + 1`` groups).
    """
    if draw(st.integers(0, 5)) == 0:
        # Depthwise: one input channel per group, C_out a multiple of C_in.
        c_in = draw(st.integers(1, max_per_group + 1))
        groups = c_in
        c_out = c_in * draw(st.integers(1, 3))
    else:
        groups = draw(st.integers(1, 3))
        c_in = groups * draw(st.integers(1, max_per_group))
        c_out = groups * draw(st.integers(1, max_per_group))

    def axis() -> tuple[int, int, int, int, int, int]:
        """(size, kernel, stride, dilation, pad_before, pad_after) for one spatial axis."""
        kernel = draw(st.integers(1, 4))
        before = draw(st.integers(0, 3))
        after = draw(st.integers(0, 3))
        # Only dilations whose dilated kernel fits a padded axis of length <= max_size.
        fits = [d for d in (1, 2, 3) if d * (kernel - 1) + 1 - before - after <= max_size]
        dilation = draw(st.sampled_from(fits))
        smallest = max(1, dilation * (kernel - 1) + 1 - before - after)
        size = draw(st.integers(smallest, max_size))
        stride = draw(st.integers(1, 3))
        return size, kernel, stride, dilation, before, after

    h, kh, sh, dh, top, bottom = axis()
    w, kw, sw, dw, left, right = axis()
    batched = draw(st.booleans())
    n = draw(st.integers(0, max_n)) if batched else 1
    layout = draw(st.sampled_from(layouts))
    dtype = draw(st.sampled_from(dtypes))
    if mangled:
        mangles = tuple((name, draw(st.sampled_from(MANGLES))) for name in ARRAY_NAMES)
    else:
        mangles = tuple((name, "contiguous") for name in ARRAY_NAMES)
    cfg = ConvConfig(
        n=n,
        batched=batched,
        groups=groups,
        c_in=c_in,
        c_out=c_out,
        h=h,
        w=w,
        kh=kh,
        kw=kw,
        stride=(sh, sw),
        dilation=(dh, dw),
        padding=(top, bottom, left, right),
        layout=layout,
        dtype=np.dtype(dtype),
        mangles=mangles,
        compact_options=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    assume(cfg.oh >= 1 and cfg.ow >= 1)  # guaranteed by construction; kept as a guard
    return cfg


# -- memory-layout mangles ---------------------------------------------------------------


def mangle(a: np.ndarray, how: str, rng: np.random.Generator) -> np.ndarray:
    """An array equal to ``a`` (same shape, dtype, values) with another memory layout."""
    if how == "contiguous":
        return np.ascontiguousarray(a)
    if how == "fortran":
        return np.asfortranarray(a)
    if how == "strided":
        # Every other element (plus an offset) of a bigger array full of junk.
        big = rng.standard_normal([2 * d + 1 for d in a.shape]).astype(a.dtype)
        view = big[tuple(slice(1, 1 + 2 * d, 2) for d in a.shape)]
        view[...] = a
        return view
    if how == "negative":
        # Every axis reversed in memory, so every stride is negative.
        base = np.empty_like(a, order="C")
        view = base[(slice(None, None, -1),) * a.ndim]
        view[...] = a
        return view
    if how == "readonly":
        out = np.array(a, order="C", copy=True)
        out.flags.writeable = False
        return out
    if how == "byteswapped":
        # Non-native byte order, same values.
        return a.astype(a.dtype.newbyteorder())
    if how == "unaligned":
        # C order, but starting one byte into a buffer, so the data are misaligned.
        buf = np.empty(a.nbytes + 1, dtype=np.uint8)
        out = buf[1:].view(a.dtype).reshape(a.shape)
        out[...] = a
        return out
    raise ValueError(how)


# -- layout conversions ------------------------------------------------------------------


def image_from_nchw(a: np.ndarray, cfg: ConvConfig) -> np.ndarray:
    """Batched NCHW array -> the config's layout, unbatched if the config is."""
    out = a if cfg.layout == "NCHW" else naive.nchw_to_nhwc(a)
    return out if cfg.batched else out[0]


def weight_from_oihw(a: np.ndarray, cfg: ConvConfig) -> np.ndarray:
    return a if cfg.layout == "NCHW" else naive.oihw_to_hwio(a)


def image_to_nchw(a: np.ndarray, cfg: ConvConfig) -> np.ndarray:
    """An image result in the config's layout -> batched NCHW (for comparing with naive)."""
    batched = a if cfg.batched else a[np.newaxis]
    return np.array(batched) if cfg.layout == "NCHW" else naive.nhwc_to_nchw(batched)


def weight_to_oihw(a: np.ndarray, cfg: ConvConfig) -> np.ndarray:
    return np.array(a) if cfg.layout == "NCHW" else naive.hwio_to_oihw(a)


@dataclass
class ConvArrays:
    """Arrays for one config: convgrad's (layout, mangled) and naive's (NCHW, batched)."""

    x: np.ndarray
    w: np.ndarray
    b: np.ndarray
    g: np.ndarray
    x_nchw: np.ndarray
    w_oihw: np.ndarray
    b_ref: np.ndarray
    g_nchw: np.ndarray


def make_arrays(cfg: ConvConfig, scale: float = 1.0) -> ConvArrays:
    """Random standard-normal arrays (times ``scale``) for ``cfg``, from ``cfg.seed``."""
    rng = np.random.default_rng(cfg.seed)

    def normal(shape: tuple[int, ...]) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(cfg.dtype)

    x_nchw = normal((cfg.n, cfg.c_in, cfg.h, cfg.w))
    w_oihw = normal((cfg.c_out, cfg.cin_g, cfg.kh, cfg.kw))
    b_ref = normal((cfg.c_out,))
    g_nchw = normal((cfg.n, cfg.c_out, cfg.oh, cfg.ow))
    return ConvArrays(
        x=mangle(image_from_nchw(x_nchw, cfg), cfg.mangle_of("input"), rng),
        w=mangle(weight_from_oihw(w_oihw, cfg), cfg.mangle_of("weight"), rng),
        b=mangle(b_ref, cfg.mangle_of("bias"), rng),
        g=mangle(image_from_nchw(g_nchw, cfg), cfg.mangle_of("grad_output"), rng),
        x_nchw=x_nchw,
        w_oihw=w_oihw,
        b_ref=b_ref,
        g_nchw=g_nchw,
    )


# -- tolerances ----------------------------------------------------------------------------


def max_abs(*arrays: np.ndarray) -> float:
    """Product of the arrays' largest magnitudes (1 for empty arrays)."""
    out = 1.0
    for a in arrays:
        out *= float(np.max(np.abs(a))) if a.size else 1.0
    return out


def tolerance(dtype: np.dtype, terms: int, scale: float) -> dict[str, float]:
    """rtol/atol for a sum of ``terms`` products each at most ``scale`` in size."""
    terms = max(1, terms)
    if np.dtype(dtype) == np.float32:
        return {"rtol": 1e-5, "atol": 1e-5 * math.sqrt(terms) * scale}
    return {"rtol": 1e-10, "atol": 1e-13 * terms * scale}


def assert_close(
    actual: np.ndarray, expected: np.ndarray, dtype: np.dtype, terms: int, scale: float
) -> None:
    np.testing.assert_allclose(actual, expected, **tolerance(dtype, terms, scale))
