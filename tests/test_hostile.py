"""Hostile arguments: a fuzz of every public function.

Each example starts from a valid call and spoils one to three of its arguments
with values of the wrong type, rank, sign, size or nesting. Whatever happens,
the only exceptions that may escape are TypeError and ValueError, with a
message that names an argument; and no array passed in is modified.
"""

import inspect
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convgrad

PUBLIC = {
    "conv2d": convgrad.conv2d,
    "conv2d_backward": convgrad.conv2d_backward,
    "conv2d_grad_input": convgrad.conv2d_grad_input,
    "conv2d_grad_weight": convgrad.conv2d_grad_weight,
    "conv2d_grad_bias": convgrad.conv2d_grad_bias,
    "warmup": convgrad.warmup,
}


def valid_arguments(name, layout):
    """A small valid call of ``name``: {parameter: value}."""
    rng = np.random.default_rng(0)
    nhwc = layout == "NHWC"
    x = rng.standard_normal((2, 5, 5, 4) if nhwc else (2, 4, 5, 5))
    w = rng.standard_normal((3, 3, 2, 6) if nhwc else (6, 2, 3, 3))
    g = rng.standard_normal((2, 5, 5, 6) if nhwc else (2, 6, 5, 5))
    opts = {"stride": 1, "padding": 1, "dilation": 1, "groups": 2, "layout": layout}
    return {
        "conv2d": {"input": x, "weight": w, "bias": np.zeros(6), **opts},
        "conv2d_backward": {
            "grad_output": g,
            "input": x,
            "weight": w,
            **opts,
            "output_mask": (True, True, True),
            "out": None,
            "accumulate": False,
        },
        "conv2d_grad_input": {
            "grad_output": g,
            "weight": w,
            "input_shape": x.shape,
            **opts,
            "out": np.zeros_like(x),
            "accumulate": False,
        },
        "conv2d_grad_weight": {
            "grad_output": g,
            "input": x,
            "weight_shape": w.shape,
            **opts,
            "out": None,
            "accumulate": False,
        },
        "conv2d_grad_bias": {"grad_output": g, "layout": layout, "out": None, "accumulate": False},
        "warmup": {"dtypes": ["float32"], "layouts": [layout], "forward": False},
    }[name]


class Opaque:
    """An object no function should accept."""

    def __repr__(self):
        return "Opaque()"


def arrays_of_any_kind():
    dtypes = st.sampled_from(
        ["float32", "float64", "float16", "int8", "int64", "bool", "complex64", "object", "<U1"]
    )
    shapes = st.lists(st.integers(0, 4), min_size=0, max_size=5).map(tuple)

    def build(dtype, shape, fill):
        if dtype == "object":
            return np.full(shape, None, dtype=object)
        if dtype == "<U1":
            return np.full(shape, "a")
        with np.errstate(invalid="ignore"):  # NaN to int: whatever numpy makes of it
            return np.full(shape, fill).astype(dtype)

    return st.builds(build, dtypes, shapes, st.sampled_from([0.0, 1.5, -2.0, np.nan, np.inf]))


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 2**31, 2**63, 2**64, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(max_magnitude=10),
    st.text(max_size=6),
    st.sampled_from(["NCHW", "NHWC", "same", "valid", "nchw", "", "float32"]),
    st.binary(max_size=4),
    st.builds(Opaque),
    st.sampled_from([np.float32(1), np.int64(3), np.bool_(True), Ellipsis, slice(1), {}, set()]),
)
hostile = st.recursive(
    st.one_of(scalars, arrays_of_any_kind()),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.lists(inner, max_size=4).map(tuple)),
    max_leaves=8,
)


def arrays_in(value):
    """Every ndarray in ``value`` (nested lists and tuples included)."""
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from arrays_in(item)


def snapshot(arguments, skip=()):
    return [
        (a, a.copy())
        for key, value in arguments.items()
        if key not in skip
        for a in arrays_in(value)
    ]


def unchanged(before):
    return all(
        a.shape == copy.shape and a.dtype == copy.dtype and a.tobytes() == copy.tobytes()
        for a, copy in before
    )


@settings(
    # CONVGRAD_FUZZ_EXAMPLES=20000 for a longer hunt than CI's
    max_examples=int(os.environ.get("CONVGRAD_FUZZ_EXAMPLES", "1000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    name=st.sampled_from(sorted(PUBLIC)),
    layout=st.sampled_from(["NCHW", "NHWC"]),
    spoil=st.data(),
)
def test_hostile_arguments(name, layout, spoil):
    func = PUBLIC[name]
    arguments = valid_arguments(name, layout)
    names = sorted(arguments)
    for key in spoil.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)):
        arguments[key] = spoil.draw(hostile, label=key)
    before = snapshot(arguments)
    inputs = snapshot(arguments, skip=("out",))  # a successful call writes into out
    signature = inspect.signature(func)
    positional = [
        arguments.pop(p.name)
        for p in signature.parameters.values()
        if p.kind is p.POSITIONAL_OR_KEYWORD and p.name in arguments and name != "warmup"
    ]
    try:
        func(*positional, **arguments)
    except (TypeError, ValueError) as error:
        message = str(error)
        assert message, f"{type(error).__name__} without a message"
        assert any(n in message for n in [*names, "arrays"]), message
        assert unchanged(before), "a refused call modified an argument"
    except MemoryError as error:
        # a valid but huge problem (padding=8221 makes a 24 GiB output): the documented
        # refusal when a result cannot be allocated (``_arrays.allocate``)
        assert "cannot allocate" in str(error) or "Unable to allocate" in str(error), error
        assert unchanged(before), "a refused call modified an argument"
    assert unchanged(inputs), "an input was modified"


@pytest.mark.parametrize("name", ["conv2d_grad_input", "conv2d_grad_weight"])
def test_huge_shape_entries_are_refused(name):
    arguments = valid_arguments(name, "NCHW")
    key = "input_shape" if name == "conv2d_grad_input" else "weight_shape"
    arguments[key] = (2**70, 4, 5, 5) if key == "input_shape" else (6, 2, 2**70, 3)
    with pytest.raises(ValueError, match=key):
        PUBLIC[name](**arguments)
