"""The command line runs the seed case, checks it and prints timings."""

import json
import subprocess
import sys

import pytest

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


@pytest.mark.parametrize("command", [[], ["seed"], ["bench"], ["check"], ["info"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([*command, "--help"])
    assert stop.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"usage: convgrad {' '.join(command)}".rstrip())
    assert "--help" in printed


def test_check_command_quick_from_the_console_script():
    done = subprocess.run(
        [sys.executable, "-m", "convgrad", "check", "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "24 random cases" in done.stdout and "all passed" in done.stdout
    assert done.stderr == ""  # no progress bar when stderr is not a terminal


def test_check_command_options(capsys):
    assert cli.main(["check", "--count", "3", "--seed", "7", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["cases"], report["seed"], report["quick"]) == (3, 7, False)
    with pytest.raises(SystemExit) as stop:
        cli.main(["check", "--count", "0"])
    assert stop.value.code == 2
    assert "--count must be at least 1" in capsys.readouterr().err


def test_info_command(capsys):
    assert cli.main(["info"]) == 0
    assert "threading" in capsys.readouterr().out
    assert cli.main(["info", "--json"]) == 0
    assert "cache" in json.loads(capsys.readouterr().out)
