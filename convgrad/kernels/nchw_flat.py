"""NCHW gradient kernels on zero-padded, flattened image planes (any stride).

Split the zero-padded input into its stride phases,

    phase[a*sw + b][u, v] = xpad[u*sh + a, v*sw + b]    (0 <= a < sh, 0 <= b < sw),

all with one pitch Wq = ceil(Wp / sw). Output position (i, j) of kernel tap
(p, q) reads xpad[i*sh + p*dh, j*sw + q*dw] = phase[a*sw + b][i + ru, j + cv]
with p*dh = ru*sh + a and q*dw = cv*sw + b: a stride-1 access into one phase.
Give grad_output's rows the same pitch (zero columns past OW) and both planes
flatten: with k = i*Wq + j and shift = ru*Wq + cv,

    grad_weight[co, ci2, p, q] += sum over k of phase[n, ci, a*sw + b].flat[k + shift]
                                                * gpad[n, co].flat[k]
    giphase[n, ci, a*sw + b].flat[k + shift] += w[co, ci2, p, q] * gpad[n, co].flat[k]

so each (p, q) is one long dot product or axpy of OH*Wq terms instead of OH
short rows. (With stride 1 there is one phase: the padded image itself.) The
zero columns add x*0 or w*0 terms, which are exact for finite values; the
caller checks the inputs with ``all_finite`` and uses the row kernels
(``nchw.py``) otherwise, keeping NaN/Inf semantics exact.

Images are split ``n_chunk`` at a time, which bounds the working memory. Each
phase has one spare zero row so every shifted window stays inside, and valid
columns never wrap: (OW - 1) + cv <= (Wp - 1) // sw < Wq.
"""

import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._flags import FASTMATH

# Small helpers are repeated in each kernel module on purpose: numba's on-disk
# cache keys a kernel on its own module's source, so an edited helper imported
# from elsewhere would leave stale compiled kernels behind.


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def all_finite(a):
    """True when no element of the C-contiguous array ``a`` is NaN or +-Inf."""
    flat = a.reshape(a.size)
    block = 4096
    n_blocks = (flat.size + block - 1) // block
    bad = 0
    for b in prange(n_blocks):
        part = flat[b * block : min((b + 1) * block, flat.size)]
        probe = part[0] * 0  # x*0 is 0 for finite x, NaN for NaN or Inf
        for k in range(1, part.shape[0]):
            probe += part[k] * 0
        if probe != 0:
            bad += 1
    return bad == 0


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def _phase_planes(src, top, left, sh, sw, rows, pitch):
    """``src`` (N, C, H, W) zero-padded at (top, left), split into stride phases.

    Returns (N, C, sh*sw, rows, pitch) with out[n, c, a*sw + b, u, v] =
    padded[n, c, u*sh + a, v*sw + b], zeros elsewhere.
    """
    n_batch, channels, height, width = src.shape
    planes = np.zeros((n_batch, channels, sh * sw, rows, pitch), dtype=src.dtype)
    for task in prange(n_batch * channels):
        n = task // channels
        c = task - n * channels
        for r in range(height):
            a, u = (top + r) % sh, (top + r) // sh
            source = src[n, c, r]
            if sw == 1:
                target = planes[n, c, a, u, left : left + width]
                for k in range(width):
                    target[k] = source[k]
            else:
                for k in range(width):
                    column = left + k
                    planes[n, c, a * sw + column % sw, u, column // sw] = source[k]
    return planes


# Output channels are handled four at a time where a group has four left:
# one pass over the input plane then feeds four dot products (grad_weight),
# and one pass over the padded gi plane takes four axpys (grad_input).
BLOCK = 4


@njit(cache=CACHE, fastmath=FASTMATH)
def _dot(a, b):
    """sum of a * b over two equally long contiguous vectors."""
    acc = a.dtype.type(0)
    for k in range(a.shape[0]):
        acc += a[k] * b[k]
    return acc


@njit(cache=CACHE, fastmath=FASTMATH)
def _dot4(a, b0, b1, b2, b3):
    """(sum a*b0, sum a*b1, sum a*b2, sum a*b3) in one pass over a."""
    s0 = s1 = s2 = s3 = a.dtype.type(0)
    for k in range(a.shape[0]):
        v = a[k]
        s0 += v * b0[k]
        s1 += v * b1[k]
        s2 += v * b2[k]
        s3 += v * b3[k]
    return s0, s1, s2, s3


@njit(cache=CACHE, fastmath=FASTMATH)
def _axpy(dest, scale, src):
    """dest += scale * src over two equally long contiguous vectors."""
    for k in range(src.shape[0]):
        dest[k] += scale * src[k]


@njit(cache=CACHE, fastmath=FASTMATH)
def _axpy4(dest, w0, s0, w1, s1, w2, s2, w3, s3):
    """dest += w0*s0 + w1*s1 + w2*s2 + w3*s3 in one pass over dest."""
    for k in range(dest.shape[0]):
        dest[k] += w0 * s0[k] + w1 * s1[k] + w2 * s2[k] + w3 * s3[k]


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def grad_weight_nchw_flat(x, g, gw, sh, sw, pt, pb, pl, pr, dh, dw, groups, n_chunk):
    """gw += valid correlation of x with g.

    Parallel over (block of up to four output channels of one group, ci2);
    each task owns those channels' kernel planes gw[co, ci2]. Each image's
    plane is one dot product in the dtype; the images' dot products are summed
    in float64 (``totals``) and rounded once, so the error does not grow with
    the batch.
    """
    n_batch, _, height, width = x.shape
    c_out, out_h = g.shape[1], g.shape[2]
    cin_g, kh, kw = gw.shape[1], gw.shape[2], gw.shape[3]
    cout_g = c_out // groups
    blocks = (cout_g + BLOCK - 1) // BLOCK  # per group
    pitch = (width + pl + pr + sw - 1) // sw
    rows = (height + pt + pb + sh - 1) // sh + 1
    length = out_h * pitch
    totals = np.zeros(gw.shape, dtype=np.float64)
    for n0 in range(0, n_batch, n_chunk):
        n1 = min(n0 + n_chunk, n_batch)
        phases = _phase_planes(x[n0:n1], pt, pl, sh, sw, rows, pitch)
        gpad = _phase_planes(g[n0:n1], 0, 0, 1, 1, out_h, pitch)
        for task in prange(groups * blocks * cin_g):
            block = task // cin_g
            ci2 = task - block * cin_g
            group = block // blocks
            co0 = group * cout_g + (block - group * blocks) * BLOCK
            co1 = min(co0 + BLOCK, (group + 1) * cout_g)
            ci = group * cin_g + ci2
            for n in range(n1 - n0):
                for p in range(kh):
                    for q in range(kw):
                        phase = ((p * dh) % sh) * sw + (q * dw) % sw
                        shift = ((p * dh) // sh) * pitch + (q * dw) // sw
                        x_flat = phases[n, ci, phase].reshape(rows * pitch)
                        window = x_flat[shift : shift + length]
                        if co1 - co0 == BLOCK:
                            s0, s1, s2, s3 = _dot4(
                                window,
                                gpad[n, co0, 0].reshape(length),
                                gpad[n, co0 + 1, 0].reshape(length),
                                gpad[n, co0 + 2, 0].reshape(length),
                                gpad[n, co0 + 3, 0].reshape(length),
                            )
                            totals[co0, ci2, p, q] += s0
                            totals[co0 + 1, ci2, p, q] += s1
                            totals[co0 + 2, ci2, p, q] += s2
                            totals[co0 + 3, ci2, p, q] += s3
                        else:
                            for co in range(co0, co1):
                                s0 = _dot(window, gpad[n, co, 0].reshape(length))
                                totals[co, ci2, p, q] += s0
    gw_flat = gw.reshape(gw.size)
    totals_flat = totals.reshape(totals.size)
    for k in range(gw_flat.shape[0]):
        gw_flat[k] += totals_flat[k]


@njit(cache=CACHE, fastmath=FASTMATH, parallel=True)
def grad_input_nchw_flat(g, w, gi, sh, sw, pt, pb, pl, pr, dh, dw, groups, n_chunk):
    """gi += scatter-add of w * g; parallel over (n, ci) input planes."""
    n_batch, c_in, height, width = gi.shape
    c_out, out_h = g.shape[1], g.shape[2]
    kh, kw = w.shape[2], w.shape[3]
    cin_g = c_in // groups
    cout_g = c_out // groups
    pitch = (width + pl + pr + sw - 1) // sw
    rows = (height + pt + pb + sh - 1) // sh + 1
    length = out_h * pitch
    for n0 in range(0, n_batch, n_chunk):
        n1 = min(n0 + n_chunk, n_batch)
        gpad = _phase_planes(g[n0:n1], 0, 0, 1, 1, out_h, pitch)
        for task in prange((n1 - n0) * c_in):
            n = task // c_in
            ci = task - n * c_in
            group = ci // cin_g
            ci2 = ci - group * cin_g
            # this task's gi, zero-padded and split into phases like the input
            gi_phases = np.zeros((sh * sw, rows * pitch), dtype=gi.dtype)
            co = group * cout_g
            end = co + cout_g
            while co < end:
                for p in range(kh):
                    for q in range(kw):
                        phase = ((p * dh) % sh) * sw + (q * dw) % sw
                        shift = ((p * dh) // sh) * pitch + (q * dw) // sw
                        target = gi_phases[phase, shift : shift + length]
                        if end - co >= BLOCK:
                            _axpy4(
                                target,
                                w[co, ci2, p, q],
                                gpad[n, co, 0].reshape(length),
                                w[co + 1, ci2, p, q],
                                gpad[n, co + 1, 0].reshape(length),
                                w[co + 2, ci2, p, q],
                                gpad[n, co + 2, 0].reshape(length),
                                w[co + 3, ci2, p, q],
                                gpad[n, co + 3, 0].reshape(length),
                            )
                        else:
                            _axpy(target, w[co, ci2, p, q], gpad[n, co, 0].reshape(length))
                co += BLOCK if end - co >= BLOCK else 1
            for r in range(height):
                a, u = (pt + r) % sh, (pt + r) // sh
                target = gi[n0 + n, ci, r]
                if sw == 1:
                    source = gi_phases[a, u * pitch + pl : u * pitch + pl + width]
                    for k in range(width):
                        target[k] += source[k]
                else:
                    for k in range(width):
                        column = pl + k
                        target[k] += gi_phases[a * sw + column % sw, u * pitch + column // sw]
