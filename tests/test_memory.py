"""Working memory within the budget on shapes the suite does not hold.

The asv memory tracks measure the suite's shapes; these are held-out shapes of
the kinds that went over before: many channels on small images (grad_weight's
float64 totals larger than the images; now the unfolded products, tiles of
images), big weights on the channel kernels,
few channels on bigger images (the fused kernel's per-block planes), and images
so big that one image's planes pass the budget (row bands).
Budget: a quarter of input + grad_output bytes, at least 4 MiB.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

import convgrad

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import memory_budget_bytes, working_memory_bytes

# n, c_in, c_out, size, k, stride, padding
SHAPES = {
    "resnet_layer4": (8, 512, 512, 7, 3, 1, 1),  # unfolded products, a 9.4 MB weight
    "resnet_layer4_s2": (8, 256, 512, 14, 3, 2, 1),
    "late_4x4": (8, 256, 256, 4, 3, 1, 1),  # unfolded products, a 2.4 MB weight
    "many_images_7x7": (64, 64, 64, 7, 3, 1, 1),  # unfolded, several tiles (NCHW: copies)
    "narrow_strided": (8, 128, 32, 14, 3, 2, 1),  # unfolded on 32 channels (NCHW: copies)
    "resnet_layer2": (8, 128, 128, 28, 3, 1, 1),  # direct, grad_weight tiles cut per thread
    "vgg_conv3": (4, 256, 256, 28, 3, 1, 1),  # NHWC direct: 32 runs' totals, not the weight's
    "wide_56": (2, 256, 256, 56, 3, 1, 1),  # NHWC direct in 64 runs of one band row
    "stem_batch": (16, 3, 32, 96, 7, 2, 3),  # fused, fewer image blocks than 8
    "imagenet_stem": (2, 3, 64, 224, 7, 2, 3),  # fused, in bands of rows (phase planes)
    "few_channels_big": (2, 3, 64, 112, 3, 1, 1),  # single gradients, not fused
    "one_big_image": (1, 3, 64, 224, 3, 1, 1),  # one image's planes: 3x the budget
    "few_big_images": (4, 3, 32, 224, 3, 1, 1),
}


def _arrays(shape, layout):
    """Random float32 (input, weight, grad_output) of ``shape`` in ``layout``, and the options."""
    n, c_in, c_out, size, k, stride, padding = shape
    spec = convgrad._layouts.LAYOUTS[layout]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(spec.image_shape(n, c_in, size, size)).astype(np.float32)
    w = rng.standard_normal(spec.weight_shape(c_out, c_in, k, k)).astype(np.float32)
    out = (size + 2 * padding - k) // stride + 1
    g = rng.standard_normal(spec.image_shape(n, c_out, out, out)).astype(np.float32)
    return x, w, g, {"stride": stride, "padding": padding, "layout": layout}


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_backward_working_memory_within_budget(name, layout):
    x, w, g, opts = _arrays(SHAPES[name], layout)
    used = working_memory_bytes(lambda: convgrad.conv2d_backward(g, x, w, **opts))
    assert used <= memory_budget_bytes(g, x)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("mask", [(False, True, False), (False, True, True), (True, False, False)])
@pytest.mark.parametrize(
    "name, groups",
    [("depthwise_56", 64), ("few_channels_batch", 1)],
)
def test_part_of_the_gradients_within_budget(name, groups, mask, layout):
    # output_mask may run a fused kernel and throw the other gradients away
    # (_dispatch.select_partial_kernel): a grad_input nobody asked for counts
    n, c_in, c_out, size = {"depthwise_56": (8, 64, 64, 56), "few_channels_batch": (64, 1, 32, 28)}[
        name
    ]
    spec = convgrad._layouts.LAYOUTS[layout]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(spec.image_shape(n, c_in, size, size)).astype(np.float32)
    w = rng.standard_normal(spec.weight_shape(c_out, c_in // groups, 3, 3)).astype(np.float32)
    g = rng.standard_normal(spec.image_shape(n, c_out, size, size)).astype(np.float32)
    opts = {"padding": 1, "groups": groups, "layout": layout, "output_mask": mask}
    used = working_memory_bytes(lambda: convgrad.conv2d_backward(g, x, w, **opts))
    assert used <= memory_budget_bytes(g, x)


# grad_input alone on short planes may take the direct tiles instead of the
# unfolded products: their packed weight and bands must fit the budget too
INPUT_ALONE_SHAPES = {
    name: SHAPES[name] for name in ("resnet_layer4", "many_images_7x7", "late_4x4")
} | {"short_14": (8, 256, 256, 14, 3, 1, 1), "short_8": (16, 128, 128, 8, 3, 1, 1)}


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("name", sorted(INPUT_ALONE_SHAPES))
def test_grad_input_alone_within_budget(name, layout):
    x, w, g, opts = _arrays(INPUT_ALONE_SHAPES[name], layout)
    used = working_memory_bytes(lambda: convgrad.conv2d_grad_input(g, w, x.shape, **opts))
    assert used <= memory_budget_bytes(g, x)
