"""The kernel choice is a pure function of the problem: test it directly."""

import numba
import numpy as np
import pytest

from convgrad import _dispatch
from convgrad._layouts import NCHW, NHWC
from convgrad._problem import describe
from convgrad.kernels import (
    depthwise_tiles,
    direct_tiles,
    im2col,
    nchw,
    nchw_depthwise,
    nchw_flat,
    nhwc,
    nhwc_depthwise,
)


def problem(layout=NCHW, n=2, c_in=4, c_out=6, size=8, k=3, dtype=np.float32, groups=1, **opts):
    image = layout.image_shape(n, c_in, size, size)
    weight = layout.weight_shape(c_out, c_in // groups, k, k)
    opts = {"stride": 1, "padding": 1, "dilation": 1, "groups": groups} | opts
    return describe(layout, np.dtype(dtype), image, weight, **opts)


@pytest.mark.parametrize("user_layout", [NCHW, NHWC])
@pytest.mark.parametrize(
    "c_in, c_out, groups, size, stride, family",
    [
        (1, 6, 1, 28, 1, nchw),  # the seed: 26-long rows beat 6 channels
        (16, 16, 1, 64, 2, nchw),  # big images, few channels: rows
        (1, 32, 1, 28, 2, nhwc),  # mnist-like: 32 channels beat 14-long rows
        (64, 64, 1, 56, 2, nhwc),  # dense
        (8, 32, 2, 16, 1, nhwc),  # grouped: 16 channels per group beat 16-long rows
    ],
)
def test_rows_or_channels_by_vector_length(user_layout, c_in, c_out, groups, size, stride, family):
    p = problem(user_layout, c_in=c_in, c_out=c_out, groups=groups, size=size, stride=stride)
    expected_layout = NHWC if family is nhwc else NCHW
    assert _dispatch.kernel_layout(p, "forward") is expected_layout
    for operation in ("forward", "grad_input", "grad_weight"):
        if operation != "forward" and _dispatch.flat_suits(p):
            continue
        choice = _dispatch.select_kernel(operation, p)
        assert choice.layout is expected_layout
        assert choice.kernel is getattr(family, f"{operation}_{expected_layout.name.lower()}")
        assert choice.exact is None or choice.exact.kernel is choice.kernel


@pytest.mark.parametrize("multiplier, stride", [(1, 1), (1, 2), (2, 1)])
def test_depthwise_stays_in_the_users_layout(multiplier, stride):
    for user_layout in (NCHW, NHWC):
        p = problem(user_layout, c_in=8, c_out=8 * multiplier, groups=8, size=56, stride=stride)
        assert _dispatch.is_depthwise(p) is (multiplier == 1)
        for operation in ("forward", "grad_input", "grad_weight"):
            choice = _dispatch.select_kernel(operation, p)
            if multiplier == 1:
                assert choice.layout is user_layout
                module = nchw if user_layout is NCHW else nhwc_depthwise
                suffix = "nchw" if user_layout is NCHW else "nhwc_depthwise"
                if operation != "forward" and user_layout is NCHW:
                    # NCHW's depthwise gradients alone by the backward's planes
                    module, suffix = nchw_depthwise, "nchw_depthwise"
                    assert choice.exact.kernel is getattr(nchw, f"{operation}_nchw")
                assert choice.kernel is getattr(module, f"{operation}_{suffix}")
            else:  # a channel multiplier: one channel pair per group, 56-long rows
                assert choice.layout is NCHW
                assert choice.kernel is getattr(nchw, f"{operation}_nchw")
    p = problem(NHWC, c_in=8, c_out=8, groups=8, size=56, n=16)
    assert _dispatch.select_kernel("grad_weight", p).args[-1] == _dispatch.weight_chunks(p)


def test_rows_win_up_to_the_row_preference():
    at = problem(c_in=1, c_out=8, size=16)  # OW = 16 = 2 * 8: rows
    above = problem(c_in=1, c_out=9, size=16)  # 18 > 16: channels
    assert at.out_w == _dispatch.ROW_PREFERENCE * 8
    assert _dispatch.kernel_layout(at, "forward") is NCHW
    assert _dispatch.kernel_layout(above, "forward") is NHWC


@pytest.mark.parametrize("user_layout", [NCHW, NHWC])
@pytest.mark.parametrize(
    "c_in, c_out, groups, size, k, stride, flat",
    [
        (64, 64, 1, 56, 3, 1, True),  # resnet 3x3: 56 x 58 planes
        (1, 32, 1, 28, 3, 1, True),  # mnist: 32 pairs, 28 x 30 planes
        (16, 16, 1, 64, 7, 1, True),  # big kernel
        (64, 64, 1, 56, 3, 2, True),  # stride 2: 28 x 29 planes >= 4 x 64 channels
        (128, 128, 1, 28, 3, 2, True),  # stride 2: 14 x 15 planes, long enough
        (256, 256, 1, 14, 3, 2, True),  # stride 2: 7 x 8 planes, long enough
        (256, 256, 1, 8, 3, 2, False),  # stride 2: 4 x 5 planes < 48
        (3, 64, 1, 112, 7, 2, True),  # a stem: stride 2 but 56 x 59 planes
        (8, 8, 8, 56, 3, 1, False),  # depthwise: one pair per group, padding does not pay
        (1, 6, 1, 28, 3, 1, False),  # the seed: 6 pairs
        (256, 256, 1, 14, 3, 1, True),  # 14 x 16 planes, 256 channels
    ],
)
def test_flat_planes_for_long_planes_and_enough_reuse(
    user_layout, c_in, c_out, groups, size, k, stride, flat
):
    p = problem(
        user_layout,
        c_in=c_in,
        c_out=c_out,
        groups=groups,
        size=size,
        k=k,
        stride=stride,
        padding=k // 2,
    )
    assert _dispatch.flat_suits(p) is flat
    unfolded = _dispatch.im2col_suits(p)  # short planes or strides: test_im2col.py
    for operation in ("grad_input", "grad_weight"):
        choice = _dispatch.select_kernel(operation, p)
        if unfolded:
            assert choice.kernel is getattr(im2col, f"{operation}_im2col")
        elif _dispatch.direct_suits(p):  # dense, stride 1: test_direct_tiles.py
            assert choice.layout is user_layout and choice.exact is not None
        elif flat:
            assert choice.kernel is getattr(nchw_flat, f"{operation}_nchw_flat")
            # the flat kernels read either layout: no relayouted copies
            assert choice.layout is user_layout and _dispatch.kernel_layout(p) is user_layout
            # the exact alternative for non-finite inputs: rows (NCHW) or channels (NHWC)
            loops = nchw if user_layout is NCHW else nhwc
            suffix = user_layout.name.lower()
            exact = getattr(loops, f"{operation}_{suffix}")
            if operation == "grad_weight" and loops is nhwc and _dispatch.weight_by_channel(p):
                exact = nhwc.grad_weight_nhwc_by_channel  # too big for two partials
            assert choice.exact.kernel is exact
            assert choice.exact.layout is user_layout
            assert choice.exact.args[: len(p.kernel_args)] == p.kernel_args
            assert choice.args[:6] == (stride, stride, *p.geometry.padding)
            sizes = (_dispatch.image_chunk(p, operation),)
            if operation == "grad_weight":
                sizes += (_dispatch.weight_slice_blocks(p),)
            assert choice.args[-len(sizes) - 1 :] == (*sizes, int(user_layout is NHWC))
        else:
            assert choice.kernel is not getattr(nchw_flat, f"{operation}_nchw_flat")
    assert _dispatch.select_kernel("forward", p).exact is None


def test_image_chunk_bounds_working_memory():
    small = problem(n=8, c_in=64, c_out=64, size=56)
    assert _dispatch.image_chunk(small) >= 1
    big = problem(n=64, c_in=64, c_out=64, size=56)
    chunk = _dispatch.image_chunk(big)
    per_image = (64 * 59 + 64 * 56) * 58 * 4  # stride 1: one phase of 59 rows, pitch 58
    images = (64 * 56 * 56 + 64 * 56 * 56) * 4 * 64
    assert 1 <= chunk < 64
    assert chunk * per_image <= max(_dispatch.WORKSPACE_MIN_BYTES, images // 4)


def test_weight_totals_sliced_within_the_budget():
    """Many channels on small images: grad_weight's float64 totals are kept a slice at a time."""
    small_weight = problem(n=8, c_in=64, c_out=64, size=56)
    assert _dispatch.weight_slice_blocks(small_weight) == 64 // nchw_flat.BLOCK  # all at once
    for n in (1, 8, 64):
        late = problem(n=n, c_in=512, c_out=512, size=7)
        assert _dispatch.flat_suits(late)
        blocks = _dispatch.weight_slice_blocks(late)
        totals = blocks * nchw_flat.BLOCK * 512 * 9 * 8
        assert 1 <= blocks < 512 // nchw_flat.BLOCK  # all 512 x 512 x 9 totals: 18.9 MB
        chunk = _dispatch.image_chunk(late, "grad_weight")
        per_image = (512 + blocks * nchw_flat.BLOCK) * 10 * 9 * 4  # 10 rows, pitch 9
        budget = max(_dispatch.WORKSPACE_MIN_BYTES, n * 2 * 512 * 49 * 4 // 4)
        assert 1 <= chunk <= n and totals + chunk * per_image <= budget


def test_image_bands_only_for_images_too_big_for_the_budget():
    for operation in ("grad_input", "grad_weight"):
        assert _dispatch.image_bands(problem(n=8, c_in=64, c_out=64, size=56), operation) == 1
        assert _dispatch.image_bands(problem(n=64, c_in=3, c_out=64, size=32), operation) == 1
    big = problem(n=1, c_in=3, c_out=64, size=224)
    bands = _dispatch.image_bands(big)
    assert 1 < bands <= big.out_h
    rows = big.out_h // bands  # every band at least this long: long enough for flat planes
    assert rows * _dispatch._flat_pitch(big) >= _dispatch.FLAT_LONG_PLANE
    # grad_weight slices the output channels first: one image fits then
    assert _dispatch.image_bands(big, "grad_weight") == 1
    assert _dispatch.weight_slice_blocks(big) < 64 // nchw_flat.BLOCK


def test_bias_kernel_per_layout():
    assert _dispatch.select_bias_kernel(NCHW) is nchw.grad_bias_nchw
    assert _dispatch.select_bias_kernel(NHWC) is nhwc.grad_bias_nhwc_parallel
    # small grad_output: summed on the calling thread
    small, large = _dispatch.SERIAL_BIAS_ELEMENTS, _dispatch.SERIAL_BIAS_ELEMENTS + 1
    assert _dispatch.select_bias_kernel(NCHW, elements=small) is nchw.grad_bias_nchw_serial
    assert _dispatch.select_bias_kernel(NCHW, elements=large) is nchw.grad_bias_nchw
    assert _dispatch.select_bias_kernel(NHWC, elements=small) is nhwc.grad_bias_nhwc
    # NHWC's slices of channels: the serial kernel's bits at any thread count
    g = np.random.default_rng(1).standard_normal((3, 7, 9, 50)).astype(np.float32)
    serial = np.ones(50, np.float32)
    nhwc.grad_bias_nhwc(g, serial)
    np.testing.assert_allclose(serial - 1, g.sum(axis=(0, 1, 2), dtype=np.float64), rtol=1e-5)
    before = numba.get_num_threads()
    try:
        for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
            numba.set_num_threads(threads)
            sliced = np.ones(50, np.float32)
            nhwc.grad_bias_nhwc_parallel(g, sliced)
            assert sliced.tobytes() == serial.tobytes()
    finally:
        numba.set_num_threads(before)
    # either NCHW kernel: the same float64 sums, rounded once
    g = np.random.default_rng(0).standard_normal((2, 3, 100, 110)).astype(np.float32)
    want = g.sum(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
    for kernel in (nchw.grad_bias_nchw, nchw.grad_bias_nchw_serial):
        gb = np.zeros(3, np.float32)
        kernel(g, gb)
        np.testing.assert_allclose(gb, want, rtol=1e-6)


@pytest.mark.parametrize("layout", [NCHW, NHWC])
def test_bias_beside_blas_runs_on_the_calling_thread(layout):
    kernel = _dispatch.select_bias_kernel(layout, beside_blas=True)
    assert not kernel.targetoptions.get("parallel")  # numba's thread pool stays idle
    g = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(layout.image_shape(2, 3, 4, 5))
    gb = np.ones(3, np.float32)
    kernel(g, gb)
    channel_sums = g.transpose(layout.image_axes).sum(axis=(0, 2, 3))
    np.testing.assert_array_equal(gb, 1 + channel_sums)


def test_geometry_arguments_follow_the_options():
    opts = {"stride": (2, 3), "padding": ((1, 2), (3, 0)), "dilation": (2, 1), "groups": 2}
    planar = problem(c_in=4, c_out=6, size=32, **opts)  # 3 channels per group, OW 12: NCHW
    assert _dispatch.select_kernel("grad_input", planar).args == (2, 3, 1, 3, 2, 1, 2)
    assert _dispatch.select_kernel("grad_weight", planar).args == (2, 3, 1, 3, 2, 1, 2)
    channels_last = problem(c_in=8, c_out=32, n=16, size=8, **opts)  # 4 x 4 planes < 48
    chunks = _dispatch.weight_chunks(channels_last)
    assert chunks > 1
    expected = (2, 3, 1, 3, 2, 1, 2, chunks)
    assert _dispatch.select_kernel("grad_weight", channels_last).args == expected


def test_choice_is_pure_and_repeatable():
    p = problem(NHWC)
    assert _dispatch.select_kernel("grad_weight", p) == _dispatch.select_kernel("grad_weight", p)


def test_weight_chunks_bounded_by_rows_work_and_cap():
    assert _dispatch.weight_chunks(problem(NHWC, n=1, size=3, k=3, padding=0)) == 1
    tiny = problem(NHWC, n=1, c_in=1, c_out=6, size=28, k=3, padding=0)  # the seed case
    assert _dispatch.weight_chunks(tiny) == 1
    big = problem(NHWC, n=64, size=28)
    assert _dispatch.weight_chunks(big) == _dispatch.MAX_WEIGHT_CHUNKS


def test_weight_chunks_bounded_by_memory_budget():
    wide = problem(NHWC, c_in=8, c_out=512, k=3, n=8, size=16)
    partial_bytes = 8 * 512 * 9 * (4 + 8)  # a float32 block and a float64 total
    chunks = _dispatch.weight_chunks(wide)
    assert 1 < chunks < _dispatch.MAX_WEIGHT_CHUNKS
    assert chunks * partial_bytes <= _dispatch.PARTIALS_BUDGET_BYTES


def test_nhwc_weight_by_input_channel_for_many_channels_or_big_weights():
    def weight_kernel(**shape):
        p = problem(NHWC, k=3, n=8, size=4, **shape)  # 4 x 4 planes: channel kernels
        assert not _dispatch.flat_suits(p)
        return _dispatch.select_kernel("grad_weight", p)

    # many channels on 4 x 4 planes run the unfolded products; by input channel is
    # their exact alternative for non-finite inputs
    late = weight_kernel(c_in=256, c_out=256)
    assert late.kernel is im2col.grad_weight_im2col
    late = late.exact
    assert late.kernel is nhwc.grad_weight_nhwc_by_channel and late.args == (1, 1, 1, 1, 1, 1, 1)
    few_inputs = weight_kernel(c_in=8, c_out=64)
    assert few_inputs.kernel is nhwc.grad_weight_nhwc and len(few_inputs.args) == 8
    # fewer than 16 input channels, but no room for two partials of 4 x 8192 x 9 entries
    big_weight = weight_kernel(c_in=4, c_out=8192)
    assert big_weight.kernel is nhwc.grad_weight_nhwc_by_channel


def test_backward_kernel_fuses_small_and_few_channel_problems():
    def choice(n, c_in, c_out, size, k=3, groups=1, padding=1, layout=NCHW, stride=1):
        problem = describe(
            layout,
            np.dtype(np.float32),
            layout.image_shape(n, c_in, size, size),
            layout.weight_shape(c_out, c_in // groups, k, k),
            stride=stride,
            padding=padding,
            dilation=1,
            groups=groups,
        )
        picked = _dispatch.select_backward_kernel(problem)
        return None if picked is None else picked.kernel

    fused, serial = nchw_flat.backward_nchw_flat, nchw_flat.backward_shifted_serial
    assert choice(64, 1, 32, 28) is fused  # mnist_b64: few channels, a batch
    assert choice(64, 1, 32, 28, layout=NHWC) is fused  # either layout, no relayout
    assert choice(1, 1, 6, 28, padding=0, layout=NHWC) is serial  # the seed, NHWC
    assert choice(32, 3, 64, 32) is fused  # cifar_b32
    assert choice(8, 6, 16, 16, groups=2) is fused
    # fewer than 16 channel pairs: fused all the same (the row kernels otherwise), in
    # either layout, except NHWC groups (see fused_suits)
    assert choice(64, 1, 8, 28) is fused and choice(64, 1, 8, 28, layout=NHWC) is fused
    assert choice(8, 32, 64, 56, groups=32) is fused  # a channel multiplier of 2
    assert choice(8, 32, 64, 56, groups=32, layout=NHWC) is None
    assert choice(8, 6, 16, 12, groups=2) is serial  # 5e5 terms: serial still
    assert choice(1, 6, 16, 12, k=5, padding=0) is serial  # lenet2: small, one block
    assert choice(1, 3, 64, 32) is None  # one image, 1.8M terms: the parallel flat kernels
    wide = choice(8, 64, 64, 56)  # many channels, large: the direct tiles (AVX-512) or none
    assert wide is (direct_tiles.backward_direct if _dispatch.DIRECT_TILES else None)
    assert choice(1, 1, 6, 28, padding=0) is serial  # the seed: not flat, tiny
    assert choice(1, 32, 16, 4) is serial  # tiny planes, many channels: not flat, tiny
    assert choice(2, 8, 8, 10, stride=2) is nchw_flat.backward_padded_serial  # phase planes
    assert choice(1, 1, 1, 60) is serial  # one channel alone is not depthwise
    depthwise = nchw_depthwise.backward_nchw_depthwise
    assert choice(2, 32, 32, 16, groups=32) is depthwise  # NCHW depthwise: its own fused kernel
    # NHWC depthwise: grad_input, then grad_weight and grad_bias in one pass over grad_output
    nhwc_depthwise_backward = nhwc_depthwise.backward_nhwc_depthwise
    assert choice(2, 32, 32, 8, groups=32, layout=NHWC) is nhwc_depthwise_backward
    strided = nchw_depthwise.backward_nchw_depthwise_strided
    assert choice(2, 32, 32, 8, groups=32, stride=2) is strided  # on phase planes
    # small images, or kernels of more than nine taps: tiles of channel blocks
    tiles = depthwise_tiles.backward_depthwise_tiles
    assert choice(2, 32, 32, 8, groups=32) is tiles
    assert choice(2, 32, 32, 7, groups=32, layout=NHWC) is nhwc_depthwise_backward
    assert choice(2, 32, 32, 56, k=5, padding=2, groups=32) is tiles
    assert choice(2, 32, 32, 56, k=5, padding=2, groups=32, layout=NHWC) is tiles
    assert choice(2, 32, 32, 8, k=5, padding=2, groups=32, stride=2) is strided  # stride 1 only
    assert choice(64, 2, 8, 4) is serial  # not flat, tiny (1.5e5 terms)
    assert choice(256, 2, 8, 4) is None  # not flat, not tiny (5.9e5 terms)
    assert choice(8, 3, 64, 14, k=1, padding=0) is None  # 1x1: BLAS
    assert choice(1, 16, 16, 8, k=1, padding=0) is None  # 1x1, even tiny: BLAS
    # big images: whole images' planes would pass the memory budget; bands of rows fit
    assert choice(4, 3, 32, 224) is fused and choice(4, 3, 32, 224, layout=NHWC) is fused
    for layout in (NCHW, NHWC):
        big = problem(layout, n=4, c_in=3, c_out=32, size=224)
        bands, blocks = _dispatch.fused_bands(big), _dispatch.fused_blocks(big)
        assert bands > 1 and blocks == 4
        budget = max(_dispatch.WORKSPACE_MIN_BYTES, 4 * 35 * 224 * 224 * 4 // 4)
        assert blocks * _dispatch.fused_workspace_bytes(big, bands) <= budget
    assert _dispatch.fused_bands(problem(n=4, c_in=3, c_out=32, size=64)) == 1
    # strided (a 7 x 7 stem) likewise
    assert choice(2, 3, 64, 224, k=7, stride=2, padding=3, layout=NHWC) is fused
    stem = problem(NHWC, n=2, c_in=3, c_out=64, size=224, k=7, stride=2, padding=3)
    assert _dispatch.fused_bands(stem) > 1 and _dispatch.fused_blocks(stem) == 2


@pytest.mark.parametrize("layout", [NCHW, NHWC])
def test_partial_gradients_take_the_serial_fused_kernel_when_tiny(layout):
    seed = problem(layout, n=1, c_in=1, c_out=6, size=28, padding=0)
    serial = _dispatch.select_backward_kernel(seed)
    assert serial.kernel is nchw_flat.backward_shifted_serial
    for mask in [
        (True, True, False),
        (True, False, False),
        (False, True, False),
        (True, False, True),
    ]:
        assert _dispatch.select_partial_kernel(seed, mask) == serial
    assert _dispatch.select_partial_kernel(seed, (True, True, True)) == serial
    # grad_bias alone (or nothing) needs no fused kernel
    assert _dispatch.select_partial_kernel(seed, (False, False, True)) is None
    assert _dispatch.select_partial_kernel(seed, (False, False, False)) is None
    strided = problem(layout, n=2, c_in=8, c_out=8, size=10, stride=2)
    picked = _dispatch.select_partial_kernel(strided, (False, True, False))
    assert picked.kernel is nchw_flat.backward_padded_serial
    # serial for the whole backward, but over PARTIAL_MAX_TERMS: grad_input and
    # grad_weight together still fused, either alone one kernel per gradient
    mid = problem(layout, n=4, c_in=8, c_out=8, size=12)
    assert _dispatch.PARTIAL_MAX_TERMS < mid.terms <= _dispatch.SERIAL_MAX_TERMS
    mid_serial = _dispatch.select_backward_kernel(mid)
    assert mid_serial.kernel is nchw_flat.backward_shifted_serial
    assert _dispatch.select_partial_kernel(mid, (True, True, False)) == mid_serial
    assert _dispatch.select_partial_kernel(mid, (True, False, True)) is None
    assert _dispatch.select_partial_kernel(mid, (False, True, False)) is None
    # the parallel fused kernels (and depthwise ones) for grad_input with grad_weight
    mnist = problem(layout, n=64, c_in=1, c_out=32, size=28)
    parallel = _dispatch.select_backward_kernel(mnist)
    assert parallel.kernel is nchw_flat.backward_nchw_flat
    assert _dispatch.select_partial_kernel(mnist, (True, True, False)) == parallel
    assert _dispatch.select_partial_kernel(mnist, (False, True, True)) is None
    depthwise = problem(layout, n=1, c_in=8, c_out=8, size=8, groups=8)
    fused_depthwise = _dispatch.select_backward_kernel(depthwise)
    assert _dispatch.select_partial_kernel(depthwise, (True, True, False)) == fused_depthwise
    # one of the two: NCHW's depthwise planes kernel (one pass for all three) still
    # beats the row kernels; NHWC's channel kernels run a pass per gradient anyway
    alone = _dispatch.select_partial_kernel(depthwise, (False, True, False))
    assert alone == (fused_depthwise if layout is NCHW else None)
    # unless grad_input (thrown away) would pass the working-memory budget
    big = problem(layout, n=8, c_in=64, c_out=64, size=56, groups=64)
    assert _dispatch.select_backward_kernel(big).kernel is (
        nchw_depthwise.backward_nchw_depthwise
        if layout is NCHW
        else nhwc_depthwise.backward_nhwc_depthwise
    )
    assert _dispatch.select_partial_kernel(big, (False, True, True)) is None
    # grad_input alone: NCHW's planes kernels have their own, one gradient at a time
    assert _dispatch.select_partial_kernel(big, (True, False, False)) is None
    strided = problem(layout, n=2, c_in=8, c_out=8, size=12, groups=8, stride=2)
    assert _dispatch.select_partial_kernel(strided, (True, False, True)) is None
    # and so has grad_weight alone at stride 2 (even where grad_input would fit)
    assert _dispatch.select_partial_kernel(strided, (False, True, True)) is None
    # nothing fused for the whole backward: nothing for part of it (1x1: BLAS)
    pointwise = problem(layout, n=1, c_in=16, c_out=16, size=8, k=1, padding=0)
    assert _dispatch.select_partial_kernel(pointwise, (True, True, False)) is None


def test_fused_workspace_estimate_matches_the_kernel():
    """The dispatch's estimate of the fused kernel's workspaces, against tracemalloc."""
    import tracemalloc

    for layout, stride in ((NCHW, 1), (NHWC, 1), (NCHW, 2), (NHWC, 2)):
        p = problem(layout, n=4, c_in=3, c_out=16, size=40, stride=stride)
        rng = np.random.default_rng(0)
        x = rng.standard_normal(p.input_shape).astype(np.float32)
        w = rng.standard_normal(p.weight_shape).astype(np.float32)
        g = rng.standard_normal(p.output_shape).astype(np.float32)
        gi, gw, gb = np.zeros_like(x), np.zeros_like(w), np.zeros(16, np.float32)
        blocks = _dispatch.fused_blocks(p)
        assert blocks == 4  # one block per image, the most there can be here
        bands = _dispatch.fused_bands(p)
        assert bands == 1
        args = (*_dispatch._flat_args(p), blocks, bands, int(layout is NHWC))
        nchw_flat.backward_nchw_flat(x, g, w, gi, gw, gb, *args)  # compiled before measuring
        tracemalloc.start()
        nchw_flat.backward_nchw_flat(x, g, w, gi, gw, gb, *args)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        estimate = blocks * _dispatch.fused_workspace_bytes(p) + _dispatch._fused_fixed_bytes(p)
        assert 0.9 * peak <= estimate <= 1.1 * peak + 4096, (layout, stride, peak, estimate)


def test_shifted_kernels_count_their_nhwc_image_copies():
    """NHWC at stride 1 copies an image and its grad_input into NCHW order (whole images of
    several channels): the fused kernels' workspaces must count them; NCHW, strided
    problems, images in bands and one-channel images copy nothing."""
    nhwc = problem(NHWC, n=1, c_in=6, c_out=16, size=12, k=5, padding=0)
    copies = 2 * 6 * 12 * 12 * 4
    assert _dispatch.nchw_copies_bytes(nhwc) == copies
    nchw = problem(NCHW, n=1, c_in=6, c_out=16, size=12, k=5, padding=0)
    assert _dispatch.fused_workspace_bytes(nhwc) - _dispatch.fused_workspace_bytes(nchw) >= copies
    assert _dispatch.nchw_copies_bytes(nhwc, bands=2) == 0
    assert _dispatch.nchw_copies_bytes(problem(NCHW, n=1, c_in=6, c_out=16, size=12)) == 0
    assert _dispatch.nchw_copies_bytes(problem(NHWC, n=1, c_in=6, c_out=16, size=12, stride=2)) == 0
    assert _dispatch.nchw_copies_bytes(problem(NHWC, n=1, c_in=1, c_out=16, size=12)) == 0
    assert _dispatch.select_backward_kernel(nhwc).kernel is nchw_flat.backward_shifted_serial
