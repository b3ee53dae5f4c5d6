"""Distances between two sets of points (2-D toy data): sliced Wasserstein and kernel MMD.

Pure functions of two tensors (N, D) and (M, D); computed in float64 on the CPU; nothing
random except the projections of the sliced Wasserstein distance, which come from a fixed
seed, so the same samples always give the same score.

- :func:`sliced_wasserstein`: SW_p(P, Q) = (E_theta W_p^p(theta # P, theta # Q))^(1/p) over
  directions theta uniform on the unit sphere (Bonneel et al. 2015, "Sliced and Radon
  Wasserstein barycenters of measures"; Kolouri et al. 2019, arXiv:1902.00434, eq. 5),
  estimated with ``num_projections`` directions. Each 1-D distance is exact, also for sets
  of different sizes (the integral of |F^-1 - G^-1|^p over the quantile levels).
- :func:`gaussian_mmd2`: the squared maximum mean discrepancy with the Gaussian kernel
  k(a, b) = exp(-|a - b|^2 / (2 bandwidth^2)) (Gretton et al. 2012, "A kernel two-sample
  test", JMLR 13, eq. 3 (unbiased, default) and eq. 5 (biased, V-statistic)). The bandwidth
  defaults to the median heuristic on the *reference* set ``y`` (the median pairwise distance
  of its points), so every score against the same held-out data uses the same kernel.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["gaussian_mmd2", "median_bandwidth", "projections", "sliced_wasserstein", "wasserstein_1d"]


def _points(x: Tensor | object, name: str) -> Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"{name} must be points of shape (N, D) with N >= 1, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} holds NaN or inf values")
    return t


def projections(dim: int, num_projections: int, seed: int = 0) -> Tensor:
    """``num_projections`` unit vectors (L, dim), uniform on the sphere, from ``seed`` (float64)."""
    if num_projections < 1:
        raise ValueError(f"num_projections must be >= 1, got {num_projections}")
    g = torch.Generator().manual_seed(int(seed))
    theta = torch.randn(num_projections, dim, generator=g, dtype=torch.float64)
    return theta / theta.norm(dim=1, keepdim=True)


def wasserstein_1d(u: Tensor, v: Tensor, p: float = 2.0) -> Tensor:
    """W_p^p between the empirical measures of the columns of ``u`` (N, L) and ``v`` (M, L).

    ``W_p^p = integral_0^1 |F^-1(q) - G^-1(q)|^p dq`` with the quantile functions of the two
    sets; both are step functions, constant between the levels i / N and j / M, so the
    integral is a finite sum. Returns the L values W_p^p (not their p-th root).
    """
    n, m = u.shape[0], v.shape[0]
    us, _ = torch.sort(u, dim=0)
    vs, _ = torch.sort(v, dim=0)
    if n == m:
        return (us - vs).abs().pow(p).mean(0)
    levels = torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n, torch.arange(1, m + 1, dtype=torch.float64) / m])
    levels = torch.unique(torch.cat([torch.zeros(1, dtype=torch.float64), levels]))  # sorted, 0 .. 1
    widths = levels[1:] - levels[:-1]
    mid = (levels[1:] + levels[:-1]) / 2
    i = torch.clamp((mid * n).floor().long(), max=n - 1)
    j = torch.clamp((mid * m).floor().long(), max=m - 1)
    return ((us[i] - vs[j]).abs().pow(p) * widths[:, None]).sum(0)


def sliced_wasserstein(x: Tensor, y: Tensor, num_projections: int = 512, p: float = 2.0, seed: int = 0) -> float:
    """Sliced p-Wasserstein distance between point sets ``x`` (N, D) and ``y`` (M, D).

    ``(mean over the projections of W_p^p)^(1/p)``, with ``num_projections`` fixed-seed
    directions (:func:`projections`). Translation by a vector s gives, per direction,
    W_p = |theta . s|; in 2-D SW_2 of a set and its shifted copy tends to |s| / sqrt(2).
    """
    x, y = _points(x, "x"), _points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    if not p >= 1:
        raise ValueError(f"p must be >= 1, got {p}")
    theta = projections(x.shape[1], num_projections, seed)
    w = wasserstein_1d(x @ theta.T, y @ theta.T, p)
    return float(w.mean() ** (1.0 / p))


def median_bandwidth(y: Tensor) -> float:
    """The median heuristic: the median distance between distinct points of ``y`` (Gretton et al. 2012, sec. 8)."""
    y = _points(y, "y")
    if y.shape[0] < 2:
        raise ValueError("the median heuristic needs at least 2 reference points")
    d = torch.cdist(y, y)
    iu = torch.triu_indices(y.shape[0], y.shape[0], offset=1)
    med = float(d[iu[0], iu[1]].median())
    if med <= 0:
        raise ValueError("the reference points all coincide; give a bandwidth")
    return med


def gaussian_mmd2(x: Tensor, y: Tensor, bandwidth: float | None = None, unbiased: bool = True) -> float:
    """Squared MMD between ``x`` (N, D) and ``y`` (M, D) with a Gaussian kernel.

    Unbiased (default, Gretton et al. 2012 eq. 3): the within-set means leave out i = j, so
    the estimate is 0 in expectation for samples of one distribution and can be slightly
    negative. Biased (eq. 5): all pairs, >= 0, exactly 0 for identical sets.
    ``bandwidth``: the kernel's sigma; None: :func:`median_bandwidth` of ``y``.
    """
    x, y = _points(x, "x"), _points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    sigma = median_bandwidth(y) if bandwidth is None else float(bandwidth)
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"bandwidth must be a positive number, got {bandwidth}")
    n, m = x.shape[0], y.shape[0]

    def k(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * sigma**2))

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    if unbiased:
        if n < 2 or m < 2:
            raise ValueError("the unbiased MMD needs at least 2 points in each set")
        xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    else:
        xx, yy = kxx.mean(), kyy.mean()
    return float(xx + yy - 2 * kxy.mean())
