"""The examples run, and the digits network's gradient matches finite differences."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits():
    return load_example("train_digits")


def run_script(name, *args, cwd):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_train_digits_runs_one_epoch_and_saves_the_plot(tmp_path):
    png = tmp_path / "curves.png"
    printed = run_script(
        "train_digits", "--epochs", "1", "--seed", "3", "--out", str(png), cwd=tmp_path
    )
    assert "epoch  1/1" in printed and "test acc" in printed
    assert f"plot saved to {png}" in printed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_train_digits_help_and_bad_epochs(tmp_path):
    printed = run_script("train_digits", "--help", cwd=tmp_path)
    for option in ("--epochs", "--seed", "--out"):
        assert option in printed
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "train_digits.py"), "--epochs", "0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 2 and "--epochs must be at least 1" in done.stderr


def test_whole_network_gradient_matches_finite_differences(digits):
    x_train, y_train, _, _ = digits.load_digits_split(seed=0, dtype=np.float64)
    rng = np.random.default_rng(1)
    # A little noise: no exact ties in the max-pool windows (where max has no derivative).
    x = x_train[:4] + 0.01 * rng.standard_normal(x_train[:4].shape)
    labels = y_train[:4]
    net = digits.Net(seed=2, dtype=np.float64)
    net.zero_grad()
    _, grad_logits = net.loss(x, labels)
    grad_x = net.backward(grad_logits)
    named = {
        "conv1.weight": (net.conv1.weight, net.conv1.grad_weight),
        "conv1.bias": (net.conv1.bias, net.conv1.grad_bias),
        "conv2.weight": (net.conv2.weight, net.conv2.grad_weight),
        "conv2.bias": (net.conv2.bias, net.conv2.grad_bias),
        "dense.weight": (net.dense.weight, net.dense.grad_weight),
        "dense.bias": (net.dense.bias, net.dense.grad_bias),
        "input": (x, grad_x),
    }
    assert len(net.parameters()) == 6
    eps = 1e-6
    for name, (array, grad) in named.items():
        flat = array.reshape(-1)
        picks = rng.choice(flat.size, size=min(flat.size, 40), replace=False)
        numeric = np.empty(len(picks))
        for k, index in enumerate(picks):
            keep = flat[index]
            flat[index] = keep + eps
            plus = net.loss(x, labels)[0]
            flat[index] = keep - eps
            minus = net.loss(x, labels)[0]
            flat[index] = keep
            numeric[k] = (plus - minus) / (2 * eps)
        analytic = grad.reshape(-1)[picks]
        assert np.abs(analytic).max() > 1e-4, name  # a gradient that is not all zero
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8, err_msg=name)


def test_max_pool_routes_the_gradient_to_the_maximum(digits):
    pool = digits.MaxPool2()
    x = np.array([[[[1.0, 5.0, 2.0, 0.0], [3.0, 4.0, 7.0, 1.0]]]])  # (1, 1, 2, 4)
    np.testing.assert_array_equal(pool.forward(x), [[[[5.0, 7.0]]]])
    grad = pool.backward(np.array([[[[10.0, 20.0]]]]))
    np.testing.assert_array_equal(grad, [[[[0, 10, 0, 0], [0, 0, 20, 0]]]])


def test_training_reaches_95_percent(digits):
    _, history = digits.train(epochs=15, seed=0, log=lambda line: None)
    assert history["test_acc"][-1] >= 0.95
    assert history["loss"][-1] < history["loss"][0]


def test_seed_notebook_agrees_and_prints_the_table(tmp_path):
    printed = run_script("seed_notebook", "--repeat", "3", "--budget", "0", cwd=tmp_path)
    assert "MISMATCH" not in printed
    assert printed.count("  ok  ") == 5  # four ports and convgrad
    for row in ("notebook v1, Julia (its machine)", "notebook v5, Julia (its machine)"):
        assert row in printed
    assert "2,858.0" in printed and "126.9" in printed
    timed = [line for line in printed.splitlines() if line.startswith(("v1 ", "v5 ", "convgrad."))]
    assert len(timed) == 5 and all(line.split()[-3] == "3" for line in timed)  # calls column


def test_the_notebooks_v1_as_written_gets_grad_input_wrong():
    # Why the port flips the gradient in v1 (as the notebook's v2 does): unflipped,
    # grad_input is a correlation; grad_weight and grad_bias are right either way.
    seed = load_example("seed_notebook")
    from convgrad.cli import seed_case
    from convgrad.reference import conv2d_backward_reference

    gradient, image, weights = seed_case()
    want = conv2d_backward_reference(
        *(a.astype(np.float64) for a in (gradient, image, weights)), layout="NHWC"
    )
    for flip, input_right in ((True, True), (False, False)):
        v1, v5 = seed.build(lambda function: function, flip_in_v1=flip)
        got = v1(image, weights, gradient)
        assert (seed.max_error(got[:1], want[:1]) < 1e-5) is input_right
        assert seed.max_error(got[1:], want[1:]) < 1e-5
        assert seed.max_error(v5(image, weights, gradient), want) < 1e-5
