"""The seed notebook's case, reproduced: its first and best loop nests beside convgrad.

The seed was a Julia notebook that hand-optimised the backward pass of one
convolution layer: one 28x28 image with one channel, six 3x3 filters, HWC
layout (weights HWIO). Its first version (``Conv_backward_v1``) took 2.86 ms
(minimum over BenchmarkTools' samples) and its best (``Conv_backward_v5``)
127 µs, on the notebook author's machine.

This script ports those two loop nests line by line to Python (0-based, row
major), runs each as plain Python + NumPy and compiled by numba (the very same
source under ``numba.njit``), checks that all of them and
``convgrad.conv2d_backward`` agree with ``convgrad.reference``, and prints a
timing table with the notebook's own figures alongside. ``--help`` for options.

One fix in the port: the notebook's v1 passes the output gradient to its
padded correlation unflipped, which computes a correlation where grad_input
needs a convolution (its v2 adds the missing ``rotate``); the port flips it,
as v2 does, so that v1's grad_input is right and can be compared.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

import convgrad
from convgrad.cli import NOTEBOOK_V1_MIN_US, NOTEBOOK_V5_MIN_US, seed_case
from convgrad.info import cpu_model
from convgrad.reference import conv2d_backward_reference

# The notebook's medians (BenchmarkTools "Time (median)"), beside the minima in convgrad.cli.
NOTEBOOK_V1_MEDIAN_US = 4231.0
NOTEBOOK_V5_MEDIAN_US = 130.4

Backward = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, ...]]


def build(jit: Callable, flip_in_v1: bool = True) -> tuple[Backward, Backward]:
    """The notebook's v1 and v5, each function passed through ``jit``.

    ``jit`` is ``numba.njit`` for the compiled renditions and the identity for
    plain Python + NumPy: one source for both. ``flip_in_v1=False`` gives v1
    exactly as the notebook wrote it, whose grad_input is wrong (see above).
    """

    @jit
    def convolution_2d(input, kernel):
        """The notebook's Convolution_2d (bias 0): a valid cross-correlation."""
        kernel_height, kernel_width = kernel.shape
        output_rows = input.shape[0] - kernel_height + 1
        output_columns = input.shape[1] - kernel_width + 1
        output = np.zeros((output_rows, output_columns), input.dtype)
        for c in range(output_columns):  # Julia's column-major loop order, kept
            for r in range(output_rows):
                patch = input[r : r + kernel_height, c : c + kernel_width]
                output[r, c] = np.sum(patch * kernel)
        return output

    @jit
    def convolution_2d_pad(input, kernel):
        """Convolution_2d_pad(input, kernel; padding=true): pad by the kernel size - 1."""
        kernel_height, kernel_width = kernel.shape
        rows, columns = input.shape
        padded = np.zeros(
            (rows + 2 * kernel_height - 2, columns + 2 * kernel_width - 2), input.dtype
        )
        padded[
            kernel_height - 1 : kernel_height - 1 + rows,
            kernel_width - 1 : kernel_width - 1 + columns,
        ] = input
        return convolution_2d(padded, kernel)

    @jit
    def backward_v1(input, weights, gradient):
        """Conv_backward_v1: a padded full correlation per channel pair."""
        input_channels = input.shape[2]
        output_channels = gradient.shape[2]
        grad_input = np.zeros(input.shape, input.dtype)
        for k in range(input_channels):
            for c in range(output_channels):
                # flipped, as the notebook's v2 does (v1 as written correlates)
                g = gradient[::-1, ::-1, c] if flip_in_v1 else gradient[:, :, c]
                grad_input[:, :, k] += convolution_2d_pad(weights[:, :, k, c], g)
        grad_weights = np.zeros(weights.shape, weights.dtype)
        for k in range(input_channels):
            for c in range(output_channels):
                grad_weights[:, :, k, c] += convolution_2d(input[:, :, k], gradient[:, :, c])
        grad_bias = np.zeros(output_channels, gradient.dtype)
        for c in range(output_channels):
            grad_bias[c] = np.sum(gradient[:, :, c])
        return grad_input, grad_weights, grad_bias

    @jit
    def backward_v5(input, weights, gradient):
        """Conv_backward_v5: grad_input as a scatter of weighted kernels."""
        output_height, output_width, output_channels = gradient.shape
        kernel_height, kernel_width, input_channels, _ = weights.shape
        grad_input = np.zeros(input.shape, input.dtype)
        for k in range(input_channels):
            for c in range(output_channels):
                for i in range(output_height):
                    for j in range(output_width):
                        grad_input[i : i + kernel_height, j : j + kernel_width, k] += (
                            weights[:, :, k, c] * gradient[i, j, c]
                        )
        grad_weights = np.zeros(weights.shape, weights.dtype)
        for k in range(input_channels):
            for c in range(output_channels):
                tmp_weights = convolution_2d(input[:, :, k], gradient[:, :, c])
                grad_weights[:, :, k, c] += tmp_weights
        grad_bias = np.zeros(output_channels, gradient.dtype)
        for c in range(output_channels):
            grad_bias[c] = np.sum(gradient[:, :, c])
        return grad_input, grad_weights, grad_bias

    return backward_v1, backward_v5


def time_calls(
    function: Callable[[], object], repeat: int, budget_s: float
) -> tuple[int, float, float]:
    """(calls, min µs, median µs) of at most ``repeat`` calls in about ``budget_s``; warmed up."""
    function()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < repeat and (len(times) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return len(times), 1e6 * min(times), 1e6 * float(np.median(times))


def max_error(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> float:
    """Largest |got - want| / (1 + |want|) over the three gradients."""
    return max(
        float(np.max(np.abs(g - w) / (1.0 + np.abs(w)))) for g, w in zip(got, want, strict=True)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Check the renditions against the reference, time them, print the table; 1 on a mismatch."""
    parser = argparse.ArgumentParser(
        description="Run the seed notebook's case (one 28x28 image, six 3x3 filters, HWC) "
        "through convgrad and through Python/NumPy and numba ports of the notebook's first "
        "(v1) and best (v5) loop nests; check they agree; print a timing table beside the "
        "notebook's own figures."
    )
    parser.add_argument(
        "--repeat", type=int, default=1000, help="most timed calls each (default 1000)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=2.0,
        help="seconds of timed calls each, at least 3 calls (default 2)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1; got {args.repeat}")
    import numba

    gradient, image, weights = seed_case()
    expected = conv2d_backward_reference(
        *(a.astype(np.float64) for a in (gradient, image, weights)), layout="NHWC"
    )
    numpy_v1, numpy_v5 = build(lambda function: function)
    numba_v1, numba_v5 = build(numba.njit)
    contenders = {
        "v1 loop nest, Python + NumPy": lambda: numpy_v1(image, weights, gradient),
        "v1 loop nest, numba": lambda: numba_v1(image, weights, gradient),
        "v5 loop nest, Python + NumPy": lambda: numpy_v5(image, weights, gradient),
        "v5 loop nest, numba": lambda: numba_v5(image, weights, gradient),
        "convgrad.conv2d_backward (NHWC)": lambda: convgrad.conv2d_backward(
            gradient, image, weights, layout="NHWC"
        ),
    }
    print(
        "seed case: one 28x28x1 image, 3x3x1x6 weights (HWC / HWIO), float32; this machine: "
        f"{cpu_model()}, {os.cpu_count()} CPUs, numba threads {numba.get_num_threads()}"
    )
    print("agreement with convgrad.reference (float64), and the first call's time:")
    ok = True
    for name, call in contenders.items():
        start = time.perf_counter()
        result = call()
        first_ms = 1e3 * (time.perf_counter() - start)
        error = max_error(result, expected)
        good = error < 1e-5
        ok &= good
        note = (
            " (compiles)"
            if "numba" in name
            else " (loads cached kernels)"
            if "convgrad" in name
            else ""
        )
        print(
            f"  {name:<34} max relative error {error:.1e}  {'ok' if good else 'MISMATCH'}  "
            f"first call {first_ms:,.0f} ms{note}"
        )
    print()
    print(f"{'implementation':<38}{'calls':>7}{'min µs':>11}{'median µs':>12}")
    notebook = [
        ("notebook v1, Julia (its machine)", NOTEBOOK_V1_MIN_US, NOTEBOOK_V1_MEDIAN_US),
        ("notebook v5, Julia (its machine)", NOTEBOOK_V5_MIN_US, NOTEBOOK_V5_MEDIAN_US),
    ]
    for name, fastest, median in notebook:
        print(f"{name:<38}{'-':>7}{fastest:>11,.1f}{median:>12,.1f}")
    for name, call in contenders.items():
        calls, fastest, median = time_calls(call, args.repeat, args.budget)
        print(f"{name:<38}{calls:>7}{fastest:>11,.1f}{median:>12,.1f}")
    if not ok:
        print("MISMATCH against convgrad.reference", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
