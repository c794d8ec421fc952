"""Start-up costs, each in a fresh interpreter (asv's ``timeraw_``).

* import time of ``convgrad``;
* import plus the first seed-sized call (one 28x28 image, six 3x3 filters,
  NHWC, all three gradients) with a cold on-disk cache (every kernel compiled)
  and with a warm one (kernels loaded from numba's cache).

The cache location is set through ``NUMBA_CACHE_DIR`` in each run's untimed
setup, so these never touch the cache of the installed package.
"""

import os
import shutil
import subprocess
import sys
import tempfile

ARRAYS = """
import numpy as np
rng = np.random.default_rng(0)
x = rng.standard_normal((28, 28, 1), dtype=np.float32)
w = rng.standard_normal((3, 3, 1, 6), dtype=np.float32)
g = rng.standard_normal((26, 26, 6), dtype=np.float32)
"""
FIRST_CALL = """
import convgrad
convgrad.conv2d_backward(g, x, w, layout="NHWC")
"""


def _setup_with_cache(cache_dir: str) -> str:
    """Untimed setup code: point numba at ``cache_dir`` before it is imported, make arrays."""
    return f"import os\nos.environ['NUMBA_CACHE_DIR'] = {cache_dir!r}\n{ARRAYS}"


# A new empty cache for every run (the code runs once per repeat), removed at exit.
COLD_CACHE = """
import atexit, os, shutil, tempfile
cache = tempfile.mkdtemp(prefix="convgrad-asv-cold-")
atexit.register(shutil.rmtree, cache, True)
os.environ['NUMBA_CACHE_DIR'] = cache
"""


class Startup:
    version = "1"
    timeout = 300
    rounds = 1
    repeat = (1, 5, 60.0)

    def setup(self):
        # One warm cache for this benchmark process: filled once by a throw-away run.
        self.warm_cache = tempfile.mkdtemp(prefix="convgrad-asv-warm-")
        code = _setup_with_cache(self.warm_cache) + FIRST_CALL
        subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))

    def teardown(self):
        shutil.rmtree(self.warm_cache, ignore_errors=True)

    def timeraw_import(self):
        return "import convgrad"

    def timeraw_first_call_cold_cache(self):
        return FIRST_CALL, COLD_CACHE + ARRAYS

    def timeraw_first_call_warm_cache(self):
        return FIRST_CALL, _setup_with_cache(self.warm_cache)
