"""The benchmark suite's shapes and convgrad's speed-up targets over PyTorch.

Shapes are NCHW-logical; "k" is a square kernel. FLOPs of one full backward
are 4 * N * C_out * OH * OW * (C_in/groups) * KH * KW (grad_input and
grad_weight each do one multiply-add per term).
"""

from typing import NamedTuple

import numpy as np


class Shape(NamedTuple):
    """One benchmark problem."""

    n: int
    c_in: int
    c_out: int
    size: int  # H = W
    k: int
    stride: int
    padding: int
    dilation: int
    groups: int
    dtype: type
    target: float  # required speed-up over torch's faster memory format

    @property
    def out_size(self) -> int:
        """OH = OW."""
        return (self.size + 2 * self.padding - self.dilation * (self.k - 1) - 1) // self.stride + 1

    @property
    def flops(self) -> int:
        """Floating-point operations of one full backward (both multiply-adds)."""
        return (
            4
            * self.n
            * self.c_out
            * self.out_size**2
            * (self.c_in // self.groups)
            * self.k
            * self.k
        )

    @property
    def options(self) -> dict[str, int]:
        """Keyword options for convgrad's functions."""
        return {
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "groups": self.groups,
        }


SUITE: dict[str, Shape] = {
    "seed": Shape(1, 1, 6, 28, 3, 1, 0, 1, 1, np.float32, 4.0),
    "lenet2": Shape(1, 6, 16, 12, 5, 1, 0, 1, 1, np.float32, 4.0),
    "mnist_b64": Shape(64, 1, 32, 28, 3, 1, 1, 1, 1, np.float32, 2.0),
    "cifar_b32": Shape(32, 3, 64, 32, 3, 1, 1, 1, 1, np.float32, 2.0),
    "resnet_3x3": Shape(8, 64, 64, 56, 3, 1, 1, 1, 1, np.float32, 1.0),
    "resnet_s2": Shape(8, 128, 256, 28, 3, 2, 1, 1, 1, np.float32, 1.0),
    "pointwise": Shape(8, 256, 256, 14, 1, 1, 0, 1, 1, np.float32, 1.0),
    "depthwise": Shape(8, 128, 128, 56, 3, 1, 1, 1, 128, np.float32, 3.0),
    "big_kernel": Shape(4, 16, 16, 64, 7, 1, 3, 1, 1, np.float32, 1.0),
    "dilated": Shape(4, 32, 32, 64, 3, 1, 2, 2, 1, np.float32, 1.0),
    "resnet_3x3_f64": Shape(8, 64, 64, 56, 3, 1, 1, 1, 1, np.float64, 1.5),
}
