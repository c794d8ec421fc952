"""Large inputs: index arithmetic past 2**31 and allocation failure as MemoryError.

Tensors past 2**31 elements do not fit on a test machine, so the index helpers
and the sizes the dispatch computes are tested directly with such values, and
the allocation paths with shapes whose results cannot exist.
"""

import itertools

import numpy as np
import pytest

import convgrad
from convgrad import _dispatch
from convgrad._layouts import NCHW, NHWC
from convgrad._problem import describe
from convgrad.kernels import nchw, nhwc, nhwc_depthwise

BIG = 2**40 + 7  # past 2**31 and 2**32 by far


def valid_range(out_len, in_len, offset, stride):
    """Plain-Python twin of the kernels' _valid_range."""
    ks = [k for k in range(out_len) if 0 <= k * stride + offset < in_len]
    return (ks[0], ks[-1] + 1) if ks else None


@pytest.mark.parametrize("helper", [nchw._valid_range, nhwc._valid_range])
@pytest.mark.parametrize(
    ("out_len", "in_len", "offset", "stride"),
    [
        (BIG, BIG + 3, -(2**33) - 1, 3),
        (BIG, BIG, 2**35, 1),
        (2**33, 2**34, -(2**31) - 5, 2),
        (5, 2**40, 2**40 - 3, 1),
    ],
)
def test_valid_range_past_2_31(helper, out_len, in_len, offset, stride):
    lo, hi = helper(out_len, in_len, offset, stride)
    # closed form checked at the ends: k in [lo, hi) exactly when 0 <= k*stride + offset < in_len
    assert lo * stride + offset >= 0 and (lo == 0 or (lo - 1) * stride + offset < 0)
    assert hi <= out_len and (hi - 1) * stride + offset < in_len
    assert hi == out_len or hi * stride + offset >= in_len
    small = valid_range(min(out_len, 50), 10**6, offset % 7 - 3, stride)
    assert helper(min(out_len, 50), 10**6, offset % 7 - 3, stride) == small
    assert nhwc_depthwise._valid_range(out_len, in_len, offset, stride) == (lo, hi)


def huge_problem(layout, n, c_in, c_out, size, k=3, groups=1, stride=1):
    spec = NCHW if layout == "NCHW" else NHWC
    return describe(
        spec,
        np.dtype(np.float32),
        spec.image_shape(n, c_in, size, size),
        spec.weight_shape(c_out, c_in // groups, k, k),
        stride=stride,
        padding=1,
        dilation=1,
        groups=groups,
    )


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_dispatch_sizes_for_tensors_past_2_31_elements(layout):
    problems = [
        huge_problem(layout, 2**20, 64, 64, 2**12),  # 2**50 input elements
        huge_problem(layout, 1, 1, 8, 2**17),  # one 2**34-pixel image
        huge_problem(layout, 2**31, 32, 32, 8, k=1, stride=1),  # 2**42 elements, 1x1
        huge_problem(layout, 2**16, 256, 256, 64, groups=256),  # depthwise
    ]
    for p in problems:
        assert p.n * p.c_in * p.height * p.width > 2**31
        per_output = (p.c_in // p.geometry.groups) * p.kh * p.kw
        assert p.terms == p.n * p.c_out * p.out_h * p.out_w * per_output
        chunk = _dispatch.image_chunk(p)
        assert isinstance(chunk, int) and 1 <= chunk <= p.n
        chunks = _dispatch.weight_chunks(p)
        assert isinstance(chunks, int) and 1 <= chunks <= _dispatch.MAX_WEIGHT_CHUNKS
        tile = _dispatch.gemm_rows_per_tile(p)
        assert isinstance(tile, int) and tile >= 1
        choice = _dispatch.select_kernel("grad_weight", p)
        assert all(isinstance(a, int) and 0 <= a < 2**63 for a in choice.args)
    # chunk boundaries as the kernels compute them (row_lo = chunk * n_rows // n_chunks)
    n_rows = 2**40 * 3 + 5
    bounds = [c * n_rows // 16 for c in range(17)]
    assert bounds[0] == 0 and bounds[-1] == n_rows and all(b < 2**63 for b in bounds)
    assert all(0 < b - a <= n_rows // 16 + 1 for a, b in itertools.pairwise(bounds))


def test_no_narrow_integer_types_in_the_index_math():
    import inspect

    from convgrad import _api, _arrays, _dispatch, _layouts, _options, _problem
    from convgrad.kernels import gemm, nchw_flat, relayout

    modules = (_api, _arrays, _dispatch, _layouts, _options, _problem)
    modules += (gemm, nchw, nchw_flat, nhwc, nhwc_depthwise, relayout)
    for module in modules:
        source = inspect.getsource(module)
        for narrow in ("int32", "intc", "int16", "uint32"):
            assert narrow not in source, f"{module.__name__} uses {narrow}"


def test_result_too_big_to_allocate_is_a_memory_error():
    # 2**47 float32 elements (2**49 bytes: more than the address space)
    g, w = np.ones((1, 1, 1, 1), np.float32), np.ones((1, 1, 1, 1), np.float32)
    with pytest.raises(MemoryError):
        convgrad.conv2d_grad_input(g, w, (1, 1, 2**23, 2**24), stride=(2**23, 2**24))
    # the forward output of a tiny input with huge padding
    with pytest.raises(MemoryError):
        convgrad.conv2d(np.ones((1, 1, 1, 1), np.float32), w, padding=2**23)
    # a product of sizes past what NumPy can address at all (2**80 elements)
    with pytest.raises(MemoryError):
        g513 = np.ones((1, 1, 513, 513), np.float32)  # 2**40 // (2**31 - 1) + 1 = 513
        convgrad.conv2d_grad_input(g513, w, (1, 1, 2**40, 2**40), stride=2**31 - 1)


def test_broadcast_input_too_big_to_copy_is_a_memory_error():
    # a valid 0-stride view (2**44 elements) that the kernels would need as a real array
    g = np.broadcast_to(np.float32(1), (1, 2**22, 2**11, 2**11))
    with pytest.raises(MemoryError):
        convgrad.conv2d_grad_bias(g)


def test_huge_zero_size_shapes_are_refused_with_a_value_error():
    w = np.ones((6, 4, 3, 3))
    g = np.zeros((0, 6, 1, 3))
    with pytest.raises(ValueError, match="input_shape must have sizes at most"):
        convgrad.conv2d_grad_input(g, w, (0, 4, 2**70, 5), stride=(2**31 - 1, 1))
