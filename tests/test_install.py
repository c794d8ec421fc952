"""Installs: the disk-cache decision, read-only installs, CONVGRAD_CACHE, warmup."""

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import numba
import pytest
from subprocess_helpers import run_python

import convgrad
from convgrad.kernels import _cache


@pytest.mark.parametrize("value", ["0", "false", "OFF", " no "])
def test_convgrad_cache_off_values(value):
    assert _cache.cache_decision({"CONVGRAD_CACHE": value}) == (False, f"CONVGRAD_CACHE={value}")


def test_cache_on_by_default_and_numba_cache_dir_honoured(tmp_path, monkeypatch):
    assert _cache.cache_decision({})[0]
    assert _cache.cache_decision({"CONVGRAD_CACHE": "1"})[0]
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))
    on, where = _cache.cache_decision({})
    assert on and Path(where).is_relative_to(tmp_path)


def test_no_writable_location_turns_the_cache_off(monkeypatch):
    def no_locator(func):
        raise RuntimeError("cannot cache function '_probe': no locator available")

    monkeypatch.setattr(_cache, "FunctionCache", no_locator)
    on, why = _cache.cache_decision({})
    assert not on and "no writable cache location" in why


def test_convgrad_cache_0_in_a_process(tmp_path):
    code = """
    import json, convgrad
    from convgrad.kernels import _cache, nchw, nhwc_depthwise, relayout
    kinds = {type(k._cache).__name__ for k in (nchw.grad_weight_nchw, relayout.nchw_to_nhwc,
             nhwc_depthwise.grad_input_nhwc_depthwise)}
    print(json.dumps([_cache.CACHE, sorted(kinds)]))
    """
    done = run_python(code, env={"CONVGRAD_CACHE": "0", "NUMBA_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == [False, ["NullCache"]]


def _readable_copy_of_the_package():
    """convgrad's sources copied to a fresh directory others may read; (root, package dir)."""
    root = Path(tempfile.mkdtemp(prefix="convgrad-ro-"))
    root.chmod(0o755)
    package = root / "convgrad"
    shutil.copytree(
        Path(convgrad.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    return root, package


def test_read_only_install_without_writable_cache_location():
    """A read-only copy of the package, run with no writable cache location at all.

    Writes are denied for real: every file and directory loses its write bits,
    and as root (whom permission bits do not stop) the child runs in its own
    mount namespace where the whole directory is a read-only bind mount.
    """
    root, package = _readable_copy_of_the_package()
    home = root / "home"
    home.mkdir()
    try:
        prefix = ()
        if os.geteuid() == 0:
            remount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
            prefix = ("unshare", "-m", "sh", "-c", remount, str(root))
            probe = run_python("pass", prefix=prefix)
            if probe.returncode != 0:
                pytest.skip(f"root, and no read-only bind mount here: {probe.stderr[-300:]}")
        for path in (package, *package.rglob("*"), home):
            mode = path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
            path.chmod(mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            if path.is_dir():
                path.chmod(path.stat().st_mode | 0o555)
        code = f"""
        import os, sys, tempfile
        sys.path.insert(0, {str(root)!r})
        for place in ({str(package)!r}, {str(home)!r}):
            try:
                tempfile.TemporaryFile(dir=place).close()
            except OSError:
                pass
            else:
                raise SystemExit(f"{{place}} is writable: the test would prove nothing")
        import numpy as np, convgrad
        from convgrad.kernels import _cache
        assert convgrad.__file__.startswith({str(root)!r}), convgrad.__file__
        gb = convgrad.conv2d_grad_bias(np.ones((2, 3, 3, 4), np.float32), layout="NHWC")
        print(_cache.CACHE, gb.tolist())
        """
        env = {
            "HOME": str(home),
            "NUMBA_CACHE_DIR": None,
            "XDG_CACHE_HOME": None,
            "CONVGRAD_CACHE": None,
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        done = run_python(code, env=env, cwd=str(home), prefix=prefix)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.split() == ["False", "[18.0,", "18.0,", "18.0,", "18.0]"]
    finally:
        for path in (root, *root.rglob("*")):
            path.chmod(0o755)
        shutil.rmtree(root)


def test_warmup_compiles_everything_later_calls_use():
    """After warmup() no call compiles: every kernel family, dtype, layout, memory layout, NaN."""
    code = """
    import numpy as np, convgrad
    from collections import Counter
    from convgrad import soak
    from convgrad.kernels import depthwise_tiles, nchw, nchw_depthwise, nchw_flat, nhwc
    from convgrad.kernels import nhwc_depthwise, relayout
    from numba.core.registry import CPUDispatcher

    def signatures():
        modules = (depthwise_tiles, nchw, nchw_depthwise, nchw_flat, nhwc, nhwc_depthwise)
        return {
            f"{module.__name__}.{name}": len(kernel.signatures)
            for module in (*modules, relayout)
            for name, kernel in vars(module).items() if isinstance(kernel, CPUDispatcher)
        }

    runs = convgrad.warmup()
    warm = signatures()
    rng, counts = np.random.default_rng(5), Counter()
    for _ in range(300):
        assert not soak.check_one(rng, counts)
    print(runs, warm == signatures(), sum(warm.values()), len(counts))
    """
    done = run_python(code)
    assert done.returncode == 0, done.stderr[-3000:]
    runs, same, compiled, kinds = done.stdout.split()
    assert (runs, same) == ("48", "True")
    assert int(compiled) > 20 and int(kinds) >= 8


def test_warmup_arguments():
    assert convgrad.warmup(dtypes=[], layouts=["NCHW"]) == 0
    with pytest.raises(ValueError, match="dtypes must hold float32 or float64 dtypes; got 'int8'"):
        convgrad.warmup(dtypes=["int8"])
    with pytest.raises(ValueError, match="layouts must hold 'NCHW' or 'NHWC'; got 'NCWH'"):
        convgrad.warmup(layouts=["NCWH"])
    with pytest.raises(TypeError, match="layouts must be a list; got 'NCHW'"):
        convgrad.warmup(layouts="NCHW")
    with pytest.raises(TypeError, match="dtypes must be a list; got None"):
        convgrad.warmup(dtypes=None)
    with pytest.raises(TypeError, match="forward must be a bool; got 1"):
        convgrad.warmup(forward=1)
