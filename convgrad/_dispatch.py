"""Pick the kernel for a problem: a pure function of layout, dtype, shape and options.

Later kernel variants (tiny problems, dense blocked, depthwise, ...) are added
here without touching the public API. Keeping the choice pure lets the tests
check it directly, and keeps results independent of the thread count.
"""

from collections.abc import Callable
from typing import NamedTuple

from ._problem import Problem
from .kernels import nchw, nhwc

OPERATIONS = ("forward", "grad_input", "grad_weight", "grad_bias")

_KERNELS: dict[tuple[str, str], Callable[..., None]] = {
    ("forward", "NCHW"): nchw.forward_nchw,
    ("grad_input", "NCHW"): nchw.grad_input_nchw,
    ("grad_weight", "NCHW"): nchw.grad_weight_nchw,
    ("grad_bias", "NCHW"): nchw.grad_bias_nchw,
    ("forward", "NHWC"): nhwc.forward_nhwc,
    ("grad_input", "NHWC"): nhwc.grad_input_nhwc,
    ("grad_weight", "NHWC"): nhwc.grad_weight_nhwc,
    ("grad_bias", "NHWC"): nhwc.grad_bias_nhwc,
}

# The chunked NHWC grad_weight keeps one partial weight gradient per chunk:
# at most MAX_WEIGHT_CHUNKS of them, within PARTIALS_BUDGET_BYTES in total, and
# each chunk at least MIN_TERMS_PER_CHUNK multiply-adds (tiny problems: 1 chunk).
MAX_WEIGHT_CHUNKS = 16
PARTIALS_BUDGET_BYTES = 4 * 2**20
MIN_TERMS_PER_CHUNK = 2**15


class KernelChoice(NamedTuple):
    """A kernel and the int arguments it takes after its arrays."""

    kernel: Callable[..., None]
    args: tuple[int, ...]


def weight_chunks(problem: Problem) -> int:
    """How many fixed chunks of output rows the NHWC grad_weight sums separately."""
    weight_bytes = max(
        1,
        problem.c_out
        * problem.c_in
        // problem.geometry.groups
        * problem.kh
        * problem.kw
        * problem.dtype.itemsize,
    )
    by_memory = PARTIALS_BUDGET_BYTES // weight_bytes
    by_work = problem.terms // MIN_TERMS_PER_CHUNK
    return int(max(1, min(MAX_WEIGHT_CHUNKS, problem.n * problem.out_h, by_memory, by_work)))


def select_kernel(operation: str, problem: Problem) -> KernelChoice:
    """The kernel that computes ``operation`` ("forward", "grad_input" or "grad_weight")."""
    kernel = _KERNELS[operation, problem.layout.name]
    if operation == "grad_weight" and problem.layout.name == "NHWC":
        return KernelChoice(kernel, (*problem.kernel_args, weight_chunks(problem)))
    return KernelChoice(kernel, problem.kernel_args)


def select_bias_kernel(layout_name: str) -> Callable[..., None]:
    """The kernel that sums grad_output into grad_bias for ``layout_name``."""
    return _KERNELS["grad_bias", layout_name]
