"""The asv suite's shapes and the performance gate's pure helpers.

The benchmarks keep their own copy of the suite's shapes (so that their
definitions never change with the package they measure); these tests keep that
copy equal to ``convgrad.suite``, and test the gate's parsing of asv's output.
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convgrad.suite import SUITE

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import (  # noqa: E402
    SHAPES,
    SUITE_NAMES,
    memory_budget_bytes,
    working_memory_bytes,
)


def load_gate():
    spec = importlib.util.spec_from_file_location("perf_gate", ROOT / "tools" / "perf_gate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gate = load_gate()


def test_benchmark_shapes_match_the_suite():
    assert list(SUITE) == SUITE_NAMES
    for name in SUITE_NAMES:
        shape = SHAPES[name]
        ours = SUITE[name]
        assert shape.dtype == np.dtype(ours.dtype).name
        assert shape[:9] == tuple(ours)[:9]
        assert shape.flops == ours.flops
        assert shape.out_size == ours.out_size


def test_working_memory_counts_temporaries_not_results():
    def call():
        scratch = np.ones(1_000_000)  # 8 MB working memory
        return np.zeros(10) + scratch[:10]

    assert 7.5e6 < working_memory_bytes(call) < 8.5e6
    assert working_memory_bytes(lambda: np.zeros(1_000_000)) < 100_000


def test_memory_budget_is_a_quarter_or_4_mib():
    small = np.zeros(10)
    assert memory_budget_bytes(small, small) == 4 * 2**20
    big = np.zeros(2**21)  # 16 MiB each
    assert memory_budget_bytes(big, big) == 8 * 2**20


# A table as ``asv continuous`` prints it (columns narrowed).
ASV_TABLE = """
| Change   | Before [d0c069e9]   | After [3c9d7312]   |   Ratio | Benchmark (Parameter)   |
|----------|---------------------|--------------------|---------|-------------------------|
| +        | 21.8±0.3μs          | 33.1±0.6μs         |    1.52 | gi.GI.time_gi('seed', 'NCHW') |
| -        | 4.37±0.6ms          | 3.59±0.5ms         |    0.82 | gw.GW.time_gw('cifar', 'NHWC') |
|          | 7.22±1ms            | 9.99±2ms           |   ~1.38 | bw.BW.time_bw('cifar', 'NHWC') |
"""


def test_gate_flags_only_significant_slowdowns():
    assert gate.flagged(ASV_TABLE) == ["gi.GI.time_gi('seed', 'NCHW')"]
    assert gate.flagged("BENCHMARKS NOT SIGNIFICANTLY CHANGED.") == []


def test_gate_regex_matches_exactly_its_names():
    names = gate.gate_names()
    assert len(names) == len(set(names)) >= 30
    pattern = re.compile(gate.exact_regex(names))
    assert all(pattern.search(name) for name in names)
    assert not pattern.search("grad_input.GradInput.time_grad_input('seed', 'NCHW')x")
    assert not pattern.search("backward.Backward.time_backward('resnet_3x3', 'NCHW')")


def test_gate_names_are_benchmarks_of_the_suite():
    from benchmarks.backward import Backward, BackwardNoBias
    from benchmarks.grad_bias import GradBias
    from benchmarks.grad_input import GradInput
    from benchmarks.grad_weight import GradWeight

    classes = {
        "grad_input.GradInput": GradInput,
        "grad_weight.GradWeight": GradWeight,
        "grad_bias.GradBias": GradBias,
        "backward.Backward": Backward,
        "backward.BackwardNoBias": BackwardNoBias,
    }
    for name in gate.gate_names():
        match = re.fullmatch(r"(\w+\.\w+)\.(\w+)\('(\w+)', '(\w+)'\)", name)
        cls = classes[match[1]]
        assert hasattr(cls, match[2])
        assert match[3] in cls.params[0] and match[4] in cls.params[1]


def test_gate_reads_the_acceptance_trailer(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "base")
    message = "Slower but exact\n\nPerf-regression-accepted: exact sums cost 1.3x on seed"
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", message)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "next")
    monkey = pytest.MonkeyPatch()
    monkey.chdir(tmp_path)
    try:
        reasons = gate.accepted_reasons("HEAD~2", "HEAD")
        assert len(reasons) == 1 and reasons[0].endswith("exact sums cost 1.3x on seed")
        assert gate.accepted_reasons("HEAD~1", "HEAD") == []
        assert gate.resolve("HEAD~5") is None
    finally:
        monkey.undo()


def test_gate_without_a_base_commit_passes(tmp_path, monkeypatch, capsys):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "first",
        ],
        cwd=tmp_path,
        check=True,
    )
    monkeypatch.chdir(tmp_path)
    assert gate.main(["--asv", "false"]) == 0
    assert "nothing to gate" in capsys.readouterr().out
