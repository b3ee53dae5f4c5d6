"""Shared fixtures: features of real mnist5k digits (the network and the digits: tests/conftest.py).

Feature passes are the slow part, so they run once per session on small, fixed subsets.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch



@pytest.fixture(scope="session")
def real_halves(digits, mnist_train):
    """Features of two disjoint random halves (1000 each) of mnist5k/train.

    mnist5k is stored sorted by digit, so the halves are drawn at random, not sliced.
    """
    x, _ = mnist_train
    idx = np.random.default_rng(0).permutation(len(x))[:2000]
    f = digits.extract(x[idx])
    return f[:1000], f[1000:]


@pytest.fixture(scope="session")
def noise_features(digits):
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (1000, 1, 28, 28), dtype=torch.uint8, generator=g)
    return digits.extract(noise)
