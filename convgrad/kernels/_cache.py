"""Whether the kernels cache their machine code on disk: decided once, at import.

Every kernel is declared ``@njit(cache=CACHE, ...)``. Caching is on unless

- ``CONVGRAD_CACHE`` is ``0``, ``false``, ``no`` or ``off`` (the user turned it
  off), or
- numba finds no writable place for the cache. Numba looks in
  ``NUMBA_CACHE_DIR`` if set, then ``__pycache__`` beside the kernel sources,
  then the user's cache directory (``~/.cache/numba``); a read-only install
  run by a user without a writable home has none of them, and ``cache=True``
  would then raise at import. convgrad compiles in memory instead.

Numba's global configuration is left alone: set ``NUMBA_CACHE_DIR`` to a
writable directory to get a cache where there is none by default.
"""

import os
from collections.abc import Mapping

from numba.core.caching import FunctionCache

OFF_VALUES = frozenset({"0", "false", "no", "off"})


def _probe() -> None:
    """Stands for a kernel of this package when asking numba where it would cache."""


def cache_decision(environ: Mapping[str, str] = os.environ) -> tuple[bool, str]:
    """(cache on?, why) for the kernels of this package, in the environment ``environ``."""
    setting = environ.get("CONVGRAD_CACHE", "").strip().lower()
    if setting in OFF_VALUES:
        return False, f"CONVGRAD_CACHE={environ['CONVGRAD_CACHE']}"
    try:
        # Numba's own search (NUMBA_CACHE_DIR, __pycache__, user dir), run on a
        # function of this directory: it raises when no location is writable.
        cache = FunctionCache(_probe)
    except Exception as error:  # numba raises RuntimeError; stay off for anything
        return False, f"no writable cache location ({error})"
    return True, cache.cache_path


CACHE, CACHE_REASON = cache_decision()
