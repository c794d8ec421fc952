"""`convgrad check`: covers every kernel path, passes on the real kernels, fails on a wrong one."""

import io
import json
import math

import numpy as np
import pytest

import convgrad._api
from convgrad import check
from convgrad._dispatch import KernelChoice


def run_check(**kwargs):
    out = io.StringIO()
    status = check.run(stdout=out, progress=False, **kwargs)
    return status, out.getvalue()


def test_quick_check_passes_and_exercises_every_family():
    status, printed = run_check(count=4 * len(check.TARGETS), quick=True)
    assert status == 0, printed
    assert "all passed" in printed and "MISMATCH" not in printed
    table = [line.split() for line in printed.splitlines()]
    families = {row[0] for row in table if row and row[0] in check.FAMILIES.values()}
    assert families == set(check.FAMILIES.values())
    assert "not exercised" not in printed


def test_every_target_lands_on_its_path():
    # The generator redraws until the dispatch agrees; a miss would mean a path goes unchecked.
    for case in check.make_cases(48, seed=5, quick=True):
        problem = case.problem()
        assert check.TARGETS[case.target](problem, check.family_of(problem)), case


def test_cases_cover_the_options():
    cases = check.make_cases(240, seed=0)
    assert {c.layout for c in cases} == {"NCHW", "NHWC"}
    assert {c.dtype for c in cases} == {"float32", "float64"}
    assert {c.batched for c in cases} == {True, False}
    assert any(max(c.stride) > 1 for c in cases)
    assert any(max(c.dilation) > 1 for c in cases)
    assert any(c.padding[0] != c.padding[1] or c.padding[2] != c.padding[3] for c in cases)
    assert any(c.groups > 1 and c.c_out > c.groups for c in cases)  # grouped, not depthwise


def test_cases_are_reproducible_from_the_seed():
    assert check.make_cases(12, seed=3) == check.make_cases(12, seed=3)
    assert check.make_cases(12, seed=3) != check.make_cases(12, seed=4)


def plant_wrong_kernel(monkeypatch, family, operation):
    """Make the dispatch's ``operation`` kernels of ``family`` add 1 to one result entry."""
    real_select = convgrad._api.select_kernel

    def select(op, problem):
        choice = real_select(op, problem)
        if op != operation or check.family_of(problem, op) != family:
            return choice

        def wrong(*args):
            choice.kernel(*args)
            args[2].reshape(-1)[-1] += 1.0  # every kernel's third argument is its result

        return KernelChoice(wrong, choice.layout, choice.args, choice.exact)

    monkeypatch.setattr(convgrad._api, "select_kernel", select)


@pytest.mark.parametrize(
    "family, operation",
    [
        ("gemm", "grad_input"),
        ("flat", "grad_weight"),
        ("rows", "grad_input"),
        ("channels", "grad_weight"),
        ("depthwise", "grad_input"),
        ("rows", "forward"),
    ],
)
def test_a_wrong_kernel_fails_the_check_on_its_path_only(monkeypatch, family, operation):
    plant_wrong_kernel(monkeypatch, family, operation)
    status, printed = run_check(count=4 * len(check.TARGETS), quick=True)
    assert status == 1
    assert f"MISMATCH [{family}]" in printed or operation == "forward"
    assert f" {operation} " in printed.split("MISMATCH [", 1)[1]
    for line in printed.splitlines():
        if line.startswith(("gemm ", "flat ", "rows ", "channels ", "depthwise ")):
            cases, passed = (int(v) for v in line.split()[3:5])
            if operation != "forward":  # forward's family may differ from the gradients'
                assert (passed < cases) == line.startswith(f"{family} "), line


def test_check_json_reports_the_same(monkeypatch):
    out = io.StringIO()
    assert check.run(count=6, quick=True, as_json=True, stdout=out, progress=False) == 0
    report = json.loads(out.getvalue())
    assert report["cases"] == report["passed"] == 6
    assert sum(row["cases"] for row in report["paths"]) == 6
    assert report["mismatches"] == []
    plant_wrong_kernel(monkeypatch, "gemm", "grad_weight")
    out = io.StringIO()
    assert check.run(count=24, quick=True, as_json=True, stdout=out, progress=False) == 1
    report = json.loads(out.getvalue())
    assert report["mismatches"] and {m["family"] for m in report["mismatches"]} == {"gemm"}
    assert report["mismatches"][0]["error_ratios"]["grad_weight"] > 1


def test_progress_bar_only_on_a_terminal(capsys):
    run_check(count=2, quick=True)  # progress=False
    assert capsys.readouterr().err == ""
    check.run(count=2, quick=True, stdout=io.StringIO())  # default: stderr is not a TTY here
    assert capsys.readouterr().err == ""
    check.run(count=2, quick=True, stdout=io.StringIO(), progress=True)
    err = capsys.readouterr().err
    assert "\r[" in err and "2/2" in err


def test_error_ratio():
    want = np.array([1.0, -2.0])
    assert check.error_ratio(want.astype(np.float32), want, 1e-5, 0.0) == 0.0
    assert check.error_ratio(np.array([1.0, -1.0]), want, 0.0, 0.5) == pytest.approx(2.0)
    assert check.error_ratio(np.array([np.nan, -2.0]), want, 1e-5, 1e-5) == math.inf
    assert check.error_ratio(np.zeros(3), want, 1e-5, 1e-5) == math.inf
