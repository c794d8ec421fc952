"""``convgrad bench``: time the benchmark suite against PyTorch, side by side.

Every contender (convgrad in both layouts, torch in NCHW and channels_last)
runs in the same process, in interleaved rounds, with the same thread count;
the figure reported is the median over rounds of the mean time of one call.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

import numba
import numpy as np

from . import __version__, conv2d_backward
from ._blas import blas_kernels
from .reference import conv2d_backward_reference
from .suite import SUITE, Shape

# Between two libraries' turns, let the last one's idle threads stop spinning:
# torch's OpenMP (libgomp) threads spin for several milliseconds after a call and
# take the cores from whatever runs next in the process. After a 2 ms pause
# convgrad's cifar_b32 took 1.20 ms and mnist_b64 0.82 ms, after 20-200 ms
# 0.94-0.97 and 0.45-0.47 (0.88 and 0.41 with no torch call before); torch's own
# times do not depend on the pause (2.10-2.38 and 1.39-1.45 ms). After the
# pause the next contender runs untimed for WARM_UP_S: an idle virtual CPU
# wakes slowly, and numba's TBB workers (which sleep soon after a kernel, where
# OpenMP's spin) ran the next few milliseconds of kernels at up to half speed.
# With one untimed call convgrad's direct backward of 4 x 64 -> 64 @ 32 x 32
# (dilation 4) took 1.69-1.98 ms in the median, 2.4-2.6 after 200 ms pauses;
# warmed 20 ms, 1.52-1.57 after either, as run back to back (torch's 1.21-1.34
# either way). Neither side is timed waking up.
PAUSE_BETWEEN_LIBRARIES_S = 0.05
WARM_UP_S = 0.02


def warm_up(call: Callable[[], object], seconds: float = WARM_UP_S) -> None:
    """Run ``call`` untimed, at least once, for ``seconds``: wakes its threads and CPU."""
    until = time.perf_counter() + seconds
    call()
    while time.perf_counter() < until:
        call()


def make_arrays(shape: Shape, layout: str, seed: int = 0) -> tuple[np.ndarray, ...]:
    """(grad_output, input, weight) of ``shape`` in ``layout``, standard normal values."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((shape.n, shape.c_in, shape.size, shape.size)).astype(shape.dtype)
    w = rng.standard_normal((shape.c_out, shape.c_in // shape.groups, shape.k, shape.k))
    w = w.astype(shape.dtype)
    out = shape.out_size
    g = rng.standard_normal((shape.n, shape.c_out, out, out)).astype(shape.dtype)
    if layout == "NHWC":
        return (
            np.ascontiguousarray(g.transpose(0, 2, 3, 1)),
            np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
            np.ascontiguousarray(w.transpose(2, 3, 1, 0)),
        )
    return g, x, w


def contenders(
    shape: Shape, with_torch: bool, with_reference: bool = False
) -> dict[str, Callable[[], object]]:
    """Name -> a call computing all three gradients of ``shape``."""
    calls: dict[str, Callable[[], object]] = {}
    for layout in ("NCHW", "NHWC"):
        g, x, w = make_arrays(shape, layout)
        calls[f"convgrad {layout}"] = lambda g=g, x=x, w=w, layout=layout: conv2d_backward(
            g, x, w, layout=layout, **shape.options
        )
    if with_reference:
        g, x, w = make_arrays(shape, "NCHW")
        calls["numpy reference"] = lambda g=g, x=x, w=w: conv2d_backward_reference(
            g, x, w, **shape.options
        )
    if with_torch:
        import torch

        g, x, w = (torch.from_numpy(a) for a in make_arrays(shape, "NCHW"))
        s, p, d = [shape.stride] * 2, [shape.padding] * 2, [shape.dilation] * 2
        for name, fmt in (
            ("torch NCHW", torch.contiguous_format),
            ("torch channels_last", torch.channels_last),
        ):
            gg, xx, ww = (t.contiguous(memory_format=fmt) for t in (g, x, w))
            calls[name] = lambda gg=gg, xx=xx, ww=ww: torch.ops.aten.convolution_backward(
                gg, xx, ww, [shape.c_out], s, p, d, False, [0, 0], shape.groups, [True, True, True]
            )
    return calls


def measure(
    calls: dict[str, Callable[[], object]], rounds: int, sample_s: float = 0.02
) -> dict[str, float]:
    """Median over interleaved rounds of each call's mean time, in seconds."""
    repeats = {}
    for name, call in calls.items():
        call()  # warm-up: JIT compile, caches, allocator
        start = time.perf_counter()
        call()
        once = max(time.perf_counter() - start, 1e-7)
        repeats[name] = max(1, min(10_000, round(sample_s / once)))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate who goes first
            time.sleep(PAUSE_BETWEEN_LIBRARIES_S)
            call, count = calls[name], repeats[name]
            warm_up(call)
            start = time.perf_counter()
            for _ in range(count):
                call()
            samples[name].append((time.perf_counter() - start) / count)
    return {name: float(np.median(times)) for name, times in samples.items()}


def gemm_peak_gflops(dtype: type, size: int = 1024, repeat: int = 5) -> float:
    """Matrix-multiply rate through NumPy's BLAS on this machine, GFLOP/s."""
    a = np.random.default_rng(0).standard_normal((size, size)).astype(dtype)
    a @ a
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def machine_description(threads: int) -> str:
    """CPU model, cores and thread count, in one line."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = next(
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} CPUs, {threads} threads"


def run(
    names: Sequence[str],
    rounds: int = 7,
    threads: int | None = None,
    with_torch: bool = True,
    progress: TextIO | None = sys.stderr,
    with_reference: bool = False,
) -> dict:
    """Benchmark ``names`` and return the results as a JSON-ready dict."""
    threads = threads or numba.get_num_threads()
    numba_before = numba.get_num_threads()
    numba.set_num_threads(threads)
    torch_before = None
    if with_torch:
        import torch

        torch_before = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        return _run(names, rounds, threads, with_torch, progress, with_reference)
    finally:
        numba.set_num_threads(numba_before)
        if torch_before is not None:
            torch.set_num_threads(torch_before)


def _run(
    names: Sequence[str],
    rounds: int,
    threads: int,
    with_torch: bool,
    progress: TextIO | None,
    with_reference: bool,
) -> dict:
    dtypes = {SUITE[n].dtype for n in names}
    peaks = {np.dtype(t).name: gemm_peak_gflops(t) for t in dtypes}
    rows = []
    for done, name in enumerate(names):
        if progress is not None:
            bar = "#" * done + "-" * (len(names) - done)
            print(f"\r[{bar}] {done}/{len(names)} {name:<16}", end="", file=progress, flush=True)
        shape = SUITE[name]
        times = measure(contenders(shape, with_torch, with_reference), rounds)
        best_layout = min(("NCHW", "NHWC"), key=lambda lay: times[f"convgrad {lay}"])
        ours = times[f"convgrad {best_layout}"]
        other = times[f"convgrad {'NHWC' if best_layout == 'NCHW' else 'NCHW'}"]
        gflops = shape.flops / ours / 1e9
        row = {
            "shape": name,
            "times_us": {k: v * 1e6 for k, v in times.items()},
            "best_layout": best_layout,
            "convgrad_us": ours * 1e6,
            "gflops": gflops,
            "other_layout_ratio": other / ours,
            "target": shape.target,
        }
        if with_reference:
            row["reference_us"] = times["numpy reference"] * 1e6
        if with_torch:
            theirs = min(times["torch NCHW"], times["torch channels_last"])
            row |= {
                "torch_us": theirs * 1e6,
                "speedup": theirs / ours,
                "met": theirs / ours >= shape.target and other / ours <= 1.5,
            }
        rows.append(row)
    if progress is not None:
        print(f"\r[{'#' * len(names)}] {len(names)}/{len(names)} done{' ' * 16}", file=progress)
    # the peak again after the suite, keeping the better: a neighbour busy
    # during one measurement (a shared machine) would otherwise inflate every %
    for t in dtypes:
        peaks[np.dtype(t).name] = max(peaks[np.dtype(t).name], gemm_peak_gflops(t))
    for row in rows:
        row["peak_percent"] = 100 * row["gflops"] / peaks[np.dtype(SUITE[row["shape"]].dtype).name]
    return {
        "convgrad": __version__,
        "numba": numba.__version__,
        "numpy": np.__version__,
        "machine": machine_description(threads),
        "threads": threads,
        "rounds": rounds,
        "gemm_peak_gflops": peaks,
        "blas": blas_kernels(),
        "rows": rows,
    }


def format_table(result: dict) -> str:
    """The results as a Markdown table."""
    torch_cols = "torch_us" in result["rows"][0] if result["rows"] else False
    reference_cols = "reference_us" in result["rows"][0] if result["rows"] else False
    head = ["shape", "convgrad µs", "layout", "other layout", "GFLOP/s", "% GEMM peak"]
    if reference_cols:
        head += ["NumPy reference µs"]
    if torch_cols:
        head += ["torch µs", "speed-up", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        cells = [
            row["shape"],
            f"{row['convgrad_us']:,.0f}",
            row["best_layout"],
            f"{row['other_layout_ratio']:.2f}×",
            f"{row['gflops']:.1f}",
            f"{row['peak_percent']:.0f}",
        ]
        if reference_cols:
            cells.append(f"{row['reference_us']:,.0f}")
        if torch_cols:
            cells += [
                f"{row['torch_us']:,.0f}",
                f"{row['speedup']:.2f}×",
                f"≥ {row['target']:g}×",
                "yes" if row["met"] else "no",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in result["gemm_peak_gflops"].items())
    blas = f"NumPy BLAS: {result['blas']}" if result.get("blas") else "NumPy BLAS"
    lines.append("")
    lines.append(
        f"{result['machine']}; median of {result['rounds']} interleaved rounds; "
        f"GEMM peak ({blas}) GFLOP/s: {peaks}; convgrad {result['convgrad']}, "
        f"numba {result['numba']}, numpy {result['numpy']}"
    )
    return "\n".join(lines)


def main(
    shapes: Sequence[str],
    rounds: int,
    threads: int | None,
    as_json: bool,
    with_torch: bool,
    with_reference: bool = False,
) -> int:
    """The ``convgrad bench`` command."""
    unknown = [name for name in shapes if name not in SUITE]
    if unknown:
        print(
            f"unknown shape(s) {', '.join(unknown)}; choose from {', '.join(SUITE)}",
            file=sys.stderr,
        )
        return 2
    if with_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("torch is not installed: timing convgrad alone", file=sys.stderr)
            with_torch = False
    result = run(
        list(shapes) or list(SUITE), rounds, threads, with_torch, with_reference=with_reference
    )
    print(json.dumps(result, indent=2) if as_json else format_table(result))
    return 0
