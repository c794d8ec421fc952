"""1x1 convolutions with stride 1 and no padding, as matrix products through NumPy's BLAS.

With a 1x1 kernel each output pixel reads only the same input pixel, so per group

    grad_input[pixels, ci] = grad_output[pixels, co] @ w[co, ci]
    grad_weight[ci, co]    = x[pixels, ci].T @ grad_output[pixels, co]

There is no padding and no term that the exact math leaves out, so NaN and Inf
behave exactly as in the loop kernels. grad_input is written straight into
its array; grad_weight sums tiles of ``rows_per_tile`` pixels in the dtype and
the tiles in float64, rounded once.

Where NumPy's OpenBLAS exports cblas gemm and its thread controls
(``convgrad._blas``), the products run as single-threaded gemm calls from
numba's threads (``gemm_blas.py``): on numba's thread count, with no
OpenBLAS worker left spinning after them. Otherwise they go
through ``np.matmul`` (the ``_matmul`` functions below), threaded by the BLAS
library. grad_bias beside them runs on the calling thread
(``_dispatch.select_bias_kernel``).
"""

import numba
import numpy as np

from .._blas import gemm_for, one_blas_thread
from . import gemm_blas

# Multiply-adds a task keeps at least (a product is cut into at most one task
# per thread of numba's pool): smaller gemm calls run below BLAS's efficient sizes.
TASK_MULTIPLY_ADDS = 2**22


def _parts(multiply_adds, groups):
    """Tasks per group: numba's pool of threads shared by the groups, each with enough work.

    The pool's size (``NUMBA_NUM_THREADS``, fixed for the process), not the
    threads in use: the cut must not follow ``numba.set_num_threads``, because
    OpenBLAS may sum an entry in another order for another shape of call (its
    Haswell kernels on a 2-core AMD EPYC gave other bits for pointwise at 1
    and 2 threads when the cut followed the threads in use). Cut by the pool,
    the same tasks run at any thread count, so the bits are the same.
    """
    parts = min(numba.config.NUMBA_NUM_THREADS, multiply_adds // TASK_MULTIPLY_ADDS)
    return max(1, parts // groups)


def _blas_gemm(*arrays):
    """The cblas gemm the numba kernels may call on ``arrays``, or None (use np.matmul).

    Empty arrays go to np.matmul too: gemm refuses a leading dimension of 0.
    """
    if not all(a.flags.c_contiguous and a.dtype == arrays[0].dtype and a.size for a in arrays):
        return None
    return gemm_for(arrays[0].dtype)


def _product(numba_kernel, matmul_kernel, arrays, groups, rows_per_tile, multiply_adds):
    """One gradient's products, by ``numba_kernel`` or else ``matmul_kernel``.

    ``numba_kernel`` runs them on numba's threads, BLAS held at one thread;
    ``matmul_kernel`` where the numba kernels cannot call BLAS on these arrays.
    """
    gemm = _blas_gemm(*arrays)
    if gemm is None:
        return matmul_kernel(*arrays, groups, rows_per_tile)
    with one_blas_thread():
        numba_kernel(*arrays, groups, rows_per_tile, _parts(multiply_adds, groups), *gemm)


def grad_input_gemm_nhwc(g, w, gi, groups, rows_per_tile):
    """gi = g @ w.T per group; g (N, H, W, C_out), w (1, 1, C_in/g, C_out), gi (N, H, W, C_in).

    Written, not added (``writes_input``); a span of pixels per task.
    """
    multiply_adds = g.size * (gi.shape[-1] // groups)
    _product(
        gemm_blas.grad_input_nhwc, _grad_input_nhwc_matmul, (g, w, gi), groups, rows_per_tile,
        multiply_adds,
    )  # fmt: skip


def grad_weight_gemm_nhwc(x, g, gw, groups, rows_per_tile):
    """gw[0, 0] += x.T @ g per group; x (N, H, W, C_in), g (N, H, W, C_out).

    A span of output channels per task (of input channels where a group has more of them).
    """
    multiply_adds = x.size * (g.shape[-1] // groups)
    _product(
        gemm_blas.grad_weight_nhwc, _grad_weight_nhwc_matmul, (x, g, gw), groups, rows_per_tile,
        multiply_adds,
    )  # fmt: skip


def grad_input_gemm_nchw(g, w, gi, groups, rows_per_tile):
    """gi[n] = w.T @ g[n] per group; g (N, C_out, H, W), w (C_out, C_in/g, 1, 1).

    Written, not added, as ``grad_input_gemm_nhwc``; an image (or a span of
    its pixels) per task.
    """
    multiply_adds = g.size * (gi.shape[1] // groups)
    _product(
        gemm_blas.grad_input_nchw, _grad_input_nchw_matmul, (g, w, gi), groups, rows_per_tile,
        multiply_adds,
    )  # fmt: skip


def grad_weight_gemm_nchw(x, g, gw, groups, rows_per_tile):
    """gw[:, :, 0, 0] += sum over n of g[n] @ x[n].T per group.

    A span of output channels per task (of input channels where a group has more of them).
    """
    multiply_adds = x.size * (g.shape[1] // groups)
    _product(
        gemm_blas.grad_weight_nchw, _grad_weight_nchw_matmul, (x, g, gw), groups, rows_per_tile,
        multiply_adds,
    )  # fmt: skip


def _grad_input_nhwc_matmul(g, w, gi, groups, rows_per_tile):
    """gi = g @ w.T per group; g (N, H, W, C_out), w (1, 1, C_in/g, C_out), gi (N, H, W, C_in).

    Written, not added (``writes_input``): one group's product goes straight
    into gi, with no temporary; groups' products a tile of rows at a time.
    """
    c_out, c_in = g.shape[-1], gi.shape[-1]
    cin_g, cout_g = c_in // groups, c_out // groups
    g2, gi2 = g.reshape(-1, c_out), gi.reshape(-1, c_in)
    if groups == 1:
        np.matmul(g2, w[0, 0].T, out=gi2)
        return
    for group in range(groups):
        outs, ins = (
            slice(group * cout_g, (group + 1) * cout_g),
            slice(group * cin_g, (group + 1) * cin_g),
        )
        w_t = w[0, 0, :, outs].T  # (C_out/g, C_in/g)
        for r0 in range(0, g2.shape[0], rows_per_tile):
            rows = slice(r0, r0 + rows_per_tile)
            gi2[rows, ins] = g2[rows, outs] @ w_t


def _grad_weight_nhwc_matmul(x, g, gw, groups, rows_per_tile):
    """gw[0, 0] += x.T @ g per group; x (N, H, W, C_in), g (N, H, W, C_out).

    Tiles' products are summed in float64 and rounded once (blocked sums). A
    single tile's product is added to gw directly: the same bits, without the
    float64 total (0.5 MiB zeroed for 256 x 256 channels).
    """
    c_in, c_out = x.shape[-1], g.shape[-1]
    cin_g, cout_g = c_in // groups, c_out // groups
    x2, g2 = x.reshape(-1, c_in), g.reshape(-1, c_out)
    one_tile = x2.shape[0] <= rows_per_tile
    total = gw[0, 0] if one_tile else np.zeros(gw.shape[2:], np.float64)
    for group in range(groups):
        outs, ins = (
            slice(group * cout_g, (group + 1) * cout_g),
            slice(group * cin_g, (group + 1) * cin_g),
        )
        for r0 in range(0, x2.shape[0], rows_per_tile):
            rows = slice(r0, r0 + rows_per_tile)
            total[:, outs] += x2[rows, ins].T @ g2[rows, outs]
    if not one_tile:
        gw[0, 0] += total.astype(gw.dtype)


def _grad_input_nchw_matmul(g, w, gi, groups, rows_per_tile):
    """gi[n] = w.T @ g[n] per group; g (N, C_out, H, W), w (C_out, C_in/g, 1, 1).

    Written, not added, as ``_grad_input_nhwc_matmul``.
    """
    n_batch, c_out = g.shape[:2]
    c_in = gi.shape[1]
    cin_g, cout_g = c_in // groups, c_out // groups
    g3, gi3 = g.reshape(n_batch, c_out, -1), gi.reshape(n_batch, c_in, -1)
    if groups == 1:
        np.matmul(w[:, :, 0, 0].T, g3, out=gi3)
        return
    images_per_tile = max(1, rows_per_tile // max(1, g3.shape[2]))
    for group in range(groups):
        outs, ins = (
            slice(group * cout_g, (group + 1) * cout_g),
            slice(group * cin_g, (group + 1) * cin_g),
        )
        w_t = w[outs, :, 0, 0].T  # (C_in/g, C_out/g)
        for n0 in range(0, n_batch, images_per_tile):
            images = slice(n0, n0 + images_per_tile)
            gi3[images, ins] = w_t @ g3[images, outs]


def _grad_weight_nchw_matmul(x, g, gw, groups, rows_per_tile):
    """gw[:, :, 0, 0] += sum over n of g[n] @ x[n].T per group.

    The images' products are summed in the dtype a tile of ``rows_per_tile``
    pixels' worth of images at a time, the tiles' sums in float64 and rounded
    once (blocked sums, as ``_grad_weight_nhwc_matmul``'s tiles; a single tile is
    added to gw directly). Adding each image's product into a float64 total
    instead took a quarter of pointwise's NCHW grad_weight (8 casts of 256 x 256).
    """
    n_batch, c_in = x.shape[:2]
    c_out = g.shape[1]
    cin_g, cout_g = c_in // groups, c_out // groups
    x3, g3 = x.reshape(n_batch, c_in, -1), g.reshape(n_batch, c_out, -1)
    images_per_tile = max(1, rows_per_tile // max(1, x3.shape[2]))
    one_tile = n_batch <= images_per_tile
    total = gw[:, :, 0, 0] if one_tile else np.zeros(gw.shape[:2], np.float64)
    product = np.empty((cout_g, cin_g), gw.dtype)
    for group in range(groups):
        outs, ins = (
            slice(group * cout_g, (group + 1) * cout_g),
            slice(group * cin_g, (group + 1) * cin_g),
        )
        for n0 in range(0, n_batch, images_per_tile):
            tile = g3[n0, outs] @ x3[n0, ins].T
            for n in range(n0 + 1, min(n0 + images_per_tile, n_batch)):
                tile += np.matmul(g3[n, outs], x3[n, ins].T, out=product)
            total[outs] += tile
    if not one_tile:
        gw[:, :, 0, 0] += total.astype(gw.dtype)
