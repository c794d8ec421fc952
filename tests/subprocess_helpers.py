"""Run Python snippets in fresh interpreters, for tests of whole-process behaviour."""

import os
import subprocess
import sys
import textwrap

# Cases that between them run every kernel family (see tests/test_parallel.py's FAMILIES):
# (n, c_in, c_out, size, k, stride, padding, dilation, groups, layout)
MIXED_CASES = [
    (2, 1, 4, 20, 3, 1, 1, 1, 1, "NCHW"),  # rows
    (2, 8, 8, 6, 3, 2, 1, 1, 1, "NHWC"),  # channels
    (2, 4, 8, 16, 3, 1, 1, 1, 1, "NCHW"),  # flat
    (2, 8, 8, 10, 3, 1, 1, 1, 8, "NHWC"),  # depthwise
    (2, 8, 8, 6, 1, 1, 0, 1, 1, "NHWC"),  # gemm
    (1, 1, 6, 28, 3, 1, 0, 1, 1, "NHWC"),  # the seed case
]

MAKE_CASE = """
import numpy as np
from convgrad._layouts import LAYOUTS
from convgrad._problem import describe

def make_case(case, dtype=np.float32, seed=0):
    n, c_in, c_out, size, k, stride, padding, dilation, groups, layout = case
    spec = LAYOUTS[layout]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.image_shape(n, c_in, size, size)).astype(dtype)
    w = rng.standard_normal(spec.weight_shape(c_out, c_in // groups, k, k)).astype(dtype)
    opts = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout)
    problem = describe(spec, np.dtype(dtype), x.shape, w.shape,
                       **{key: v for key, v in opts.items() if key != "layout"})
    g = rng.standard_normal(problem.output_shape).astype(dtype)
    return g, x, w, opts
"""


def python_env(env=None):
    """This process's environment with ``env``'s entries added (None values removed)."""
    full_env = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    return full_env


def start_python(code, env=None):
    """Start ``code`` in a fresh interpreter; a Popen with text pipes."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=python_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_python(code, env=None, timeout=300, prefix=(), **kwargs):
    """Run ``code`` in a fresh interpreter (after ``prefix``); CompletedProcess with text output."""
    return subprocess.run(
        [*prefix, sys.executable, "-c", textwrap.dedent(code)],
        env=python_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )
