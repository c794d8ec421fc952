"""Tiny problems called again and again: checked in full once, then straight to the kernel.

A training loop calls ``conv2d_backward`` with the same shapes, dtypes and
options on every step. For problems small enough to run the serial fused
kernel (``SERIAL_MAX_TERMS`` multiply-adds or fewer), the Python around the
kernel (checks, dispatch, buffers: about a dozen function calls) took as long
as the arithmetic. The first call that passes every check leaves a plan under
a key made of everything those checks looked at; a later call with the same
key skips them and runs the plan's kernel on the user's arrays.

What the key holds, and why it is enough: the three arrays' exact types
(``numpy.ndarray``, no subclass), shapes and dtypes, the layout name and the
options, all of types whose equality is exact (ints, strs, tuples of ints or
of int pairs: ``True == 1`` must not let ``stride=True`` skip the check that
refuses it), and ``output_mask`` (a tuple of three bools, for the same
reason). What it cannot hold is checked on every call: each array must be
C-contiguous, aligned and writeable, as the kernels take them (anything else
goes the long way, which copies it). Only calls with ``out=None`` and
``accumulate=False`` have plans, and ``output_mask`` the default or a tuple of
three bools (part of the gradients: the serial fused kernel computes all three
and the plan hands back those asked for, as the long way does, see
``_dispatch.select_partial_kernel``).

The serial kernel is exact for finite inputs only and says whether its
results are finite; when they are not, the call goes the long way, which
falls back to the exact kernels.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._dispatch import KernelChoice, reports_finite
from ._problem import Problem, plain_value
from ._threading import run_kernel

# Plans kept (forgotten all at once when full, as ``describe``'s problems are).
MAX_PLANS = 256


class Plan(NamedTuple):
    """A checked problem and the serial fused kernel that computes its three gradients."""

    problem: Problem
    choice: KernelChoice


_PLANS: dict[tuple[object, ...], Plan] = {}

# conv2d_backward's default output_mask, recognised by identity (no checks).
ALL_GRADIENTS = (True, True, True)


def plan_key(
    grad_output: object,
    input: object,
    weight: object,
    layout: object,
    stride: object,
    padding: object,
    dilation: object,
    groups: object,
    output_mask: object = ALL_GRADIENTS,
) -> tuple[object, ...] | None:
    """The key of a call with these arguments, or None when it cannot have a plan."""
    if not (
        type(grad_output) is np.ndarray and type(input) is np.ndarray and type(weight) is np.ndarray
    ):
        return None
    if output_mask is not ALL_GRADIENTS and not (  # the default, by identity: no checks
        type(output_mask) is tuple
        and len(output_mask) == 3
        and all(type(wanted) is bool for wanted in output_mask)
    ):
        return None
    plain = plain_value
    if not (
        type(layout) is str
        and plain(stride)
        and plain(padding)
        and plain(dilation)
        and plain(groups)
    ):
        return None
    return (
        layout,
        stride,
        padding,
        dilation,
        groups,
        grad_output.shape,
        input.shape,
        weight.shape,
        grad_output.dtype,
        input.dtype,
        weight.dtype,
        output_mask,
    )


def remember(key: tuple[object, ...] | None, problem: Problem, choice: KernelChoice) -> None:
    """Keep ``choice`` for calls with ``key`` if it is a serial fused kernel in the user's layout.

    Called after the full checks passed for these arrays; ``problem.dtype``
    must be every array's dtype (a byte-swapped dtype never gets a plan).
    """
    if key is None or choice.layout is not problem.layout or not reports_finite(choice):
        return
    if any(dtype != problem.dtype or not dtype.isnative for dtype in key[-4:-1]):
        return
    if len(_PLANS) >= MAX_PLANS:
        _PLANS.clear()
    _PLANS[key] = Plan(problem, choice)


def _ready(array: np.ndarray) -> bool:
    flags = array.flags
    return flags.c_contiguous and flags.aligned and flags.writeable


def run_plan(
    key: tuple[object, ...] | None,
    grad_output: np.ndarray,
    input: np.ndarray,
    weight: np.ndarray,
) -> tuple[np.ndarray | None, ...] | None:
    """(grad_input, grad_weight, grad_bias) by the plan for ``key``, or None.

    Gradients the key's ``output_mask`` leaves out come back as None.

    None: no plan, an array not as the kernel takes it, or results that are
    not finite (the caller then goes the long way).
    """
    plan = _PLANS.get(key) if key is not None else None
    if plan is None or not (_ready(grad_output) and _ready(input) and _ready(weight)):
        return None
    problem, choice = plan
    # the key holds the arrays' shapes and dtypes: the results' are the user's own
    # (cheaper than the problem's computed shapes: this is a few-microsecond path)
    dtype = input.dtype
    grad_input = np.zeros(input.shape, dtype)
    grad_weight = np.zeros(weight.shape, dtype)
    grad_bias = np.zeros(problem.c_out, dtype)
    if problem.batched:
        images = grad_output, input, grad_input
    else:
        images = grad_output[np.newaxis], input[np.newaxis], grad_input[np.newaxis]
    finite = run_kernel(
        choice.kernel, images[1], images[0], weight, images[2], grad_weight, grad_bias, *choice.args
    )
    if not finite:
        return None
    wanted = key[-1]  # output_mask: the serial kernel computes all three
    if wanted is ALL_GRADIENTS:
        return grad_input, grad_weight, grad_bias
    results = (grad_input, grad_weight, grad_bias)
    return tuple(result if m else None for result, m in zip(results, wanted, strict=True))
