"""Train a small CNN on scikit-learn's handwritten digits, with convgrad for the convolutions.

The network (NCHW, float32)::

    8x8 image -> conv 1->8, 3x3, pad 1 -> ReLU -> max-pool 2x2
              -> conv 8->16, 3x3, pad 1 -> ReLU -> max-pool 2x2
              -> dense 64->10 -> softmax cross-entropy

The two convolutions are :class:`convgrad.Conv2d` layers; everything else is
NumPy written out below. The data (1,797 images, 8x8 pixels, 0-16) ship with
scikit-learn, so nothing is downloaded. Training uses Adam on mini-batches,
prints one line per epoch and saves a PNG with the loss and accuracy curves and
the first layer's learned filters.

Run ``python examples/train_digits.py --help`` for the options. The network's
pieces (``Net``, ``MaxPool2``, ``Dense``, ``softmax_cross_entropy``, ...) are
importable; the tests check the whole network's gradient with them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import convgrad


def load_digits_split(
    seed: int = 0, dtype: type = np.float32
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): images (N, 1, 8, 8) in [0, 1], stratified 80/20."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(dtype)[:, np.newaxis]  # (N, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, random_state=seed, stratify=digits.target
    )
    return x_train, y_train, x_test, y_test


class ReLU:
    """max(x, 0); backward passes the gradient where x was positive."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        """ReLU of ``x``; keeps where it was positive."""
        self.positive = x > 0
        return np.where(self.positive, x, 0).astype(x.dtype, copy=False)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """The gradient with respect to the last forward's input."""
        return np.where(self.positive, grad, 0).astype(grad.dtype, copy=False)


class MaxPool2:
    """2x2 max-pooling with stride 2 over NCHW images (H and W even)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The pooled images; keeps which entry of each window was the maximum."""
        n, c, h, w = x.shape
        windows = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
        windows = windows.reshape(n, c, h // 2, w // 2, 4)
        self.argmax = windows.argmax(axis=-1)  # the first maximum takes the gradient
        self.shape = x.shape
        return np.take_along_axis(windows, self.argmax[..., np.newaxis], axis=-1)[..., 0]

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """The gradient routed to each window's maximum."""
        n, c, h, w = self.shape
        windows = np.zeros((n, c, h // 2, w // 2, 4), grad.dtype)
        np.put_along_axis(windows, self.argmax[..., np.newaxis], grad[..., np.newaxis], axis=-1)
        windows = windows.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5)
        return windows.reshape(n, c, h, w)


class Dense:
    """x @ weight + bias on flattened inputs, PyTorch's initialisation (uniform ±1/√fan_in)."""

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator, dtype: type) -> None:
        bound = 1.0 / np.sqrt(n_in)
        self.weight = rng.uniform(-bound, bound, (n_in, n_out)).astype(dtype)
        self.bias = rng.uniform(-bound, bound, n_out).astype(dtype)
        self.grad_weight = np.zeros_like(self.weight)
        self.grad_bias = np.zeros_like(self.bias)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` (N, ...) flattened to (N, n_in), times the weight, plus the bias."""
        self.shape = x.shape
        self.x = x.reshape(len(x), -1)
        return self.x @ self.weight + self.bias

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """Adds into the parameter gradients; returns the input's gradient, unflattened."""
        self.grad_weight += self.x.T @ grad
        self.grad_bias += grad.sum(axis=0)
        return (grad @ self.weight.T).reshape(self.shape)

    def zero_grad(self) -> None:
        """Zero the accumulated gradients."""
        self.grad_weight[...] = 0
        self.grad_bias[...] = 0

    def parameters(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(parameter, gradient) pairs."""
        return [(self.weight, self.grad_weight), (self.bias, self.grad_bias)]


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient."""
    shifted = logits - logits.max(axis=1, keepdims=True)  # no overflow in exp
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    loss = -log_probs[rows, labels].mean()
    grad = np.exp(log_probs)
    grad[rows, labels] -= 1.0
    return float(loss), (grad / len(labels)).astype(logits.dtype, copy=False)


class Net:
    """conv → ReLU → pool → conv → ReLU → pool → dense, on (N, 1, 8, 8) images."""

    def __init__(self, seed: int = 0, dtype: type = np.float32, channels: int = 8) -> None:
        rng = np.random.default_rng(seed)
        conv = {"kernel_size": 3, "padding": 1, "dtype": dtype, "rng": rng}
        self.conv1 = convgrad.Conv2d(1, channels, **conv)
        self.conv2 = convgrad.Conv2d(channels, 2 * channels, **conv)
        self.dense = Dense(2 * channels * 2 * 2, 10, rng, dtype)
        self.layers = [
            self.conv1,
            ReLU(),
            MaxPool2(),
            self.conv2,
            ReLU(),
            MaxPool2(),
            self.dense,
        ]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits (N, 10) of images ``x`` (N, 1, 8, 8)."""
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """Backpropagate the logits' gradient; returns the input's gradient."""
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        return grad

    def loss(self, x: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
        """Forward pass and loss: (loss, gradient with respect to the logits)."""
        return softmax_cross_entropy(self.forward(x), labels)

    def parameters(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every (parameter, gradient) pair."""
        return self.conv1.parameters() + self.conv2.parameters() + self.dense.parameters()

    def zero_grad(self) -> None:
        """Zero every accumulated gradient."""
        for layer in (self.conv1, self.conv2, self.dense):
            layer.zero_grad()

    def predict(self, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Predicted labels of ``x``."""
        batches = [self.forward(x[k : k + batch_size]) for k in range(0, len(x), batch_size)]
        return np.concatenate(batches).argmax(axis=1)


class Adam:
    """Adam (Kingma & Ba), updating the parameters in place."""

    def __init__(
        self,
        parameters: list[tuple[np.ndarray, np.ndarray]],
        lr: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.parameters = parameters
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = [np.zeros_like(p) for p, _ in parameters]
        self.v = [np.zeros_like(p) for p, _ in parameters]
        self.t = 0

    def step(self) -> None:
        """One update from the gradients held beside the parameters."""
        self.t += 1
        b1, b2 = self.betas
        for (param, grad), m, v in zip(self.parameters, self.m, self.v, strict=True):
            m *= b1
            m += (1 - b1) * grad
            v *= b2
            v += (1 - b2) * grad * grad
            m_hat = m / (1 - b1**self.t)
            v_hat = v / (1 - b2**self.t)
            param -= (self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(param.dtype)


def train(
    epochs: int = 15,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 0.01,
    log=print,
) -> tuple[Net, dict[str, list[float]]]:
    """Train a :class:`Net`; returns it and the per-epoch history."""
    x_train, y_train, x_test, y_test = load_digits_split(seed)
    net = Net(seed)
    optimiser = Adam(net.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    history: dict[str, list[float]] = {
        "loss": [],
        "test_loss": [],
        "train_acc": [],
        "test_acc": [],
        "seconds": [],
    }
    log(
        f"digits: {len(x_train)} training and {len(x_test)} test images, 8x8; "
        f"{epochs} epochs, batches of {batch_size}, Adam lr {lr}, seed {seed}"
    )
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x_train))
        losses = []
        for k in range(0, len(order), batch_size):
            batch = order[k : k + batch_size]
            net.zero_grad()
            loss, grad = net.loss(x_train[batch], y_train[batch])
            net.backward(grad)
            optimiser.step()
            losses.append(loss * len(batch))
        history["loss"].append(sum(losses) / len(order))
        history["test_loss"].append(net.loss(x_test, y_test)[0])
        history["train_acc"].append(float((net.predict(x_train) == y_train).mean()))
        history["test_acc"].append(float((net.predict(x_test) == y_test).mean()))
        history["seconds"].append(time.perf_counter() - start)
        log(
            f"epoch {epoch:>2}/{epochs}  loss {history['loss'][-1]:.4f}  "
            f"train acc {100 * history['train_acc'][-1]:5.1f} %  "
            f"test acc {100 * history['test_acc'][-1]:5.1f} %  "
            f"{history['seconds'][-1]:5.1f} s"
        )
    return net, history


def plot(history: dict[str, list[float]], net: Net, path: str | Path) -> None:
    """Save the loss and accuracy curves and the first layer's filters as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = np.arange(1, len(history["loss"]) + 1)
    filters = net.conv1.weight[:, 0]  # (8, 3, 3)
    figure = plt.figure(figsize=(11, 3.6))
    columns = (len(filters) + 1) // 2
    grid = figure.add_gridspec(2, 2 + columns, width_ratios=[3, 3] + [1] * columns)
    loss_axes = figure.add_subplot(grid[:, 0])
    loss_axes.plot(epochs, history["loss"], marker="o", label="train (epoch mean)")
    loss_axes.plot(epochs, history["test_loss"], marker="o", label="test")
    loss_axes.set(title="cross-entropy loss", xlabel="epoch", yscale="log")
    loss_axes.legend(loc="upper right", fontsize=8)
    acc_axes = figure.add_subplot(grid[:, 1])
    acc_axes.plot(epochs, 100 * np.array(history["train_acc"]), marker="o", label="train")
    acc_axes.plot(epochs, 100 * np.array(history["test_acc"]), marker="o", label="test")
    acc_axes.axhline(95, color="grey", linestyle=":", linewidth=1)
    lowest = min(history["train_acc"] + history["test_acc"])
    acc_axes.set(title="accuracy (%)", xlabel="epoch", ylim=(min(80, 100 * lowest - 2), 100.5))
    for axes in (loss_axes, acc_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc_axes.legend(loc="lower right", fontsize=8)
    limit = float(np.abs(filters).max())
    for k, kernel in enumerate(filters):
        axes = figure.add_subplot(grid[k // columns, 2 + k % columns])
        axes.imshow(kernel, cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_title(f"filter {k}", fontsize=8)
    figure.suptitle(
        f"convgrad: digits CNN, test accuracy {100 * history['test_acc'][-1]:.1f} % "
        f"after {len(epochs)} epochs ({history['seconds'][-1]:.1f} s)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train, print progress, save the plot."""
    parser = argparse.ArgumentParser(
        description="Train a small CNN (conv-ReLU-pool twice, then dense) on scikit-learn's "
        "8x8 handwritten digits, with convgrad.Conv2d for the convolutions and NumPy for "
        "the rest; print progress per epoch and save a PNG of the curves and filters."
    )
    parser.add_argument("--epochs", type=int, default=15, help="passes over the data (default 15)")
    parser.add_argument("--seed", type=int, default=0, help="seed: split, init, order (default 0)")
    parser.add_argument(
        "--out", default="train_digits.png", help="PNG to write (default train_digits.png)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default 32)")
    parser.add_argument(
        "--lr", type=float, default=0.01, help="Adam's learning rate (default 0.01)"
    )
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1; got {args.epochs}")
    start = time.perf_counter()
    net, history = train(args.epochs, args.seed, args.batch_size, args.lr)
    plot(history, net, args.out)
    print(
        f"test accuracy {100 * history['test_acc'][-1]:.1f} % after {args.epochs} epochs; "
        f"{time.perf_counter() - start:.1f} s in all (first epoch includes compiling or "
        f"loading convgrad's kernels); plot saved to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
