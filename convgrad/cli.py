"""Command line: ``convgrad`` / ``python -m convgrad``.

With no command it runs the seed notebook's case (one 28x28 image, six 3x3
filters, HWC layout) through convgrad, checks the result against the NumPy
reference and prints the timing. ``check`` (``check.py``) runs every kernel
path against the reference; ``info`` (``info.py``) reports the machine, the
threading layer and the kernel cache; ``bench`` (``bench.py``) times the suite.
"""

import argparse
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from . import __version__, conv2d_backward
from .reference import conv2d_backward_reference
from .suite import SUITE

# The seed notebook's figures for its first and its best loop nest (Julia, its machine).
NOTEBOOK_V1_MIN_US = 2858.0
NOTEBOOK_V5_MIN_US = 126.9


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="convgrad",
        description="Fast, exact 2-D convolution backward pass on Numba CPU kernels.",
    )
    parser.add_argument("--version", action="version", version=f"convgrad {__version__}")
    commands = parser.add_subparsers(dest="command")
    seed = commands.add_parser(
        "seed",
        help="run the seed notebook's case, check it, time it (the default)",
        description="Run the seed notebook's case (28x28x1 image, 3x3x1x6 weights, HWC) "
        "through convgrad, check it against the NumPy reference, time it.",
    )
    seed.add_argument("--repeat", type=int, default=2000, help="timed calls (default 2000)")
    bench = commands.add_parser(
        "bench",
        help="time the benchmark suite against PyTorch",
        description="Time the benchmark suite's shapes (all three gradients) with convgrad in "
        "both layouts and, when installed, torch in NCHW and channels_last, "
        "interleaved, with one thread count for all.",
    )
    bench.add_argument("shapes", nargs="*", help=f"shapes to run (default all: {', '.join(SUITE)})")
    bench.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    bench.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for numba and torch (default numba's count)",
    )
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench.add_argument("--no-torch", action="store_true", help="leave torch out")
    bench.add_argument(
        "--reference",
        action="store_true",
        help="also time convgrad.reference, the plain NumPy implementation",
    )
    check = commands.add_parser(
        "check",
        help="check every kernel path against the NumPy reference",
        description="Run random convolutions through every kernel family (rows, channels, "
        "flat planes, BLAS 1x1, depthwise; grouped problems wherever they land) in both "
        "layouts and dtypes, with strides, asymmetric padding and dilation, and compare "
        "conv2d and all three gradients with convgrad.reference in float64. Prints a table "
        "per path; exits 1 on any mismatch.",
    )
    check.add_argument("--count", type=int, default=None, help="random cases (default 240)")
    check.add_argument("--seed", type=int, default=0, help="seed of the cases (default 0)")
    check.add_argument(
        "--quick",
        action="store_true",
        help="24 small cases, one for each kind of problem, layout and dtype",
    )
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info = commands.add_parser(
        "info",
        help="versions, CPU, threading layer, kernel cache",
        description="Print convgrad's, numba's, numpy's and Python's versions, the CPU and its "
        "SIMD features, numba's threading layer and thread count, where the compiled kernels "
        "are cached, whether that directory is writable, and which kernels are in it.",
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    if args.command == "check":
        from . import check as check_module

        count = args.count if args.count is not None else (24 if args.quick else 240)
        if count < 1:
            parser.error(f"check --count must be at least 1; got {count}")
        return check_module.run(count, args.seed, args.quick, args.json)
    if args.command == "info":
        from . import info as info_module

        return info_module.run(args.json)
    if args.command == "bench":
        from . import bench as bench_module

        return bench_module.main(
            args.shapes, args.rounds, args.threads, args.json, not args.no_torch, args.reference
        )
    return run_seed(repeat=getattr(args, "repeat", 2000))


def seed_case(dtype: type = np.float32, seed: int = 0) -> tuple[np.ndarray, ...]:
    """The seed notebook's arrays: gradient (26, 26, 6), input (28, 28, 1), weights (3, 3, 1, 6)."""
    rng = np.random.default_rng(seed)
    image = rng.random((28, 28, 1)).astype(dtype)
    weights = rng.random((3, 3, 1, 6)).astype(dtype)
    gradient = rng.random((26, 26, 6)).astype(dtype)
    return gradient, image, weights


def time_call(function: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(min, median) wall time of ``function`` in microseconds, after one warm-up call."""
    function()
    times = np.empty(repeat)
    for k in range(repeat):
        start = time.perf_counter()
        function()
        times[k] = time.perf_counter() - start
    return float(times.min() * 1e6), float(np.median(times) * 1e6)


def run_seed(repeat: int = 2000) -> int:
    """The default command: check and time the seed notebook's case."""
    gradient, image, weights = seed_case()
    start = time.perf_counter()
    result = conv2d_backward(gradient, image, weights, layout="NHWC")
    first_call_s = time.perf_counter() - start
    expected = conv2d_backward_reference(
        *(a.astype(np.float64) for a in seed_case()), layout="NHWC"
    )
    names = ("grad_input", "grad_weight", "grad_bias")
    ok = True
    print("convgrad", __version__, "- seed case: input 28x28x1, weights 3x3x1x6, HWC (NHWC)")
    for name, got, want in zip(names, result, expected, strict=True):
        error = float(np.max(np.abs(got - want) / (1.0 + np.abs(want))))
        good = error < 1e-5
        ok &= good
        print(
            f"  {name:<12} {got.shape!s:<14} max relative error {error:.1e}  "
            f"{'ok' if good else 'MISMATCH'}"
        )
    fastest, median = time_call(
        lambda: conv2d_backward(gradient, image, weights, layout="NHWC"), repeat
    )
    print(f"first call (includes JIT compile or cache load): {first_call_s * 1e3:.0f} ms")
    print(f"conv2d_backward, {repeat} calls: min {fastest:.1f} us, median {median:.1f} us")
    print(
        f"seed notebook (Julia, its machine): v1 min {NOTEBOOK_V1_MIN_US:.0f} us, "
        f"v5 min {NOTEBOOK_V5_MIN_US:.0f} us"
    )
    if not ok:
        print("MISMATCH against the reference", file=sys.stderr)
    return 0 if ok else 1
