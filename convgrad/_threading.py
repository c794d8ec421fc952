"""Numba's threading layer, chosen once, and a guard around every kernel call.

Numba runs ``prange`` loops on one of three layers, picked at the first
parallel call in the process and fixed from then on:

- ``tbb`` (the ``tbb`` package): safe with concurrent Python threads and in
  forked children;
- ``omp`` (GNU OpenMP on Linux): safe with threads, but a child forked after
  the parent used it is killed on its first parallel call;
- ``workqueue`` (always there): safe in forked children, but two Python
  threads running parallel kernels at once abort the process.

Unless the user chose a layer (``NUMBA_THREADING_LAYER`` or
``numba.config.THREADING_LAYER``), convgrad asks numba for ``"forksafe"``
before the first kernel runs: tbb where it loads, else (Linux) workqueue.
Whatever layer ends up running, ``kernel_guard()`` makes it safe with threads:
a lock serialising convgrad's kernel calls when the layer is workqueue, a
no-op otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TypeVar

import numba
from numba.np.ufunc import parallel as _parallel

# What convgrad asks for when the user has not chosen: tbb, else a fork-safe
# layer (never GNU OpenMP, whose forked children die on their first kernel).
PREFERRED_LAYER = "forksafe"

T = TypeVar("T")

_setup_lock = threading.Lock()
_kernel_lock = threading.Lock()
_guard: AbstractContextManager[object] | None = None
_layer: str | None = None
started_by_convgrad = False


def user_chose_layer() -> bool:
    """Whether the user picked numba's threading layer (environment or numba.config)."""
    return "NUMBA_THREADING_LAYER" in os.environ or str(numba.config.THREADING_LAYER) != "default"


def _preload_tbb() -> None:
    """Make the ``tbb`` wheel's library findable by numba.

    pip puts ``libtbb`` in ``<prefix>/lib``, which is not on the loader's path
    in a virtual environment, so numba's TBB layer fails to import. Loading the
    library by its full path first lets numba's own load find it by name.
    """
    names = {"linux": "libtbb.so.12", "darwin": "libtbb.12.dylib"}
    name = next((n for prefix, n in names.items() if sys.platform.startswith(prefix)), None)
    if name is None:
        return
    for path in glob.glob(os.path.join(sys.prefix, "lib", name)):
        with contextlib.suppress(OSError):
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            return


def _configure() -> str:
    """Choose and start numba's threading layer if nobody has yet; return the one running."""
    global started_by_convgrad
    if not _parallel._is_initialized:
        if not user_chose_layer():
            numba.config.THREADING_LAYER = PREFERRED_LAYER
        _parallel._launch_threads()
        started_by_convgrad = True
    return numba.threading_layer()


def threading_layer() -> str:
    """The threading layer convgrad's kernels run on, choosing it first if needed."""
    kernel_guard()
    assert _layer is not None
    return _layer


def kernel_guard() -> AbstractContextManager[object]:
    """A context to run one parallel kernel in: a lock on workqueue, else a no-op."""
    global _guard, _layer
    if _guard is None:
        with _setup_lock:
            if _guard is None:
                _layer = _configure()
                _guard = _kernel_lock if _layer == "workqueue" else contextlib.nullcontext()
    return _guard


def run_kernel(kernel: Callable[..., T], *args: object) -> T:
    """``kernel(*args)`` under ``kernel_guard()``: every convgrad kernel call goes through here."""
    guard = kernel_guard()
    if guard is _kernel_lock:
        with guard:
            return kernel(*args)
    return kernel(*args)  # tbb and omp need no lock: a tiny call spares the context manager


# At import, so that numba's default order (tbb, omp, workqueue) finds TBB too
# when other code starts numba's threads before convgrad runs a kernel.
if not _parallel._is_initialized:
    _preload_tbb()
