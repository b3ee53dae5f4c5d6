"""FID and KID on feature matrices, in float64.

- FID (Heusel et al. 2017, arXiv:1706.08500, eq. 6):
  ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``, computed as the reference
  pytorch-fid does (scipy ``sqrtm``, eps fallback, small imaginary parts dropped).
- KID (Binkowski et al. 2018, arXiv:1801.01401, sec. 3): the unbiased MMD^2 with the cubic
  polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets.

Both are biased by the sample size n (FID strongly), so a score is comparable only with
scores at the same n and feature network; :mod:`difflab.metrics.evaluate` attaches both.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg

__all__ = ["FeatureStats", "frechet_distance", "kernel_inception_distance"]


class FeatureStats:
    """Streaming mean and covariance of features in float64.

    Holds the count, the running mean and the sum of centered outer products
    (Chan et al.'s pairwise update), so memory is O(D^2) whatever the number of samples,
    and the result does not lose precision when features have a large mean (as the naive
    ``sum(x x^T) - n mu mu^T`` does). Two accumulators ``merge`` exactly (e.g. across ranks).
    """

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.count = 0
        self._mean = np.zeros(dim, dtype=np.float64)
        self._m2 = np.zeros((dim, dim), dtype=np.float64)  # sum of (x - mean)(x - mean)^T

    @classmethod
    def from_features(cls, features: np.ndarray) -> FeatureStats:
        features = np.asarray(features)
        if features.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {features.shape}")
        stats = cls(features.shape[1])
        stats.update(features)
        return stats

    def update(self, features: np.ndarray) -> FeatureStats:
        """Add a batch (N, D) of features."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (N, {self.dim}), got {x.shape}")
        n_b = x.shape[0]
        if n_b == 0:
            return self
        mean_b = x.mean(axis=0)
        xc = x - mean_b
        m2_b = xc.T @ xc
        self._combine(n_b, mean_b, m2_b)
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Fold another accumulator (same dim) into this one."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge stats of dim {other.dim} into dim {self.dim}")
        if other.count:
            self._combine(other.count, other._mean, other._m2)
        return self

    def _combine(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (n_a * n_b / n)
        self.count = n

    def mean(self) -> np.ndarray:
        if self.count < 1:
            raise ValueError("no features accumulated")
        return self._mean.copy()

    def cov(self) -> np.ndarray:
        """Unbiased covariance (divides by n - 1), like ``np.cov(x, rowvar=False)``."""
        if self.count < 2:
            raise ValueError(f"the covariance needs at least 2 samples, got {self.count}")
        return self._m2 / (self.count - 1)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    Follows the reference implementation (pytorch-fid ``calculate_frechet_distance``): if
    ``sqrtm(sigma1 @ sigma2)`` is not finite, ``eps`` is added to both diagonals; a complex
    result whose diagonal has imaginary parts > 1e-3 raises, smaller ones are dropped.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different shapes: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"covariances must be ({mu1.size}, {mu1.size}), got {sigma1.shape} and {sigma2.shape}"
        )

    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"FID: singular product of covariances; adding {eps} to the diagonals", stacklevel=2
        )
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise ValueError(f"FID: imaginary component {m} in sqrtm(sigma1 @ sigma2)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _mmd2_unbiased_cubic(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size samples with k(a, b) = (a.b / d + 1)^3."""
    m, d = x.shape

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        k = a @ b.T
        k /= d
        k += 1.0
        return k * k * k

    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    sum_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    sum_yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(sum_xx + sum_yy - 2.0 * k_xy.mean())


def kernel_inception_distance(
    f1: np.ndarray,
    f2: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: (mean, std) over ``num_subsets`` of the unbiased MMD^2, cubic polynomial kernel.

    Each subset draws ``subset_size`` rows of each feature matrix without replacement
    (``numpy.random.default_rng(seed)``). ``subset_size`` is clipped to ``min(n1, n2)``, with
    a warning. ``std`` is the spread over subsets (``ddof=0``, as torch-fidelity reports it).
    """
    f1 = np.asarray(f1, dtype=np.float64)
    f2 = np.asarray(f2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be (N1, D) and (N2, D), got {f1.shape} and {f2.shape}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    n_min = min(len(f1), len(f2))
    if n_min < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(f1)} and {len(f2)}")
    if subset_size > n_min:
        warnings.warn(
            f"KID: subset_size {subset_size} > min(n1, n2) = {n_min}; using subset_size={n_min}",
            stacklevel=2,
        )
        subset_size = n_min
    if subset_size < 2:
        raise ValueError(f"subset_size must be >= 2, got {subset_size}")
    rng = np.random.default_rng(seed)
    mmds = np.empty(num_subsets, dtype=np.float64)
    for i in range(num_subsets):
        x = f1[rng.choice(len(f1), subset_size, replace=False)]
        y = f2[rng.choice(len(f2), subset_size, replace=False)]
        mmds[i] = _mmd2_unbiased_cubic(x, y)
    return float(mmds.mean()), float(mmds.std())
