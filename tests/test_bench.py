"""convgrad bench: runs the suite's shapes, side by side with torch when present."""

import json

import pytest

from convgrad import bench, cli
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


def test_unknown_shape_is_refused(capsys):
    assert bench.main(["nope"], rounds=1, threads=None, as_json=False, with_torch=False) == 2
    assert "unknown shape(s) nope" in capsys.readouterr().err
