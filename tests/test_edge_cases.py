"""Edge cases of conv2d and its gradients, checked against the loop reference in naive.py.

Array values are multiples of 1/4 in [-2, 2], so every sum the kernels and the
reference compute is exact in float32 and float64 whatever the order of the
additions: results are compared for exact equality.

Covered: empty sizes, ``out=`` (in place, non-contiguous, byte-swapped,
unaligned, accumulate, aliasing an input), ``output_mask``, every memory layout
of the arguments, every padding form, NaN/Inf propagation, result dtypes and
unbatched arrays, and ``input_shape`` disambiguating strided problems.
"""

from dataclasses import dataclass, field

import naive
import numpy as np
import pytest

from convgrad import (
    conv2d,
    conv2d_backward,
    conv2d_grad_bias,
    conv2d_grad_input,
    conv2d_grad_weight,
)

LAYOUTS = ("NCHW", "NHWC")
DTYPES = (np.float32, np.float64)
DTYPE_IDS = ("f32", "f64")


# -- building problems and reference results -------------------------------------------------------


def pair(value):
    return (int(value), int(value)) if np.ndim(value) == 0 else (int(value[0]), int(value[1]))


def pad4(padding, kernel, dilation):
    """Padding as (top, bottom, left, right), the way the docs define each form."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        assert padding == "same"
        total_h = dilation[0] * (kernel[0] - 1)
        total_w = dilation[1] * (kernel[1] - 1)
        return (total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2)
    if np.ndim(padding) == 0:
        return (int(padding),) * 4
    if np.ndim(padding[0]) == 0:
        return (int(padding[0]), int(padding[0]), int(padding[1]), int(padding[1]))
    return tuple(int(p) for pads in padding for p in pads)


def image_shape(layout, n, c, h, w):
    return (n, c, h, w) if layout == "NCHW" else (n, h, w, c)


def weight_shape(layout, c_out, cin_g, kh, kw):
    return (c_out, cin_g, kh, kw) if layout == "NCHW" else (kh, kw, cin_g, c_out)


def channel_axis(layout, ndim):
    return -1 if layout == "NHWC" else ndim - 3


def dyadic(rng, shape, dtype):
    """Multiples of 1/4 in [-2, 2] (a few of them exactly 0)."""
    return (rng.integers(-8, 9, size=shape) / 4).astype(dtype)


@dataclass
class Problem:
    layout: str
    x: np.ndarray
    w: np.ndarray
    g: np.ndarray
    b: np.ndarray
    options: dict = field(default_factory=dict)

    @property
    def dtype(self):
        return self.x.dtype

    def arrays(self):
        return self.x, self.w, self.g, self.b


def make_problem(
    layout="NCHW",
    dtype=np.float64,
    *,
    n=2,
    c_in=4,
    h=5,
    w=6,
    c_out=6,
    kh=3,
    kw=2,
    groups=2,
    stride=1,
    padding=0,
    dilation=1,
    batched=True,
    seed=0,
):
    rng = np.random.default_rng(seed)
    s, d = pair(stride), pair(dilation)
    top, bottom, left, right = pad4(padding, (kh, kw), d)
    oh = naive.output_size(h, kh, s[0], d[0], top, bottom)
    ow = naive.output_size(w, kw, s[1], d[1], left, right)
    x_shape = image_shape(layout, n, c_in, h, w)
    g_shape = image_shape(layout, n, c_out, oh, ow)
    if not batched:
        x_shape, g_shape = x_shape[1:], g_shape[1:]
    options = {
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "layout": layout,
    }
    return Problem(
        layout,
        dyadic(rng, x_shape, dtype),
        dyadic(rng, weight_shape(layout, c_out, c_in // groups, kh, kw), dtype),
        dyadic(rng, g_shape, dtype),
        dyadic(rng, (c_out,), dtype),
        options,
    )


def _image_to_nchw(layout, a):
    return naive.nhwc_to_nchw(a) if layout == "NHWC" else a


def _image_from_nchw(layout, a):
    return naive.nchw_to_nhwc(a) if layout == "NHWC" else a


def reference(layout, x, w, g, b=None, *, stride=1, padding=0, dilation=1, groups=1):
    """(y, grad_input, grad_weight, grad_bias) from naive.py, in float64, in ``layout``."""
    batched = x.ndim == 4
    x, w, g = (np.array(a, np.float64) for a in (x, w, g))
    b = None if b is None else np.array(b, np.float64)
    if not batched:
        x, g = x[None], g[None]
    x, g = _image_to_nchw(layout, x), _image_to_nchw(layout, g)
    if layout == "NHWC":
        w = naive.hwio_to_oihw(w)
    s, d = pair(stride), pair(dilation)
    p = pad4(padding, w.shape[2:], d)
    y = naive.conv2d_nchw(x, w, b, s, p, d, groups)
    gi = naive.grad_input_nchw(g, w, x.shape, s, p, d, groups)
    gw = naive.grad_weight_nchw(g, x, w.shape, s, p, d, groups)
    gb = naive.grad_bias_nchw(g)
    y, gi = _image_from_nchw(layout, y), _image_from_nchw(layout, gi)
    if layout == "NHWC":
        gw = naive.oihw_to_hwio(gw)
    if not batched:
        y, gi = y[0], gi[0]
    return y, gi, gw, gb


def problem_reference(p, b=True):
    return reference(p.layout, p.x, p.w, p.g, p.b if b else None, **_geometry(p.options))


def _geometry(options):
    return {k: v for k, v in options.items() if k != "layout"}


def run_all(x, w, g, b, options):
    """Every public function on one problem: (y, backward triple, gi, gw, gb)."""
    y = conv2d(x, w, b, **options)
    triple = conv2d_backward(g, x, w, **options)
    gi = conv2d_grad_input(g, w, x.shape, **options)
    gw = conv2d_grad_weight(g, x, w.shape, **options)
    gb = conv2d_grad_bias(g, layout=options["layout"])
    return y, triple, gi, gw, gb


def assert_same(actual, expected, dtype):
    """Exact equality (NaN where NaN, Inf of the same sign), with the result's dtype."""
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == np.dtype(dtype)
    assert actual.dtype.isnative
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected.astype(dtype))


def assert_all_match_reference(results, ref, dtype):
    y, (bi, bw, bb), gi, gw, gb = results
    ry, rgi, rgw, rgb = ref
    assert_same(y, ry, dtype)
    for actual, expected in ((bi, rgi), (bw, rgw), (bb, rgb), (gi, rgi), (gw, rgw), (gb, rgb)):
        assert_same(actual, expected, dtype)


def flat(results):
    """The seven arrays of ``run_all``: y, the backward triple, gi, gw, gb."""
    y, triple, gi, gw, gb = results
    return (y, *triple, gi, gw, gb)


def assert_identical(results, expected):
    for actual, want in zip(flat(results), flat(expected), strict=True):
        assert actual.dtype == want.dtype
        np.testing.assert_array_equal(actual, want)


def snapshot(*arrays):
    return [(a.dtype, a.shape, a.strides, a.tobytes()) for a in arrays]


GRAD_FUNCS = ("backward", "grad_input", "grad_weight", "grad_bias")


def call_grad(func, p, out, accumulate):
    """Run one gradient function of problem ``p`` with ``out`` and ``accumulate``."""
    if func == "backward":
        return conv2d_backward(p.g, p.x, p.w, **p.options, out=out, accumulate=accumulate)
    if func == "grad_input":
        return conv2d_grad_input(p.g, p.w, p.x.shape, **p.options, out=out, accumulate=accumulate)
    if func == "grad_weight":
        return conv2d_grad_weight(p.g, p.x, p.w.shape, **p.options, out=out, accumulate=accumulate)
    return conv2d_grad_bias(p.g, layout=p.layout, out=out, accumulate=accumulate)


RESULT_INDEX = {"grad_input": 0, "grad_weight": 1, "grad_bias": 2}


# -- the reference helpers themselves --------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_basic_problem_matches_reference(layout, dtype):
    p = make_problem(layout, dtype, stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2))
    before = snapshot(*p.arrays())
    results = run_all(*p.arrays(), p.options)
    assert_all_match_reference(results, problem_reference(p), dtype)
    assert snapshot(*p.arrays()) == before


# -- empty sizes -----------------------------------------------------------------------------------


EMPTY_CASES = {
    "N=0": {"n": 0},
    "C_in=0": {"c_in": 0},
    "C_out=0": {"c_out": 0},
    "C_in=C_out=0": {"c_in": 0, "c_out": 0},
    "N=0,C_out=0": {"n": 0, "c_out": 0},
    "H=0-padded": {"h": 0, "kh": 1, "padding": ((1, 1), (0, 0))},
    "W=0-padded": {"w": 0, "kw": 1, "padding": ((0, 0), (2, 0))},
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("case", EMPTY_CASES)
def test_empty_sizes(layout, dtype, groups, case):
    sizes = EMPTY_CASES[case]
    p = make_problem(layout, dtype, groups=groups, **sizes)
    assert 0 in p.x.shape or 0 in p.w.shape or 0 in p.g.shape
    before = snapshot(*p.arrays())
    results = run_all(*p.arrays(), p.options)
    ref = problem_reference(p)
    assert_all_match_reference(results, ref, dtype)
    y, (gi, gw, gb), *_ = results
    assert gi.shape == p.x.shape
    assert gw.shape == p.w.shape
    assert gb.shape == p.b.shape
    assert y.shape == p.g.shape
    # What must be zero (and is not merely empty):
    if sizes.get("n") == 0:
        assert not gw.any() and not gb.any()
    if sizes.get("c_out") == 0:
        assert not gi.any()
    if sizes.get("c_in") == 0 and y.size:
        bias_shape = [1, 1, 1, 1]
        bias_shape[channel_axis(layout, 4)] = -1
        np.testing.assert_array_equal(y, np.broadcast_to(p.b.reshape(bias_shape), y.shape))
    assert snapshot(*p.arrays()) == before


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", EMPTY_CASES)
@pytest.mark.parametrize("accumulate", [False, True])
def test_empty_sizes_with_out(layout, case, accumulate):
    p = make_problem(layout, np.float32, **EMPTY_CASES[case])
    _, rgi, rgw, rgb = problem_reference(p)
    old = [np.full(a.shape, 3.5, np.float32) for a in (p.x, p.w, p.b)]
    out = tuple(a.copy() for a in old)
    result = call_grad("backward", p, out, accumulate)
    singles = [call_grad(f, p, old[k].copy(), accumulate) for f, k in RESULT_INDEX.items()]
    for k, expected in enumerate((rgi, rgw, rgb)):
        assert result[k] is out[k]
        want = old[k] + expected if accumulate else expected
        assert_same(result[k], want, np.float32)
        assert_same(singles[k], want, np.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_forward_with_empty_batch(layout, dtype):
    p = make_problem(layout, dtype, n=0, padding=1)
    y = conv2d(p.x, p.w, p.b, **p.options)
    assert y.shape == image_shape(layout, 0, 6, 5, 7)
    assert y.dtype == dtype
    y = conv2d(p.x, p.w, **p.options)
    assert y.shape == image_shape(layout, 0, 6, 5, 7)


# -- out= ------------------------------------------------------------------------------------------


SENTINEL = -7.25
OUT_KINDS = (
    "contiguous",
    "offset",
    "strided",
    "reversed",
    "fortran",
    "byteswapped",
    "unaligned",
)


def make_out(shape, dtype, kind, fill):
    """An out array of ``kind`` holding ``fill``, and a check that nothing around it changed."""
    dtype = np.dtype(dtype)
    if kind == "unaligned":
        buf = np.full(int(np.prod(shape)) * dtype.itemsize + 2, 0xAB, np.uint8)
        view = buf[1:-1].view(dtype).reshape(shape)
        assert not view.flags.aligned
        view[...] = fill
        return view, lambda: buf[0] == 0xAB and buf[-1] == 0xAB
    base_shape, base_dtype, order = shape, dtype, "C"
    if kind == "offset":
        base_shape = (shape[0] + 2, *shape[1:])
    elif kind == "strided":
        base_shape = tuple(2 * s + 1 for s in shape)
    elif kind == "fortran":
        order = "F"
    elif kind == "byteswapped":
        base_dtype = dtype.newbyteorder("S")
    base = np.full(base_shape, SENTINEL, base_dtype, order=order)
    view = {
        "offset": lambda: base[1:-1],
        "strided": lambda: base[tuple(slice(1, None, 2) for _ in shape)],
        "reversed": lambda: base[tuple(slice(None, None, -1) for _ in shape)],
    }.get(kind, lambda: base)()
    assert view.shape == shape
    view[...] = fill

    def untouched():
        view[...] = SENTINEL
        return bool(np.all(base == SENTINEL))

    return view, untouched


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", OUT_KINDS)
@pytest.mark.parametrize("func", GRAD_FUNCS)
@pytest.mark.parametrize("accumulate", [False, True], ids=["overwrite", "accumulate"])
def test_out_arrays(layout, dtype, kind, func, accumulate):
    p = make_problem(layout, dtype, stride=(1, 2), padding=1, seed=3)
    _, *ref = problem_reference(p)
    rng = np.random.default_rng(7)
    shapes = (p.x.shape, p.w.shape, p.b.shape)
    indexes = (0, 1, 2) if func == "backward" else (RESULT_INDEX[func],)
    # Garbage to overwrite (NaN and Inf included), or old gradients to add to.
    fills = {}
    for k in indexes:
        fills[k] = dyadic(rng, shapes[k], dtype)
        if not accumulate:
            fills[k].flat[:2] = (np.nan, np.inf)
    outs = {k: make_out(shapes[k], dtype, kind, fills[k]) for k in indexes}
    before = snapshot(*p.arrays())
    if func == "backward":
        out = tuple(outs[k][0] for k in indexes)
        results = call_grad(func, p, out, accumulate)
    else:
        (k,) = indexes
        results = {k: call_grad(func, p, outs[k][0], accumulate)}
    for k in indexes:
        view, untouched = outs[k]
        assert results[k] is view
        expected = fills[k] + ref[k] if accumulate else ref[k]
        np.testing.assert_array_equal(view, expected.astype(dtype))
        assert untouched(), "memory next to the out array was written"
    assert snapshot(*p.arrays()) == before


# -- out aliasing an input -------------------------------------------------------------------------

# grad_output has the input's shape: C_in = C_out = 4, 3x3 kernel, padding 1, stride 1. In two
# groups, and depthwise (four groups): the NHWC depthwise kernels tell LLVM that their arrays
# never overlap (``kernels/_noalias.py``), which holds only because an ``out`` sharing memory
# with an input is never written directly.


def aliasing_problem(layout, groups):
    options = {"c_in": 4, "c_out": 4, "kh": 3, "kw": 3, "padding": 1, "groups": groups}
    return make_problem(layout, np.float64, **options, seed=11)


def _view(source, shape, step=1):
    """A view of ``source``'s memory with ``shape`` (every ``step``-th element)."""
    size = int(np.prod(shape))
    return source.reshape(-1)[: size * step : step].reshape(shape)


ALIASES = {
    "x": lambda p: p.x,
    "g": lambda p: p.g,
    "w": lambda p: p.w,
    "g-as-weight": lambda p: _view(p.g, p.w.shape),
    "x-as-weight": lambda p: _view(p.x, p.w.shape, step=2),
    "g-as-bias": lambda p: _view(p.g, p.b.shape, step=3),
    "x-as-bias": lambda p: _view(p.x, p.b.shape),
    "w-as-bias": lambda p: _view(p.w, p.b.shape),
}

ALIAS_CASES = [
    # (function, out names: one name, or three names/None for backward, output_mask)
    pytest.param("grad_input", "g", None, id="grad_input-out=g"),
    pytest.param("grad_weight", "g-as-weight", None, id="grad_weight-out=view(g)"),
    pytest.param("grad_weight", "x-as-weight", None, id="grad_weight-out=view(x)"),
    pytest.param("grad_bias", "g-as-bias", None, id="grad_bias-out=view(g)"),
    pytest.param("backward", ("x", None, None), (True, False, True), id="bw-out0=x-no-gw"),
    pytest.param("backward", ("g", None, None), (True, False, False), id="bw-out0=g-gi-only"),
    pytest.param("backward", (None, "w", None), (True, True, True), id="bw-out1=w"),
    pytest.param("backward", (None, "x-as-weight", None), (True, True, True), id="bw-out1=x"),
    pytest.param("backward", (None, None, "g-as-bias"), (True, True, True), id="bw-out2=g"),
    pytest.param("backward", (None, None, "x-as-bias"), (True, True, True), id="bw-out2=x"),
    pytest.param("backward", (None, None, "w-as-bias"), (True, True, True), id="bw-out2=w"),
    pytest.param("backward", ("x", None, None), (True, True, True), id="bw-out0=x"),
    pytest.param("backward", ("g", None, None), (True, True, True), id="bw-out0=g"),
    pytest.param(
        "backward",
        (None, "g-as-weight", None),
        (True, True, True),
        id="bw-out1=g",
    ),
]


@pytest.mark.parametrize("groups", [2, 4], ids=["grouped", "depthwise"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("accumulate", [False, True], ids=["overwrite", "accumulate"])
@pytest.mark.parametrize(("func", "names", "mask"), ALIAS_CASES)
def test_out_aliasing_an_input(layout, accumulate, func, names, mask, groups):
    p = aliasing_problem(layout, groups)
    assert p.g.shape == p.x.shape
    _, *ref = problem_reference(p)
    if func == "backward":
        out = [None if name is None else ALIASES[name](p) for name in names]
        for k, like in enumerate((p.x, p.w, p.b)):
            if accumulate and mask[k] and out[k] is None:
                out[k] = np.ones_like(like)  # accumulate needs every requested out
        out = tuple(out)
        old = [None if o is None else o.copy() for o in out]
        results = conv2d_backward(
            p.g, p.x, p.w, **p.options, output_mask=mask, out=out, accumulate=accumulate
        )
        for k in range(3):
            if not mask[k]:
                assert results[k] is None
                continue
            expected = ref[k] + old[k] if accumulate and old[k] is not None else ref[k]
            if out[k] is not None:
                assert results[k] is out[k]
            np.testing.assert_array_equal(results[k], expected, err_msg=f"gradient {k}")
    else:
        k = RESULT_INDEX[func]
        out = ALIASES[names](p)
        old = out.copy()
        result = call_grad(func, p, out, accumulate)
        assert result is out
        np.testing.assert_array_equal(result, ref[k] + old if accumulate else ref[k])


# -- output_mask -----------------------------------------------------------------------------------


MASKS = [(a, b, c) for a in (False, True) for b in (False, True) for c in (False, True)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: "".join("TF"[not v] for v in m))
@pytest.mark.parametrize("with_out", [False, True], ids=["alloc", "out"])
def test_output_mask(layout, mask, with_out):
    p = make_problem(layout, np.float32, stride=2, padding=(1, 0), seed=5)
    _, *ref = problem_reference(p)
    out = None
    if with_out:
        out = tuple(
            np.full(a.shape, np.nan, np.float32) if m else None
            for a, m in zip((p.x, p.w, p.b), mask, strict=True)
        )
    before = snapshot(*p.arrays())
    results = conv2d_backward(p.g, p.x, p.w, **p.options, output_mask=mask, out=out)
    assert isinstance(results, tuple)
    assert len(results) == 3
    for k in range(3):
        if mask[k]:
            assert_same(results[k], ref[k], np.float32)
            if with_out:
                assert results[k] is out[k]
        else:
            assert results[k] is None
    assert snapshot(*p.arrays()) == before


@pytest.mark.parametrize("mask", [list, lambda m: tuple(np.bool_(v) for v in m)])
def test_output_mask_as_list_or_numpy_bools(mask):
    p = make_problem("NCHW", np.float64)
    _, *ref = problem_reference(p)
    results = conv2d_backward(p.g, p.x, p.w, **p.options, output_mask=mask((True, False, True)))
    assert results[1] is None
    assert_same(results[0], ref[0], np.float64)
    assert_same(results[2], ref[2], np.float64)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_accumulate_allows_none_for_masked_out_results(k):
    p = make_problem("NHWC", np.float64)
    _, *ref = problem_reference(p)
    mask = [True, True, True]
    mask[k] = False
    old = [np.ones(a.shape) for a in (p.x, p.w, p.b)]
    out = [o.copy() for o in old]
    out[k] = None
    results = conv2d_backward(
        p.g, p.x, p.w, **p.options, output_mask=tuple(mask), out=out, accumulate=True
    )
    for j in range(3):
        if j == k:
            assert results[j] is None
        else:
            assert results[j] is out[j]
            np.testing.assert_array_equal(results[j], old[j] + ref[j])


def test_out_as_list():
    p = make_problem("NCHW", np.float64)
    _, *ref = problem_reference(p)
    out = [np.empty(a.shape) for a in (p.x, p.w, p.b)]
    results = conv2d_backward(p.g, p.x, p.w, **p.options, out=out)
    for k in range(3):
        assert results[k] is out[k]
        np.testing.assert_array_equal(out[k], ref[k])


# -- memory layouts of the arguments ---------------------------------------------------------------


def _strided(a):
    base = np.full(tuple(2 * s for s in a.shape), np.nan, a.dtype)
    view = base[tuple(slice(None, None, 2) for _ in a.shape)]
    view[...] = a
    return view


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _unaligned(a):
    buf = np.zeros(a.nbytes + 1, np.uint8)
    view = buf[1:].view(a.dtype).reshape(a.shape)
    view[...] = a
    assert not view.flags.aligned
    return view


def _permuted(a):
    """Same values, axes stored in reverse order (a transposed view of a contiguous array)."""
    return np.ascontiguousarray(a.transpose()).transpose()


def _step_slice(a):
    return a[tuple(slice(None, None, 2) if s > 2 else slice(None) for s in a.shape)]


MEMORY_VARIANTS = {
    "strided": _strided,
    "step-slice": _step_slice,
    "negative-last": lambda a: a[..., ::-1],
    "negative-all": np.flip,
    "fortran": np.asfortranarray,
    "permuted": _permuted,
    "readonly": _readonly,
    "broadcast-first": lambda a: np.broadcast_to(a[:1], a.shape),
    "broadcast-last": lambda a: np.broadcast_to(a[..., :1], a.shape),
    "byteswapped": lambda a: a.astype(a.dtype.newbyteorder("S")),
    "unaligned": _unaligned,
}  # fmt: skip
WHICH = ("input", "weight", "grad_output", "bias", "all")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("variant", MEMORY_VARIANTS)
@pytest.mark.parametrize("which", WHICH)
def test_memory_layout_of_arguments(layout, dtype, variant, which):
    """Any memory layout gives the same bits as a C-contiguous native copy."""
    # Step-slicing needs a problem whose shapes survive the slicing: slice a bigger one.
    if variant == "step-slice":
        big = make_problem(layout, dtype, n=3, c_in=8, c_out=12, h=9, w=11, kh=5, kw=3, seed=2)
        p = make_problem(layout, dtype, n=2, c_in=4, c_out=6, h=5, w=6, kh=3, kw=2, seed=2)
        transform = MEMORY_VARIANTS[variant]
        sources = dict(zip(("input", "weight", "grad_output", "bias"), big.arrays(), strict=True))
    else:
        p = make_problem(layout, dtype, stride=(1, 2), padding=((1, 0), (0, 2)), seed=2)
        transform = MEMORY_VARIANTS[variant]
        sources = dict(zip(("input", "weight", "grad_output", "bias"), p.arrays(), strict=True))
    names = ("input", "weight", "grad_output", "bias")
    args = {}
    for name, plain in zip(names, p.arrays(), strict=True):
        if which in (name, "all"):
            args[name] = transform(sources[name])
            assert args[name].shape == plain.shape
        else:
            args[name] = plain
    contiguous = {k: np.array(v, dtype=dtype, order="C") for k, v in args.items()}
    before = snapshot(*args.values())
    x, w, g, b = (args[k] for k in names)
    results = run_all(x, w, g, b, p.options)
    expected = run_all(*(contiguous[k] for k in names), p.options)
    assert snapshot(*args.values()) == before, "an input array was modified"
    for actual in flat(results):
        assert actual.dtype == np.dtype(dtype)
        assert actual.dtype.isnative
    assert_identical(results, expected)
    ref = reference(layout, *(contiguous[k] for k in names), **_geometry(p.options))
    assert_all_match_reference(expected, ref, dtype)


# -- padding forms ---------------------------------------------------------------------------------


PADDINGS = [
    0,
    2,
    np.int64(1),
    (1, 2),
    [2, 0],
    (np.int32(0), 1),
    ((0, 2), (1, 0)),
    [[2, 1], [0, 3]],
    ((3, 0), (0, 0)),
    "valid",
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("padding", PADDINGS, ids=repr)
@pytest.mark.parametrize(
    "geometry",
    [{"stride": 1, "dilation": 1}, {"stride": (2, 3), "dilation": (1, 2)}],
    ids=["s1d1", "s23d12"],
)
def test_padding_forms(layout, padding, geometry):
    p = make_problem(layout, np.float64, h=6, w=7, padding=padding, **geometry)
    results = run_all(*p.arrays(), p.options)
    assert_all_match_reference(results, problem_reference(p), np.float64)
    # The same as the explicit ((top, bottom), (left, right)) form, bit for bit.
    top, bottom, left, right = pad4(padding, (3, 2), pair(geometry["dilation"]))
    explicit = dict(p.options, padding=((top, bottom), (left, right)))
    assert_identical(results, run_all(*p.arrays(), explicit))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kernel", [(3, 3), (2, 2), (4, 3), (1, 5), (2, 1), (1, 1)])
@pytest.mark.parametrize("dilation", [1, 2, (3, 1)], ids=repr)
def test_padding_same(layout, dtype, kernel, dilation):
    kh, kw = kernel
    p = make_problem(layout, dtype, kh=kh, kw=kw, padding="same", dilation=dilation, seed=4)
    results = run_all(*p.arrays(), p.options)
    y = results[0]
    assert y.shape == image_shape(layout, 2, 6, 5, 6)  # spatial size kept
    assert results[1][0].shape == p.x.shape
    # reference() expands "same" as total = d*(k-1), top = total // 2, bottom = the rest.
    assert_all_match_reference(results, problem_reference(p), dtype)
    top, bottom, left, right = pad4("same", kernel, pair(dilation))
    explicit = dict(p.options, padding=((top, bottom), (left, right)))
    assert_identical(results, run_all(*p.arrays(), explicit))


# -- NaN and Inf -----------------------------------------------------------------------------------

# H=6 with a 3-row kernel and stride 2 reads input rows 0..4 only: row 5 feeds nothing.
NONFINITE_PROBLEM = {"h": 6, "w": 5, "kh": 3, "kw": 2, "stride": (2, 1), "groups": 2}


def _put(a, layout, kind, index, value):
    """Set a[index] (index in logical N, C, H, W / C_out, C_in/groups, KH, KW order)."""
    if layout == "NHWC":
        index = (index[0], index[2], index[3], index[1]) if kind == "image" else (
            index[2], index[3], index[1], index[0])  # fmt: skip
    a[index] = value


NONFINITE_CASES = {
    # name: (array, logical index, value)
    "nan-input": ("x", (1, 2, 3, 1), np.nan),
    "nan-input-edge": ("x", (0, 0, 0, 4), np.nan),
    "nan-input-unread-row": ("x", (1, 3, 5, 2), np.nan),
    "inf-input": ("x", (0, 1, 2, 2), np.inf),
    "inf-weight": ("w", (4, 1, 1, 0), np.inf),
    "neg-inf-weight": ("w", (0, 0, 2, 1), -np.inf),
    "nan-weight": ("w", (2, 0, 0, 0), np.nan),
    "nan-grad-output": ("g", (0, 3, 1, 2), np.nan),
    "inf-grad-output": ("g", (1, 5, 0, 0), np.inf),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", NONFINITE_CASES)
def test_nan_inf_propagation(layout, dtype, case):
    p = make_problem(layout, dtype, seed=9, **NONFINITE_PROBLEM)
    name, index, value = NONFINITE_CASES[case]
    # Exact zeros next to the bad value make Inf * 0 = NaN show up too.
    p.x.reshape(-1)[::5] = 0
    p.g.reshape(-1)[::7] = 0
    _put(getattr(p, name), layout, "weight" if name == "w" else "image", index, value)
    results = run_all(*p.arrays(), p.options)
    ref = problem_reference(p)
    y, (bi, bw, bb), gi, gw, gb = results
    for label, actual, want in (
        ("y", y, ref[0]),
        ("grad_input", bi, ref[1]),
        ("grad_weight", bw, ref[2]),
        ("grad_bias", bb, ref[3]),
        ("grad_input alone", gi, ref[1]),
        ("grad_weight alone", gw, ref[2]),
        ("grad_bias alone", gb, ref[3]),
    ):
        for test in (np.isnan, np.isposinf, np.isneginf):
            np.testing.assert_array_equal(test(actual), test(want), err_msg=f"{label} {test}")
        assert_same(actual, want, dtype)
    # Which results the bad value can reach at all.
    reaches = {"x": ("y", "gw"), "w": ("y", "gi"), "g": ("gi", "gw", "gb")}[name]
    if case == "nan-input-unread-row":
        reaches = ()
    for label, arr in (("y", y), ("gi", gi), ("gw", gw), ("gb", gb)):
        assert np.isfinite(arr).all() == (label not in reaches), label


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mask", [(True, True, False), (True, False, True), (False, True, False)])
@pytest.mark.parametrize("case", ["nan-input-edge", "neg-inf-weight", "nan-grad-output"])
@pytest.mark.parametrize("groups", [2, 4], ids=["grouped", "depthwise"])
def test_nan_inf_propagation_with_output_mask(layout, mask, case, groups):
    # part of the gradients goes through the fused kernels too (select_partial_kernel:
    # the serial fused kernel, NCHW's depthwise planes), which are exact for finite
    # values only: the same fallback must hold
    problem = NONFINITE_PROBLEM | {"groups": groups, "c_out": 4 if groups == 4 else 6}
    p = make_problem(layout, np.float32, seed=9, **problem)
    name, index, value = NONFINITE_CASES[case]
    p.x.reshape(-1)[::5] = 0
    p.g.reshape(-1)[::7] = 0
    _put(getattr(p, name), layout, "weight" if name == "w" else "image", index, value)
    results = conv2d_backward(p.g, p.x, p.w, **p.options, output_mask=mask)
    for wanted, actual, want in zip(mask, results, problem_reference(p)[1:], strict=True):
        if not wanted:
            assert actual is None
            continue
        for test in (np.isnan, np.isposinf, np.isneginf):
            np.testing.assert_array_equal(test(actual), test(want), err_msg=f"{test}")
        assert_same(actual, want, np.float32)


# -- dtypes and unbatched arrays -------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("byteswapped", [False, True], ids=["native", "swapped"])
def test_result_dtypes_and_unbatched(layout, dtype, byteswapped):
    p = make_problem(layout, dtype, n=1, stride=(2, 1), padding=(0, 1), dilation=(1, 2))
    one = run_all(*p.arrays(), p.options)
    x, g = p.x[0], p.g[0]
    w, b = p.w, p.b
    if byteswapped:
        x, w, g, b = (a.astype(a.dtype.newbyteorder("S")) for a in (x, w, g, b))
    y, (bi, bw, bb), gi, gw, gb = run_all(x, w, g, b, p.options)
    assert y.shape == p.g.shape[1:]
    assert bi.shape == gi.shape == p.x.shape[1:]
    assert bw.shape == gw.shape == p.w.shape
    assert bb.shape == gb.shape == p.b.shape
    for actual, batched in (
        (y, one[0][0]),
        (bi, one[1][0][0]),
        (gi, one[2][0]),
        (bw, one[1][1]),
        (gw, one[3]),
        (bb, one[1][2]),
        (gb, one[4]),
    ):
        assert actual.dtype == np.dtype(dtype)
        assert actual.dtype.isnative
        np.testing.assert_array_equal(actual, batched)
    assert_all_match_reference(one, problem_reference(p), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_unbatched_with_out(layout):
    p = make_problem(layout, np.float32, n=1, padding=1)
    _, *ref = problem_reference(p)
    out = (np.empty(p.x.shape[1:], np.float32), np.empty(p.w.shape, np.float32), None)
    results = conv2d_backward(p.g[0], p.x[0], p.w, **p.options, out=out)
    assert results[0] is out[0]
    assert results[1] is out[1]
    np.testing.assert_array_equal(out[0], ref[0][0])
    np.testing.assert_array_equal(out[1], ref[1])
    np.testing.assert_array_equal(results[2], ref[2])


# -- input_shape resolves strided ambiguity --------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_grad_input_shape_disambiguates_stride(layout, dtype):
    """H (W) = 7 and 8 give the same 4-row (column) output with stride 2, padding 1, 3x3."""
    options = {"stride": 2, "padding": 1, "dilation": 1, "groups": 2, "layout": layout}
    base = make_problem(layout, dtype, h=8, w=8, kh=3, kw=3, **_geometry(options), seed=6)
    w, g = base.w, base.g
    assert g.shape == image_shape(layout, 2, 6, 4, 4)
    rng = np.random.default_rng(8)
    results = {}
    for h in (7, 8):
        for width in (7, 8):
            x = dyadic(rng, image_shape(layout, 2, 4, h, width), dtype)
            gi = conv2d_grad_input(g, w, x.shape, **options)
            assert gi.shape == x.shape
            _, rgi, rgw, _ = reference(layout, x, w, g, **_geometry(options))
            assert_same(gi, rgi, dtype)
            bi, bw, _ = conv2d_backward(g, x, w, **options)
            np.testing.assert_array_equal(bi, gi)
            assert_same(bw, rgw, dtype)
            results[h, width] = gi
    h_axis, w_axis = (2, 3) if layout == "NCHW" else (1, 2)
    # The last row (column) that only the 8-high (8-wide) input has gets gradient ...
    assert np.take(results[8, 8], 7, axis=h_axis).any()
    assert np.take(results[8, 8], 7, axis=w_axis).any()
    # ... and the rows (columns) both have agree.
    np.testing.assert_array_equal(np.take(results[8, 7], range(7), axis=h_axis), results[7, 7])
    np.testing.assert_array_equal(np.take(results[7, 8], range(7), axis=w_axis), results[7, 7])
    np.testing.assert_array_equal(
        np.take(np.take(results[8, 8], range(7), axis=h_axis), range(7), axis=w_axis),
        results[7, 7],
    )


@pytest.mark.parametrize("padding", [0, 1, 2, ((0, 2), (1, 0))])
@pytest.mark.parametrize("dilation", [1, 2])
def test_depthwise_3x3_nine_tap_path_matches_the_naive_loops(padding, dilation):
    """NHWC depthwise 3x3, stride 1: inner pixels take all nine taps at once, edges tap by tap."""
    rng = np.random.default_rng(11)
    channels, size = 19, 9  # an odd channel count: the vector loop's remainder runs too
    x = rng.standard_normal((2, size, size, channels))
    w = rng.standard_normal((3, 3, 1, channels))
    out = conv2d(x, w, padding=padding, dilation=dilation, groups=channels, layout="NHWC")
    g = rng.standard_normal(out.shape)
    gi = conv2d_grad_input(
        g, w, x.shape, padding=padding, dilation=dilation, groups=channels, layout="NHWC"
    )
    (top, bottom), (left, right) = (
        padding if isinstance(padding, tuple) else ((padding, padding), (padding, padding))
    )
    pads = (top, bottom, left, right)
    expected = naive.grad_input_nchw(
        naive.nhwc_to_nchw(g),
        naive.hwio_to_oihw(w),
        (2, channels, size, size),
        stride=(1, 1),
        padding=pads,
        dilation=(dilation, dilation),
        groups=channels,
    )
    np.testing.assert_allclose(gi, naive.nchw_to_nhwc(expected), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("width", [5, 8, 9, 16, 23])
@pytest.mark.parametrize(("kernel", "padding", "dilation"), [(3, 1, 1), (3, 2, 2), (5, (0, 3), 1)])
def test_depthwise_runs_of_pixels_match_the_naive_loops(width, kernel, padding, dilation):
    """NHWC depthwise, stride 1: grad_weight sums runs of pixels (eight at a time, then one by
    one) and grad_input gathers a row's inner pixels in one call; every run length and
    remainder against the naive loops."""
    rng = np.random.default_rng(width)
    channels = 19  # an odd channel count: the vector loop's remainder runs too
    x = rng.standard_normal((2, 7, width, channels))
    w = rng.standard_normal((kernel, kernel, 1, channels))
    options = {"padding": padding, "dilation": dilation, "groups": channels, "layout": "NHWC"}
    g = rng.standard_normal(conv2d(x, w, **options).shape)
    gi, gw, _ = conv2d_backward(g, x, w, **options)
    pads = padding if isinstance(padding, tuple) else (padding, padding)
    geometry = {
        "stride": (1, 1),
        "padding": (pads[0], pads[0], pads[1], pads[1]),
        "dilation": (dilation, dilation),
        "groups": channels,
    }
    g_nchw = naive.nhwc_to_nchw(g)
    expected_gw = naive.grad_weight_nchw(
        g_nchw, naive.nhwc_to_nchw(x), (channels, 1, kernel, kernel), **geometry
    )
    expected_gi = naive.grad_input_nchw(
        g_nchw, naive.hwio_to_oihw(w), (2, channels, 7, width), **geometry
    )
    np.testing.assert_allclose(gw, naive.oihw_to_hwio(expected_gw), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gi, naive.nchw_to_nhwc(expected_gi), rtol=1e-12, atol=1e-12)
