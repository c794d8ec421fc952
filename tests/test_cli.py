"""The command line runs the seed case, checks it and prints timings."""

import subprocess
import sys

from convgrad import cli


def test_seed_command_checks_and_times(capsys):
    assert cli.main(["seed", "--repeat", "5"]) == 0
    printed = capsys.readouterr().out
    for name in ("grad_input", "grad_weight", "grad_bias"):
        assert f"{name}" in printed
    assert "MISMATCH" not in printed
    assert "median" in printed and "127 us" in printed


def test_python_dash_m_runs_the_seed_case_by_default():
    done = subprocess.run(
        [sys.executable, "-m", "convgrad"], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "seed case" in done.stdout and " ok" in done.stdout


def test_version_flag(capsys):
    try:
        cli.main(["--version"])
    except SystemExit as stop:
        assert stop.code == 0
    assert "convgrad" in capsys.readouterr().out
