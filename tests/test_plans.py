"""Remembered plans (``convgrad._plans``): repeated tiny calls skip the checks, never the rules.

Every test makes a plan with a first, ordinary call and then checks that a
second call with the same key gives the same bits as the long way, and that
whatever the key cannot see (contiguity, read-only arrays, NaN, byte order,
subclasses, option types) still goes the long way.
"""

import numpy as np
import pytest

import convgrad
from convgrad import _plans
from convgrad.reference import conv2d_backward_reference

# (layout, input shape, weight shape, options): serial fused problems, both kernels
# (shifted at stride 1, padded at other strides), batched and not, NCHW and NHWC.
CASES = [
    ("NCHW", (1, 6, 12, 12), (16, 6, 5, 5), {}),
    ("NCHW", (6, 12, 12), (16, 6, 5, 5), {"padding": 2}),
    ("NHWC", (28, 28, 1), (3, 3, 1, 6), {}),
    ("NHWC", (2, 9, 9, 4), (3, 3, 2, 8), {"stride": 2, "padding": 1, "groups": 2}),
    ("NCHW", (2, 3, 10, 11), (4, 3, 3, 3), {"stride": (2, 1), "dilation": 2, "padding": (1, 2)}),
    ("NCHW", (2, 3, 10, 11), (4, 3, 3, 2), {"dilation": (1, 2), "padding": "same"}),
    ("NHWC", (2, 10, 11, 3), (3, 3, 3, 4), {"padding": ((1, 0), (2, 1))}),  # as Conv2d passes it
]
# A list, not a tuple of bools: takes the long way every time.
LONG_WAY = [True, True, True]


def _arrays(layout, input_shape, weight_shape, options, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(input_shape).astype(dtype)
    w = rng.standard_normal(weight_shape).astype(dtype)
    out_shape = convgrad.conv2d(x, w, layout=layout, **options).shape
    g = rng.standard_normal(out_shape).astype(dtype)
    return g, x, w


def _key(g, x, w, layout, options):
    return _plans.plan_key(
        g,
        x,
        w,
        layout,
        options.get("stride", 1),
        options.get("padding", 0),
        options.get("dilation", 1),
        options.get("groups", 1),
    )


def _same_bits(got, expected):
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("layout", "input_shape", "weight_shape", "options"), CASES)
def test_second_call_runs_the_plan_with_the_same_bits(layout, input_shape, weight_shape, options):
    g, x, w = _arrays(layout, input_shape, weight_shape, options)
    first = convgrad.conv2d_backward(g, x, w, layout=layout, **options)
    key = _key(g, x, w, layout, options)
    assert key in _plans._PLANS
    planned = _plans.run_plan(key, g, x, w)
    assert planned is not None
    _same_bits(planned, first)
    _same_bits(convgrad.conv2d_backward(g, x, w, layout=layout, **options), first)
    long_way = convgrad.conv2d_backward(g, x, w, layout=layout, output_mask=LONG_WAY, **options)
    _same_bits(long_way, first)
    expected = conv2d_backward_reference(g, x, w, layout=layout, **options)
    for a, b in zip(first, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)


def test_results_are_fresh_arrays_each_call():
    layout, input_shape, weight_shape, options = CASES[0]
    g, x, w = _arrays(layout, input_shape, weight_shape, options)
    first = convgrad.conv2d_backward(g, x, w)
    second = convgrad.conv2d_backward(g, x, w)
    for a, b in zip(first, second, strict=True):
        assert not np.shares_memory(a, b)
        np.testing.assert_array_equal(a, b)


def test_planned_call_does_not_modify_its_inputs():
    layout, input_shape, weight_shape, options = CASES[2]
    g, x, w = _arrays(layout, input_shape, weight_shape, options)
    convgrad.conv2d_backward(g, x, w, layout=layout)
    copies = [a.copy() for a in (g, x, w)]
    convgrad.conv2d_backward(g, x, w, layout=layout)
    for a, b in zip((g, x, w), copies, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "variant",
    ["fortran", "strided view", "read-only", "byte-swapped", "subclass"],
)
def test_arrays_the_key_cannot_see_go_the_long_way(variant):
    layout, input_shape, weight_shape, options = CASES[1]
    g, x, w = _arrays(layout, input_shape, weight_shape, options)
    expected = convgrad.conv2d_backward(g, x, w, layout=layout, **options)  # makes the plan
    assert _key(g, x, w, layout, options) in _plans._PLANS
    if variant == "fortran":
        x = np.asfortranarray(x)
    elif variant == "strided view":
        x = np.repeat(x, 2, axis=-1)[..., ::2]
    elif variant == "read-only":
        x = x.copy()
        x.flags.writeable = False
    elif variant == "byte-swapped":
        x = x.astype(x.dtype.newbyteorder(">"))
        g = g.astype(g.dtype.newbyteorder(">"))
        w = w.astype(w.dtype.newbyteorder(">"))
    else:
        x = x.view(type("Subclass", (np.ndarray,), {}))
    assert _plans.run_plan(_key(g, x, w, layout, options), g, x, w) is None
    got = convgrad.conv2d_backward(g, x, w, layout=layout, **options)
    _same_bits(got, expected)


@pytest.mark.parametrize("mask", [(True, True, False), (False, True, True), (True, False, False)])
def test_part_of_the_gradients_has_plans_of_its_own(mask):
    layout, input_shape, weight_shape, options = CASES[2]
    g, x, w = _arrays(layout, input_shape, weight_shape, options)
    everything = convgrad.conv2d_backward(g, x, w, layout=layout, **options)
    first = convgrad.conv2d_backward(g, x, w, layout=layout, output_mask=mask, **options)
    key = _plans.plan_key(g, x, w, layout, 1, 0, 1, 1, mask)
    assert key in _plans._PLANS and key != _key(g, x, w, layout, options)
    again = convgrad.conv2d_backward(g, x, w, layout=layout, output_mask=mask, **options)
    for wanted, a, b, full in zip(mask, first, again, everything, strict=True):
        if not wanted:
            assert a is None and b is None
            continue
        np.testing.assert_array_equal(a, full)  # the same serial kernel: the same bits
        np.testing.assert_array_equal(b, full)
        assert b is not a


def test_masks_that_are_not_tuples_of_bools_never_get_a_plan():
    layout, input_shape, weight_shape, options = CASES[0]
    g, x, w = _arrays(layout, input_shape, weight_shape, options)
    for mask in ([True, True, False], (True, True, np.False_), (1, 1, 0)):
        assert _plans.plan_key(g, x, w, layout, 1, 0, 1, 1, mask) is None
    with pytest.raises(TypeError, match="output_mask"):
        convgrad.conv2d_backward(g, x, w, output_mask=(1, 1, 0))
    # grad_bias alone needs no fused kernel, so no plan
    convgrad.conv2d_backward(g, x, w, output_mask=(False, False, True))
    assert _plans.plan_key(g, x, w, layout, 1, 0, 1, 1, (False, False, True)) not in _plans._PLANS


def test_byte_swapped_calls_never_get_a_plan():
    layout, input_shape, weight_shape, options = CASES[0]
    g, x, w = (a.astype(">f4") for a in _arrays(layout, input_shape, weight_shape, options))
    convgrad.conv2d_backward(g, x, w)
    assert _key(g, x, w, layout, options) not in _plans._PLANS


@pytest.mark.parametrize("where", ["grad_output", "input", "weight"])
def test_nan_after_a_plan_gives_the_exact_kernels_answer(where):
    """The planned serial kernel finds non-finite results and the call takes the exact kernels.

    Those add no terms for zero padding (README: NaN and Inf reach exactly the
    entries that depend on them), so the answer is theirs, one gradient at a time.
    """
    layout, input_shape, weight_shape, options = CASES[1]
    g, x, w = _arrays(layout, input_shape, weight_shape, options)
    convgrad.conv2d_backward(g, x, w, **options)  # makes the plan
    arrays = {"grad_output": g, "input": x, "weight": w}
    arrays[where].flat[7] = np.nan
    got = convgrad.conv2d_backward(g, x, w, **options)
    exact = [
        convgrad.conv2d_backward(g, x, w, output_mask=mask, **options)[k]
        for k, mask in enumerate([(True, False, False), (False, True, False), (False, False, True)])
    ]
    _same_bits(got, exact)
    assert np.isnan(got[0]).any() or np.isnan(got[1]).any()


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("stride", True, TypeError),
        ("stride", 1.0, TypeError),
        ("groups", np.True_, TypeError),
        ("padding", (0.0, 0.0), TypeError),
    ],
)
def test_options_equal_to_a_planned_one_are_still_checked(option, value, error):
    layout, input_shape, weight_shape, options = CASES[0]
    g, x, w = _arrays(layout, input_shape, weight_shape, options)
    convgrad.conv2d_backward(g, x, w)  # plan under stride=1, padding=0, groups=1
    assert value == {"stride": 1, "groups": 1, "padding": (0, 0)}[option]
    with pytest.raises(error, match=option):
        convgrad.conv2d_backward(g, x, w, **{option: value})


def test_pairs_of_padding_equal_to_a_planned_one_are_still_checked():
    layout, input_shape, weight_shape, options = CASES[0]
    g, x, w = _arrays(layout, input_shape, weight_shape, options)
    convgrad.conv2d_backward(g, x, w, padding=((0, 0), (0, 0)))
    assert _key(g, x, w, layout, {"padding": ((0, 0), (0, 0))}) in _plans._PLANS
    with pytest.raises(TypeError, match="padding"):
        convgrad.conv2d_backward(g, x, w, padding=((0, 0.0), (0, 0)))


def test_non_default_arguments_never_use_a_plan():
    layout, input_shape, weight_shape, options = CASES[0]
    g, x, w = _arrays(layout, input_shape, weight_shape, options)
    expected = convgrad.conv2d_backward(g, x, w)
    out = tuple(np.full_like(a, 5.0) for a in expected)
    got = convgrad.conv2d_backward(g, x, w, out=out, accumulate=True)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b + 5.0, rtol=1e-5, atol=1e-5)
    got = convgrad.conv2d_backward(g, x, w, output_mask=(True, False, True))
    assert got[1] is None  # single-gradient kernels: another summation order
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5)


def test_plans_are_bounded(monkeypatch):
    monkeypatch.setattr(_plans, "MAX_PLANS", 3)
    monkeypatch.setattr(_plans, "_PLANS", {})
    for width in range(8, 14):
        g, x, w = _arrays("NCHW", (1, 2, 8, width), (3, 2, 3, 3), {})
        convgrad.conv2d_backward(g, x, w)
        assert 1 <= len(_plans._PLANS) <= 3
