"""Soak test: random problems checked against the NumPy reference for a given time.

Run ``python -m convgrad.soak --minutes 10`` (``--help`` for options). Each
configuration draws a layout, dtype, batch, channels, groups, kernel size,
stride, padding and dilation (biased so that every kernel family comes up),
lays the arrays out in memory in a random way, sometimes injects a fault --
a NaN in the input or weight, or a bad argument that must be refused with a
TypeError or ValueError -- and checks

- all three gradients and the forward output against ``convgrad.reference``
  run in float64: ``|got - want| <= tol * sum of |terms|`` (the reference run
  on absolute values), tol 1e-5 for float32 and 1e-12 for float64; NaN
  exactly where the reference has NaN;
- that a second call gives the same bits, and the inputs are unchanged.

It prints a summary line per minute and one line per mismatch, and exits 1
if there was any mismatch. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np

from . import _dispatch
from ._api import conv2d, conv2d_backward
from ._layouts import LAYOUTS
from ._problem import Problem, describe
from .reference import conv2d_backward_reference, conv2d_reference

TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
FAMILIES = ("rows", "channels", "flat", "depthwise", "gemm")


def random_config(rng: np.random.Generator) -> tuple[Problem, dict[str, object]]:
    """A random valid problem and its options, biased towards one kernel family."""
    family = FAMILIES[rng.integers(len(FAMILIES))]
    while True:
        groups = int(rng.choice([1, 1, 2, 3]))
        if family == "depthwise":
            groups = int(rng.integers(1, 9))
            c_in, c_out = groups, groups * int(rng.choice([1, 1, 2]))
        elif family in ("flat", "gemm"):
            c_in = groups * int(rng.integers(4, 9))
            c_out = groups * int(rng.integers(4, 9))
        else:
            c_in, c_out = groups * int(rng.integers(1, 5)), groups * int(rng.integers(1, 9))
        kh, kw = (1, 1) if family == "gemm" else tuple(int(k) for k in rng.integers(1, 6, 2))
        stride = (1, 1) if family == "gemm" else tuple(int(s) for s in rng.integers(1, 4, 2))
        dilation = tuple(int(d) for d in rng.integers(1, 4, 2))
        padding = (
            0
            if family == "gemm"
            else tuple(tuple(int(p) for p in rng.integers(0, 4, 2)) for _ in range(2))
        )
        # One draw in ten is larger: enough rows for several parallel chunks and
        # summation blocks (see the kernels' BLOCK_TERMS) in the grad_weight kernels.
        big = rng.random() < 0.1
        height, width = (int(s) for s in rng.integers(1, 48 if big else 24, 2))
        n = int(rng.integers(8, 65)) if big else int(rng.choice([0, 1, 1, 2, 3, 5]))
        options = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
        layout = LAYOUTS[str(rng.choice(["NCHW", "NHWC"]))]
        dtype = np.dtype(rng.choice([np.float32, np.float64]))
        try:
            problem = describe(
                layout,
                dtype,
                layout.image_shape(n, c_in, height, width),
                layout.weight_shape(c_out, c_in // groups, kh, kw),
                **options,
            )
        except ValueError:  # kernel larger than the padded input: draw again
            continue
        return problem, options | {"layout": layout.name}


def _in_memory(rng: np.random.Generator, array: np.ndarray) -> np.ndarray:
    """``array``'s values in a random memory layout: contiguous, Fortran, strided or reversed."""
    kind = rng.integers(4)
    if kind == 1:
        return np.asfortranarray(array)
    if kind == 2:
        wide = np.zeros((*array.shape[:-1], 2 * array.shape[-1]), array.dtype)
        wide[..., ::2] = array
        return wide[..., ::2]
    if kind == 3:
        return array[..., ::-1].copy()[..., ::-1]
    return array


def _bad_call(rng: np.random.Generator, g, x, w, options) -> str | None:
    """Call conv2d_backward with one argument spoilt; an error message if it was mishandled."""
    spoilt = dict(options)
    arrays = {"grad_output": g, "input": x, "weight": w}
    choice = rng.integers(6)
    if choice == 0:
        arrays[str(rng.choice(list(arrays)))] = [[1.0, 2.0]]
    elif choice == 1:
        arrays["input"] = x.astype(np.int64)
    elif choice == 2:
        arrays["weight"] = w[..., None]
    else:
        key = str(rng.choice(["stride", "padding", "dilation", "groups"]))
        spoilt[key] = [None, -1, "x", 2**80][choice - 3]
    try:
        conv2d_backward(arrays["grad_output"], arrays["input"], arrays["weight"], **spoilt)
    except (TypeError, ValueError) as error:
        return None if str(error) else "empty error message"
    except Exception as error:
        return f"{type(error).__name__} escaped: {error}"
    return "a bad argument was accepted"


def check_one(rng: np.random.Generator, counts: Counter[str]) -> list[str]:
    """Run one random configuration; the list of problems found (empty when all is well)."""
    problem, options = random_config(rng)
    dtype = problem.dtype
    counts[_family(problem)] += 1
    x = rng.standard_normal(problem.input_shape).astype(dtype)
    w = rng.standard_normal(problem.weight_shape).astype(dtype)
    g = rng.standard_normal(problem.output_shape).astype(dtype)
    faults = []
    fault = rng.integers(8)
    if fault == 0 and x.size:
        x[tuple(int(rng.integers(s)) for s in x.shape)] = np.nan
        counts["fault: NaN input"] += 1
    elif fault == 1 and w.size:
        w[tuple(int(rng.integers(s)) for s in w.shape)] = np.nan
        counts["fault: NaN weight"] += 1
    elif fault == 2:
        counts["fault: bad argument"] += 1
        message = _bad_call(rng, g, x, w, options)
        if message:
            faults.append(message)
    args = [_in_memory(rng, a) for a in (g, x, w)]
    before = [a.tobytes() for a in args]
    got = conv2d_backward(*args, **options)
    again = conv2d_backward(*args, **options)
    got_y = conv2d(args[1], args[2], **options)
    if [a.tobytes() for a in args] != before:
        faults.append("an input was modified")
    if any(a.tobytes() != b.tobytes() for a, b in zip(got, again, strict=True)):
        faults.append("second call gave different bits")
    wide = [np.nan_to_num(a.astype(np.float64), nan=0.0) for a in (g, x, w)]
    want = _all_results(*wide, options)
    scale = _all_results(*(np.abs(a) for a in wide), options)
    # Where a NaN must appear: the entries that depend on the NaN entry, that
    # is, that change when the reference (other operands made positive) sees
    # 1 instead of 0 there. (The reference adds no terms for padding, as
    # convgrad: a NaN weight that meets only padding marks nothing.)
    marks = [np.isnan(a) for a in (g, x, w)]
    nan_at = [np.zeros(r.shape, bool) for r in want]
    for k, mark in enumerate(marks):
        if mark.any():
            positive = [np.abs(a) + 1 for a in wide]
            positive[k] = np.zeros_like(wide[k])
            without = _all_results(*positive, options)
            positive[k] = mark.astype(np.float64)
            with_one = _all_results(*positive, options)
            nan_at = [n | (a != b) for n, a, b in zip(nan_at, with_one, without, strict=True)]
    names = ("grad_input", "grad_weight", "grad_bias", "output")
    for name, a, b, s, nan in zip(names, (*got, got_y), want, scale, nan_at, strict=True):
        if a.dtype != dtype or a.shape != b.shape:
            faults.append(f"{name}: {a.dtype} {a.shape}, wanted {dtype} {b.shape}")
            continue
        if not np.array_equal(np.isnan(a), nan):
            faults.append(f"{name}: NaN in other places than the ones that depend on the NaN")
            continue
        finite = ~nan
        error = np.abs(a[finite] - b[finite])
        bound = TOLERANCE[dtype] * s[finite] + np.finfo(dtype).tiny
        if (error > bound).any():
            worst = float(np.max(error / bound))
            faults.append(f"{name}: error {worst:.2f}x the tolerance")
    if faults:
        counts["mismatches"] += 1
        return [
            f"{options} {problem.input_shape} {problem.weight_shape} {dtype}: {f}" for f in faults
        ]
    return []


def _all_results(g, x, w, options):
    """The reference's (grad_input, grad_weight, grad_bias, output)."""
    return (*conv2d_backward_reference(g, x, w, **options), conv2d_reference(x, w, **options))


def _family(problem: Problem) -> str:
    kernel = _dispatch.select_kernel("grad_weight", problem).kernel
    return "family: " + getattr(kernel, "py_func", kernel).__module__.rsplit(".", 1)[1]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; 0 when no mismatch was found, 1 otherwise."""
    parser = argparse.ArgumentParser(
        prog="python -m convgrad.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to run (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**32)
    rng = np.random.default_rng(seed)
    counts: Counter[str] = Counter()
    start = time.monotonic()
    end = start + 60 * args.minutes
    next_report = start + 60
    configurations = 0
    print(f"convgrad soak: seed {seed}, {args.minutes} min", flush=True)
    while time.monotonic() < end:
        for line in check_one(rng, counts):
            print("MISMATCH", line, flush=True)
        configurations += 1
        if time.monotonic() >= next_report:
            next_report += 60
            print(
                f"{time.monotonic() - start:6.0f} s: {configurations} configurations, "
                f"{counts['mismatches']} mismatches",
                flush=True,
            )
    print(f"done: {configurations} configurations, {counts['mismatches']} mismatches")
    for key in sorted(counts):
        print(f"  {key}: {counts[key]}")
    return 1 if counts["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
