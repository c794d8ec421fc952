"""Copy image arrays between the NCHW and NHWC layouts.

The dispatch may run a problem on the other layout's kernels; these copies
are the price, so they are parallel and touch each cache line once: every
task owns one (n, h) row of the NHWC array, a contiguous W x C block.
"""

from numba import njit, prange

from ._cache import CACHE


@njit(cache=CACHE, parallel=True)
def nchw_to_nhwc(src, dst):
    """dst[n, h, w, c] = src[n, c, h, w]."""
    n_batch, channels, height, width = src.shape
    for task in prange(n_batch * height):
        n = task // height
        h = task - n * height
        for c in range(channels):
            row = src[n, c, h]
            for w in range(width):
                dst[n, h, w, c] = row[w]


@njit(cache=CACHE, parallel=True)
def nhwc_to_nchw(src, dst):
    """dst[n, c, h, w] = src[n, h, w, c]."""
    n_batch, height, width, channels = src.shape
    for task in prange(n_batch * height):
        n = task // height
        h = task - n * height
        for c in range(channels):
            row = dst[n, c, h]
            for w in range(width):
                row[w] = src[n, h, w, c]
