"""Performance regression gate: benchmark a base commit and HEAD with ``asv continuous``.

Usage (from the repository root, with asv installed: ``pip install -e ".[bench]"``)::

    python tools/perf_gate.py                 # HEAD~1 against HEAD
    python tools/perf_gate.py --base main     # a branch against main

It runs the gate subset (below) of the asv suite on both commits, in
interleaved rounds, with numba, OpenMP and BLAS pinned to the same thread
count, and compares them with asv's own test: a benchmark is flagged when it
got slower by more than ``--factor`` *and* the difference is statistically
significant. Whatever is flagged is measured again once, on its own; only a
benchmark flagged twice fails the gate, so noise alone rarely does.

A change that is slower on purpose says so in its commit message with a trailer

    Perf-regression-accepted: <why>

on any commit between base and HEAD; the gate then prints the regressions and
the reasons and passes.

Exit status: 0 passed (or no base commit to compare with), 1 a benchmark got
slower, 2 a benchmark failed, 3 the gate itself could not run.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence

TRAILER = "Perf-regression-accepted"

# One (shape, layout) per kernel family and layout the dispatch picks, so a
# slowdown in any kernel shows in its own gradient's benchmark:
GATE_CASES = [
    ("seed", "NCHW"),  # the serial fused flat backward, shifted planes (fixed costs)
    ("seed", "NHWC"),  # the same in NHWC (no relayout: the flat kernels read it)
    ("mnist_b64", "NCHW"),  # flat, one input channel; the fused flat backward
    ("cifar_b32", "NHWC"),  # the same after a relayout, three input channels
    ("dilated", "NCHW"),  # direct tiles from NCHW's gathers (AVX-512; flat elsewhere)
    ("dilated", "NHWC"),  # direct register tiles (AVX-512 CPUs; flat elsewhere), 14 x 2, 8 x 2
    ("pointwise", "NCHW"),  # gemm
    ("pointwise", "NHWC"),  # gemm, channels-last
    ("depthwise", "NCHW"),  # depthwise planes (backward), rows (single gradients)
    ("depthwise_s2", "NCHW"),  # depthwise phase planes (backward, grad_weight), rows
    ("depthwise", "NHWC"),  # depthwise channels
    ("depthwise_s2", "NHWC"),  # depthwise channels at stride 2, a run of pixels per call
    ("resnet_s2", "NCHW"),  # unfolded products at stride 2, NCHW's channel-major rows
    ("late_4x4", "NHWC"),  # unfolded products, NHWC's weight order
    ("late_4x4_narrow", "NHWC"),  # channels (planes too short for flat, too narrow to unfold)
    ("late_7x7", "NCHW"),  # unfolded products, NCHW's rows at 7 x 7
    ("few_pairs", "NCHW"),  # the fused backward below 16 channel pairs; rows
    ("small_batch", "NHWC"),  # the serial fused backward on a small batch
    ("pointwise_narrow", "NHWC"),  # gemm, grad_weight cut along the input channels
    ("stem_224", "NHWC"),  # the fused backward in bands of rows, phase planes
    ("strided_narrow", "NHWC"),  # unfolded products on 32 output channels; flat grad_input
    ("depthwise_late", "NCHW"),  # depthwise tiles (backward) on 7 x 7, NCHW's gathers
    ("depthwise_5x5", "NHWC"),  # depthwise tiles, NHWC, 25 taps
    ("downsample_1x1", "NHWC"),  # unfolded products on one column span, cut in two (BLAS)
    ("short_64", "NHWC"),  # direct tiles on short planes the unfolded products would take
    ("layer2_128", "NHWC"),  # direct tiles, grad_weight's tiles cut in a run per thread
    ("vgg_conv3", "NHWC"),  # direct tiles, runs with their own totals, 16 a thread
    ("mid_96", "NHWC"),  # direct tiles of 2 vectors on 96 channels
]
GATE_BENCHMARKS = [
    "grad_input.GradInput.time_grad_input",
    "grad_weight.GradWeight.time_grad_weight",
    "backward.Backward.time_backward",
]
BIAS_CASES = [("cifar_b32", "NCHW"), ("cifar_b32", "NHWC")]
# output_mask without grad_bias: the serial and the parallel fused kernels
NO_BIAS_CASES = [("seed", "NHWC"), ("mnist_b64", "NCHW")]


def gate_names() -> list[str]:
    """asv's names (``benchmark('shape', 'layout')``) of the gate subset."""
    names = [f"{b}('{s}', '{lay}')" for b in GATE_BENCHMARKS for s, lay in GATE_CASES]
    names += [f"grad_bias.GradBias.time_grad_bias('{s}', '{lay}')" for s, lay in BIAS_CASES]
    names += [f"backward.BackwardNoBias.time_backward('{s}', '{lay}')" for s, lay in NO_BIAS_CASES]
    return names


def exact_regex(names: Sequence[str]) -> str:
    """One regular expression matching exactly ``names``."""
    return "^(" + "|".join(re.escape(name) for name in names) + ")$"


def git(*args: str) -> str:
    """Output of a git command."""
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout.strip()


def resolve(revision: str) -> str | None:
    """The commit hash of ``revision``, or None when it does not exist."""
    try:
        return git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    except subprocess.CalledProcessError:
        return None


def accepted_reasons(base: str, head: str) -> list[str]:
    """The ``Perf-regression-accepted`` trailers of the commits in base..head."""
    log = git(
        "log", f"--format=%h %(trailers:key={TRAILER},valueonly,separator=; )", f"{base}..{head}"
    )
    reasons = []
    for line in log.splitlines():
        commit, _, reason = line.partition(" ")
        if reason.strip():
            reasons.append(f"{commit}: {reason.strip()}")
    return reasons


def flagged(asv_output: str) -> list[str]:
    """Names of the benchmarks marked slower ("+") in the table ``asv continuous`` prints."""
    slower = []
    for line in asv_output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] == "+":
            slower.append(cells[4])
    return slower


def run_asv(
    asv: Sequence[str], base: str, head: str, names: Sequence[str], args: argparse.Namespace
) -> tuple[str, bool]:
    """Run ``asv continuous`` on ``names``: (its output, whether a benchmark failed).

    asv exits 2, before comparing anything, when a benchmark raised or timed out.
    """
    command = [
        *asv,
        "continuous",
        "--factor",
        str(args.factor),
        "--interleave-rounds",
        "--attribute",
        f"rounds={args.rounds}",
        "--show-stderr",
        "--bench",
        exact_regex(names),
        base,
        head,
    ]
    threads = str(args.threads)
    env = dict(os.environ)
    env |= {
        "CONVGRAD_BENCH_THREADS": threads,
        "OMP_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }
    env.pop("CONVGRAD_BENCH_SKIP_SLOW", None)
    print("$", " ".join(command), flush=True)
    lines = []
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:  # echo as it comes: a CI log shows progress
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
    if process.returncode not in (0, 1, 2):
        raise RuntimeError(f"asv continuous exited with {process.returncode}")
    return "".join(lines), process.returncode == 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The gate's command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="HEAD~1", help="commit to compare with (HEAD~1)")
    parser.add_argument("--head", default="HEAD", help="commit under test (HEAD)")
    parser.add_argument(
        "--factor",
        type=float,
        default=1.25,
        help="flag benchmarks slower than this ratio (default 1.25)",
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="interleaved rounds per commit (default 4)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="numba/OpenMP/BLAS threads (default 1)"
    )
    parser.add_argument("--asv", default="asv", help="the asv command (default: asv)")
    parser.add_argument("--list", action="store_true", help="print the gate's benchmarks and exit")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gate; returns the exit status."""
    args = parse_args(argv)
    names = gate_names()
    if args.list:
        print("\n".join(names))
        return 0
    head = resolve(args.head)
    base = resolve(args.base)
    if head is None:
        print(f"gate: {args.head} is not a commit", file=sys.stderr)
        return 3
    if base is None:
        print(f"gate: no commit {args.base} to compare {head[:8]} with; nothing to gate")
        return 0
    asv = args.asv.split()
    started = time.monotonic()
    subprocess.run([*asv, "machine", "--yes"], check=True, capture_output=True)

    print(
        f"gate: {len(names)} benchmarks, {base[:8]} -> {head[:8]}, factor {args.factor}, "
        f"{args.rounds} interleaved rounds, {args.threads} thread(s)",
        flush=True,
    )
    output, failed = run_asv(asv, base, head, names, args)
    slower = flagged(output)
    if slower and not failed:
        print(f"\ngate: {len(slower)} flagged slower; measuring them again:", flush=True)
        print("\n".join(f"  {name}" for name in slower), flush=True)
        output, failed = run_asv(asv, base, head, slower, args)
        slower = [name for name in slower if name in flagged(output)]
    minutes = (time.monotonic() - started) / 60

    if failed:
        print(f"\ngate FAILED ({minutes:.1f} min): a benchmark failed (see 'failed' above)")
        return 2
    if not slower:
        print(f"\ngate passed ({minutes:.1f} min): nothing slower than {args.factor}x")
        return 0
    print(f"\nslower than {args.factor}x on {head[:8]}, twice in a row:")
    print("\n".join(f"  {name}" for name in slower))
    reasons = accepted_reasons(base, head)
    if reasons:
        print(f"\ngate passed ({minutes:.1f} min): the regression is accepted by {TRAILER}:")
        print("\n".join(f"  {reason}" for reason in reasons))
        return 0
    print(
        f"\ngate FAILED ({minutes:.1f} min). If the slowdown is intended, say why in the "
        f"commit message with a trailer line '{TRAILER}: <reason>'."
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
