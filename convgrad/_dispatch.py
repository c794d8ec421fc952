"""Pick the kernel for a problem: a pure function of layout, dtype, shape and options.

Later kernel variants (tiny problems, dense blocked, depthwise, ...) are added
here without touching the public API. Keeping the choice pure lets the tests
check it directly, and keeps results independent of the thread count.
"""

from collections.abc import Callable
from typing import NamedTuple

from ._layouts import NCHW, NHWC, Layout
from ._problem import Problem
from .kernels import nchw, nhwc

_KERNELS: dict[tuple[str, str], Callable[..., None]] = {
    ("forward", "NCHW"): nchw.forward_nchw,
    ("grad_input", "NCHW"): nchw.grad_input_nchw,
    ("grad_weight", "NCHW"): nchw.grad_weight_nchw,
    ("forward", "NHWC"): nhwc.forward_nhwc,
    ("grad_input", "NHWC"): nhwc.grad_input_nhwc,
    ("grad_weight", "NHWC"): nhwc.grad_weight_nhwc,
}
_BIAS_KERNELS: dict[str, Callable[..., None]] = {
    "NCHW": nchw.grad_bias_nchw,
    "NHWC": nhwc.grad_bias_nhwc,
}

# The chunked NHWC grad_weight keeps one partial weight gradient per chunk:
# at most MAX_WEIGHT_CHUNKS of them, within PARTIALS_BUDGET_BYTES in total, and
# each chunk at least MIN_TERMS_PER_CHUNK multiply-adds (tiny problems: 1 chunk).
MAX_WEIGHT_CHUNKS = 16
PARTIALS_BUDGET_BYTES = 4 * 2**20
MIN_TERMS_PER_CHUNK = 2**15


# The NCHW kernels vectorise along output rows (OW long), the NHWC kernels
# along a group's output channels (C_out/groups long). The longer vector wins;
# rows are favoured up to twice the channel count, as measured on the suite
# (channel loops also pay a per-pixel overhead that row loops pay per row).
ROW_PREFERENCE = 2


class KernelChoice(NamedTuple):
    """A kernel, the layout its arrays must be in, and the ints it takes after them."""

    kernel: Callable[..., None]
    layout: Layout
    args: tuple[int, ...]


def kernel_layout(problem: Problem) -> Layout:
    """The layout whose kernels suit ``problem``, whatever layout its arrays come in.

    When it differs from the problem's layout, the caller converts the arrays
    (a parallel copy) and converts the results back.
    """
    cout_g = problem.c_out // problem.geometry.groups
    return NHWC if ROW_PREFERENCE * cout_g > problem.out_w else NCHW


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
    layout = kernel_layout(problem)
    kernel = _KERNELS[operation, layout.name]
    if operation == "grad_weight" and layout is NHWC:
        return KernelChoice(kernel, layout, (*problem.kernel_args, weight_chunks(problem)))
    return KernelChoice(kernel, layout, problem.kernel_args)


def select_bias_kernel(layout_name: str) -> Callable[..., None]:
    """The kernel that sums grad_output into grad_bias for ``layout_name``."""
    return _BIAS_KERNELS[layout_name]
