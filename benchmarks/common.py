"""Shapes, arrays and measuring helpers shared by every benchmark module.

The benchmarks use convgrad's public API only, so the same suite runs against
any commit of convgrad that asv builds. For the same reason the shapes are
copied here from ``shared/benchmark-suite.md`` rather than imported from
``convgrad.suite``: a benchmark's definition must not change with the package
it measures, or the dashboard's history would stop being comparable.

Environment variables (read by every benchmark process):

``CONVGRAD_BENCH_THREADS``
    threads for numba and torch (default: numba's default, all cores).
``CONVGRAD_BENCH_SKIP_SLOW=1``
    skip the slow parameter sets (the three largest shapes and the NumPy
    reference baseline), leaving a suite that runs in a few minutes.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

# Seconds between two libraries' turns in ``interleaved_medians`` (see there)
# and of untimed warm-up after; the same as ``convgrad.bench``'s, kept here so
# that asv can time old commits.
PAUSE_BETWEEN_LIBRARIES_S = 0.05
WARM_UP_S = 0.02


class Shape(NamedTuple):
    """One suite problem, NCHW-logical: H = W = ``size``, square ``k`` x ``k`` kernel."""

    n: int
    c_in: int
    c_out: int
    size: int
    k: int
    stride: int
    padding: int
    dilation: int
    groups: int
    dtype: str

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.dilation * (self.k - 1) - 1) // self.stride + 1

    @property
    def flops(self) -> int:
        """FLOPs of one full backward: grad_input and grad_weight, a multiply-add per term."""
        terms = self.n * self.c_out * self.out_size**2 * (self.c_in // self.groups) * self.k**2
        return 4 * terms

    @property
    def options(self) -> dict[str, int]:
        return {
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "groups": self.groups,
        }


# The suite of shared/benchmark-suite.md, copied (see the module docstring), then extras.
SHAPES: dict[str, Shape] = {
    "seed": Shape(1, 1, 6, 28, 3, 1, 0, 1, 1, "float32"),
    "lenet2": Shape(1, 6, 16, 12, 5, 1, 0, 1, 1, "float32"),
    "mnist_b64": Shape(64, 1, 32, 28, 3, 1, 1, 1, 1, "float32"),
    "cifar_b32": Shape(32, 3, 64, 32, 3, 1, 1, 1, 1, "float32"),
    "resnet_3x3": Shape(8, 64, 64, 56, 3, 1, 1, 1, 1, "float32"),
    "resnet_s2": Shape(8, 128, 256, 28, 3, 2, 1, 1, 1, "float32"),
    "pointwise": Shape(8, 256, 256, 14, 1, 1, 0, 1, 1, "float32"),
    "depthwise": Shape(8, 128, 128, 56, 3, 1, 1, 1, 128, "float32"),
    "big_kernel": Shape(4, 16, 16, 64, 7, 1, 3, 1, 1, "float32"),
    "dilated": Shape(4, 32, 32, 64, 3, 1, 2, 2, 1, "float32"),
    "resnet_3x3_f64": Shape(8, 64, 64, 56, 3, 1, 1, 1, 1, "float64"),
}
# Held out of the suite, so that kernel paths no suite shape takes are still measured:
# the last stage of a ResNet at 4 x 4 and at 7 x 7 (the unfolded products, NCHW's
# channel-major rows at 7 x 7; resnet_s2 takes them at stride 2), a narrow layer at 4 x 4 (too
# few output channels to unfold: the channel kernels, grad_weight by input channel),
# one 224 x 224 image (the single gradients in bands of rows), an ImageNet
# stem (the fused backward in bands, on phase planes), a stride-2 depthwise layer
# (NCHW: the depthwise backward on phase planes), a few-channel layer with 8 channel
# pairs (the fused backward below flat_suits' 16), a small batch of 3.3e5 multiply-adds
# per gradient (the serial fused backward above 2**17), a 1x1 layer narrowing 256
# channels to 64 (grad_weight's gemm tasks cut along the input channels) and a
# stride-2 layer narrowing 128 channels to 32 (the unfolded products on few output
# channels; NHWC's grad_input alone keeps the flat kernels), a 1 x 1 stride-2
# downsampling layer (the unfolded products on one column span, cut again per
# thread), 64 channels on 8 x 8 planes (the direct tiles on planes short
# enough for the unfolded products), 128 and 256 channels at 28 x 28 (the
# direct grad_weight's tiles cut into runs: one a thread, 16 a thread), 96
# channels (tiles of 2 vectors, three panels) and 256 channels at 14 x 14 (the
# unfolded products for the backward and grad_weight, the direct tiles for
# grad_input alone).
EXTRA_SHAPES: dict[str, Shape] = {
    "late_4x4": Shape(8, 256, 256, 4, 3, 1, 1, 1, 1, "float32"),
    "late_7x7": Shape(8, 512, 512, 7, 3, 1, 1, 1, 1, "float32"),
    "late_4x4_narrow": Shape(8, 256, 16, 4, 3, 1, 1, 1, 1, "float32"),
    "image_224": Shape(1, 3, 64, 224, 3, 1, 1, 1, 1, "float32"),
    "stem_224": Shape(2, 3, 64, 224, 7, 2, 3, 1, 1, "float32"),
    "depthwise_s2": Shape(8, 128, 128, 56, 3, 2, 1, 1, 128, "float32"),
    "few_pairs": Shape(64, 1, 8, 28, 3, 1, 1, 1, 1, "float32"),
    "small_batch": Shape(4, 8, 8, 12, 3, 1, 1, 1, 1, "float32"),
    "pointwise_narrow": Shape(8, 256, 64, 28, 1, 1, 0, 1, 1, "float32"),
    "strided_narrow": Shape(8, 128, 32, 14, 3, 2, 1, 1, 1, "float32"),
    "depthwise_late": Shape(8, 1024, 1024, 7, 3, 1, 1, 1, 1024, "float32"),
    "depthwise_5x5": Shape(8, 240, 240, 28, 5, 1, 2, 1, 240, "float32"),
    "downsample_1x1": Shape(8, 64, 128, 56, 1, 2, 0, 1, 1, "float32"),
    "short_64": Shape(64, 64, 64, 8, 3, 1, 1, 1, 1, "float32"),
    "layer2_128": Shape(8, 128, 128, 28, 3, 1, 1, 1, 1, "float32"),
    "vgg_conv3": Shape(4, 256, 256, 28, 3, 1, 1, 1, 1, "float32"),
    "mid_96": Shape(8, 96, 96, 28, 3, 1, 1, 1, 1, "float32"),
    "late_14": Shape(8, 256, 256, 14, 3, 1, 1, 1, 1, "float32"),
}
SUITE_NAMES = list(SHAPES)
SHAPES |= EXTRA_SHAPES
SHAPE_NAMES = list(SHAPES)
LAYOUTS = ["NCHW", "NHWC"]
# Shapes with many channels: the ones whose thread scaling the performance issue sets a bar for.
DENSE_SHAPES = ["cifar_b32", "resnet_3x3", "resnet_s2", "pointwise", "big_kernel", "dilated"]
SLOW_SHAPES = {"resnet_3x3", "resnet_s2", "resnet_3x3_f64"}

MIB = 2**20


def threads() -> int:
    """Thread count for numba and torch in this benchmark process."""
    import numba

    return int(os.environ.get("CONVGRAD_BENCH_THREADS", numba.config.NUMBA_NUM_THREADS))


def skip_slow() -> bool:
    return os.environ.get("CONVGRAD_BENCH_SKIP_SLOW", "") not in ("", "0")


def skip_if_slow(shape_name: str) -> None:
    """asv reports a benchmark whose setup raises NotImplementedError as skipped."""
    if skip_slow() and shape_name in SLOW_SHAPES:
        raise NotImplementedError(f"{shape_name} skipped (CONVGRAD_BENCH_SKIP_SLOW)")


def set_threads(count: int | None = None) -> None:
    """Pin numba's (and torch's, when loaded) thread count for the calling thread."""
    import sys

    import numba

    count = count or threads()
    numba.set_num_threads(count)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)


def make_arrays(shape: Shape, layout: str, dtype: str | None = None, seed: int = 0):
    """(grad_output, input, weight, bias) for ``shape`` in ``layout``; standard normal values."""
    rng = np.random.default_rng(seed)
    dtype = dtype or shape.dtype
    out = shape.out_size
    x = rng.standard_normal((shape.n, shape.c_in, shape.size, shape.size)).astype(dtype)
    w = rng.standard_normal((shape.c_out, shape.c_in // shape.groups, shape.k, shape.k))
    w = w.astype(dtype)
    g = rng.standard_normal((shape.n, shape.c_out, out, out)).astype(dtype)
    b = rng.standard_normal(shape.c_out).astype(dtype)
    if layout == "NHWC":
        g = np.ascontiguousarray(g.transpose(0, 2, 3, 1))
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        w = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    return g, x, w, b


def import_torch():
    """torch, or NotImplementedError (asv: skipped) when it is not installed."""
    try:
        import torch
    except ImportError as error:
        raise NotImplementedError("torch is not installed") from error
    return torch


def torch_backward_call(shape: Shape, memory_format: str) -> Callable[[], object]:
    """A call of torch's conv backward (all three gradients) on ``shape``."""
    torch = import_torch()
    g, x, w, _ = (torch.from_numpy(a) for a in make_arrays(shape, "NCHW"))
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    g, x, w = (t.contiguous(memory_format=fmt) for t in (g, x, w))
    s, p, d = [shape.stride] * 2, [shape.padding] * 2, [shape.dilation] * 2
    mask = [True, True, True]

    def call():
        return torch.ops.aten.convolution_backward(
            g, x, w, [shape.c_out], s, p, d, False, [0, 0], shape.groups, mask
        )

    return call


def seconds_per_call(call: Callable[[], object], min_seconds: float = 0.05) -> float:
    """Mean time of one call over a batch lasting at least ``min_seconds``."""
    count, elapsed = 1, 0.0
    while True:
        start = time.perf_counter()
        for _ in range(count):
            call()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / count
        count *= 2


def interleaved_medians(
    calls: dict[str, Callable[[], object]], rounds: int = 5
) -> dict[str, float]:
    """Median seconds per call of each entry, measured in alternating rounds.

    Alternating the contenders within one process exposes them to the same
    machine state, so their ratio is steadier than two separate timings. A
    pause between libraries lets the last one's spinning threads settle:
    torch's OpenMP threads spin for milliseconds after a call, and a 2 ms pause
    left convgrad's next calls up to 1.8x slower (``convgrad.bench``). The next
    contender then runs untimed for WARM_UP_S: an idle virtual CPU wakes slowly,
    and numba's TBB workers sleep soon after a kernel (as ``convgrad.bench``).
    """
    for call in calls.values():
        call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            time.sleep(PAUSE_BETWEEN_LIBRARIES_S)
            warm_until = time.perf_counter() + WARM_UP_S
            call()  # untimed: wakes this contender's threads, at least once
            while time.perf_counter() < warm_until:
                call()
            samples[name].append(seconds_per_call(call, 0.02))
    return {name: float(np.median(times)) for name, times in samples.items()}


def working_memory_bytes(call: Callable[[], object]) -> int:
    """Peak bytes allocated during ``call`` beyond the arrays it returns (tracemalloc).

    tracemalloc sees NumPy's allocations (NumPy reports them to it) but not
    memory allocated inside JIT-compiled code (numba's own allocator). convgrad
    allocates its kernels' workspaces with NumPy for that reason; a kernel that
    allocated inside compiled code would be undercounted by that much.
    """
    call()  # warm caches so the measured call allocates only what it needs
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    arrays = result if isinstance(result, tuple) else (result,)
    returned = sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))
    return max(0, peak - before - returned)


def memory_budget_bytes(g: np.ndarray, x: np.ndarray) -> int:
    """The working-memory allowance: a quarter of input + grad_output bytes, at least 4 MiB."""
    return max((x.nbytes + g.nbytes) // 4, 4 * MIB)


class SuiteCase(ABC):
    """One suite shape in one layout, JIT warmed in ``setup``; subclasses say what to run.

    Abstract, so asv's discovery skips it; every concrete subclass inherits the
    GFLOP/s and working-memory tracks.
    """

    params = [SHAPE_NAMES, LAYOUTS]
    param_names = ["shape", "layout"]
    timeout = 300
    # The fraction of a full backward's FLOPs the subclass does (grad_input: half).
    flops_share = 1.0

    def setup(self, shape_name: str, layout: str) -> None:
        skip_if_slow(shape_name)
        set_threads()
        self.shape = SHAPES[shape_name]
        self.layout = layout
        self.g, self.x, self.w, self.b = make_arrays(self.shape, layout)
        self.run()  # compile, or load from numba's cache, before anything is timed

    @abstractmethod
    def run(self) -> object:
        """One call of the function under test."""

    def track_gflops(self, shape_name: str, layout: str) -> float:
        return self.flops_share * self.shape.flops / seconds_per_call(self.run, 0.2) / 1e9

    track_gflops.unit = "GFLOP/s"

    def track_working_mib(self, shape_name: str, layout: str) -> float:
        return working_memory_bytes(self.run) / MIB

    track_working_mib.unit = "MiB"

    def track_working_memory_vs_budget(self, shape_name: str, layout: str) -> float:
        """Working memory over the allowance (max of (x + g) / 4 and 4 MiB): <= 1 is in budget."""
        return working_memory_bytes(self.run) / memory_budget_bytes(self.g, self.x)

    track_working_memory_vs_budget.unit = "fraction of budget"
