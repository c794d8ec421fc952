"""Pick the kernel for a problem: a pure function of layout, dtype, shape and options.

The kernel families, by what their innermost loop runs along:

- "gemm" (``kernels/gemm.py``, both layouts): 1x1 kernels with stride 1 and
  no padding are plain matrix products, run through NumPy's BLAS;
- "flat" (``kernels/nchw_flat.py``, both layouts): whole zero-padded image
  planes (split into stride phases), OH * (W + padding) / stride long, four
  output channels at a time; NHWC channels are gathered into the planes;
- "rows" (``kernels/nchw.py``, NCHW): one output row, OW long;
- "channels" (``kernels/nhwc.py``, NHWC): a group's output channels;
- "depthwise channels" (``kernels/nhwc_depthwise.py``, NHWC, groups == C_in
  == C_out): all channels, elementwise (conv2d_backward at stride 1: all three
  gradients in one pass over the rows; other strides grad_input, then
  grad_weight with grad_bias);
- "depthwise planes" (``kernels/nchw_depthwise.py``, NCHW, conv2d_backward
  only): a channel's whole padded plane, all three gradients in one pass;
- "depthwise tiles" (``kernels/depthwise_tiles.py``, both layouts,
  conv2d_backward only, stride 1): a block of channels, one vector register
  wide, in a tile per image, all three gradients in one pass;
- "direct" (``kernels/direct_tiles.py``, both layouts, copied into NHWC bands):
  dense stride-1 problems as products whose terms run over the kernel's taps,
  read from zero-padded bands by register tiles (AVX-512 CPUs only; on short
  planes, which the unfolded products take, grad_input alone);
- "unfolded" (``kernels/im2col.py``, both layouts; NCHW in
  ``kernels/im2col_nchw.py``): dense problems on short planes or at strides
  as two BLAS products per tile of images over their unfolded input (im2col).
  Depthwise problems stay in the user's layout (rows for NCHW's single
  gradients), as their little arithmetic per byte would not pay for a relayout.

The choice depends only on the problem, never on the data or thread count,
so results are reproducible. The one data-dependent step is the flat
kernels' exactness condition: they multiply zero padding by the data, exact
only for finite values, so each flat choice names the exact kernel the
caller runs instead when an input holds NaN or Inf.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

import numba

from ._blas import blas_vector_bytes
from ._layouts import NCHW, NHWC, Layout
from ._problem import Problem
from .kernels import (
    depthwise_tiles,
    direct_tiles,
    gemm,
    gemm_tiles,
    im2col,
    nchw,
    nchw_depthwise,
    nchw_flat,
    nhwc,
    nhwc_depthwise,
)
from .kernels._columns import VECTOR_BYTES, VECTOR_REGISTERS
from .kernels._tile import TAP_TILE_ROWS

_KERNELS: dict[tuple[str, str], Callable[..., None]] = {
    ("forward", "NCHW"): nchw.forward_nchw,
    ("grad_input", "NCHW"): nchw.grad_input_nchw,
    ("grad_weight", "NCHW"): nchw.grad_weight_nchw,
    ("forward", "NHWC"): nhwc.forward_nhwc,
    ("grad_input", "NHWC"): nhwc.grad_input_nhwc,
    ("grad_weight", "NHWC"): nhwc.grad_weight_nhwc,
}
_GEMM_KERNELS: dict[tuple[str, str], Callable[..., None]] = {
    ("grad_input", "NCHW"): gemm.grad_input_gemm_nchw,
    ("grad_weight", "NCHW"): gemm.grad_weight_gemm_nchw,
    ("grad_input", "NHWC"): gemm.grad_input_gemm_nhwc,
    ("grad_weight", "NHWC"): gemm.grad_weight_gemm_nhwc,
}
# The 1x1 products by register tiles (``kernels/gemm_tiles.py``) where NumPy's
# OpenBLAS runs kernels narrower than the CPU's vectors: AVX2 kernels on an
# AVX-512 CPU run at half its rate. Seen on a 2-core AMD EPYC (Zen 5) with
# ``OPENBLAS_CORETYPE=Haswell`` set in the environment: pointwise's products
# by tiles 0.6-0.7x the time of OpenBLAS's (NCHW grad_weight 0.57-0.73x, the
# input's planes transposed into the tiles' panels). Where OpenBLAS runs
# AVX-512 kernels (or its kernels are unknown) the products stay with it.
# Fixed for the process, as the CPU is. Nor do groups of fewer channels than
# half a tile's columns (32 float32, 16 float64 on AVX-512) go by tiles: the
# products' narrow side fills a quarter of the tile or less (8 x 16 -> 64 @
# 28 x 28 NCHW took 1.6-2.1x BLAS's time, 8 x 64 -> 16 NHWC 1.1-1.25x, 8 x 64 ->
# 8 at stride 2 unfolded 1.0-1.4x); from 32 (8 x 128 -> 32 at stride 2
# unfolded, 0.84-0.89x) they win.
GEMM_BY_TILES = (blas_vector_bytes() or VECTOR_BYTES) < VECTOR_BYTES


def tiles_suit(problem: Problem) -> bool:
    """Whether ``problem``'s matrix products (1x1 or unfolded) run by register tiles."""
    groups = problem.geometry.groups
    narrowest = min(problem.c_in // groups, problem.c_out // groups)
    half_tile = gemm_tiles.TILE_COLUMNS_BYTES // problem.dtype.itemsize // 2
    return GEMM_BY_TILES and narrowest >= half_tile


_GEMM_TILES_KERNELS: dict[tuple[str, str], Callable[..., None]] = {
    ("grad_input", "NCHW"): gemm_tiles.grad_input_tiles_nchw,
    ("grad_input", "NHWC"): gemm_tiles.grad_input_tiles_nhwc,
    ("grad_weight", "NHWC"): gemm_tiles.grad_weight_tiles_nhwc,
    ("grad_weight", "NCHW"): gemm_tiles.grad_weight_tiles_nchw,
}


def gemm_kernel(operation: str, layout: Layout, by_tiles: bool) -> Callable:
    """The 1x1 kernel for ``operation`` in ``layout``: by tiles if ``by_tiles``, else BLAS."""
    tiles = _GEMM_TILES_KERNELS.get((operation, layout.name)) if by_tiles else None
    return tiles or _GEMM_KERNELS[operation, layout.name]


_DEPTHWISE_NHWC_KERNELS: dict[str, Callable[..., None]] = {
    "forward": nhwc_depthwise.forward_nhwc_depthwise,
    "grad_input": nhwc_depthwise.grad_input_nhwc_depthwise,
    "grad_weight": nhwc_depthwise.grad_weight_nhwc_depthwise,
}
_FLAT_KERNELS: dict[str, Callable[..., None]] = {
    "grad_input": nchw_flat.grad_input_nchw_flat,
    "grad_weight": nchw_flat.grad_weight_nchw_flat,
}
_BIAS_KERNELS: dict[str, Callable[..., None]] = {
    "NCHW": nchw.grad_bias_nchw,
    "NHWC": nhwc.grad_bias_nhwc_parallel,
}
_SERIAL_BIAS_KERNELS: dict[str, Callable[..., None]] = {
    "NCHW": nchw.grad_bias_nchw_serial,
    "NHWC": nhwc.grad_bias_nhwc,
}

# Rows vs channels: the longer inner vector wins, rows up to twice the
# channel count (channel loops pay a per-pixel overhead that rows pay per row).
ROW_PREFERENCE = 2

# Flat planes pay for padded copies of the images, which pay off once a group
# has FLAT_MIN_PAIRS (C_in/g x C_out/g) channel pairs to reuse them and a plane
# is at least FLAT_MIN_LENGTH_PER_CHANNEL times longer than the channel vector,
# or FLAT_LONG_PLANE long: with 4 x 4 channel blocks and images stacked into
# long vectors the flat kernels beat the channel kernels from there on whatever
# the channel count (measured, 256-512 channels: 7 x 9, 7 x 8 (stride 2),
# 8 x 10 and 14 x 16 planes 1.4-2x faster on flat).
FLAT_MIN_PAIRS = 16
FLAT_MIN_LENGTH_PER_CHANNEL = 4
FLAT_LONG_PLANE = 48

# BLAS products pay off from the same channel-pair count as flat planes; their
# temporaries are formed a tile of rows at a time, at most GEMM_TILE_BYTES each.
GEMM_TILE_BYTES = 4 * 2**20

# Working memory: padded images are made a chunk at a time, within the larger
# of this and a quarter of the input and grad_output bytes (at least one image).
WORKSPACE_MIN_BYTES = 4 * 2**20
# Workspaces sized to the last byte left the calls a few KiB over the allowance
# (partials, views, Python objects): they keep this much of it free.
WORKSPACE_SLACK_BYTES = 64 * 2**10

# The chunked NHWC grad_weight keeps one partial weight gradient per chunk
# (a block in the dtype and a float64 total): at most MAX_WEIGHT_CHUNKS of them,
# within PARTIALS_BUDGET_BYTES in total, and each chunk at least
# MIN_TERMS_PER_CHUNK multiply-adds (tiny problems: 1 chunk).
MAX_WEIGHT_CHUNKS = 16
PARTIALS_BUDGET_BYTES = 4 * 2**20
MIN_TERMS_PER_CHUNK = 2**15

# On short planes (the channel kernels' own problems) from this many input
# channels on, or whenever not even two partial weight gradients fit their
# budget, the NHWC grad_weight runs one input channel per task instead (that
# channel's kernel planes stay in L1; measured 1.2-2x faster than row chunks
# on 64-512 channels, 2-5 pixel images, but up to 9x slower on long planes,
# where the flat kernels' exact fallback keeps the row chunks).
BY_CHANNEL_MIN_INPUTS = 16


class KernelChoice(NamedTuple):
    """A kernel, the layout its arrays must be in, and the ints it takes after them.

    ``exact`` is the choice to run instead when an input is not finite (None:
    this kernel is exact for any input). A fused backward kernel has no single
    alternative: ``finite_only`` says the caller must check the inputs and run
    the gradients one by one when one is not finite. ``writes_input``: the
    kernel sets every grad_input value instead of adding into it, so it takes
    an unzeroed buffer.
    """

    kernel: Callable[..., None]
    layout: Layout
    args: tuple[int, ...]
    exact: KernelChoice | None = None
    finite_only: bool = False  # a fused kernel exact for finite inputs only (no ``exact``)
    writes_input: bool = False


def is_depthwise(problem: Problem) -> bool:
    """One input and one output channel per group (groups == C_in == C_out)."""
    groups = problem.geometry.groups
    return problem.c_in == groups and problem.c_out == groups


def gemm_suits(problem: Problem) -> bool:
    """Whether the gradients are plain matrix products (1x1 kernel, stride 1, no padding)."""
    groups = problem.geometry.groups
    pairs = (problem.c_in // groups) * (problem.c_out // groups)
    return (
        (problem.kh, problem.kw) == (1, 1)
        and problem.geometry.stride == (1, 1)
        and problem.geometry.padding == (0, 0, 0, 0)
        and pairs >= FLAT_MIN_PAIRS
    )


def gemm_rows_per_tile(problem: Problem) -> int:
    """Rows (pixels) of the matrix products formed at a time."""
    groups = problem.geometry.groups
    widest = max(problem.c_in // groups, problem.c_out // groups, 1)
    return max(1, GEMM_TILE_BYTES // (widest * problem.dtype.itemsize))


def _flat_pitch(problem: Problem) -> int:
    """Row pitch of the flat kernels' planes: the padded width over the column stride."""
    _, _, left, right = problem.geometry.padding
    stride_w = problem.geometry.stride[1]
    return (problem.width + left + right + stride_w - 1) // stride_w


def flat_planes_long_enough(problem: Problem) -> bool:
    """Whether ``problem``'s flat planes are long enough for the flat kernels' vectors."""
    cout_g = problem.c_out // problem.geometry.groups
    plane = problem.out_h * _flat_pitch(problem)
    return plane >= min(FLAT_MIN_LENGTH_PER_CHANNEL * cout_g, FLAT_LONG_PLANE)


def flat_suits(problem: Problem) -> bool:
    """Whether the flat-plane kernels suit ``problem``'s gradients."""
    groups = problem.geometry.groups
    pairs = (problem.c_in // groups) * (problem.c_out // groups)
    return pairs >= FLAT_MIN_PAIRS and flat_planes_long_enough(problem)


@lru_cache(maxsize=512)  # pure: the same problem always gets the same answer
def kernel_layout(problem: Problem, operation: str = "grad_input") -> Layout:
    """The layout whose kernels suit ``operation``, whatever layout the arrays come in.

    Both gradients always share one layout. When it differs from the problem's
    layout, the caller converts the arrays (a parallel copy) and the results back.
    The flat kernels read and write either layout, so they need no copy.
    """
    if is_depthwise(problem) or (operation != "forward" and gemm_suits(problem)):
        return problem.layout
    if operation != "forward" and (flat_suits(problem) or im2col_suits(problem)):
        return problem.layout
    cout_g = problem.c_out // problem.geometry.groups
    return NHWC if ROW_PREFERENCE * cout_g > problem.out_w else NCHW


def _workspace_budget(problem: Problem) -> int:
    """Bytes the kernels' workspaces may take.

    The allowance (a quarter of input + grad_output, at least the floor) less
    WORKSPACE_SLACK_BYTES for the small arrays and objects around a call.
    """
    images = (
        problem.c_in * problem.height * problem.width
        + problem.c_out * problem.out_h * problem.out_w
    ) * problem.dtype.itemsize
    return max(WORKSPACE_MIN_BYTES, problem.n * images // 4) - WORKSPACE_SLACK_BYTES


def _totals_per_block(problem: Problem) -> int:
    """Bytes of the flat grad_weight's float64 totals for one block of output channels."""
    cin_g = problem.c_in // problem.geometry.groups
    return 8 * nchw_flat.BLOCK * cin_g * problem.kh * problem.kw


def _plane_bytes(problem: Problem) -> tuple[int, int]:
    """Per-image bytes of the flat planes: one input channel's phases, one grad_output channel."""
    top, bottom, _, _ = problem.geometry.padding
    stride_h, stride_w = problem.geometry.stride
    phase_rows = (problem.height + top + bottom + stride_h - 1) // stride_h + 1
    plane = phase_rows * _flat_pitch(problem) * problem.dtype.itemsize
    return stride_h * stride_w * plane, plane


# The flat grad_weight keeps all its float64 totals at once while they take at
# most this fraction of the working-memory budget (the rest holds the planes).
TOTALS_SHARE = 0.75
# Slices of fewer blocks than this leave too few parallel tasks (a 1-block
# slice of a 3-channel problem is one task): the images then go one at a
# time instead, so that a slice can hold more (measured 1.6x faster).
MIN_SLICE_BLOCKS = 4


def weight_slice_blocks(problem: Problem) -> int:
    """Output-channel blocks whose float64 totals the flat grad_weight keeps at a time.

    All of them while their totals take at most TOTALS_SHARE of the budget
    and one image's planes fit beside them. Many channels on small images make
    totals larger than that, even larger than the images, and big images make
    planes larger; then the blocks are taken in slices (each slice stacks only
    its own grad_output channels), preferably sized so that the whole batch's
    image planes are stacked once and shared by every slice, else so that one
    image's input planes and a slice's fit (the input is then stacked again
    per slice), else as many as fit in TOTALS_SHARE (``image_bands`` then).
    """
    cout_g = problem.c_out // problem.geometry.groups
    blocks = problem.geometry.groups * -(-cout_g // nchw_flat.BLOCK)
    budget, totals = _workspace_budget(problem), _totals_per_block(problem)
    share = int(budget * TOTALS_SHARE)
    image_plane, grad_plane = _plane_bytes(problem)
    one_image = problem.c_in * image_plane + problem.c_out * grad_plane
    if blocks * totals <= share and blocks * totals + one_image <= budget:
        return int(blocks)
    batch_images = problem.n * problem.c_in * image_plane
    batch_grads = problem.n * nchw_flat.BLOCK * grad_plane  # per block
    per_block = totals + nchw_flat.BLOCK * grad_plane  # beside one image's input planes
    fitting = (budget - batch_images) // (totals + batch_grads)
    if fitting < min(blocks, MIN_SLICE_BLOCKS):
        fitting = max(1, min(blocks, share // totals))
        if fitting * per_block + problem.c_in * image_plane > budget:
            fitting = (budget - problem.c_in * image_plane) // per_block
    fitting = int(max(1, min(blocks, fitting)))
    return -(-blocks // -(-blocks // fitting))  # as many slices, evened out


def columns_workspace_bytes(problem: Problem) -> int:
    """The flat grad_input's per-task columns workspaces, one set per thread at most.

    Each task (a block of up to four input channels) that goes by weighted
    columns (``nchw_flat.takes_columns``) holds its weight columns and a
    piece of its columns while it runs.
    """
    cin_g = problem.c_in // problem.geometry.groups
    n_columns = min(nchw_flat.BLOCK, cin_g) * problem.kh * problem.kw
    if not nchw_flat.takes_columns(n_columns):
        return 0
    cout_g = problem.c_out // problem.geometry.groups
    piece = nchw_flat.columns_shape(n_columns, problem.dtype.itemsize)[1]
    per_task = (cout_g + piece) * n_columns * problem.dtype.itemsize
    return numba.config.NUMBA_NUM_THREADS * per_task


def _grad_input_budget(problem: Problem) -> int:
    """The budget for the flat grad_input's planes: the columns workspaces come first."""
    return _workspace_budget(problem) - columns_workspace_bytes(problem)


def image_chunk(problem: Problem, operation: str = "grad_input") -> int:
    """How many images the flat kernels pad (and split into phases) at a time.

    grad_weight's planes share the budget with its totals and hold only a
    slice of grad_output's channels (``weight_slice_blocks``).
    """
    grad_planes = problem.c_out
    if operation == "grad_weight":
        budget = _workspace_budget(problem)
        blocks = weight_slice_blocks(problem)
        budget -= blocks * _totals_per_block(problem)
        grad_planes = min(grad_planes, blocks * nchw_flat.BLOCK)
    else:
        budget = _grad_input_budget(problem)
    image_plane, grad_plane = _plane_bytes(problem)
    per_image = problem.c_in * image_plane + grad_planes * grad_plane
    return int(max(1, min(problem.n, budget // max(1, per_image))))


@lru_cache(maxsize=512)  # pure: the same problem always gets the same answer
def image_bands(problem: Problem, operation: str = "grad_input") -> int:
    """Bands of output rows the flat single-gradient kernels run in (see ``_bands``).

    One unless a single image's planes pass the budget (grad_weight: even
    with a single slice of output channels, see ``weight_slice_blocks``):
    then as many as keep the whole batch's planes of a band within a third of
    it (a band's copies of the arrays take about as much again), each band
    long enough for the flat kernels.
    """
    image_plane, grad_plane = _plane_bytes(problem)
    if operation == "grad_weight":
        budget = _workspace_budget(problem)
        blocks = weight_slice_blocks(problem)
        planes = problem.c_in * image_plane + blocks * nchw_flat.BLOCK * grad_plane
        if planes + blocks * _totals_per_block(problem) <= budget:
            return 1
    else:
        budget = _grad_input_budget(problem)
        if problem.c_in * image_plane + problem.c_out * grad_plane <= budget:
            return 1
    (stride_h, stride_w), (dilation_h, _) = problem.geometry.stride, problem.geometry.dilation
    pitch = _flat_pitch(problem)
    # phase rows of a band of R output rows: at most R + halo
    halo = ((problem.kh - 1) * dilation_h + stride_h - 1) // stride_h + 2
    per_row = problem.n * (problem.c_in * stride_h * stride_w + problem.c_out)
    per_row *= pitch * problem.dtype.itemsize
    rows = budget // 3 // per_row - halo
    shortest = 2 * -(-FLAT_LONG_PLANE // pitch)  # bands differ by a row at most: keep them flat
    rows = max(rows, shortest)
    return int(max(1, min(problem.out_h // shortest, -(-problem.out_h // rows))))


def weight_chunks(problem: Problem) -> int:
    """How many fixed chunks of output rows the NHWC grad_weight sums separately."""
    by_memory = PARTIALS_BUDGET_BYTES // _partial_bytes(problem)
    by_work = problem.terms // MIN_TERMS_PER_CHUNK
    return int(max(1, min(MAX_WEIGHT_CHUNKS, problem.n * problem.out_h, by_memory, by_work)))


def _partial_bytes(problem: Problem) -> int:
    """Bytes of one partial weight gradient: a block in the dtype and a float64 total."""
    entries = problem.c_out * (problem.c_in // problem.geometry.groups) * problem.kh * problem.kw
    return max(1, entries * (problem.dtype.itemsize + 8))


def weight_by_channel(problem: Problem) -> bool:
    """Whether the NHWC grad_weight runs one input channel per task (see BY_CHANNEL_MIN_INPUTS)."""
    too_big = 2 * _partial_bytes(problem) > PARTIALS_BUDGET_BYTES
    return too_big or (problem.c_in >= BY_CHANNEL_MIN_INPUTS and not flat_suits(problem))


def _loop_kernel(operation: str, problem: Problem, layout: Layout) -> KernelChoice:
    """The row (NCHW) or channel (NHWC) kernel for ``operation``: exact for any input."""
    kernel = _KERNELS[operation, layout.name]
    if operation == "grad_weight" and layout is NHWC:
        if weight_by_channel(problem):
            return KernelChoice(nhwc.grad_weight_nhwc_by_channel, layout, problem.kernel_args)
        return KernelChoice(kernel, layout, (*problem.kernel_args, weight_chunks(problem)))
    return KernelChoice(kernel, layout, problem.kernel_args)


def _flat_args(problem: Problem) -> tuple[int, ...]:
    """Stride, padding, dilation and groups as the flat kernels take them."""
    (sh, sw), padding, (dh, dw), groups = problem.geometry
    return (sh, sw, *padding, dh, dw, groups)


@lru_cache(maxsize=512)  # pure: the same problem always gets the same answer
def select_kernel(operation: str, problem: Problem) -> KernelChoice:
    """The kernel that computes ``operation`` ("forward", "grad_input" or "grad_weight")."""
    layout = kernel_layout(problem, operation)
    if operation != "forward" and gemm_suits(problem):
        args = (problem.geometry.groups, gemm_rows_per_tile(problem))
        writes = operation == "grad_input"
        kernel = gemm_kernel(operation, layout, tiles_suit(problem))
        return KernelChoice(kernel, layout, args, writes_input=writes)
    if is_depthwise(problem) and layout is NHWC:
        kernel = _DEPTHWISE_NHWC_KERNELS[operation]
        chunks = (weight_chunks(problem),) if operation == "grad_weight" else ()
        writes = operation == "grad_input"
        return KernelChoice(kernel, layout, (*problem.kernel_args, *chunks), writes_input=writes)
    exact = _loop_kernel(operation, problem, layout)
    if operation != "forward" and depthwise_planes_suit(problem, layout):
        kernel = _DEPTHWISE_PLANES_KERNELS[operation]
        writes = operation == "grad_input"
        return KernelChoice(kernel, NCHW, _flat_args(problem), exact=exact, writes_input=writes)
    if (
        operation != "forward"
        and direct_suits(problem)
        and not _weight_cut_fine(operation, problem)
    ):
        return _direct_choice(operation, problem, exact)
    if operation == "grad_input" and direct_input_suits(problem):
        return _direct_choice(operation, problem, exact)
    if operation != "forward" and im2col_suits(problem, operation):
        return _im2col_choice(problem, operation)._replace(
            exact=exact if operation == "grad_weight" else None
        )
    if operation == "forward" or not flat_suits(problem):
        return exact
    return flat_choice(operation, problem)._replace(exact=exact)


# NCHW depthwise gradients alone take the backward's planes without the other
# one (``nchw_depthwise.grad_input_nchw_depthwise``, ``grad_weight_nchw_depthwise``)
# where one plane per thread fits the budget. grad_weight went by the row kernel:
# 1.5-3.3x the time at stride 1 (8 x 32 @ 112^2 to 8 x 512 @ 14^2, 3 x 3 and 5 x 5)
# and 4.8-5.7x at stride 2 (8 x 32 @ 112^2, 8 x 128 @ 56^2: 4.1-5.0 ms, twice the
# whole backward, whose thrown-away grad_input would not fit the budget).
# grad_input went by the whole backward (``select_partial_kernel``): 0.57x the
# time alone on 8 x 128 @ 56^2 at stride 1, 0.65x on 8 x 32 @ 112^2 at stride 2.
# 2-core AMD EPYC Zen 4, 2 threads.
_DEPTHWISE_PLANES_KERNELS: dict[str, Callable[..., None]] = {
    "grad_input": nchw_depthwise.grad_input_nchw_depthwise,
    "grad_weight": nchw_depthwise.grad_weight_nchw_depthwise,
}


def depthwise_planes_suit(problem: Problem, layout: Layout) -> bool:
    """Whether NCHW depthwise gradients alone go by the planes (finite inputs)."""
    depthwise = is_depthwise(problem) and problem.geometry.groups > 1
    return depthwise and layout is NCHW and depthwise_fits(problem, tiles=False)


# Dense stride-1 problems run the direct products by register tiles
# (``kernels/direct_tiles.py``, either layout: NHWC bands) where every group
# has at least DIRECT_MIN_VECTORS vector registers' worth of input and of
# output channels (NHWC one: 16 float32, 8 float64 on AVX-512; NCHW four, as
# its channels are gathered into the bands one value at a time), no padding
# passes the kernel's reach and the unfolded products do not take them (short
# planes, measured there). CPUs with 16 vector registers keep the flat kernels
# (the direct ones are unmeasured there). Tasks take bands of about
# DIRECT_BAND_PIXELS pixels (shorter where one task's workspaces per thread
# would pass half the budget; 2x or 3x longer measured the same); grad_weight's
# parts get the rest of it. Whole backward, 2 threads, direct / flat time on a
# 2-core AMD EPYC (Zen 5), NHWC: 8 x 64 -> 64 @ 56 x 56 0.70, 4 x 32 -> 32 @
# 64 x 64 dilation 2 0.84, 16 x 32 -> 64 @ 32 x 32 0.65, 8 x 32 -> 32 @ 56 x 56
# 0.78, 8 x 48 -> 48 0.91, 8 x 64 -> 128 @ 28 x 28 0.60, 4 x 64 -> 64 @ 32 x 32
# 5 x 5 0.75; one vector's channels: 4 x 16 -> 16 @ 64 x 64 7 x 7 0.91, 8 x 16
# -> 32 @ 56 x 56 0.72, 8 x 16 -> 16 0.75, 8 x 24 -> 24 @ 40 x 40 5 x 5 0.88.
# NCHW: 8 x 64 -> 64 0.79, 8 x 64 -> 128 @ 28 x 28 0.70 (1 thread, grad_weight
# alone 0.92, grad_input 0.84); with two vectors' channels the backward came
# out 0.88 (8 x 32 -> 32 @ 56 x 56) but grad_weight alone 1.01 there and 1.27
# on dilated's 4 x 32 -> 32 (its taps, 2 apart, are not one run). Since
# grad_weight's short tiles and one part per thread, two vectors win in NCHW
# too (direct / flat, interleaved through the API): dilated 0.91 (grad_input
# alone 0.71, grad_weight 0.81), 8 x 32 -> 32 @ 56 x 56 0.86 (0.88, 0.80), 16
# x 32 -> 32 @ 28 x 28 0.81 (0.76, 0.76), 8 x 32 -> 48 @ 40 x 40 0.90, 8 x 48
# -> 48 @ 28 x 28 0.96; one vector's lost 0.99-1.31: those keep the flat kernels.
DIRECT_MIN_VECTORS = {"NHWC": 1, "NCHW": 2}
DIRECT_TILES = VECTOR_REGISTERS >= 32
# Rows of C past an output row's end (the wider padding's of them) are
# computed and dropped: output rows at least this many times the reach long.
DIRECT_MIN_WIDTH_PER_REACH = 3
DIRECT_BAND_PIXELS = 512
DIRECT_SLACK_PIXELS = 32  # pixels the tiles may read past a band
TAP_TILE_ROWS_MAX = max(TAP_TILE_ROWS.values())
# grad_weight's parts: at most this many per thread. Each part's totals are
# zeroed, folded into and added, and numba hands each thread an even run of
# the parts, so more of them balance nothing: 32 parts of 4 x 32 -> 32 @ 64 x
# 64 took grad_weight 1.26 ms, 4 parts 0.91; the whole backward with 1 part
# per thread against 4, 2 threads: dilated 0.972, big_kernel 0.969,
# resnet_3x3 0.974 (NCHW 0.968), its float64 0.979, 2 x 16 -> 32 @ 16 x 16
# 0.897, 2 x 128 -> 128 @ 28 x 28 0.995.
DIRECT_PARTS_PER_THREAD = 1


def _direct_pitch(problem: Problem) -> int:
    """Pixels per row of the direct kernels' padded bands (``direct_tiles.band_pitch``)."""
    _, _, left, right = problem.geometry.padding
    return problem.width + max(left, right)


def _direct_task_bytes(problem: Problem, rows: int, slices: int = 1) -> int:
    """One direct task's workspaces at most, for bands of ``rows`` rows.

    Padded bands of the input and grad_output (grad_input's task holds only
    the latter, grad_weight's both) and grad_weight's tiles of sums (a
    ``slices``-th of them, a tile more for the uneven cut).
    """
    dh, dw = problem.geometry.dilation
    reach_h, reach_w = (problem.kh - 1) * dh, (problem.kw - 1) * dw
    pixels = (rows + reach_h + 1) * _direct_pitch(problem) + reach_w + DIRECT_SLACK_PIXELS
    tiles = _run_values(problem, slices)
    return (pixels * (problem.c_in + problem.c_out) + tiles) * problem.dtype.itemsize


def _run_values(problem: Problem, slices: int) -> int:
    """Values of grad_weight's tiles in one of ``slices`` runs at most (a tile more if cut)."""
    tiles = _direct_padded_weights(problem, TAP_TILE_ROWS_MAX, 1)
    if slices == 1:
        return tiles
    panel = gemm_tiles.TILE_COLUMNS_BYTES // problem.dtype.itemsize
    return tiles // slices + TAP_TILE_ROWS_MAX * panel


def _direct_padded_weights(problem: Problem, extra_rows: int, extra_columns: int) -> int:
    """Values of a weight whose groups' C_in/g and C_out/g are padded up to whole tiles."""
    groups = problem.geometry.groups
    panel = gemm_tiles.TILE_COLUMNS_BYTES // problem.dtype.itemsize
    cin_g, cout_g = problem.c_in // groups, problem.c_out // groups
    rows = cin_g + extra_rows
    columns = -(-cout_g // panel) * panel + extra_columns
    return groups * problem.kh * problem.kw * rows * columns


def _weight_values(problem: Problem) -> int:
    return problem.c_out * (problem.c_in // problem.geometry.groups) * problem.kh * problem.kw


@lru_cache(maxsize=512)  # pure: the same problem always gets the same answer
def _band_rows(problem: Problem, slices: int) -> int:
    """``direct_band_rows`` where grad_weight's tiles are cut in ``slices``.

    As many as DIRECT_BAND_PIXELS take, halved while one task's workspaces
    pass a thread's half of the budget; or, cut, its share of what the larger
    of grad_input's packed weight and the runs' totals leaves.
    """
    rows = _direct_rows_wanted(problem)
    budget, threads = _workspace_budget(problem), numba.config.NUMBA_NUM_THREADS
    allowed = budget // (2 * threads)
    if slices > 1:  # beside grad_input's packed weight, then the runs' totals
        run_totals = threads * 8 * _run_values(problem, slices)
        allowed = (budget - max(_packed_weight_bytes(problem), run_totals)) // threads
    while rows > 1 and _direct_task_bytes(problem, rows, slices) > allowed:
        rows //= 2
    return rows if _direct_task_bytes(problem, rows, slices) <= allowed else 0


def _direct_rows_wanted(problem: Problem) -> int:
    """Output rows of about DIRECT_BAND_PIXELS pixels: a band's rows with room to spare."""
    return max(1, min(problem.out_h, -(-DIRECT_BAND_PIXELS // _direct_pitch(problem))))


def direct_band_rows(problem: Problem) -> int:
    """Output rows per band of the direct kernels (0: not even one row's workspaces fit)."""
    return _band_rows(problem, max(1, direct_weight_slices(problem)))


def _direct_totals_room(problem: Problem, slices: int = 1) -> int:
    """Budget bytes left for grad_weight's float64 totals beside one task per thread.

    grad_input's packed weight (its input channels padded to whole panels) is
    freed before grad_weight's workspaces are made, but must fit beside the
    tasks too: -1 where it does not.
    """
    rows = _band_rows(problem, slices)
    tasks = numba.config.NUMBA_NUM_THREADS * _direct_task_bytes(problem, rows, slices)
    budget = _workspace_budget(problem)
    return budget - tasks if tasks + _packed_weight_bytes(problem) <= budget else -1


def _packed_weight_bytes(problem: Problem) -> int:
    """grad_input's packed weight: its input channels padded to whole panels."""
    panel = gemm_tiles.TILE_COLUMNS_BYTES // problem.dtype.itemsize
    return _direct_padded_weights(problem, panel, 0) * problem.dtype.itemsize


# Runs of grad_weight's tiles per thread where the weight's totals fit no
# other way: at most this many (each task pads and packs every band again),
# in NCHW one (its bands are gathered from the planes a value at a time: 4 x
# 256 -> 256 @ 28 x 28 in 32 runs took 1.63x the time of the unfolded
# products, 2 x 256 -> 256 @ 56 x 56 in 64 5.3x the flat kernels').
DIRECT_MAX_RUNS_PER_THREAD = 64


@lru_cache(maxsize=512)  # pure: the same problem always gets the same answer
def direct_weight_slices(problem: Problem) -> int:
    """Runs of grad_weight's tiles, one task each, that the direct kernel cuts the tiles into.

    1 where a part of the bands per thread fits, each with its own float64
    totals of the whole weight (the faster: 8 x 64 -> 64 @ 56 x 56 cut took
    1.04x as long); else one part, its tiles cut into the fewest runs (the
    threads' count times a power of two) whose totals, a row per thread of one
    run's tiles, fit (each task pads and packs every band itself): 8 x 128 ->
    128 @ 28 x 28, whose two parts' totals pass the budget, takes grad_weight
    0.90x the unfolded products' time so, 4 x 256 -> 256 @ 28 x 28 (4.7 MB of
    totals) the backward 0.83x (32 runs). 0 where neither fits.
    """
    threads, totals, rows = (
        numba.config.NUMBA_NUM_THREADS,
        8 * _weight_values(problem),
        _band_rows(problem, 1),
    )
    if rows >= 1:
        parts = min(problem.n * -(-problem.out_h // rows), threads)  # parallel tasks
        if _direct_totals_room(problem) >= parts * totals:
            return 1
    best, best_rows = 0, 0  # the fewest runs with half the rows wanted, else the most rows
    most = DIRECT_MAX_RUNS_PER_THREAD if problem.layout is NHWC else 1
    for runs_per_thread in (2**k for k in range(most.bit_length())):
        slices = threads * runs_per_thread
        rows = _band_rows(problem, slices) if slices > 1 else 0
        run_totals = threads * 8 * _run_values(problem, slices)
        if rows < 1 or _direct_totals_room(problem, slices) < run_totals:
            continue
        if rows > best_rows:
            best, best_rows = slices, rows
        if 2 * rows >= _direct_rows_wanted(problem):
            break
    return best


def _direct_units(problem: Problem) -> int:
    """The direct kernels' bands over the whole batch."""
    return problem.n * -(-problem.out_h // direct_band_rows(problem))


def direct_weight_parts(problem: Problem) -> int:
    """Parts of the bands whose grad_weight float64 totals the direct kernel keeps apart.

    As many as the budget holds, at most DIRECT_PARTS_PER_THREAD per thread,
    down to a multiple of the pool's threads when there are more (numba hands
    each thread an even run of the parts: 7 parts on 2 threads made one
    thread's share 4/3.5 of the mean, grad_weight 4.9 ms where its
    single-thread time, 8.4 ms, promised 4.2).
    """
    if direct_weight_slices(problem) > 1:
        return 1
    units = _direct_units(problem)
    threads = numba.config.NUMBA_NUM_THREADS
    parts = min(units, _direct_totals_room(problem) // (8 * _weight_values(problem)))
    parts = min(parts, DIRECT_PARTS_PER_THREAD * threads)
    if parts > threads:
        parts -= parts % threads
    return int(max(1, parts))


# Short planes at stride 1 went to the unfolded products (``im2col_suits``,
# measured against the flat kernels before the direct tiles existed); the
# direct tiles take them where their columns (grad_input's input channels,
# grad_weight's output channels, each padded up to whole tiles) are at most
# DIRECT_MAX_PADDING padding and the batch has DIRECT_SHORT_PIXELS output
# pixels per thread (fewer: their fixed costs and few bands lose). Whole
# backward, 2 threads, direct / unfolded on a 2-core AMD EPYC (Zen 5), NHWC:
# 64 x 64 -> 64 @ 8 x 8 0.84, 8 x 64 -> 64 @ 16 x 16 0.84, 16 x 64 -> 64 @ 12
# x 12 0.87, 8 x 48 -> 64 @ 16 x 16 (a seventh padding) 0.92, 32 x 64 -> 128 @
# 8 x 8 0.98, grad_input or grad_weight alone 0.80-0.90; NCHW 0.54-0.97. But 8
# x 96 -> 96 @ 14 x 14 (a third padding in 4-vector tiles) 1.07, and on fewer
# pixels 8 x 64 -> 64 @ 12 x 12 0.97, 16 @ 8 x 8 1.01, 8 @ 8 x 8 1.22, 2 @ 14 x
# 14 1.28, 1 @ 7 x 7 2.3. Since tiles narrower where they pad less
# (``direct_tiles.tap_tile_shape``), 96 and 80 channels are not padded: 16 x 96
# -> 96 @ 14 x 14 0.66 (NCHW too), 16 x 80 -> 80 0.59 (NCHW 0.56).
DIRECT_MAX_PADDING = 1 / 6
DIRECT_SHORT_PIXELS = 1024


def direct_takes_short_planes(problem: Problem) -> bool:
    """Whether the direct tiles take a problem whose short planes suit the unfolded products."""
    groups = problem.geometry.groups
    channels = (problem.c_in // groups, problem.c_out // groups)
    padded = 0
    for count in channels:
        columns = direct_tiles.tap_tile_shape(count, problem.dtype)[2]
        padded += -(-count // columns) * columns
    if padded > (1 + DIRECT_MAX_PADDING) * sum(channels):
        return False
    pixels = problem.n * problem.out_h * problem.out_w
    return pixels >= DIRECT_SHORT_PIXELS * numba.config.NUMBA_NUM_THREADS


def _direct_geometry_suits(problem: Problem) -> bool:
    """Whether the direct tiles can take ``problem`` and gain, short planes aside."""
    stride, padding, dilation, groups = problem.geometry
    if stride != (1, 1) or not DIRECT_TILES or is_depthwise(problem):
        return False
    reach_h, reach_w = (problem.kh - 1) * dilation[0], (problem.kw - 1) * dilation[1]
    top, bottom, left, right = padding
    if max(top, bottom) > reach_h or max(left, right) > reach_w or gemm_suits(problem):
        return False
    if problem.out_w < DIRECT_MIN_WIDTH_PER_REACH * reach_w:
        return False  # more than a quarter of the tiles' rows would be dropped
    narrowest = min(problem.c_in // groups, problem.c_out // groups)
    lanes = VECTOR_BYTES // problem.dtype.itemsize
    least = DIRECT_MIN_VECTORS[problem.layout.name] * lanes
    return narrowest >= least and problem.terms > SERIAL_MAX_TERMS


def direct_suits(problem: Problem) -> bool:
    """Whether the direct register-tile kernels take ``problem``'s gradients."""
    if not _direct_geometry_suits(problem):
        return False
    if im2col_suits(problem) and not direct_takes_short_planes(problem):
        return False  # short planes: the unfolded products (measured there)
    slices = direct_weight_slices(problem)
    if im2col_suits(problem) and slices > DIRECT_SHORT_MAX_RUNS * numba.config.NUMBA_NUM_THREADS:
        return False  # short planes cut fine: the unfolded products (measured)
    return slices > 0


# grad_input alone on short planes, which the unfolded products take in the
# backward, takes the direct tiles where output rows are at least
# DIRECT_INPUT_MIN_WIDTH pixels and the batch has DIRECT_INPUT_SHORT_PIXELS
# output pixels per thread (it has no grad_weight totals to cut). Interleaved,
# direct kernel / unfolded grad_input through the API, 2 threads (2-core AMD
# EPYC Zen 4), 3 x 3: NHWC 8 x 256 -> 256 @ 14 x 14 0.77, 8 x 128 -> 128 0.58,
# 8 x 64 -> 64 0.42-0.46, 4 x 256 -> 256 0.85-0.94, 8 x 96 -> 96 0.82, 8 x 64
# -> 128 0.89, 8 x 128 -> 64 0.71, 8 x 32 -> 64 0.76, 8 x 256 -> 128 @ 10 x 10
# 0.79, 5 x 5 8 x 128 -> 128 @ 14 x 14 0.80; NCHW 8 x 128 -> 128 @ 14 x 14
# 0.72-0.79, 8 x 64 -> 64 0.56-0.58, 4 x 128 -> 128 @ 16 x 16 0.79. Fewer
# pixels: 2 x 256 -> 256 @ 14 x 14 1.00, 3 x 128 -> 128 @ 12 x 12 1.03, 1 x
# 256 -> 256 @ 14 x 14 1.28. Shorter rows (an eighth or ninth of the tiles'
# pixels dropped) were mixed: 8 x 8 16 x 128 -> 128 0.62-0.86 (NCHW
# 0.64-0.86), 8 x 128 -> 128 0.67-1.18, 8 x 256 -> 256 1.11-1.24; 7 x 7 32 x
# 128 -> 128 1.04 (NCHW 0.74), 16 x 256 -> 256 1.12. (The whole backward split
# so, direct grad_input and unfolded grad_weight, measured even: 0.89-1.05.)
DIRECT_INPUT_MIN_WIDTH = 10
DIRECT_INPUT_SHORT_PIXELS = 384


def direct_input_suits(problem: Problem) -> bool:
    """Whether grad_input alone takes the direct tiles where the unfolded products would.

    Its bands' workspaces, one task per thread, and its packed weight must fit
    the working-memory budget together.
    """
    threads = numba.config.NUMBA_NUM_THREADS
    pixels = problem.n * problem.out_h * problem.out_w
    if not (
        _direct_geometry_suits(problem)
        and im2col_suits(problem, "grad_input")
        and problem.out_w >= DIRECT_INPUT_MIN_WIDTH
        and pixels >= DIRECT_INPUT_SHORT_PIXELS * threads
    ):
        return False
    rows, slices = direct_band_rows(problem), max(1, direct_weight_slices(problem))
    tasks = threads * _direct_task_bytes(problem, rows, slices)
    return rows >= 1 and tasks + _packed_weight_bytes(problem) <= _workspace_budget(problem)


# Short planes (the unfolded products' too) take the direct tiles cut into at
# most this many runs a thread: 4 x 128 -> 256 @ 28 x 28 in 2 took the
# backward 0.81-0.95x the unfolded products' time, 16 x 256 -> 256 @ 14 x 14
# in 8 1.02-1.06x.
DIRECT_SHORT_MAX_RUNS = 2


# grad_weight alone leaves the direct tiles where its tiles are cut into more
# runs per thread than this (every run pads and packs every band again): 2 x
# 256 -> 256 @ 56 x 56 in 32 runs a thread took grad_weight 1.34x the time of
# the kernels before, though its backward 0.63x (grad_input's gain).
DIRECT_WEIGHT_ALONE_MAX_RUNS = 16


def _weight_cut_fine(operation: str, problem: Problem) -> bool:
    """Whether grad_weight alone would take the direct tiles cut finer than it gains by."""
    runs = direct_weight_slices(problem) / numba.config.NUMBA_NUM_THREADS
    return operation == "grad_weight" and runs > DIRECT_WEIGHT_ALONE_MAX_RUNS


def _direct_choice(operation: str, problem: Problem, exact: KernelChoice | None) -> KernelChoice:
    """The direct kernel for ``operation``, in the problem's layout, exact for finite inputs.

    ``exact``: the choice for inputs that are not (None for the fused backward).
    """
    top, _, left, _ = problem.geometry.padding
    dh, dw = problem.geometry.dilation
    args = (top, left, dh, dw, problem.geometry.groups, direct_band_rows(problem))
    nchw = int(problem.layout is NCHW)
    layout = problem.layout
    if operation == "grad_input":
        kernel = direct_tiles.grad_input_direct
        return KernelChoice(kernel, layout, (*args, nchw), exact=exact, writes_input=True)
    parts, slices = direct_weight_parts(problem), direct_weight_slices(problem)
    if operation == "grad_weight":
        kernel = direct_tiles.grad_weight_direct
        return KernelChoice(kernel, layout, (*args, parts, nchw, slices), exact=exact)
    kernel = direct_tiles.backward_direct  # grad_bias summed with grad_weight
    weight_args = (*args, parts, nchw, slices)
    return KernelChoice(kernel, layout, weight_args, finite_only=True, writes_input=True)


def banded(choice: KernelChoice) -> bool:
    """Whether ``choice`` is a single-gradient flat kernel, which images too big take in bands."""
    return choice.kernel in _FLAT_KERNELS.values()


@lru_cache(maxsize=512)  # pure: the same problem always gets the same answer
def flat_choice(operation: str, problem: Problem) -> KernelChoice:
    """The flat kernel for ``operation`` in the problem's layout, whatever suits it best.

    For ``select_kernel``'s flat problems, and for the bands of rows of one
    (``_bands``), which take the flat kernels as their whole problem did.
    ``exact`` is left to the caller.
    """
    sizes: tuple[int, ...] = (image_chunk(problem, operation),)
    if operation == "grad_weight":
        sizes += (weight_slice_blocks(problem),)
    args = (*_flat_args(problem), *sizes, int(problem.layout is NHWC))
    return KernelChoice(_FLAT_KERNELS[operation], problem.layout, args)


# Problems with at most SERIAL_MAX_TERMS multiply-adds per gradient run all
# three gradients in one serial call of the fused flat kernel
# (``nchw_flat.backward_shifted_serial`` or ``backward_padded_serial``): for
# them, starting the thread pool costs more than the arithmetic, and the flat
# planes beat row loops 3-6x even where ``flat_suits`` says no (the rows' loop
# overheads dominate tiny planes). Up to 2**19 the serial call took 0.5-1x the
# time of the parallel paths (their NumPy workspaces, partials and launches
# cost some 20 us) on every problem measured, 2.2e5-4.6e5 multiply-adds, one
# to 32 images (2-core Intel Xeon); at 2**20-2**21 it lost to them by up to
# 1.3x where a batch of few-channel images could be split (16 x 3 -> 16 @ 16 x 16).
SERIAL_MAX_TERMS = 2**19

# The fused flat backward (all three gradients in one pass over the batch,
# parallel over blocks of images) pays where grad_output dominates the
# traffic, in groups with fewer than FUSED_MAX_CHANNELS input channels, given
# a batch to spread over the threads; and, even on one thread, for problems of
# at most FUSED_MAX_TERMS multiply-adds per gradient (one call instead of
# three parallel launches).
FUSED_MAX_CHANNELS = 4
FUSED_MIN_IMAGES = 2
FUSED_MAX_TERMS = 2**20


def fused_workspace_bytes(problem: Problem, bands: int = 1) -> int:
    """Working memory of the fused flat backward (``nchw_flat.backward_nchw_flat``) per block.

    For each block of images, for a band of output rows (``bands`` per image):
    the input's planes and grad_input's (shifted copies at stride 1, phase
    planes otherwise), grad_output's planes (strided) or NCHW copy (NHWC,
    stride 1), NCHW copies of an NHWC image and its grad_input
    (``nchw_copies_bytes``), grad_input's weighted columns (few columns per
    output channel) and float64 partials of grad_weight and grad_bias.
    """
    (stride_h, stride_w), itemsize = problem.geometry.stride, problem.dtype.itemsize
    band = -(-problem.out_h // bands)
    reach = (problem.kh - 1) * problem.geometry.dilation[0]
    cin_g = problem.c_in // problem.geometry.groups
    columns = nchw_flat.fused_columns_shape(cin_g, problem.kh, problem.kw, itemsize)
    columns_values = math.prod(columns) + problem.c_out * columns[0]  # and the weight's
    if (stride_h, stride_w) == (1, 1):
        planes = problem.kw * (band + reach) * problem.out_w
        row = nchw_flat.spread_row(band * problem.out_w, itemsize)
        grads = problem.c_out * row if problem.layout is NHWC else 0
    else:
        pitch = _flat_pitch(problem)
        rows = ((band - 1) * stride_h + reach + stride_h) // stride_h + 1
        planes = stride_h * stride_w * rows * pitch
        grads = problem.c_out * band * pitch
    weight = problem.c_out * cin_g * problem.kh * problem.kw
    values = 2 * problem.c_in * planes + grads + columns_values
    return values * itemsize + 8 * (weight + problem.c_out) + nchw_copies_bytes(problem, bands)


# The fused backward takes each image in bands of output rows when
# whole images' workspaces would not fit the budget for as many blocks of
# images as it can use; a band keeps at least FUSED_MIN_BAND_ROWS rows.
FUSED_MIN_BAND_ROWS = 8


def fused_bands(problem: Problem) -> int:
    """Bands of output rows per image in the fused backward."""
    wanted = min(problem.n, nchw_flat.MAX_IMAGE_BLOCKS)
    budget = _workspace_budget(problem) - _fused_fixed_bytes(problem)
    most = max(1, problem.out_h // FUSED_MIN_BAND_ROWS)
    bands = 1
    while bands < most and wanted * fused_workspace_bytes(problem, bands) > budget:
        bands *= 2
    return min(bands, most)


def _fused_fixed_bytes(problem: Problem) -> int:
    """The fused backward's working memory besides its blocks': an NCHW copy of an NHWC weight."""
    weight = problem.c_out * (problem.c_in // problem.geometry.groups) * problem.kh * problem.kw
    return weight * problem.dtype.itemsize if problem.layout is NHWC else 0


def nchw_copies_bytes(problem: Problem, bands: int = 1) -> int:
    """The shifted kernels' NCHW copies of an NHWC image and its grad_input, per block.

    Made at stride 1 for whole images (one band) of more than one channel (one
    channel's NHWC image is its NCHW plane already).
    """
    if problem.layout is not NHWC or problem.geometry.stride != (1, 1):
        return 0
    if bands != 1 or problem.c_in == 1:
        return 0
    return 2 * problem.c_in * problem.height * problem.width * problem.dtype.itemsize


def serial_fits(problem: Problem, extra_bytes: int = 0) -> bool:
    """Whether the serial fused kernel's one block of workspaces (and ``extra_bytes``) fits."""
    budget = _workspace_budget(problem) - _fused_fixed_bytes(problem)
    return fused_workspace_bytes(problem) + extra_bytes <= budget


def fused_blocks(problem: Problem) -> int:
    """Blocks of images (parallel tasks) of the fused backward: at most 8, within the budget."""
    budget = _workspace_budget(problem) - _fused_fixed_bytes(problem)
    per_block = fused_workspace_bytes(problem, fused_bands(problem))
    return int(min(problem.n, nchw_flat.MAX_IMAGE_BLOCKS, budget // per_block))


# Depthwise problems at stride 1 take the tiles kernel where it measured
# faster than the layout's other depthwise kernel (2-core Intel Xeon, all three
# gradients, time ratios tiles / other): kernels of at least
# DEPTHWISE_TILES_MIN_TAPS taps, any image size (5 x 5: NCHW 0.58-0.92 float32
# and 0.58-0.74 float64 on 14 x 14 to 56 x 56, NHWC 0.70-0.87 and 0.79-0.88;
# 7 x 7 on 14 x 14: 0.44 and 0.79); NCHW with fewer taps on images of at most
# DEPTHWISE_TILES_MAX_PIXELS pixels (3 x 3 on 7 x 7 0.34, 0.56 float64; 14 x 14
# 0.75 and 0.94; 4 x 4 0.26; on 20 x 20 and 28 x 28 1.16-1.2). NHWC with 3 x 3
# kernels keeps its channel kernels: tiles took 0.75-1.24x their time on 4 x 4
# to 7 x 7 images, 1.27x on 14 x 14 (its blocks are one vector per pixel, and
# pixels C channels apart: those reads stride through memory where the channel
# kernels stream whole rows).
DEPTHWISE_TILES_MIN_TAPS = 10
DEPTHWISE_TILES_MAX_PIXELS = 14 * 14


def depthwise_tiles_suit(problem: Problem) -> bool:
    """Whether the depthwise tiles kernel suits a depthwise problem (its workspace aside)."""
    if problem.geometry.stride != (1, 1):
        return False
    if problem.kh * problem.kw >= DEPTHWISE_TILES_MIN_TAPS:
        return True
    small = problem.height * problem.width <= DEPTHWISE_TILES_MAX_PIXELS
    return small and problem.layout is NCHW


def depthwise_workspace_bytes(problem: Problem, tiles: bool | None = None) -> int:
    """Bytes of one task's workspace in the depthwise backward the dispatch picks.

    The tiles kernel's tiles and sums (``depthwise_tiles_suit``, or ``tiles``
    where given); else, stride 1, ``backward_nchw_depthwise``'s planes; other
    strides, the phase planes of ``backward_nchw_depthwise_strided``.
    """
    top, bottom, left, right = problem.geometry.padding
    (sh, sw), (dh, dw) = problem.geometry.stride, problem.geometry.dilation
    if depthwise_tiles_suit(problem) if tiles is None else tiles:
        block = depthwise_tiles.lanes(problem.dtype.itemsize)
        values = depthwise_tiles.tile_values(
            problem.height, problem.width, problem.out_h, problem.out_w,
            problem.kh, problem.kw, top, bottom, left, right, dh, dw, block,
        )  # fmt: skip
        # the float64 totals: a third of the sums counted at the dtype's size
        return (values + (problem.kh * problem.kw + 1) * block) * problem.dtype.itemsize
    if (sh, sw) == (1, 1):
        pitch = problem.width + left + right
        lanes = nchw_depthwise.LINE_BYTES // problem.dtype.itemsize
        margin = (problem.kh - 1) * dh * pitch + (problem.kw - 1) * dw
        margin += -margin % lanes
        rows = problem.height + top + bottom
        # three planes, each allocated a line longer to start on one
        values = 2 * (rows * pitch + margin) + problem.height * pitch + 3 * lanes
    else:
        pitch = _flat_pitch(problem)
        reach_h = (problem.kh - 1) * dh // sh
        rows = max(-(-(problem.height + top + bottom) // sh), problem.out_h + reach_h) + 1
        margin = reach_h * pitch + (problem.kw - 1) * dw // sw
        values = (2 * sh * sw + 1) * rows * pitch + margin
    return values * problem.dtype.itemsize


def depthwise_fits(problem: Problem, extra_bytes: int = 0, tiles: bool | None = None) -> bool:
    """Whether the fused depthwise backward's workspaces (and ``extra_bytes``) fit the budget.

    One workspace per thread: at most as many tasks run at once as numba has
    threads at most (``NUMBA_NUM_THREADS``, fixed for the process), whatever
    the count set now. A task is a block of channels (tiles) or a channel.
    ``tiles``: the tiles kernel's workspaces (True) or the planes' (False)
    instead of those of the kernel ``depthwise_tiles_suit`` picks.
    """
    tiles = depthwise_tiles_suit(problem) if tiles is None else tiles
    if tiles:
        block = depthwise_tiles.lanes(problem.dtype.itemsize)
        tasks = -(-problem.c_in // block)
    else:
        tasks = problem.c_in
    tasks = min(tasks, numba.config.NUMBA_NUM_THREADS)
    workspaces = tasks * depthwise_workspace_bytes(problem, tiles)
    return workspaces + extra_bytes <= _workspace_budget(problem)


def fused_suits(problem: Problem) -> bool:
    """Whether the fused flat backward may take ``problem`` (its size aside).

    Flat planes long enough, but fewer channel pairs than ``flat_suits``
    asks for will do: the fused kernel pads each image once for all three
    gradients, where the single-gradient flat kernels pay for it per
    gradient. Measured against the row kernels on a 2-core Intel Xeon, NCHW:
    64 x 1 -> 8 @ 28 x 28 0.2x the time, 32 x 1 -> 8 5 x 5 0.17x, 16 x 2 -> 4
    @ 32 x 32 0.4x, groups of 1 -> 2 or 2 -> 4 channels 0.4-0.9x. Except NHWC
    groups of so few channels: gathering a group's one or two channels out of
    every pixel took 1.07-1.17x the time of a relayout and the row kernels
    (8 x 32 -> 64, groups 32, @ 56 x 56).
    """
    if not flat_planes_long_enough(problem):
        return False
    grouped_nhwc = problem.layout is NHWC and problem.geometry.groups > 1
    return flat_suits(problem) or not grouped_nhwc


# Dense problems on short planes run their whole backward as BLAS products
# over the unfolded input (``kernels/im2col.py``), a tile of whole images at a
# time within the working-memory budget: from IM2COL_MIN_INPUTS input and
# IM2COL_MIN_OUTPUTS output channels (fewer make thin products, and the
# unfolding and folding outweigh them), at any stride above 1 (the flat
# kernels' phase planes are short) and at stride 1 on output planes of at
# most IM2COL_MAX_PLANE pixels (longer ones keep the flat kernels' vectors
# busy), higher for IM2COL_WIDE_INPUTS input channels or more. Measured
# against the flat (and, at 4 x 4, channel) kernels on a 2-core Intel Xeon,
# time ratios: NHWC 0.27 on 8 x 512 -> 512 @ 4 x 4, 0.37-0.52 @ 7 x 7,
# 0.43-0.84 @ 14 x 14, 0.34-0.63 at stride 2 (resnet_s2 0.50), but on 64
# channels 0.95-1.13 @ 28 x 28 and on 32-64 1.1-1.3 @ 40 x 40. On 32 output
# channels the gain was gone (8 x 32 -> 32 @ 14 x 14 NHWC 1.15-1.2x the time
# in an A/B of the whole call, grad_input alone 1.5x). NCHW's channel-major
# rows (``kernels/im2col_nchw.py``) against the flat kernels: 32-64 input
# channels @ 10 x 10 to 14 x 14 0.83-1.07 (one image @ 14 x 14 0.83-0.89), but
# 8 x 16 -> 64 @ 14 x 14 1.15-1.25 (thin products, short runs to unfold), @ 12 x
# 12 1.03; 128-256 channels @ 14 x 14 to 28 x 28 0.59-0.88.
IM2COL_MIN_INPUTS = 16
IM2COL_MIN_OUTPUTS = 64
# At strides above 1 the flat kernels' phase planes are short whatever the
# channels: from IM2COL_MIN_STRIDED_INPUTS input channels the products win
# from IM2COL_MIN_STRIDED_OUTPUTS output channels on. A/B of 32-128 -> 8-32
# channels at stride 2, 3 x 3, 14 x 14 to 56 x 56 (2-core Intel Xeon, time
# ratios): backward NHWC 0.39-0.76, NCHW 0.49-0.85; grad_weight alone NHWC
# 0.30-0.43, NCHW 0.52-0.92; grad_input alone NCHW 0.53-0.70, but NHWC 0.73-1.7
# (its product's inner dimension is C_out), so that one keeps
# IM2COL_MIN_OUTPUTS. From 16 input channels NCHW lost (backward 1.02-1.2,
# grad_weight 1.1-1.6); from 3 an ImageNet stem took 1.5-2.3x the time.
IM2COL_MIN_STRIDED_INPUTS = 32
IM2COL_MIN_STRIDED_OUTPUTS = 8
IM2COL_MAX_PLANE = {"NHWC": 16 * 16, "NCHW": 14 * 14}
# NCHW below IM2COL_MIN_STRIDED_INPUTS input channels: 12 x 12.
IM2COL_NARROW_NCHW_MAX_PLANE = 12 * 12
# From IM2COL_WIDE_INPUTS input channels the products are wide enough for
# longer planes: 8 x 128 -> 128 and 8 x 128 -> 256 @ 28 x 28 NHWC 0.77 / 0.70x
# the flat kernels' time, NCHW 8 x 128 -> 128 0.78-0.88x, 4 x 128 -> 256 @ 20 x
# 20 0.67-0.72x.
IM2COL_WIDE_INPUTS = 128
IM2COL_WIDE_MAX_PLANE = {"NHWC": 28 * 28, "NCHW": 28 * 28}
# Each product is cut into spans of at least IM2COL_SPAN_COLUMNS unfolded
# columns (at most IM2COL_MAX_PARTS tasks), and each image's folding into spans
# of at least IM2COL_FOLD_CHANNELS channels (at most IM2COL_MAX_FOLD_SPANS):
# fixed by the problem, so the bits do not depend on the thread count. More,
# narrower gemm calls cost BLAS efficiency (2-core Intel Xeon, NHWC, 2 / 4 /
# 8 / 16 parts: resnet_s2 6.6 / 6.6 / 6.9 / 7.6 ms, 8 x 512 -> 512 @ 7 x 7
# 12.2 / 12.3 / 12.5 / 12.8 ms; one part 1.8-2x the time).
IM2COL_SPAN_COLUMNS = 128
IM2COL_MAX_PARTS = 8
IM2COL_FOLD_CHANNELS = 32
IM2COL_MAX_FOLD_SPANS = 8


def im2col_tile_images(problem: Problem) -> int:
    """Images per tile of the unfolded products within the budget (0: not even one fits)."""
    per_image = im2col.tile_values(
        problem.c_in, problem.c_out, problem.kh, problem.kw, problem.out_h, problem.out_w,
        int(problem.layout is NHWC),
    )  # fmt: skip
    budget = _workspace_budget(problem) - im2col_products_bytes(problem)
    return max(0, min(problem.n, budget // (per_image * problem.dtype.itemsize)))


def im2col_parts(problem: Problem) -> int:
    """Tasks per product of the unfolded products: spans of IM2COL_SPAN_COLUMNS columns or more."""
    columns = problem.c_in * problem.kh * problem.kw
    return max(1, min(IM2COL_MAX_PARTS, columns // IM2COL_SPAN_COLUMNS))


def im2col_products_bytes(problem: Problem) -> int:
    """Bytes the unfolded products take beside their tile (by BLAS: none).

    By tiles: their tasks' workspaces (``im2col_parts`` tasks at once at most).
    """
    if not tiles_suit(problem):
        return 0
    item = problem.dtype.itemsize
    return im2col_parts(problem) * gemm_tiles.task_workspace_values(item) * item


@lru_cache(maxsize=512)  # pure, and kernel_layout asks on every call
def im2col_suits(problem: Problem, operation: str = "backward") -> bool:
    """Whether the unfolded products (``kernels/im2col.py``) take ``operation`` for ``problem``.

    ``operation``: "backward" (also what ``kernel_layout`` asks), "grad_input"
    or "grad_weight" alone.
    """
    if problem.geometry.groups != 1 or gemm_suits(problem):
        return False
    if problem.c_in < IM2COL_MIN_INPUTS:
        return False
    strided = problem.geometry.stride != (1, 1)
    if problem.c_out < IM2COL_MIN_OUTPUTS:
        narrow = (
            strided
            and problem.c_out >= IM2COL_MIN_STRIDED_OUTPUTS
            and problem.c_in >= IM2COL_MIN_STRIDED_INPUTS
        )
        if not narrow or (operation == "grad_input" and problem.layout is NHWC):
            return False
    if not strided:
        wide = problem.c_in >= IM2COL_WIDE_INPUTS
        limits = IM2COL_WIDE_MAX_PLANE if wide else IM2COL_MAX_PLANE
        limit = limits[problem.layout.name]
        if problem.layout is NCHW and problem.c_in < IM2COL_MIN_STRIDED_INPUTS:
            limit = IM2COL_NARROW_NCHW_MAX_PLANE
        if problem.out_h * problem.out_w > limit:
            return False
    return im2col_tile_images(problem) >= 1


_IM2COL_KERNELS = {
    "backward": im2col.backward_im2col,
    "grad_input": im2col.grad_input_im2col,
    "grad_weight": im2col.grad_weight_im2col,
}


def _im2col_choice(problem: Problem, operation: str = "backward") -> KernelChoice:
    """The unfolded products' kernel for ``operation``, its tiles and task counts.

    grad_input alone is exact for any input (no unfolding: the padding's zeros
    never meet grad_output); the caller gives grad_weight alone its ``exact``.
    """
    (sh, sw), padding, (dh, dw), _ = problem.geometry
    parts = im2col_parts(problem)
    fold_spans = max(1, min(IM2COL_MAX_FOLD_SPANS, problem.c_in // IM2COL_FOLD_CHANNELS))
    layout, tile = problem.layout, im2col_tile_images(problem)
    copies_tile = _im2col_nhwc_copies_tile(problem) if operation == "backward" else 0
    if copies_tile >= 1:
        layout, tile = NHWC, copies_tile
    args = (sh, sw, *padding, dh, dw, tile, parts, fold_spans, int(layout is NHWC))
    args = (*args, int(tiles_suit(problem)))  # the products by register tiles, as 1x1 ones
    kernel = _IM2COL_KERNELS[operation]
    finite_only = operation == "backward"
    writes = operation != "grad_weight"
    return KernelChoice(kernel, layout, args, finite_only=finite_only, writes_input=writes)


# An NCHW backward whose output rows are at most IM2COL_NCHW_COPY_MAX_WIDTH
# pixels runs the NHWC products on NHWC copies of its arrays, where the copies
# and a tile of at least one image fit the working-memory budget together: the
# channel-major rows are runs of a few pixels there, and unfolding and folding
# them cost more than NHWC's runs of C_in channels plus the copies. A/B of the
# whole call on a 2-core Intel Xeon, time ratios: 8 x 64 -> 16 and 8 x 128 -> 32
# @ 14 x 14 stride 2 0.75-0.94, 16 x 64 -> 64 @ 7 x 7 0.85, 8 x 64 -> 64 @ 10 x
# 10 0.83-0.87, 8 x 256 -> 256 @ 4 x 4 0.93-0.99; one image (the rows need no
# copy of grad_output then) kept the rows: 1 x 128 -> 128 @ 7 x 7 NHWC 1.05x.
IM2COL_NCHW_COPY_MAX_WIDTH = 10


def _im2col_nhwc_copies_tile(problem: Problem) -> int:
    """Images per tile when an NCHW backward runs on NHWC copies (0: it does not)."""
    short = problem.out_w <= IM2COL_NCHW_COPY_MAX_WIDTH
    if problem.layout is not NCHW or not short or problem.n < 2:
        return 0
    inputs = problem.n * problem.c_in * problem.height * problem.width
    outputs = problem.n * problem.c_out * problem.out_h * problem.out_w
    weights = problem.c_out * problem.c_in * problem.kh * problem.kw
    # the input, grad_output and weight copies, and grad_input's and grad_weight's
    item = problem.dtype.itemsize
    copies = (2 * inputs + outputs + 2 * weights) * item
    per_image = item * im2col.tile_values(
        problem.c_in, problem.c_out, problem.kh, problem.kw, problem.out_h, problem.out_w, 1
    )
    budget = _workspace_budget(problem) - copies - im2col_products_bytes(problem)
    return max(0, min(problem.n, budget // per_image))


@lru_cache(maxsize=512)  # pure: the same problem always gets the same answer
def select_backward_kernel(problem: Problem) -> KernelChoice | None:
    """A kernel computing all three gradients in one call, or None (one kernel each).

    Tiny problems (SERIAL_MAX_TERMS), whatever kernels their gradients would
    take, run the fused flat kernel serially. Dense problems on short planes
    (``im2col_suits``) take the unfolded BLAS products, finite-only too and
    writing grad_input. Flat-plane problems (either
    layout) that are small, or have few input channels per group and at least
    two images, take the fused flat kernel in parallel blocks of images (or
    serially, when one block is all the budget allows) if its workspaces fit
    the working-memory budget. Both are exact for finite inputs only
    (``finite_only``: the caller checks and falls back to ``select_kernel``'s
    kernels). Depthwise problems take the depthwise tiles kernel where it
    suits (``depthwise_tiles_suit``), finite-only too, in either layout; other
    NCHW ones the depthwise planes kernel (phase planes at other strides),
    finite-only, both when one workspace per thread fits the budget; other
    NHWC ones ``backward_nhwc_depthwise`` (exact for any input). All write
    grad_input (``writes_input``). Problems for the direct tiles
    (``direct_suits``) take them, grad_bias summed with grad_weight,
    finite-only. Other problems get None (BLAS ones always).
    """
    if is_depthwise(problem) and problem.geometry.groups > 1:  # one channel alone is no group
        tiles = depthwise_tiles_suit(problem)
        fits = depthwise_fits(problem)  # the workspaces of tiles, else of NCHW's planes
        if tiles and fits:
            args = (*_flat_args(problem), int(problem.layout is NHWC))
            kernel = depthwise_tiles.backward_depthwise_tiles
            return KernelChoice(kernel, problem.layout, args, finite_only=True, writes_input=True)
        if problem.layout is NCHW and not tiles and fits:
            if problem.geometry.stride == (1, 1):
                kernel = nchw_depthwise.backward_nchw_depthwise
            else:
                kernel = nchw_depthwise.backward_nchw_depthwise_strided
            args = _flat_args(problem)
            return KernelChoice(kernel, NCHW, args, finite_only=True, writes_input=True)
        if problem.layout is NHWC:
            args = (*problem.kernel_args, weight_chunks(problem))
            kernel = nhwc_depthwise.backward_nhwc_depthwise
            return KernelChoice(kernel, NHWC, args, writes_input=True)
        return None  # NCHW planes over the budget: the row kernels, one gradient at a time
    if gemm_suits(problem):
        return None  # BLAS
    nhwc = int(problem.layout is NHWC)
    shifted = problem.geometry.stride == (1, 1)
    kernel = nchw_flat.backward_shifted_serial if shifted else nchw_flat.backward_padded_serial
    serial = KernelChoice(kernel, problem.layout, (*_flat_args(problem), nhwc), finite_only=True)
    if problem.terms <= SERIAL_MAX_TERMS and serial_fits(problem):
        return serial
    if direct_suits(problem):
        return _direct_choice("backward", problem, None)
    if im2col_suits(problem):
        return _im2col_choice(problem)
    if not fused_suits(problem):
        return None
    groups = problem.geometry.groups
    few_channels = problem.c_in // groups < FUSED_MAX_CHANNELS and problem.n >= FUSED_MIN_IMAGES
    if not (few_channels or problem.terms <= FUSED_MAX_TERMS):
        return None
    blocks, bands = fused_blocks(problem), fused_bands(problem)
    if blocks < min(2, problem.n):
        return None  # big images: the single-gradient kernels work a chunk of images at a time
    if blocks == 1 and bands == 1:
        return serial  # one task: the same work without starting the thread pool
    args = (*_flat_args(problem), blocks, bands, nhwc)
    return KernelChoice(nchw_flat.backward_nchw_flat, problem.layout, args, finite_only=True)


# Calls wanting fewer than all three gradients (``output_mask``) take the fused
# kernels too, the gradients not asked for thrown away: grad_input with
# grad_weight whenever the whole backward is fused (grad_bias's sums cost
# little beside them); one of the two for NCHW depthwise problems and for
# problems of at most PARTIAL_MAX_TERMS multiply-adds per gradient that run
# the serial fused kernel, where the single-gradient kernels' launches and
# workspaces cost more than the other gradients' arithmetic. Measured on a
# 2-core Intel Xeon (``output_mask`` against the single-gradient kernels):
# the seed notebook's problem 16-19 us against 19-46, lenet2 29-36 against
# 32-85 (both layouts); 4 x 8 -> 8 @ 12 x 12 (3.3e5 terms) grad_input or
# grad_weight alone 1.1x slower fused; grad_input with grad_weight through the
# parallel fused kernel 0.65-0.8x the time (16 x 2 -> 8 @ 16 x 16, 4 x 8 -> 16
# @ 14 x 14); NCHW depthwise, one gradient 0.4-1x the time (the suite's
# shape: grad_input 3.1 -> 1.9 ms). grad_weight alone, though, only where the
# grad_input thrown away fits the working-memory budget. The parallel fused
# flat kernel for one gradient was mixed (0.6-1.9x the time of the
# single-gradient kernels on few-channel layers), so those keep one kernel per
# gradient. (Masked tiny calls also have plans: ``_plans``.)
PARTIAL_MAX_TERMS = 2**18


def select_partial_kernel(problem: Problem, mask: tuple[bool, bool, bool]) -> KernelChoice | None:
    """The fused kernel for the gradients ``mask`` asks for, or None (one kernel each).

    ``select_backward_kernel``'s choice, which computes all three, for all
    three or for grad_input with grad_weight; for only one of those two (with
    or without grad_bias), its NCHW depthwise planes kernel for grad_weight at
    stride 1 (grad_input alone, and grad_weight alone at other strides, have
    planes kernels of their own: ``depthwise_planes_suit``), or its serial
    fused kernel on problems of at most PARTIAL_MAX_TERMS multiply-adds per
    gradient, as long as a grad_input to throw away (grad_weight without it)
    fits the working-memory budget beside the workspaces. None for grad_bias
    alone.
    """
    if not problem.terms or not (mask[0] or mask[1]):
        return None
    choice = select_backward_kernel(problem)
    if choice is None or (mask[0] and mask[1]):
        return choice
    depthwise = choice.kernel in _DEPTHWISE_FUSED_KERNELS
    if not (depthwise or (reports_finite(choice) and problem.terms <= PARTIAL_MAX_TERMS)):
        return None
    if mask[0] and choice.kernel in _DEPTHWISE_PLANES_FUSED_KERNELS:
        return None  # grad_input by its own planes (``depthwise_planes_suit``, the same workspaces)
    if mask[0]:
        return choice
    if choice.kernel is nchw_depthwise.backward_nchw_depthwise_strided:
        # grad_weight by its own phase planes took half the time (8 x 32 @ 56^2,
        # 8 x 128 @ 28^2, stride 2, grad_bias and the finiteness checks included);
        # at stride 1 the two were even
        return None
    # a grad_input nobody asked for is working memory: it must fit the budget too
    grad_input = problem.n * problem.c_in * problem.height * problem.width
    fits = depthwise_fits if depthwise else serial_fits
    return choice if fits(problem, grad_input * problem.dtype.itemsize) else None


# The depthwise planes and tiles kernels (all three gradients in one pass)
# take less time than the row kernels take for grad_input or grad_weight alone.
_DEPTHWISE_PLANES_FUSED_KERNELS = (
    nchw_depthwise.backward_nchw_depthwise,
    nchw_depthwise.backward_nchw_depthwise_strided,
)
_DEPTHWISE_FUSED_KERNELS = (
    *_DEPTHWISE_PLANES_FUSED_KERNELS,
    depthwise_tiles.backward_depthwise_tiles,
)


def reports_finite(choice: KernelChoice) -> bool:
    """Whether ``choice``'s kernel returns whether its results are finite (serial fused ones)."""
    return choice.kernel in (nchw_flat.backward_shifted_serial, nchw_flat.backward_padded_serial)


# grad_output of at most SERIAL_BIAS_ELEMENTS values is summed on the calling
# thread: waking numba's pool costs more (2-core Intel Xeon, NCHW: 4,056 values
# 5.5 us in parallel against 1.6 serially, 16,384 9.4 against 4.3; 65,536 16
# against 18).
SERIAL_BIAS_ELEMENTS = 2**15


def select_bias_kernel(
    layout: Layout, beside_blas: bool = False, elements: int = SERIAL_BIAS_ELEMENTS + 1
) -> Callable[..., None]:
    """The kernel ``(g, gb)`` that sums grad_output into grad_bias for ``layout``.

    ``beside_blas``: the call's other gradients run through BLAS (see
    ``gemm_suits``); then grad_bias is summed on the calling thread, so that
    numba's and OpenBLAS's thread pools never spin against each other. (A
    NumPy sum in float64 did that too, at 2.5-3x the time: pointwise's took
    136-157 us against 50 for the serial kernel, on a 2-core Intel Xeon.)
    So is a grad_output of at most SERIAL_BIAS_ELEMENTS ``elements``.
    """
    if beside_blas or elements <= SERIAL_BIAS_ELEMENTS:
        return _SERIAL_BIAS_KERNELS[layout.name]
    return _BIAS_KERNELS[layout.name]
