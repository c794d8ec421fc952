"""`convgrad info`: versions, CPU, threading, and the kernel cache as numba really uses it."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np

import convgrad
from convgrad import info


def test_versions_cpu_and_threads():
    report = info.collect()
    assert report["versions"]["convgrad"] == convgrad.__version__
    assert report["versions"]["numba"] == numba.__version__
    assert report["versions"]["numpy"] == np.__version__
    cpu = report["cpu"]
    assert cpu["model"] and cpu["llvm_name"]
    assert set(cpu["simd"]) <= set(cpu["features"])
    threading = report["threading"]
    assert threading["threads"] == numba.get_num_threads()
    assert threading["max_threads"] == numba.config.NUMBA_NUM_THREADS
    assert threading["available"]["workqueue"]  # numba's fallback layer always builds
    assert threading["would_use"] in ("tbb", "omp", "workqueue")


def test_the_layer_numba_would_pick():
    layers = {"tbb": "ImportError: no libtbb", "omp": None, "workqueue": None}
    priority = ["tbb", "omp", "workqueue"]
    assert info._pick_layer("default", priority, layers) == "omp"
    assert info._pick_layer("default", ["workqueue", "omp"], layers) == "workqueue"
    assert info._pick_layer("workqueue", priority, layers) == "workqueue"
    assert info._pick_layer("threadsafe", priority, layers) == "omp"
    assert info._pick_layer("safe", priority, layers).startswith("none available")


def test_cache_directory_is_the_one_numba_uses():
    from convgrad.kernels import nchw

    cache = info.collect()["cache"]
    paths = [entry["path"] for entry in cache["directories"]]
    assert str(nchw.grad_input_nchw._cache._cache_path) in paths
    assert cache["kernels"] >= 10  # forward, grad_input, grad_weight, bias per layout, ...
    for entry in cache["directories"]:
        assert entry["writable"] is info._writable(Path(entry["path"]))


def test_writable(tmp_path):
    assert info._writable(tmp_path)
    assert info._writable(tmp_path / "not" / "yet" / "made")  # numba creates it
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert not info._writable(blocker / "cache")


def test_a_fresh_cache_directory_fills_as_kernels_compile(tmp_path):
    # In a fresh process with its own NUMBA_CACHE_DIR: nothing cached, then one
    # forward call compiles and caches exactly its kernels (and starts the pool).
    script = (
        "import json, sys, numpy as np, convgrad\n"
        "from convgrad import info\n"
        "before = info.collect()\n"
        "convgrad.conv2d(np.ones((1, 1, 12, 12)), np.ones((1, 1, 3, 3)))  # rows: NCHW\n"
        "print(json.dumps([before, info.collect()]))\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    before, after = json.loads(done.stdout)
    assert before["cache"]["numba_cache_dir"] == str(tmp_path)
    (entry,) = after["cache"]["directories"]
    assert Path(entry["path"]).is_relative_to(tmp_path)
    assert entry["locator"] == "UserProvidedCacheLocator" and entry["writable"]
    assert before["cache"]["directories"][0]["index_files"] == []
    cached = {item["file"].split("-")[0] for item in entry["index_files"]}
    assert "nchw.forward_nchw" in cached
    assert not any("grad_weight" in name for name in cached)
    assert all(item["signatures"] >= 1 and not item["stale"] for item in entry["index_files"])
    assert before["threading"]["in_use"] is None
    assert after["threading"]["in_use"] == after["threading"]["would_use"]


def test_text_and_json_reports():
    out = io.StringIO()
    assert info.run(stdout=out) == 0
    text = out.getvalue()
    for word in ("convgrad", "numba", "numpy", "python", "cpu", "simd", "threading", "threads"):
        assert word in text
    assert "kernel cache" in text and "kernels compiled and cached" in text
    kernels = info.collect()["blas"]["kernels"]
    assert (f"blas kernels  {kernels}" in text) if kernels else ("blas kernels" not in text)
    out = io.StringIO()
    assert info.run(as_json=True, stdout=out) == 0
    assert set(json.loads(out.getvalue())) == {"versions", "cpu", "threading", "cache", "blas"}
