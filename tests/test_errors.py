"""Every error the public API raises: exception type and full message, pinned.

Each rejected call is made through ``rejected``, which also checks that the
exception is exactly the documented type (not a subclass, not IndexError or a
numba error) and that no array passed to the call was modified.

The base problem: N=2, C_in=4, H=6, W=5, C_out=6, kernel 3x2, groups=2.
"""

import re

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
IMAGE_ORDER = {"NCHW": "(N, C, H, W)", "NHWC": "(N, H, W, C)"}
WEIGHT_ORDER = {"NCHW": "(C_out, C_in/groups, KH, KW)", "NHWC": "(KH, KW, C_in/groups, C_out)"}

GEOMETRY_FUNCS = ("conv2d", "backward", "grad_input", "grad_weight")
ALL_FUNCS = (*GEOMETRY_FUNCS, "grad_bias")
GRAD_FUNCS = ("backward", "grad_input", "grad_weight", "grad_bias")
SINGLE_OUT_FUNCS = ("grad_input", "grad_weight", "grad_bias")

# The array arguments of each function, in the order the API checks them.
ARRAY_ARGS = {
    "conv2d": ("input", "weight", "bias"),
    "backward": ("grad_output", "input", "weight"),
    "grad_input": ("grad_output", "weight"),
    "grad_weight": ("grad_output", "input"),
    "grad_bias": ("grad_output",),
}
FUNC_ARRAY_ARGS = [(f, a) for f, names in ARRAY_ARGS.items() for a in names]
# Which argument's name appears in messages about the input / weight sizes.
INPUT_NAME = {"conv2d": "input", "backward": "input", "grad_input": "input_shape"}
INPUT_NAME["grad_weight"] = "input"
WEIGHT_NAME = {"conv2d": "weight", "backward": "weight", "grad_input": "weight"}
WEIGHT_NAME["grad_weight"] = "weight_shape"


def image_shape(layout, n, c, h, w):
    return (n, c, h, w) if layout == "NCHW" else (n, h, w, c)


def weight_shape(layout, c_out, cin_g, kh, kw):
    return (c_out, cin_g, kh, kw) if layout == "NCHW" else (kh, kw, cin_g, c_out)


def build(
    layout="NCHW",
    *,
    dtype=np.float32,
    n=2,
    c_in=4,
    h=6,
    w=5,
    c_out=6,
    cin_g=None,
    kh=3,
    kw=2,
    groups=2,
    batched=True,
):
    """Arguments (by name) of a valid call with stride 1, padding 0, dilation 1."""
    cin_g = c_in // groups if cin_g is None else cin_g
    rng = np.random.default_rng(1234)
    x_shape = image_shape(layout, n, c_in, h, w)
    g_shape = image_shape(layout, n, c_out, max(h - kh + 1, 1), max(w - kw + 1, 1))
    if not batched:
        x_shape, g_shape = x_shape[1:], g_shape[1:]
    args = {
        "input": rng.standard_normal(x_shape).astype(dtype),
        "weight": rng.standard_normal(weight_shape(layout, c_out, cin_g, kh, kw)).astype(dtype),
        "bias": rng.standard_normal(c_out).astype(dtype),
        "grad_output": rng.standard_normal(g_shape).astype(dtype),
    }
    args["input_shape"] = args["input"].shape
    args["weight_shape"] = args["weight"].shape
    return args


def options(func, layout, groups=2):
    return {"layout": layout} if func == "grad_bias" else {"layout": layout, "groups": groups}


def call(func, args, **kwargs):
    if func == "conv2d":
        return conv2d(args["input"], args["weight"], args["bias"], **kwargs)
    if func == "backward":
        return conv2d_backward(args["grad_output"], args["input"], args["weight"], **kwargs)
    if func == "grad_input":
        return conv2d_grad_input(args["grad_output"], args["weight"], args["input_shape"], **kwargs)
    if func == "grad_weight":
        return conv2d_grad_weight(
            args["grad_output"], args["input"], args["weight_shape"], **kwargs
        )
    assert func == "grad_bias"
    return conv2d_grad_bias(args["grad_output"], **kwargs)


def _arrays_in(values):
    for value in values:
        if isinstance(value, np.ndarray):
            yield value
        elif isinstance(value, (tuple, list)):
            yield from _arrays_in(value)


def exact(message):
    """A regex matching exactly ``message``."""
    return "^" + re.escape(message) + "$"


def rejected(exc, pattern, func, args, **kwargs):
    """``call`` raises exactly ``exc`` matching ``pattern`` and modifies no array."""
    arrays = list(_arrays_in([*args.values(), *kwargs.values()]))
    before = [(a.dtype, a.shape, a.tobytes()) for a in arrays]
    with pytest.raises(exc, match=pattern) as info:
        call(func, args, **kwargs)
    assert info.type is exc, f"{info.type.__name__}: {info.value}"
    assert [(a.dtype, a.shape, a.tobytes()) for a in arrays] == before, "an array was modified"


# -- array arguments: type, dtype, ndim ------------------------------------------------------------


NOT_ARRAYS = [
    pytest.param(lambda a: a.tolist(), "list", id="list"),
    pytest.param(lambda a: 1.0, "float", id="float"),
    pytest.param(lambda a: 3, "int", id="int"),
    pytest.param(lambda a: np.float32(1.0), "float32", id="numpy-scalar"),
    pytest.param(lambda a: None, "NoneType", id="None"),
    pytest.param(lambda a: "abc", "str", id="str"),
    pytest.param(lambda a: memoryview(a), "memoryview", id="memoryview"),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("func", "name"), FUNC_ARRAY_ARGS)
@pytest.mark.parametrize(("make", "type_name"), NOT_ARRAYS)
def test_non_array_argument(layout, func, name, make, type_name):
    if name == "bias" and type_name == "NoneType":
        pytest.skip("bias=None means no bias")
    args = build(layout)
    args[name] = make(args[name])
    message = f"{name} must be a numpy.ndarray of float32 or float64; got {type_name}"
    rejected(TypeError, exact(message), func, args, **options(func, layout))


BAD_DTYPES = [
    "int32",
    "int64",
    "uint8",
    "bool",
    "float16",
    ">f2",
    "complex64",
    "complex128",
    "object",
    "U3",
    "datetime64[s]",
    pytest.param(
        np.longdouble,
        marks=pytest.mark.skipif(
            np.dtype(np.longdouble) == np.dtype(np.float64), reason="longdouble is float64 here"
        ),
        id="longdouble",
    ),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("func", "name"), FUNC_ARRAY_ARGS)
@pytest.mark.parametrize("dtype", BAD_DTYPES)
def test_bad_dtype(layout, func, name, dtype):
    args = build(layout)
    args[name] = np.zeros(args[name].shape, dtype)
    message = f"{name} must have dtype float32 or float64; got {np.dtype(dtype)}"
    rejected(TypeError, exact(message), func, args, **options(func, layout))


MIXED = [(f, a) for f, a in FUNC_ARRAY_ARGS if len(ARRAY_ARGS[f]) > 1]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("func", "odd_one"), MIXED)
@pytest.mark.parametrize(
    ("base", "odd"),
    [("float32", "float64"), ("float64", "float32"), ("float32", ">f8"), (">f8", "<f4")],
)
def test_mixed_float_dtypes(layout, func, odd_one, base, odd):
    args = build(layout)
    names = ARRAY_ARGS[func]
    dtypes = {name: np.dtype(odd if name == odd_one else base) for name in names}
    for name in names:
        args[name] = args[name].astype(dtypes[name])
    native = {name: dt.newbyteorder("=") for name, dt in dtypes.items()}
    first = names[0]
    other = next(name for name in names[1:] if native[name] != native[first])
    message = (
        f"all arrays must have one dtype; {first} is {native[first]} but {other} is {native[other]}"
    )
    rejected(TypeError, exact(message), func, args, **options(func, layout))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("func", ["conv2d", "backward", "grad_weight"])
@pytest.mark.parametrize(
    "make", [lambda a: a[0, 0], lambda a: a[None], lambda a: a[0, 0, 0, 0, ...]]
)
def test_input_wrong_ndim(layout, func, make):
    args = build(layout)
    args["input"] = make(args["input"])
    shape = args["input"].shape
    message = f"input must be 4 or 3-D {IMAGE_ORDER[layout]}; got shape {shape}"
    rejected(ValueError, exact(message), func, args, **options(func, layout))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("func", ["conv2d", "backward", "grad_input"])
@pytest.mark.parametrize("make", [lambda a: a[0], lambda a: a[None], lambda a: a[0, 0, 0, 0, ...]])
def test_weight_wrong_ndim(layout, func, make):
    args = build(layout)
    args["weight"] = make(args["weight"])
    shape = args["weight"].shape
    message = f"weight must be 4-D {WEIGHT_ORDER[layout]}; got shape {shape}"
    rejected(ValueError, exact(message), func, args, **options(func, layout))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("make", [lambda a: a[0, 0], lambda a: a[None], lambda a: a.ravel()])
def test_grad_bias_grad_output_wrong_ndim(layout, make):
    args = build(layout)
    args["grad_output"] = make(args["grad_output"])
    shape = args["grad_output"].shape
    message = f"grad_output must be 4 or 3-D {IMAGE_ORDER[layout]}; got shape {shape}"
    rejected(ValueError, exact(message), "grad_bias", args, layout=layout)


# -- layout ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("func", ALL_FUNCS)
@pytest.mark.parametrize("layout", ["nchw", "NCWH", "NHWC ", "", None, 0, ["NCHW"], b"NCHW"])
def test_unknown_layout(func, layout):
    args = build("NCHW")
    message = f"layout must be 'NCHW' or 'NHWC'; got {layout!r}"
    rejected(ValueError, exact(message), func, args, **options(func, "NCHW") | {"layout": layout})


# -- channels and groups ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("func", GEOMETRY_FUNCS)
@pytest.mark.parametrize(
    ("c_in", "cin_g", "c_out", "groups"),
    [(3, 2, 6, 1), (6, 2, 4, 2), (4, 3, 6, 2), (4, 0, 6, 1), (0, 1, 2, 2)],
)
def test_channel_mismatch(layout, func, c_in, cin_g, c_out, groups):
    args = build(layout, c_in=c_in, cin_g=cin_g, c_out=c_out, groups=groups)
    message = (
        f"{WEIGHT_NAME[func]} has C_in/groups={cin_g}, so {INPUT_NAME[func]} must have "
        f"{cin_g * groups} channels with groups={groups}; got C_in={c_in}"
    )
    rejected(ValueError, exact(message), func, args, **options(func, layout, groups))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("func", GEOMETRY_FUNCS)
@pytest.mark.parametrize(
    ("c_in", "cin_g", "c_out", "groups"),
    [(4, 1, 6, 4), (4, 1, 6, 3), (5, 2, 5, 2), (4, 4, 4, 8)],
)
def test_groups_not_dividing_channels(layout, func, c_in, cin_g, c_out, groups):
    args = build(layout, c_in=c_in, cin_g=cin_g, c_out=c_out, groups=groups)
    message = (
        f"groups={groups} must divide both the input channels C_in={c_in} and "
        f"the output channels C_out={c_out}"
    )
    rejected(ValueError, exact(message), func, args, **options(func, layout, groups))


# -- grad_output shape -----------------------------------------------------------------------------


def _one_more_row(layout, g):
    axis = 2 if layout == "NCHW" else 1
    axis -= 4 - g.ndim
    return np.zeros((*g.shape[:axis], g.shape[axis] + 1, *g.shape[axis + 1 :]), g.dtype)


def _one_channel_less(layout, g):
    if layout == "NHWC":
        return g[..., :-1]
    return g[:, :-1] if g.ndim == 4 else g[:-1]


GRAD_OUTPUT_VARIANTS = {
    "extra-row": _one_more_row,
    "missing-channel": _one_channel_less,
    "no-batch-axis": lambda layout, g: g[0],
    "extra-axis": lambda layout, g: g[None],
    "other-layout": lambda layout, g: np.ascontiguousarray(np.moveaxis(g, -1, -3)),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("func", ["backward", "grad_input", "grad_weight"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("variant", GRAD_OUTPUT_VARIANTS)
def test_grad_output_wrong_shape(layout, func, batched, variant):
    args = build(layout, batched=batched)
    expected = args["grad_output"].shape
    bad = GRAD_OUTPUT_VARIANTS[variant](layout, args["grad_output"])
    assert bad.shape != expected
    args["grad_output"] = bad
    message = (
        f"grad_output must have shape {expected} for these inputs and options "
        f"({layout}: {IMAGE_ORDER[layout]}{'' if batched else ' without N'}); got {bad.shape}"
    )
    rejected(ValueError, exact(message), func, args, **options(func, layout))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("func", ["backward", "grad_input", "grad_weight"])
@pytest.mark.parametrize(
    ("kwargs", "expected_hw"),
    [
        ({"stride": 2}, (2, 2)),
        ({"padding": 1}, (6, 6)),
        ({"dilation": (2, 1)}, (2, 4)),
        ({"padding": "same"}, (6, 5)),
    ],
)
def test_grad_output_shape_follows_options(layout, func, kwargs, expected_hw):
    """The message's expected shape is the one the options give, not the stride-1 one."""
    args = build(layout)
    expected = image_shape(layout, 2, 6, *expected_hw)
    got = args["grad_output"].shape
    message = (
        f"grad_output must have shape {expected} for these inputs and options "
        f"({layout}: {IMAGE_ORDER[layout]}); got {got}"
    )
    rejected(ValueError, exact(message), func, args, **options(func, layout), **kwargs)


# -- kernel does not fit ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("func", GEOMETRY_FUNCS)
@pytest.mark.parametrize(
    ("size", "kernel", "kwargs", "dilated", "padded", "pads"),
    [
        ((6, 5), (3, 2), {"dilation": 3}, (7, 4), (6, 5), (0, 0, 0, 0)),
        ((6, 5), (3, 2), {"dilation": (1, 5)}, (3, 6), (6, 5), (0, 0, 0, 0)),
        ((6, 5), (9, 2), {"padding": 1}, (9, 2), (8, 7), (1, 1, 1, 1)),
        ((6, 5), (8, 2), {"padding": ((0, 1), (0, 0))}, (8, 2), (7, 5), (0, 1, 0, 0)),
        ((6, 5), (3, 7), {"padding": (2, 0)}, (3, 7), (10, 5), (2, 2, 0, 0)),
        ((2, 2), (3, 3), {}, (3, 3), (2, 2), (0, 0, 0, 0)),
        ((0, 5), (1, 1), {}, (1, 1), (0, 5), (0, 0, 0, 0)),
        ((6, 0), (1, 1), {"padding": ((1, 1), (0, 0))}, (1, 1), (8, 0), (1, 1, 0, 0)),
    ],
)
def test_kernel_larger_than_padded_input(layout, func, size, kernel, kwargs, dilated, padded, pads):
    args = build(layout, h=size[0], w=size[1], kh=kernel[0], kw=kernel[1])
    name = INPUT_NAME[func]
    message = (
        f"kernel is larger than the padded {name}: dilated kernel size "
        f"{dilated[0]}x{dilated[1]}, padded {name} size {padded[0]}x{padded[1]} "
        f"({size[0]}x{size[1]} with padding (top, bottom, left, right) = {pads})"
    )
    rejected(ValueError, exact(message), func, args, **options(func, layout), **kwargs)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("func", GEOMETRY_FUNCS)
@pytest.mark.parametrize("kernel", [(0, 2), (3, 0), (0, 0)])
def test_zero_size_kernel(layout, func, kernel):
    args = build(layout, kh=kernel[0], kw=kernel[1])
    shape = args["weight"].shape
    message = (
        f"{WEIGHT_NAME[func]} must have a kernel of at least 1x1; got KH={kernel[0]}, "
        f"KW={kernel[1]} from shape {shape} ({WEIGHT_ORDER[layout]})"
    )
    rejected(ValueError, exact(message), func, args, **options(func, layout))


# -- stride, dilation, groups ----------------------------------------------------------------------


PAIR_VALUE_ERRORS = [0, -1, (1, 0), (0, 1), (-2, 3), [1, -1], np.int64(0), (np.int32(0), 1)]
PAIR_TYPE_ERRORS = [
    True,
    False,
    np.True_,
    1.0,
    2.5,
    np.float64(1.0),
    (1, 1.0),
    (True, 1),
    (1, None),
    "1",
    "11",
    None,
    (1,),
    (1, 1, 1),
    (),
    ((1, 1), (1, 1)),
    np.array([1, 1]),
    np.array(1),
    {1: 1, 2: 2},
]


@pytest.mark.parametrize("func", GEOMETRY_FUNCS)
@pytest.mark.parametrize("name", ["stride", "dilation"])
@pytest.mark.parametrize("value", PAIR_VALUE_ERRORS, ids=repr)
def test_stride_dilation_below_one(func, name, value):
    args = build("NCHW")
    message = f"{name} must be >= 1; got {value!r}"
    rejected(ValueError, exact(message), func, args, **options(func, "NCHW"), **{name: value})


@pytest.mark.parametrize("func", GEOMETRY_FUNCS)
@pytest.mark.parametrize("name", ["stride", "dilation"])
@pytest.mark.parametrize("value", PAIR_TYPE_ERRORS, ids=repr)
def test_stride_dilation_bad_type(func, name, value):
    args = build("NCHW")
    message = f"{name} must be an int or a pair of ints (h, w); got {value!r}"
    rejected(TypeError, exact(message), func, args, **options(func, "NCHW"), **{name: value})


@pytest.mark.parametrize("func", GEOMETRY_FUNCS)
@pytest.mark.parametrize("groups", [0, -1, -2, np.int64(0)], ids=repr)
def test_groups_below_one(func, groups):
    args = build("NCHW")
    message = f"groups must be >= 1; got {groups!r}"
    rejected(ValueError, exact(message), func, args, **options(func, "NCHW", groups))


@pytest.mark.parametrize("func", GEOMETRY_FUNCS)
@pytest.mark.parametrize(
    "groups", [2.0, "2", None, True, np.True_, (2,), np.array(2), np.float32(2)], ids=repr
)
def test_groups_bad_type(func, groups):
    args = build("NCHW")
    message = f"groups must be an int; got {groups!r}"
    rejected(TypeError, exact(message), func, args, **options(func, "NCHW", groups))


# -- padding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("func", GEOMETRY_FUNCS)
@pytest.mark.parametrize(
    "padding",
    [-1, (0, -1), (-1, 0), ((0, 0), (0, -1)), ((-1, 0), (0, 0)), np.int64(-2), [[0, 0], [-3, 0]]],
    ids=repr,
)
def test_negative_padding(func, padding):
    args = build("NCHW")
    message = f"padding must be >= 0; got {padding!r}"
    rejected(ValueError, exact(message), func, args, **options(func, "NCHW"), padding=padding)


@pytest.mark.parametrize("func", GEOMETRY_FUNCS)
@pytest.mark.parametrize(
    "padding",
    [
        1.0,
        True,
        np.True_,
        None,
        (1,),
        (1, 2, 3),
        (1.0, 1),
        (1, "1"),
        ((1, 1), 1),
        (1, (1, 1)),
        ((1, 1, 1), (1, 1)),
        ((1,), (1,)),
        ((1, 1),),
        ((1, 1), (1, 1), (1, 1)),
        ((1, 1.0), (1, 1)),
        ((True, 1), (1, 1)),
        b"same",
        np.array([1, 1]),
        np.array(1),
        {"h": 1, "w": 1},
    ],
    ids=repr,
)
def test_padding_bad_type(func, padding):
    args = build("NCHW")
    message = (
        "padding must be an int, (ph, pw), ((top, bottom), (left, right)), "
        f"'valid' or 'same'; got {padding!r}"
    )
    rejected(TypeError, exact(message), func, args, **options(func, "NCHW"), padding=padding)


@pytest.mark.parametrize("func", GEOMETRY_FUNCS)
@pytest.mark.parametrize("padding", ["SAME", "Same", "full", "", " same", "valid ", "causal"])
def test_padding_unknown_string(func, padding):
    args = build("NCHW")
    message = f"padding must be an int, a pair, a pair of pairs, 'valid' or 'same'; got {padding!r}"
    rejected(ValueError, exact(message), func, args, **options(func, "NCHW"), padding=padding)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("func", GEOMETRY_FUNCS)
@pytest.mark.parametrize(
    ("stride", "normal"), [(2, (2, 2)), ((1, 2), (1, 2)), ((2, 1), (2, 1)), ([3, 3], (3, 3))]
)
def test_padding_same_needs_stride_one(layout, func, stride, normal):
    args = build(layout)
    message = f"padding='same' needs stride 1; got stride={normal}"
    rejected(
        ValueError,
        exact(message),
        func,
        args,
        **options(func, layout),
        stride=stride,
        padding="same",
    )


# -- bias ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("shape", [(7,), (5,), (0,), (), (1, 6), (6, 1), (2, 6)])
def test_bias_wrong_shape(layout, batched, shape):
    args = build(layout, batched=batched)
    args["bias"] = np.ones(shape, np.float32)
    message = f"bias must have shape (6,) = (C_out,); got {shape}"
    rejected(ValueError, exact(message), "conv2d", args, **options("conv2d", layout))


# -- input_shape / weight_shape --------------------------------------------------------------------


SHAPE_FUNCS = [("grad_input", "input_shape", "4 or 3"), ("grad_weight", "weight_shape", "4")]


@pytest.mark.parametrize(("func", "name", "lengths"), SHAPE_FUNCS)
@pytest.mark.parametrize(
    "make",
    [
        lambda s: None,
        lambda s: 5,
        lambda s: 5.0,
        lambda s: "2465",
        lambda s: np.array(s),
        lambda s: [*s[:-1], float(s[-1])],
        lambda s: (*s[:-1], True),
        lambda s: (*s[:-1], None),
        lambda s: (*s[:-1], np.float64(s[-1])),
        lambda s: set(s),
    ],
)
def test_shape_argument_bad_type(func, name, lengths, make):
    args = build("NCHW")
    args[name] = value = make(args[name])
    message = f"{name} must be a tuple of ints; got {value!r}"
    rejected(TypeError, exact(message), func, args, **options(func, "NCHW"))


@pytest.mark.parametrize(("func", "name", "lengths"), SHAPE_FUNCS)
@pytest.mark.parametrize(
    "make",
    [
        lambda s: s[:2],
        lambda s: (*s, 1),
        lambda s: (),
        lambda s: (s[0], -s[1], *s[2:]),
        lambda s: (*s[:-1], -1),
        lambda s: [s[0], np.int64(-1), *s[2:]],
    ],
)
def test_shape_argument_bad_value(func, name, lengths, make):
    args = build("NCHW")
    args[name] = value = make(args[name])
    message = f"{name} must be {lengths} non-negative ints; got {tuple(value)!r}"
    rejected(ValueError, exact(message), func, args, **options(func, "NCHW"))


def test_weight_shape_of_three_is_rejected():
    args = build("NCHW")
    args["weight_shape"] = (6, 2, 3)
    message = "weight_shape must be 4 non-negative ints; got (6, 2, 3)"
    rejected(ValueError, exact(message), "grad_weight", args, **options("grad_weight", "NCHW"))


# -- output_mask -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mask",
    [
        (True, True),
        (True, True, True, True),
        (),
        (1, 1, 1),
        (True, 0, True),
        (True, None, True),
        None,
        True,
        "TTT",
        np.array([True, True, True]),
        {True, False},
    ],
    ids=repr,
)
def test_output_mask_bad(mask):
    args = build("NCHW")
    message = f"output_mask must be three bools (grad_input, grad_weight, grad_bias); got {mask!r}"
    rejected(
        TypeError, exact(message), "backward", args, **options("backward", "NCHW"), output_mask=mask
    )


# -- out -------------------------------------------------------------------------------------------


def result_shapes(args):
    return (args["input"].shape, args["weight"].shape, args["bias"].shape)


@pytest.mark.parametrize(
    "make",
    [
        lambda shapes: np.zeros(3),
        lambda shapes: np.zeros(shapes[0], np.float32),
        lambda shapes: {},
        lambda shapes: "abc",
        lambda shapes: 0,
        lambda shapes: (None, None),
        lambda shapes: (),
        lambda shapes: [None, None, None, None],
        lambda shapes: (np.zeros(shapes[0], np.float32),),
        lambda shapes: iter([None, None, None]),
    ],
)
def test_backward_out_bad_container(make):
    args = build("NCHW")
    out = make(result_shapes(args))
    got = type(out).__name__
    if isinstance(out, (tuple, list)):
        got += f" of length {len(out)}"
    message = (
        "out must be None or a tuple of three arrays or Nones "
        f"(grad_input, grad_weight, grad_bias); got {got}"
    )
    rejected(TypeError, exact(message), "backward", args, **options("backward", "NCHW"), out=out)


SINGLE_RESULT = {"grad_input": 0, "grad_weight": 1, "grad_bias": 2}


@pytest.mark.parametrize("func", SINGLE_OUT_FUNCS)
@pytest.mark.parametrize(
    "make",
    [
        lambda s: np.zeros(s, np.float32).tolist(),
        lambda s: (np.zeros(s, np.float32),),
        lambda s: [np.zeros(s, np.float32)],
        lambda s: 0.0,
        lambda s: "out",
        lambda s: np.float32(0),
    ],
)
def test_single_out_not_an_array(func, make):
    args = build("NCHW")
    out = make(result_shapes(args)[SINGLE_RESULT[func]])
    message = f"out must be a numpy.ndarray; got {type(out).__name__}"
    rejected(TypeError, exact(message), func, args, **options(func, "NCHW"), out=out)


def bad_out_entries(shape, dtype):
    """{label: (bad array, exception, message with {name})} for an out entry of ``shape``."""
    want = np.dtype(dtype)
    other = np.dtype(np.float64 if want == np.float32 else np.float32)
    readonly = np.zeros(shape, dtype)
    readonly.flags.writeable = False

    def bad_shape(s):
        return np.zeros(s, dtype), ValueError, f"{{name}} must have shape {shape}; got {s}"

    def bad_dtype(dt):
        dt = np.dtype(dt)
        return np.zeros(shape, dt), ValueError, f"{{name}} must have dtype {want}; got {dt}"

    not_writeable = "{name} must be writeable; got a read-only array"
    return {
        "list": (np.zeros(shape).tolist(), TypeError, "{name} must be a numpy.ndarray; got list"),
        "wider": bad_shape((*shape[:-1], shape[-1] + 1)),
        "no-first-axis": bad_shape(shape[1:]),
        "extra-axis": bad_shape((1, *shape)),
        "transposed": bad_shape(shape[::-1]),
        "other-float": bad_dtype(other),
        "other-float-swapped": bad_dtype(other.newbyteorder("S")),
        "int32": bad_dtype(np.int32),
        "float16": bad_dtype(np.float16),
        "read-only": (readonly, ValueError, not_writeable),
        "broadcast": (np.broadcast_to(np.zeros((), dtype), shape), ValueError, not_writeable),
    }


OUT_ENTRY_LABELS = list(bad_out_entries((2, 3), np.float32))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [0, 1, 2])
@pytest.mark.parametrize("label", OUT_ENTRY_LABELS)
def test_backward_out_entry_bad(layout, dtype, k, label):
    args = build(layout, dtype=dtype)
    shapes = result_shapes(args)
    bad, exc, template = bad_out_entries(shapes[k], dtype)[label]
    if label == "transposed" and np.shape(bad) == shapes[k]:
        pytest.skip("a 1-D shape reversed is the same shape")
    out = [np.zeros(s, dtype) for s in shapes]
    out[k] = bad
    message = template.format(name=f"out[{k}]")
    rejected(exc, exact(message), "backward", args, **options("backward", layout), out=tuple(out))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("func", SINGLE_OUT_FUNCS)
@pytest.mark.parametrize("label", OUT_ENTRY_LABELS)
def test_single_out_bad(layout, dtype, func, label):
    args = build(layout, dtype=dtype)
    shape = result_shapes(args)[SINGLE_RESULT[func]]
    bad, exc, template = bad_out_entries(shape, dtype)[label]
    if label == "transposed" and np.shape(bad) == shape:
        pytest.skip("a 1-D shape reversed is the same shape")
    message = template.format(name="out")
    rejected(exc, exact(message), func, args, **options(func, layout), out=bad)


@pytest.mark.parametrize("k", [0, 1, 2])
@pytest.mark.parametrize("accumulate", [False, True])
def test_backward_out_given_for_masked_result(k, accumulate):
    args = build("NCHW")
    shapes = result_shapes(args)
    mask = [True, True, True]
    mask[k] = False
    out = tuple(np.zeros(s, np.float32) for s in shapes)
    message = f"out[{k}] must be None because output_mask[{k}] is False; got an array"
    rejected(
        ValueError,
        exact(message),
        "backward",
        args,
        **options("backward", "NCHW"),
        output_mask=tuple(mask),
        out=out,
        accumulate=accumulate,
    )


# -- accumulate ------------------------------------------------------------------------------------


BAD_ACCUMULATE = [1, 0, 1.0, None, "True", "", np.array(True), [True], np.int8(1)]


@pytest.mark.parametrize("func", GRAD_FUNCS)
@pytest.mark.parametrize("with_out", [False, True], ids=["no-out", "with-out"])
@pytest.mark.parametrize("accumulate", BAD_ACCUMULATE, ids=repr)
def test_accumulate_not_bool(func, with_out, accumulate):
    args = build("NCHW")
    shapes = result_shapes(args)
    kwargs = options(func, "NCHW")
    if with_out:
        if func == "backward":
            kwargs["out"] = tuple(np.zeros(s, np.float32) for s in shapes)
        else:
            kwargs["out"] = np.zeros(shapes[SINGLE_RESULT[func]], np.float32)
    message = f"accumulate must be a bool; got {accumulate!r}"
    rejected(TypeError, exact(message), func, args, **kwargs, accumulate=accumulate)


@pytest.mark.parametrize("func", GRAD_FUNCS)
@pytest.mark.parametrize("accumulate", [True, np.True_], ids=repr)
def test_accumulate_without_out(func, accumulate):
    args = build("NCHW")
    message = "accumulate=True adds into existing gradients, so it needs out=...; got out=None"
    rejected(ValueError, exact(message), func, args, **options(func, "NCHW"), accumulate=accumulate)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_accumulate_with_none_entry_for_requested_result(k):
    args = build("NCHW")
    out = [np.zeros(s, np.float32) for s in result_shapes(args)]
    out[k] = None
    message = (
        f"accumulate=True adds into existing gradients, so it needs out[{k}]=...; got out[{k}]=None"
    )
    rejected(
        ValueError,
        exact(message),
        "backward",
        args,
        **options("backward", "NCHW"),
        out=tuple(out),
        accumulate=True,
    )


# -- precedence: the first problem found is the one reported ---------------------------------------


def test_layout_checked_before_arrays():
    args = build("NCHW")
    args["input"] = [1.0]
    rejected(ValueError, "^layout must be", "conv2d", args, layout="NCWH")


def test_dtype_checked_before_shapes():
    args = build("NCHW")
    args["input"] = np.zeros((3,), np.int32)
    rejected(TypeError, "^input must have dtype", "conv2d", args, layout="NCHW", groups=2)


# -- integers beyond int64 -------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [2**63, 2**64, 10**30])
def test_huge_stride_is_handled(stride):
    x = np.ones((1, 1, 5, 5))
    w = np.ones((1, 1, 3, 3))
    with pytest.raises(ValueError, match=r"^stride must be at most 2147483647; got "):
        conv2d(x, w, stride=stride)


def test_remembered_problems_never_skip_a_check():
    """describe() remembers problems, but only by exact types: True and 1.0 are not 1."""
    x, w, g = np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3))
    for _ in range(2):  # the second call is answered from memory
        gi, _, _ = conv2d_backward(g, x, w, stride=1, padding=0)
        assert gi.shape == x.shape
    for bad in (True, 1.0, np.float64(1.0)):
        with pytest.raises(TypeError, match="stride"):
            conv2d_backward(g, x, w, stride=bad, padding=0)
    with pytest.raises(ValueError, match="grad_output"):
        conv2d_backward(g, x, w, stride=1, padding=1)  # 5x5 output expected
