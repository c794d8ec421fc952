"""``convgrad info``: what convgrad runs on and where its compiled kernels live.

Everything is read without side effects: no kernel is compiled or run and no
thread pool is started (numba starts its pool on the first parallel call, so
the threading layer is reported as the one numba *would* pick, unless a
parallel kernel already ran in this process).
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import platform
import sys
import warnings
from pathlib import Path
from typing import Any, TextIO

import llvmlite
import numba
import numpy as np

from . import __version__
from ._blas import blas_info, blas_kernels

# SIMD features worth naming, in the order printed (those the CPU has).
SIMD_FEATURES = (
    "sse2",
    "sse4.2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512vnni",
    "avx512bf16",
    "avx512fp16",
    "amx-tile",
    "neon",
    "sve",
    "sve2",
)


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo, else what platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_info() -> dict[str, Any]:
    """CPU model, LLVM's name for it, core counts and SIMD features."""
    from llvmlite import binding as llvm

    features = llvm.get_host_cpu_features()
    enabled = sorted(name for name, on in features.items() if on)
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "model": cpu_model(),
        "llvm_name": llvm.get_host_cpu_name(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(affinity(0)) if affinity else os.cpu_count(),
        "simd": [name for name in SIMD_FEATURES if name in enabled],
        "features": enabled,
    }


def _threading_layers() -> dict[str, str | None]:
    """Each numba threading layer: None when it loads, else why it does not."""
    from numba.np.ufunc import parallel

    found: dict[str, str | None] = {}
    checks = {
        "tbb": lambda: (
            importlib.import_module("numba.np.ufunc.tbbpool"),
            parallel._check_tbb_version_compatible(),
        ),
        "omp": lambda: importlib.import_module("numba.np.ufunc.omppool"),
        "workqueue": lambda: importlib.import_module("numba.np.ufunc.workqueue"),
    }
    for name, load in checks.items():
        # Loading a layer's library starts no threads; numba may warn (an old TBB).
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                load()
                found[name] = str(caught[0].message) if caught else None
            except Exception as error:  # ImportError, or numba's own for an old TBB
                found[name] = f"{type(error).__name__}: {error}"
    return found


def _pick_layer(configured: str, priority: list[str], unavailable: dict[str, str | None]) -> str:
    """The layer numba's launcher would take for ``configured`` (see numba.np.ufunc.parallel)."""
    usable = [name for name in priority if unavailable.get(name) is None]
    if configured == "default":
        return usable[0] if usable else "none available"
    allowed = {
        "safe": ["tbb"],
        "threadsafe": ["tbb", "omp"],
        "forksafe": ["tbb", "omp", "workqueue"],  # GNU OpenMP is not fork-safe
    }.get(configured, [configured])
    if configured == "forksafe":
        omp_vendor = getattr(sys.modules.get("numba.np.ufunc.omppool"), "openmp_vendor", "")
        if omp_vendor == "GNU":
            allowed = ["tbb", "workqueue"]
    for name in usable:
        if name in allowed:
            return name
    return f"none available for {configured!r}"


def threading_info() -> dict[str, Any]:
    """Numba's threading layer (configured, available, chosen) and thread counts."""
    configured = str(numba.config.THREADING_LAYER)
    priority = list(numba.config.THREADING_LAYER_PRIORITY)
    layers = _threading_layers()
    try:
        in_use: str | None = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet in this process
        in_use = None
    env = ("NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    return {
        "configured": configured,
        "priority": priority,
        "available": {name: why is None for name, why in layers.items()},
        "unavailable_because": {name: why for name, why in layers.items() if why is not None},
        "would_use": _pick_layer(configured, priority, layers),
        "in_use": in_use,
        "threads": numba.get_num_threads(),
        "max_threads": numba.config.NUMBA_NUM_THREADS,
        "environment": {name: os.environ[name] for name in env if name in os.environ},
    }


def _writable(path: Path) -> bool:
    """Whether numba could write cache files into ``path`` (creating it if needed)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK)
    return False


def kernel_dispatchers() -> dict[str, Any]:
    """Every cached numba kernel in ``convgrad.kernels``, by "module.function"."""
    from . import kernels

    found = {}
    for module_info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"{kernels.__name__}.{module_info.name}")
        for name, value in vars(module).items():
            if isinstance(value, numba.core.dispatcher.Dispatcher) and getattr(
                value, "_cache", None
            ):
                found[f"{module_info.name}.{name}"] = value
    return found


def _index_stem(module: str, dispatcher: Any) -> str:
    """The stem numba gives a kernel's index file: module.qualname-firstline.pyXY."""
    code = dispatcher.py_func.__code__
    version = f"{sys.version_info[0]}{sys.version_info[1]}"
    return f"{module}.{dispatcher.py_func.__qualname__}-{code.co_firstlineno}.py{version}"


def cache_info() -> dict[str, Any]:
    """Where numba caches convgrad's kernels, whether it can write there, what is there."""
    dispatchers = kernel_dispatchers()
    directories: dict[str, dict[str, Any]] = {}
    for dispatcher in dispatchers.values():
        cache = dispatcher._cache  # numba's FunctionCache; its path is what the locator chose
        path = str(getattr(cache, "_cache_path", "unknown"))
        locator = type(getattr(getattr(cache, "_impl", None), "locator", None)).__name__
        directories.setdefault(path, {"path": path, "locator": locator})
    modules = {name.split(".", 1)[0] for name in dispatchers}
    current = {_index_stem(name.split(".", 1)[0], d) for name, d in dispatchers.items()}
    for entry in directories.values():
        path = Path(entry["path"])
        entry["exists"] = path.is_dir()
        entry["writable"] = _writable(path)
        index = []
        if path.is_dir():
            for nbi in sorted(path.glob("*.nbi")):
                module = nbi.name.split(".", 1)[0]
                if module in modules:
                    stem = nbi.name[: -len(".nbi")]
                    index.append(
                        {
                            "file": nbi.name,
                            "module": module,
                            "signatures": len(list(path.glob(f"{stem}.*.nbc"))),
                            # an index left by an older source (another line number)
                            "stale": stem not in current,
                            # a helper called from kernels (not run by the dispatch itself)
                            "helper": stem.split(".", 1)[1].startswith("_"),
                        }
                    )
        entry["index_files"] = index
    return {
        "numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR") or None,
        "kernels": sum(not name.split(".", 1)[1].startswith("_") for name in dispatchers),
        "directories": list(directories.values()),
    }


def collect() -> dict[str, Any]:
    """Everything ``convgrad info`` reports, as plain data."""
    blas = blas_info() | {"kernels": blas_kernels()}
    return {
        "versions": {
            "convgrad": __version__,
            "numba": numba.__version__,
            "llvmlite": llvmlite.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "cpu": cpu_info(),
        "threading": threading_info(),
        "cache": cache_info(),
        "blas": blas,
    }


def format_report(info: dict[str, Any]) -> str:
    """The text ``convgrad info`` prints for ``info`` (from :func:`collect`)."""
    v, cpu, th, cache = info["versions"], info["cpu"], info["threading"], info["cache"]
    lines = [
        f"convgrad {v['convgrad']}  numba {v['numba']}  llvmlite {v['llvmlite']}  "
        f"numpy {v['numpy']}  python {v['python']}",
        f"platform      {v['platform']}",
        f"cpu           {cpu['model']} (LLVM: {cpu['llvm_name']}), "
        f"{cpu['usable_cpus']} of {cpu['logical_cpus']} logical CPUs usable",
        f"simd          {' '.join(cpu['simd']) or 'none of ' + ', '.join(SIMD_FEATURES)}",
    ]
    available = [name for name, ok in th["available"].items() if ok]
    state = f"in use: {th['in_use']}" if th["in_use"] else f"would use: {th['would_use']}"
    lines.append(
        f"threading     {state} (configured {th['configured']!r}, priority "
        f"{', '.join(th['priority'])}; available: {', '.join(available) or 'none'})"
    )
    for name, why in th["unavailable_because"].items():
        lines.append(f"              {name} unavailable: {why}")
    lines.append(f"threads       {th['threads']} (numba pool size {th['max_threads']})")
    for name, value in th["environment"].items():
        lines.append(f"              {name}={value}")
    blas = info["blas"]
    lines.append(
        f"1x1 products  gemm at one BLAS thread each, on numba's threads ({blas['library']})"
        if blas["numba_threads"]
        else f"1x1 products  np.matmul, threaded by the BLAS library ({blas['why']})"
    )
    if blas["kernels"]:
        lines.append(f"blas kernels  {blas['kernels']}")
    source = cache["numba_cache_dir"]
    lines.append(
        "kernel cache  " + (f"NUMBA_CACHE_DIR={source}" if source else "NUMBA_CACHE_DIR not set")
    )
    for entry in cache["directories"]:
        state = "writable" if entry["writable"] else "NOT writable (kernels recompile each run)"
        lines.append(f"  {entry['path']}  [{entry['locator']}, {state}]")
        index = entry["index_files"]
        stale = sum(item["stale"] for item in index)
        kernels = sum(not item["stale"] and not item["helper"] for item in index)
        helpers = sum(not item["stale"] and item["helper"] for item in index)
        lines.append(
            f"  {kernels} of {cache['kernels']} kernels compiled and cached "
            f"(and {helpers} helpers they call)"
            + (f"; {stale} stale index files from older sources" if stale else "")
        )
        by_module: dict[str, list[dict[str, Any]]] = {}
        for item in index:
            by_module.setdefault(item["module"], []).append(item)
        for module, items in by_module.items():
            signatures = sum(item["signatures"] for item in items if not item["stale"])
            lines.append(
                f"    {module + '.py':<20} {sum(not i['stale'] for i in items):>3} index files "
                f"(.nbi), {signatures:>3} compiled signatures (.nbc)"
            )
    return "\n".join(lines)


def run(as_json: bool = False, stdout: TextIO | None = None) -> int:
    """Print the report (JSON with ``as_json``); returns 0."""
    out = sys.stdout if stdout is None else stdout
    info = collect()
    print(json.dumps(info, indent=2) if as_json else format_report(info), file=out)
    return 0
