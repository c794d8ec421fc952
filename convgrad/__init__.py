"""convgrad: fast, exact 2-D convolution backward pass on Numba CPU kernels.

Public API: :func:`conv2d`, :func:`conv2d_backward`, :func:`conv2d_grad_input`,
:func:`conv2d_grad_weight`, :func:`conv2d_grad_bias`, and the layer :class:`Conv2d`;
:func:`warmup` compiles the kernels ahead of time.
"""

from ._api import conv2d, conv2d_backward, conv2d_grad_bias, conv2d_grad_input, conv2d_grad_weight
from ._warmup import warmup
from .layer import Conv2d

__version__ = "0.1.0"

__all__ = [
    "Conv2d",
    "__version__",
    "conv2d",
    "conv2d_backward",
    "conv2d_grad_bias",
    "conv2d_grad_input",
    "conv2d_grad_weight",
    "warmup",
]
