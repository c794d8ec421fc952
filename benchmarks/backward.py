"""The full backward pass (all three gradients), and what users would pick instead.

``Backward`` times convgrad on every suite shape in both layouts; ``Dtypes``
runs a few shapes in float32 and float64; ``BackwardNoBias`` grad_input and
grad_weight alone, ``BackwardGradInputOnly`` grad_input alone (both by
``output_mask``); ``Threads`` and ``ThreadSpeedup`` show the scaling from 1 to
2 threads; ``AfterPointwise`` a 1x1 layer's backward followed by another
layer's; ``Torch`` and ``Reference`` time the same shapes through torch's conv
backward and through convgrad's plain NumPy reference; ``SpeedupOverTorch`` is
the ratio the performance targets are set in.
"""

import numba

import convgrad

from .common import (
    DENSE_SHAPES,
    LAYOUTS,
    SHAPE_NAMES,
    SHAPES,
    SuiteCase,
    interleaved_medians,
    make_arrays,
    set_threads,
    skip_if_slow,
    skip_slow,
    torch_backward_call,
)


def backward_call(shape, layout, dtype=None):
    """A call of convgrad.conv2d_backward on fresh arrays of ``shape``."""
    g, x, w, _ = make_arrays(shape, layout, dtype)
    return lambda: convgrad.conv2d_backward(g, x, w, layout=layout, **shape.options)


class Backward(SuiteCase):
    version = "1"  # pinned: edits to this file keep the dashboard's history comparable

    def run(self):
        return convgrad.conv2d_backward(
            self.g, self.x, self.w, layout=self.layout, **self.shape.options
        )

    def time_backward(self, shape_name, layout):
        self.run()


class BackwardNoBias:
    """grad_input and grad_weight without grad_bias (``output_mask``): a layer without bias.

    Such calls take the fused kernels where the whole backward does
    (``_dispatch.select_partial_kernel``), and one of the two alone only on tiny
    problems; this tracks that they stay as fast as the full backward.
    """

    version = "1"
    params = [["seed", "lenet2", "mnist_b64", "cifar_b32", "depthwise", "small_batch"], LAYOUTS]
    param_names = ["shape", "layout"]
    timeout = 300

    def setup(self, shape_name, layout):
        set_threads()
        shape = SHAPES[shape_name]
        g, x, w, _ = make_arrays(shape, layout)
        mask = (True, True, False)
        self.call = lambda: convgrad.conv2d_backward(
            g, x, w, layout=layout, output_mask=mask, **shape.options
        )
        self.call()

    def time_backward(self, shape_name, layout):
        self.call()


class BackwardGradInputOnly:
    """grad_input alone through ``output_mask``: the fused kernels' one-gradient rule.

    NCHW depthwise problems and tiny ones take a fused kernel for one gradient
    (``_dispatch.select_partial_kernel``), the rest the single-gradient kernels.
    """

    version = "1"
    params = [["seed", "lenet2", "depthwise", "depthwise_s2"], LAYOUTS]
    param_names = ["shape", "layout"]
    timeout = 300

    def setup(self, shape_name, layout):
        set_threads()
        shape = SHAPES[shape_name]
        g, x, w, _ = make_arrays(shape, layout)
        mask = (True, False, False)
        self.call = lambda: convgrad.conv2d_backward(
            g, x, w, layout=layout, output_mask=mask, **shape.options
        )
        self.call()

    def time_backward(self, shape_name, layout):
        self.call()


class Dtypes:
    """float32 against float64 on shapes of each family (the suite fixes one dtype per shape)."""

    version = "1"
    params = [["lenet2", "cifar_b32", "depthwise", "dilated"], ["float32", "float64"]]
    param_names = ["shape", "dtype"]
    timeout = 300

    def setup(self, shape_name, dtype):
        set_threads()
        self.call = backward_call(SHAPES[shape_name], "NCHW", dtype)
        self.call()

    def time_backward(self, shape_name, dtype):
        self.call()


class Threads:
    """Full backward at 1 and 2 threads (NCHW) on the shapes with many channels."""

    version = "1"
    params = [[*DENSE_SHAPES, "depthwise"], [1, 2]]
    param_names = ["shape", "threads"]
    timeout = 300

    def setup(self, shape_name, threads):
        skip_if_slow(shape_name)
        if threads > numba.config.NUMBA_NUM_THREADS:
            raise NotImplementedError(f"numba has fewer than {threads} threads here")
        set_threads(threads)
        self.call = backward_call(SHAPES[shape_name], "NCHW")
        self.call()

    def time_backward(self, shape_name, threads):
        self.call()


class ThreadSpeedup:
    """Time at 1 thread over time at 2 threads, measured side by side (NCHW)."""

    version = "1"
    params = [[*DENSE_SHAPES, "depthwise"]]
    param_names = ["shape"]
    timeout = 300

    def setup(self, shape_name):
        skip_if_slow(shape_name)
        if numba.config.NUMBA_NUM_THREADS < 2:
            raise NotImplementedError("numba has one thread here")
        self.call = backward_call(SHAPES[shape_name], "NCHW")

    def track_speedup_1_to_2_threads(self, shape_name):
        def with_threads(count):
            def call():
                numba.set_num_threads(count)
                self.call()

            return call

        times = interleaved_medians({"1": with_threads(1), "2": with_threads(2)})
        return times["1"] / times["2"]

    track_speedup_1_to_2_threads.unit = "x"


class AfterPointwise:
    """pointwise's backward (NHWC) and straight after it another layer's (NCHW), timed together.

    What a network's backward does (a MobileNet block: 1x1 then depthwise). Whatever the
    1x1 products leave running (OpenBLAS's workers spin for ~0.1 s after a product they ran)
    slows the next layer's kernels; the pair's time shows it, a layer timed alone does not.
    """

    version = "1"
    params = [["depthwise", "resnet_3x3"]]
    param_names = ["next_layer"]
    timeout = 300

    def setup(self, next_layer):
        skip_if_slow(next_layer)
        set_threads()
        self.pointwise = backward_call(SHAPES["pointwise"], "NHWC")
        self.next = backward_call(SHAPES[next_layer], "NCHW")
        self.pointwise()
        self.next()

    def time_pair(self, next_layer):
        self.pointwise()
        self.next()


class Torch:
    """torch.ops.aten.convolution_backward, both memory formats (skipped without torch)."""

    version = "1"
    params = [SHAPE_NAMES, ["NCHW", "channels_last"]]
    param_names = ["shape", "memory_format"]
    timeout = 300

    def setup(self, shape_name, memory_format):
        skip_if_slow(shape_name)
        self.call = torch_backward_call(SHAPES[shape_name], memory_format)
        set_threads()
        self.call()

    def time_backward(self, shape_name, memory_format):
        self.call()


class Reference:
    """convgrad.reference, the vectorised NumPy implementation (NCHW); slow by design."""

    version = "1"
    params = [SHAPE_NAMES]
    param_names = ["shape"]
    timeout = 600
    rounds = 1
    repeat = (1, 3, 30.0)

    def setup(self, shape_name):
        if skip_slow():
            raise NotImplementedError("the NumPy reference is slow (CONVGRAD_BENCH_SKIP_SLOW)")
        try:
            from convgrad.reference import conv2d_backward_reference
        except ImportError as error:
            raise NotImplementedError("this convgrad has no reference module") from error
        shape = SHAPES[shape_name]
        g, x, w, _ = make_arrays(shape, "NCHW")
        self.call = lambda: conv2d_backward_reference(g, x, w, **shape.options)

    def time_backward(self, shape_name):
        self.call()


class SpeedupOverTorch:
    """torch's faster memory format over convgrad's faster layout, interleaved in one process.

    This is the ratio the performance targets are stated in (>= 1 means convgrad is faster).
    """

    version = "1"
    params = [SHAPE_NAMES]
    param_names = ["shape"]
    timeout = 600

    def setup(self, shape_name):
        skip_if_slow(shape_name)
        shape = SHAPES[shape_name]
        self.calls = {
            f"torch {fmt}": torch_backward_call(shape, fmt) for fmt in ("NCHW", "channels_last")
        }
        set_threads()
        self.calls |= {f"convgrad {layout}": backward_call(shape, layout) for layout in LAYOUTS}

    def track_speedup(self, shape_name):
        times = interleaved_medians(self.calls)
        theirs = min(t for name, t in times.items() if name.startswith("torch"))
        ours = min(t for name, t in times.items() if name.startswith("convgrad"))
        return theirs / ours

    track_speedup.unit = "x"
