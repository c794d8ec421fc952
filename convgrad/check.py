"""``convgrad check``: every kernel path against the NumPy reference, on random problems.

Each case draws a convolution aimed at one kernel family (see ``_dispatch``):
rows, channels, flat planes, BLAS (1x1), unfolded products (im2col and BLAS),
depthwise, and grouped problems that land wherever the dispatch sends them,
cycling through both layouts and both dtypes, batched or not, with random
strides, asymmetric padding and dilation.
A draw is kept only when the dispatch really picks the aimed-at path, so every
family is exercised whatever its thresholds are. Each case runs ``conv2d``, the
three single-gradient functions and ``conv2d_backward`` (which may compute all
three in one fused kernel) and compares every result with ``convgrad.reference``
computed in float64, within a tolerance that grows with the length of the sums.
The case is labelled by the family the dispatch chose for its gradients.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TextIO

import numpy as np

from . import (
    __version__,
    conv2d,
    conv2d_backward,
    conv2d_grad_bias,
    conv2d_grad_input,
    conv2d_grad_weight,
)
from . import _dispatch as dispatch
from ._layouts import get_layout
from ._problem import Problem, describe
from ._progress import ProgressBar
from .reference import conv2d_backward_reference, conv2d_reference

# Kernel family by the module its kernel lives in.
FAMILIES = {
    "gemm": "gemm",
    "gemm_tiles": "gemm",  # the 1x1 products by register tiles (``_dispatch.GEMM_BY_TILES``)
    "nchw_flat": "flat",
    "nchw": "rows",
    "nhwc": "channels",
    "nhwc_depthwise": "depthwise",
    "im2col": "unfolded",
}
if dispatch.DIRECT_TILES:  # dense stride-1 gradients by register tiles (AVX-512 only)
    FAMILIES["direct_tiles"] = "direct"
# What each case aims at, and the test a draw must pass to count as such.
TARGETS: dict[str, Callable[[Problem, str], bool]] = {
    "rows": lambda p, family: family == "rows" and p.geometry.groups == 1,
    "channels": lambda p, family: family == "channels" and p.geometry.groups == 1,
    "flat": lambda p, family: family == "flat",
    "gemm": lambda p, family: family == "gemm",
    "unfolded": lambda p, family: family == "unfolded",
    "depthwise": lambda p, family: dispatch.is_depthwise(p),
    "grouped": lambda p, family: p.geometry.groups > 1 and not dispatch.is_depthwise(p),
}
if dispatch.DIRECT_TILES:
    TARGETS["direct"] = lambda p, family: family == "direct"
LAYOUTS = ("NCHW", "NHWC")
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# "backward" is conv2d_backward's three results (it may run a fused kernel for all
# three); the gradients' own names are the single-gradient functions' results.
RESULTS = ("forward", "grad_input", "grad_weight", "grad_bias", "backward")
MAX_DRAWS = 500  # draws per case before taking one that misses its target


@dataclass(frozen=True)
class Case:
    """One convolution problem to check, in logical (NCHW) sizes."""

    target: str
    layout: str
    dtype: str
    batched: bool
    n: int
    c_in: int
    c_out: int
    groups: int
    height: int
    width: int
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, bottom, left, right
    dilation: tuple[int, int]
    seed: int

    @property
    def options(self) -> dict[str, object]:
        """Keyword options for convgrad's functions."""
        top, bottom, left, right = self.padding
        return {
            "stride": self.stride,
            "padding": ((top, bottom), (left, right)),
            "dilation": self.dilation,
            "groups": self.groups,
            "layout": self.layout,
        }

    def problem(self) -> Problem:
        """The validated problem, as the dispatch sees it."""
        spec = get_layout(self.layout)
        image = spec.image_shape(self.n, self.c_in, self.height, self.width)
        weight = spec.weight_shape(self.c_out, self.c_in // self.groups, self.kh, self.kw)
        return describe(
            spec,
            np.dtype(self.dtype),
            image if self.batched else image[1:],
            weight,
            stride=self.stride,
            padding=self.options["padding"],
            dilation=self.dilation,
            groups=self.groups,
        )

    def __str__(self) -> str:
        batch = f"N={self.n}" if self.batched else "unbatched"
        return (
            f"{self.layout} {self.dtype} {batch} C_in={self.c_in} C_out={self.c_out} "
            f"groups={self.groups} HxW={self.height}x{self.width} "
            f"kernel={self.kh}x{self.kw} stride={self.stride} "
            f"padding(t,b,l,r)={self.padding} dilation={self.dilation} seed={self.seed}"
        )


def family_of(problem: Problem, operation: str = "grad_weight") -> str:
    """Name of the kernel family the dispatch picks for ``operation`` on ``problem``."""
    kernel = dispatch.select_kernel(operation, problem).kernel
    module = getattr(kernel, "py_func", kernel).__module__.rsplit(".", 1)[-1]
    return FAMILIES.get(module, module)


def _sizes(target: str, rng: np.random.Generator, quick: bool) -> tuple[int, int, int, int, int]:
    """(groups, C_in, C_out, smallest, largest image side) to draw for ``target``."""
    r = rng.integers
    if target == "rows":
        return 1, int(r(1, 4)), int(r(1, 5)), 6, 14 if quick else 24
    if target == "channels":
        return 1, int(r(2, 9)), int(r(8, 33)), 3, 8 if quick else 12
    if target == "flat":
        return 1, int(r(4, 9)), int(r(4, 9)), 8, 14 if quick else 28
    if target == "gemm":  # from 32 channels also the register tiles (``_dispatch.tiles_suit``)
        return 1, int(r(4, 80)), int(r(4, 80)), 2, 8 if quick else 16
    if target == "unfolded":  # enough channels on short planes
        return 1, int(r(16, 25)), int(r(64, 73)), 3, 8 if quick else 12
    if target == "direct":  # NCHW takes four vectors' channels (``_dispatch.direct_suits``)
        return 1, int(r(64, 73)), int(r(64, 73)), 17, 20 if quick else 24
    if target == "depthwise":
        c = int(r(1, 13))
        return c, c, c, 4, 10 if quick else 20
    groups = int(r(2, 5))
    return groups, groups * int(r(1, 5)), groups * int(r(1, 9)), 4, 10 if quick else 20


def _axis(
    rng: np.random.Generator, smallest: int, largest: int, pointwise: bool
) -> tuple[int, int, int, int, int, int]:
    """(size, kernel, stride, dilation, pad_before, pad_after) along one axis."""
    if pointwise:
        return int(rng.integers(smallest, largest + 1)), 1, 1, 1, 0, 0
    kernel = int(rng.integers(1, 6))
    stride = int(rng.integers(1, 4))
    dilation = int(rng.integers(1, 3))
    before, after = (int(p) for p in rng.integers(0, 4, size=2))
    fits = dilation * (kernel - 1) + 1 - before - after  # the smallest size with output >= 1
    size = int(rng.integers(max(smallest, fits), max(largest, fits) + 1))
    return size, kernel, stride, dilation, before, after


def draw_case(
    target: str, layout: str, dtype: np.dtype, rng: np.random.Generator, quick: bool = False
) -> Case:
    """A random case for ``target``, redrawn until the dispatch agrees (at most MAX_DRAWS)."""
    case = None
    for _ in range(MAX_DRAWS):
        groups, c_in, c_out, smallest, largest = _sizes(target, rng, quick)
        h, kh, sh, dh, top, bottom = _axis(rng, smallest, largest, target == "gemm")
        w, kw, sw, dw, left, right = _axis(rng, smallest, largest, target == "gemm")
        batched = bool(rng.integers(0, 4))  # one in four unbatched
        case = Case(
            target=target,
            layout=layout,
            dtype=np.dtype(dtype).name,
            batched=batched,
            n=int(rng.integers(1, 3 if quick else 5)) if batched else 1,
            c_in=c_in,
            c_out=c_out,
            groups=groups,
            height=h,
            width=w,
            kh=kh,
            kw=kw,
            stride=(sh, sw),
            padding=(top, bottom, left, right),
            dilation=(dh, dw),
            seed=int(rng.integers(0, 2**31)),
        )
        problem = case.problem()
        if TARGETS[target](problem, family_of(problem)):
            return case
    assert case is not None
    return case


def make_cases(count: int, seed: int, quick: bool = False) -> list[Case]:
    """``count`` cases cycling through every target, layout and dtype."""
    rng = np.random.default_rng(seed)
    combos = [(t, lay, dt) for t in TARGETS for lay in LAYOUTS for dt in DTYPES]
    return [draw_case(*combos[k % len(combos)], rng, quick) for k in range(count)]


def tolerance(dtype: np.dtype, terms: int, scale: float) -> tuple[float, float]:
    """(rtol, atol) for a sum of ``terms`` products each at most ``scale`` in size."""
    terms = max(1, terms)
    if np.dtype(dtype) == np.float32:
        return 1e-5, 1e-5 * math.sqrt(terms) * scale
    return 1e-10, 1e-13 * terms * scale


def error_ratio(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> float:
    """max |got - want| / (atol + rtol |want|): at most 1 passes (inf on a shape mismatch)."""
    if got.shape != want.shape:
        return math.inf
    if not got.size:
        return 0.0
    diff = np.abs(got.astype(np.float64) - want)
    ratio = float(np.max(diff / (atol + rtol * np.abs(want))))
    return ratio if math.isfinite(ratio) else math.inf


def _peak(a: np.ndarray) -> float:
    return float(np.max(np.abs(a))) if a.size else 1.0


@dataclass
class Outcome:
    """Results of one case: the error ratio of each result (<= 1 passes)."""

    case: Case
    family: str
    ratios: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Whether every result is within its tolerance."""
        return all(r <= 1.0 for r in self.ratios.values())

    @property
    def worst(self) -> float:
        """The largest error ratio over the case's results."""
        return max(self.ratios.values())


def run_case(case: Case) -> Outcome:
    """Run ``case`` through convgrad and the reference and compare all four results."""
    problem = case.problem()
    rng = np.random.default_rng(case.seed)
    shapes = (problem.input_shape, problem.weight_shape, (problem.c_out,), problem.output_shape)
    x, w, b, g = (rng.standard_normal(s).astype(case.dtype) for s in shapes)
    options = case.options
    layout = {"layout": options["layout"]}
    got = {
        "forward": conv2d(x, w, b, **options),
        "grad_input": conv2d_grad_input(g, w, x.shape, **options),
        "grad_weight": conv2d_grad_weight(g, x, w.shape, **options),
        "grad_bias": conv2d_grad_bias(g, **layout),
    }
    fused = conv2d_backward(g, x, w, **options)
    x64, w64, b64, g64 = (a.astype(np.float64) for a in (x, w, b, g))
    want = {"forward": conv2d_reference(x64, w64, b64, **options)}
    want.update(zip(RESULTS[1:4], conv2d_backward_reference(g64, x64, w64, **options), strict=True))
    groups = problem.geometry.groups
    per_output = problem.n * problem.out_h * problem.out_w
    sums = {  # (terms, scale) of each result's sums
        "forward": (problem.c_in // groups * problem.kh * problem.kw, _peak(x) * _peak(w)),
        "grad_input": (problem.c_out // groups * problem.kh * problem.kw, _peak(g) * _peak(w)),
        "grad_weight": (per_output, _peak(g) * _peak(x)),
        "grad_bias": (per_output, _peak(g)),
    }
    outcome = Outcome(case, family_of(problem))
    for name in RESULTS[:4]:
        rtol, atol = tolerance(problem.dtype, *sums[name])
        outcome.ratios[name] = error_ratio(np.asarray(got[name]), want[name], rtol, atol)
    outcome.ratios["backward"] = max(
        error_ratio(np.asarray(result), want[name], *tolerance(problem.dtype, *sums[name]))
        for name, result in zip(RESULTS[1:4], fused, strict=True)
    )
    return outcome


@dataclass
class PathRow:
    """One row of the table: a kernel family, the user's layout, a dtype."""

    family: str
    layout: str
    dtype: str
    cases: int = 0
    passed: int = 0
    worst: float = 0.0
    targets: dict[str, int] = field(default_factory=dict)  # what the cases aimed at


def summarise(outcomes: Sequence[Outcome]) -> list[PathRow]:
    """Outcomes grouped by (family, layout, dtype), in a stable order."""
    rows: dict[tuple[str, str, str], PathRow] = {}
    for outcome in outcomes:
        case = outcome.case
        key = (outcome.family, case.layout, case.dtype)
        row = rows.setdefault(key, PathRow(*key))
        row.cases += 1
        row.passed += outcome.passed
        row.worst = max(row.worst, outcome.worst)
        row.targets[case.target] = row.targets.get(case.target, 0) + 1
    order = list(FAMILIES.values())
    return sorted(
        rows.values(),
        key=lambda r: (
            order.index(r.family) if r.family in order else len(order),
            r.layout,
            r.dtype,
        ),
    )


def format_table(rows: Sequence[PathRow]) -> str:
    """The per-path table printed by ``convgrad check``.

    "worst" is the largest error over the path's results as a fraction of
    their tolerance (1 would be at the limit); "problems" says what the
    cases were drawn as (depthwise in NCHW runs on the row kernels, grouped
    problems wherever the dispatch sends them).
    """
    header = ("kernel family", "layout", "dtype", "cases", "passed", "worst", "problems")
    table = [header]
    for row in rows:
        problems = ", ".join(f"{name} {k}" for name, k in row.targets.items())
        mark = "  MISMATCH" if row.passed != row.cases else ""
        table.append(
            (
                row.family,
                row.layout,
                row.dtype,
                str(row.cases),
                str(row.passed),
                f"{row.worst:.1e}",
                problems + mark,
            )
        )
    widths = [max(len(line[k]) for line in table) for k in range(len(header))]
    right = {3, 4}  # counts
    return "\n".join(
        "  ".join(
            cell.rjust(widths[k]) if k in right else cell.ljust(widths[k])
            for k, cell in enumerate(line)
        ).rstrip()
        for line in table
    )


def run(
    count: int = 240,
    seed: int = 0,
    quick: bool = False,
    as_json: bool = False,
    stdout: TextIO | None = None,
    progress: bool | None = None,
) -> int:
    """Check ``count`` random cases; print a table; return 0 if all passed, else 1.

    Parameters
    ----------
    count : int
        Number of random cases, cycling through kernel families, layouts and dtypes.
    seed : int
        Seed of the case generator: the same seed checks the same cases.
    quick : bool
        Smaller images and batches.
    as_json : bool
        Print JSON instead of the table.
    stdout : file, optional
        Where to print (sys.stdout by default).
    progress : bool, optional
        Draw the progress bar on stderr; by default when stderr is a terminal.
    """
    out = sys.stdout if stdout is None else stdout
    cases = make_cases(count, seed, quick)
    if not as_json:  # first, so that a first run's minute of compiling is not silent
        print(
            f"convgrad {__version__} check: {len(cases)} random cases (seed {seed}"
            f"{', quick' if quick else ''}), conv2d and all three gradients against\n"
            "convgrad.reference in float64 (a first run compiles the kernels: a minute or so)",
            file=out,
            flush=True,
        )
    bar = ProgressBar(len(cases), enabled=progress)
    start = time.perf_counter()
    outcomes = []
    for k, case in enumerate(cases):
        bar.update(k, f"{case.target} {case.layout} {case.dtype}")
        outcomes.append(run_case(case))
    bar.update(len(cases), "done")
    bar.close()
    seconds = time.perf_counter() - start
    rows = summarise(outcomes)
    failed = [o for o in outcomes if not o.passed]
    missing = sorted(set(FAMILIES.values()) - {o.family for o in outcomes})
    if as_json:
        report = {
            "convgrad": __version__,
            "seed": seed,
            "quick": quick,
            "cases": len(outcomes),
            "passed": len(outcomes) - len(failed),
            "seconds": round(seconds, 3),
            "paths": [asdict(row) for row in rows],
            "not_exercised": missing,
            "mismatches": [
                {"family": o.family, "case": asdict(o.case), "error_ratios": _finite(o.ratios)}
                for o in failed
            ],
        }
        print(json.dumps(report, indent=2), file=out)
        return 1 if failed else 0
    print(format_table(rows), file=out)
    print(
        "(worst: the largest error as a fraction of its tolerance; 1 would be at the limit)",
        file=out,
    )
    if missing:
        print(f"kernel families not exercised: {', '.join(missing)}", file=out)
    for o in failed:
        bad = ", ".join(f"{name} {r:.3g}x tolerance" for name, r in o.ratios.items() if r > 1.0)
        print(f"MISMATCH [{o.family}] {o.case}: {bad}", file=out)
    verdict = f"{len(failed)} of {len(cases)} cases MISMATCH" if failed else "all passed"
    print(f"{verdict} in {seconds:.1f} s", file=out)
    return 1 if failed else 0


def _finite(ratios: dict[str, float]) -> dict[str, float | None]:
    """Ratios for JSON, which has no infinity (None: a NaN, an Inf or a wrong shape)."""
    return {name: r if math.isfinite(r) else None for name, r in ratios.items()}
