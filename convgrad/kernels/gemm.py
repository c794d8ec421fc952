"""1x1 convolutions with stride 1 and no padding, as matrix products through NumPy's BLAS.

With a 1x1 kernel each output pixel reads only the same input pixel, so per group

    grad_input[pixels, ci] = grad_output[pixels, co] @ w[co, ci]
    grad_weight[ci, co]    = x[pixels, ci].T @ grad_output[pixels, co]

There is no padding and no term that the exact math leaves out, so NaN and Inf
behave exactly as in the loop kernels. grad_input is written straight into
its array (one group) or a tile of rows at a time (``rows_per_tile``, which
bounds the temporary memory); grad_weight's tiles are added in a fixed order.
BLAS runs on its own thread pool (OpenBLAS's thread count); grad_bias beside
it runs on the calling thread (``_dispatch.select_bias_kernel``).
"""

import numpy as np


def grad_input_gemm_nhwc(g, w, gi, groups, rows_per_tile):
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


def grad_weight_gemm_nhwc(x, g, gw, groups, rows_per_tile):
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


def grad_input_gemm_nchw(g, w, gi, groups, rows_per_tile):
    """gi[n] = w.T @ g[n] per group; g (N, C_out, H, W), w (C_out, C_in/g, 1, 1).

    Written, not added, as ``grad_input_gemm_nhwc``.
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


def grad_weight_gemm_nchw(x, g, gw, groups, rows_per_tile):
    """gw[:, :, 0, 0] += sum over n of g[n] @ x[n].T per group.

    The images' products are summed in the dtype a tile of ``rows_per_tile``
    pixels' worth of images at a time, the tiles' sums in float64 and rounded
    once (blocked sums, as ``grad_weight_gemm_nhwc``'s tiles; a single tile is
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
