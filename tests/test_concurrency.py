"""Threads and processes: concurrent calls neither abort nor change a single bit.

Whole-process behaviour (threading layers, fork, spawn, a cold cache shared by
several processes) runs in fresh interpreters; those tests are kept few and small.
"""

import hashlib
import json
import multiprocessing
import threading

import numba
import numpy as np
import pytest
from subprocess_helpers import MAKE_CASE, MIXED_CASES, run_python, start_python

import convgrad
from convgrad import _threading

exec(MAKE_CASE)  # defines make_case(case, dtype, seed)


def backward_bytes(case, dtype=np.float32, seed=0):
    g, x, w, opts = make_case(case, dtype, seed)  # noqa: F821 - from MAKE_CASE
    results = (*convgrad.conv2d_backward(g, x, w, **opts), convgrad.conv2d(x, w, **opts))
    return [r.tobytes() for r in results]


def digest(results):
    return hashlib.sha256(b"".join(b for r in results for b in r)).hexdigest()


def test_threading_layer_is_thread_and_fork_safe_here():
    layer = _threading.threading_layer()
    assert layer in ("tbb", "workqueue", "omp")
    if _threading.started_by_convgrad and not _threading.user_chose_layer():
        # convgrad asked for "forksafe": never GNU OpenMP on Linux
        assert layer != "omp" or not numba.np.ufunc.parallel._IS_LINUX
    guard = _threading.kernel_guard()
    assert (guard is _threading._kernel_lock) == (layer == "workqueue")


def test_threads_hammering_mixed_shapes_match_single_threaded():
    cases = [(case, dtype) for case in MIXED_CASES for dtype in (np.float32, np.float64)]
    expected = {k: backward_bytes(case, dtype) for k, (case, dtype) in enumerate(cases)}
    failures = []

    def hammer(worker):
        try:
            for step in range(6):
                for k in np.random.default_rng(worker * 100 + step).permutation(len(cases)):
                    case, dtype = cases[k]
                    if backward_bytes(case, dtype) != expected[k]:
                        failures.append((worker, case, dtype))
        except Exception as error:  # pragma: no cover - reported below
            failures.append((worker, repr(error)))

    threads = [threading.Thread(target=hammer, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


WORKQUEUE_HAMMER = (
    MAKE_CASE
    + """
import threading, convgrad
from convgrad import _threading
cases = __CASES__
want = [[r.tobytes() for r in convgrad.conv2d_backward(*make_case(c)[:3], **make_case(c)[3])]
        for c in cases]
bad = []
def hammer():
    for _ in range(4):
        for c, expected in zip(cases, want):
            g, x, w, opts = make_case(c)
            got = [r.tobytes() for r in convgrad.conv2d_backward(g, x, w, **opts)]
            bad.extend([c] if got != expected else [])
threads = [threading.Thread(target=hammer) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print(_threading.threading_layer(), len(bad))
"""
)


def test_workqueue_layer_is_serialised_not_aborted():
    """Numba's workqueue aborts on concurrent parallel calls; convgrad takes a lock instead."""
    code = WORKQUEUE_HAMMER.replace("__CASES__", repr(MIXED_CASES))
    done = run_python(code, env={"NUMBA_THREADING_LAYER": "workqueue"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["workqueue", "0"]


MANY_THREADS = (
    MAKE_CASE
    + """
import hashlib, json, numba, convgrad
cases = __CASES__
out = {}
for threads in (1, 3, 8):
    numba.set_num_threads(threads)
    parts = []
    for c in cases:
        for dtype in (np.float32, np.float64):
            g, x, w, opts = make_case(c, dtype)
            parts += [r.tobytes() for r in convgrad.conv2d_backward(g, x, w, **opts)]
            parts.append(convgrad.conv2d(x, w, **opts).tobytes())
    out[threads] = hashlib.sha256(b"".join(parts)).hexdigest()
print(json.dumps(out))
"""
)


def test_same_bits_for_1_3_and_8_threads_and_this_process():
    """Determinism guarantee: any thread count, any process (NUMBA_NUM_THREADS=8 on any box)."""
    done = run_python(
        MANY_THREADS.replace("__CASES__", repr(MIXED_CASES)), env={"NUMBA_NUM_THREADS": "8"}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    hashes = json.loads(done.stdout)
    parts = []
    for case in MIXED_CASES:
        for dtype in (np.float32, np.float64):
            parts += backward_bytes(case, dtype)
    here = hashlib.sha256(b"".join(parts)).hexdigest()
    assert set(hashes.values()) == {here}


def _pool_task(k):
    return digest([backward_bytes(MIXED_CASES[k])])


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_pools(method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    # The parent has used the kernels (and the thread pool) before the workers start.
    expected = [_pool_task(k) for k in range(len(MIXED_CASES))]
    context = multiprocessing.get_context(method)
    with context.Pool(2) as pool:
        got = pool.map(_pool_task, range(len(MIXED_CASES)))
    assert got == expected


COLD_CACHE = """
import sys, time, convgrad, numpy as np
from convgrad.kernels import nchw_flat, relayout
x = np.random.default_rng(0).standard_normal((28, 28, 1), dtype=np.float32)
w = np.random.default_rng(1).standard_normal((3, 3, 1, 6), dtype=np.float32)
g = np.random.default_rng(2).standard_normal((26, 26, 6), dtype=np.float32)
results = convgrad.conv2d_backward(g, x, w, layout="NHWC")
kernel = nchw_flat.backward_shifted_serial  # what the dispatch runs for the seed case
print(sum(kernel.stats.cache_hits.values()),
      sum(kernel.stats.cache_misses.values()),
      b"".join(r.tobytes() for r in results).hex())
"""


def test_processes_compiling_into_one_cold_cache(tmp_path):
    """Several processes compile the same kernels into one empty NUMBA_CACHE_DIR at once."""
    env = {"NUMBA_CACHE_DIR": str(tmp_path), "CONVGRAD_CACHE": None}
    procs = [start_python(COLD_CACHE, env) for _ in range(3)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
    assert len({out.split()[2] for out, _ in outputs}) == 1
    assert any(tmp_path.rglob("*.nbi")), "nothing was cached in NUMBA_CACHE_DIR"
    # A later process loads what they stored (a hit, no miss) and gets the same bits.
    later = run_python(COLD_CACHE, env=env)
    assert later.returncode == 0, later.stderr[-2000:]
    hits, misses, bits = later.stdout.split()
    assert (int(hits), int(misses)) == (1, 0)
    assert bits == outputs[0][0].split()[2]
