"""Thread scaling of convgrad (and torch) on this machine, as a Markdown table.

Runs ``python -m convgrad bench --json --threads T`` once per thread count,
each in its own process with OpenBLAS/OpenMP/MKL pinned to the same T (the
pointwise path calls NumPy's BLAS, which ignores numba's thread count), and
prints convgrad's time per thread count, its speed-up over one thread, and
its speed-up over torch at each count.

    python tools/thread_scaling.py --threads 1 2 4 8 16 resnet_3x3 cifar_b32
    python tools/thread_scaling.py --json-out scaling.json   # keep the raw rows too
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from convgrad.suite import SUITE

# Every suite shape but the two tiny ones, which run on one thread whatever the count.
DEFAULT_SHAPES = tuple(name for name in SUITE if name not in ("seed", "lenet2"))


def bench(threads: int, shapes: list[str], rounds: int) -> dict:
    """One ``convgrad bench --json`` run at ``threads``, in a fresh process."""
    env = os.environ | {
        name: str(threads)
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    }
    command = [sys.executable, "-m", "convgrad", "bench", "--json", "--threads", str(threads)]
    command += ["--rounds", str(rounds), *shapes]
    print(f"# {threads} thread(s): {' '.join(command[1:])}", file=sys.stderr, flush=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def format_tables(runs: dict[int, dict]) -> str:
    """convgrad's time and scaling per thread count, then its speed-up over torch."""
    counts = sorted(runs)
    first, last = counts[0], counts[-1]
    rows = {row["shape"]: {} for row in runs[first]["rows"]}
    for count in counts:
        for row in runs[count]["rows"]:
            rows[row["shape"]][count] = row
    head = ["shape", *(f"{c} thr µs" for c in counts), f"scaling {first}→{last}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for shape, by_count in rows.items():
        times = [by_count[c]["convgrad_us"] for c in counts]
        cells = [shape, *(f"{t:,.0f}" for t in times), f"{times[0] / times[-1]:.1f}×"]
        lines.append("| " + " | ".join(cells) + " |")
    if all("speedup" in row for run in runs.values() for row in run["rows"]):
        head = ["shape", *(f"vs torch, {c} thr" for c in counts)]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for shape, by_count in rows.items():
            cells = [shape, *(f"{by_count[c]['speedup']:.2f}×" for c in counts)]
            lines.append("| " + " | ".join(cells) + " |")
    info = runs[last]
    lines += [
        "",
        f"{info['machine'].rsplit(',', 1)[0]}; median of {info['rounds']} interleaved rounds; "
        f"convgrad {info['convgrad']}, numba {info['numba']}, numpy {info['numpy']}; "
        "times are the faster of convgrad's two layouts, torch's the faster memory format.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the scaling benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shapes", nargs="*", default=list(DEFAULT_SHAPES))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json-out", type=Path, help="also write the raw runs here")
    args = parser.parse_args(argv)
    runs = {count: bench(count, args.shapes, args.rounds) for count in args.threads}
    if args.json_out:
        args.json_out.write_text(json.dumps(runs, indent=2))
    print(format_tables(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
