"""convgrad bench: runs the suite's shapes, side by side with torch when present."""

import importlib.util
import json
from pathlib import Path

import pytest

from convgrad import _blas, bench, cli
from convgrad.suite import SUITE


def test_suite_shapes_match_the_benchmark_table():
    assert list(SUITE) == [
        "seed",
        "lenet2",
        "mnist_b64",
        "cifar_b32",
        "resnet_3x3",
        "resnet_s2",
        "pointwise",
        "depthwise",
        "big_kernel",
        "dilated",
        "resnet_3x3_f64",
    ]
    assert SUITE["seed"].out_size == 26 and SUITE["resnet_s2"].out_size == 14
    assert SUITE["seed"].flops == 4 * 1 * 6 * 26 * 26 * 1 * 9


def test_bench_json_without_torch(capsys):
    assert cli.main(["bench", "seed", "--rounds", "1", "--json", "--no-torch"]) == 0
    result = json.loads(capsys.readouterr().out)
    (row,) = result["rows"]
    assert row["shape"] == "seed" and row["convgrad_us"] > 0 and row["gflops"] > 0
    assert set(row["times_us"]) == {"convgrad NCHW", "convgrad NHWC"}
    assert "torch_us" not in row
    assert result["blas"] == _blas.blas_kernels()  # the kernels behind the GEMM peak


def test_peak_is_the_better_of_two_measurements(monkeypatch):
    # the first measurement disturbed (a busy neighbour), the second not
    rates = iter([50.0, 200.0])
    monkeypatch.setattr(bench, "gemm_peak_gflops", lambda dtype: next(rates))
    result = bench.run(["seed"], rounds=1, with_torch=False, progress=None)
    (row,) = result["rows"]
    assert result["gemm_peak_gflops"] == {"float32": 200.0}
    assert row["peak_percent"] == pytest.approx(100 * row["gflops"] / 200.0)


def test_bench_table_with_torch(capsys):
    pytest.importorskip("torch")
    assert cli.main(["bench", "seed", "--rounds", "1", "--threads", "1"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| shape | convgrad µs")
    assert "| seed |" in table and "1 threads" in table and "speed-up" in table


def test_bench_with_the_numpy_reference(capsys):
    assert cli.main(["bench", "lenet2", "--rounds", "1", "--no-torch", "--reference"]) == 0
    table = capsys.readouterr().out
    header, _, row = table.splitlines()[:3]
    assert "NumPy reference µs" in header and row.startswith("| lenet2 |")
    assert header.count("|") == row.count("|")
    kernels = _blas.blas_kernels()
    footer = table.splitlines()[-1]
    assert (f"GEMM peak (NumPy BLAS: {kernels})" if kernels else "GEMM peak (NumPy BLAS)") in footer


def test_unknown_shape_is_refused(capsys):
    assert bench.main(["nope"], rounds=1, threads=None, as_json=False, with_torch=False) == 2
    assert "unknown shape(s) nope" in capsys.readouterr().err


def test_thread_scaling_runs_bench_per_count_and_tabulates(tmp_path):
    """tools/thread_scaling.py: one bench process per thread count, one table row per shape."""
    tool = Path(__file__).resolve().parents[1] / "tools" / "thread_scaling.py"
    spec = importlib.util.spec_from_file_location("thread_scaling", tool)
    scaling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scaling)
    raw = tmp_path / "runs.json"
    assert scaling.main(["seed", "--threads", "1", "--rounds", "1", "--json-out", str(raw)]) == 0
    runs = {int(count): run for count, run in json.loads(raw.read_text()).items()}
    assert list(runs) == [1] and runs[1]["threads"] == 1
    runs[2] = json.loads(json.dumps(runs[1]))
    runs[2]["rows"][0]["convgrad_us"] = runs[1]["rows"][0]["convgrad_us"] / 2
    table = scaling.format_tables(runs)
    header, _, row = table.splitlines()[:3]
    assert header == "| shape | 1 thr µs | 2 thr µs | scaling 1→2 |"
    assert row.startswith("| seed |") and row.endswith("| 2.0× |")
