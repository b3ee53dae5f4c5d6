"""Sliced Wasserstein and Gaussian-kernel MMD on point sets: closed forms and independent oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from difflab.metrics.toy import gaussian_mmd2, median_bandwidth, projections, sliced_wasserstein, wasserstein_1d


def _pts(n, seed, dim=2, shift=0.0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64) * scale + shift


# --------------------------------------------------------------------------- 1-D Wasserstein
def test_w1_matches_scipy_for_different_sizes():
    from scipy.stats import wasserstein_distance

    u, v = _pts(7, 0, dim=3), _pts(11, 1, dim=3) + 0.5
    ours = wasserstein_1d(u, v, p=1)
    for c in range(3):
        assert float(ours[c]) == pytest.approx(wasserstein_distance(u[:, c].numpy(), v[:, c].numpy()), rel=1e-12)


def test_wp_for_different_sizes_equals_the_replicated_equal_size_case():
    """n = 4 and m = 6 atoms of mass 1/n and 1/m: the same measures as 12 atoms each (lcm)."""
    u, v = _pts(4, 2, dim=1), _pts(6, 3, dim=1)
    ref = (torch.sort(u.repeat_interleave(3, 0), 0)[0] - torch.sort(v.repeat_interleave(2, 0), 0)[0]).pow(2).mean(0)
    assert wasserstein_1d(u, v, p=2) == pytest.approx(ref, rel=1e-12)


# --------------------------------------------------------------------------- sliced Wasserstein
def test_swd_of_a_shifted_copy_is_the_mean_projected_shift():
    """W_p(theta # X, theta # (X + s)) = |theta . s| exactly, so SW_2^2 = mean (theta . s)^2 -> |s|^2 / 2 in 2-D."""
    x, s = _pts(300, 4), torch.tensor([3.0, -4.0], dtype=torch.float64)
    theta = projections(2, 4096, seed=0)
    sw = sliced_wasserstein(x, x + s, num_projections=4096, seed=0)
    assert sw == pytest.approx(float((theta @ s).pow(2).mean().sqrt()), rel=1e-10)
    assert sw == pytest.approx(5.0 / math.sqrt(2), rel=0.02)
    sw1 = sliced_wasserstein(x, x + s, num_projections=4096, p=1, seed=0)
    assert sw1 == pytest.approx(5.0 * 2 / math.pi, rel=0.02)  # E|cos| = 2 / pi


def test_swd_between_shifted_gaussians():
    """N(0, I) and N(m, I): every projection is N(0, 1) vs N(theta . m, 1), W_2 = |theta . m|."""
    x, y = _pts(4000, 5), _pts(4000, 6, shift=torch.tensor([2.0, 0.0], dtype=torch.float64))
    assert sliced_wasserstein(x, y) == pytest.approx(2.0 / math.sqrt(2), rel=0.05)


def test_swd_is_zero_for_identical_sets_symmetric_seeded_and_permutation_free():
    x, y = _pts(50, 7), _pts(80, 8)
    assert sliced_wasserstein(x, x) == 0.0
    assert sliced_wasserstein(x, y) == pytest.approx(sliced_wasserstein(y, x), rel=1e-12)
    assert sliced_wasserstein(x, y, seed=3) == sliced_wasserstein(x[torch.randperm(50)], y, seed=3)
    assert sliced_wasserstein(x, y, seed=3) != sliced_wasserstein(x, y, seed=4)


def test_swd_bad_input():
    with pytest.raises(ValueError, match="same dimension"):
        sliced_wasserstein(_pts(5, 0), _pts(5, 0, dim=3))
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        sliced_wasserstein(torch.zeros(5), _pts(5, 0))
    with pytest.raises(ValueError, match="NaN"):
        sliced_wasserstein(torch.full((3, 2), float("nan")), _pts(5, 0))


# --------------------------------------------------------------------------- MMD
def _mmd2_loops(x, y, sigma, unbiased):
    """The estimators of Gretton et al. 2012 (eq. 3 and 5) written as plain loops."""
    x, y = x.numpy(), y.numpy()
    k = lambda a, b: math.exp(-float(np.sum((a - b) ** 2)) / (2 * sigma**2))  # noqa: E731
    n, m = len(x), len(y)
    pairs = lambda a, b, skip: [k(a[i], b[j]) for i in range(len(a)) for j in range(len(b)) if not (skip and i == j)]  # noqa: E731
    xx = sum(pairs(x, x, unbiased)) / (n * (n - 1) if unbiased else n * n)
    yy = sum(pairs(y, y, unbiased)) / (m * (m - 1) if unbiased else m * m)
    return xx + yy - 2 * sum(pairs(x, y, False)) / (n * m)


@pytest.mark.parametrize("unbiased", [True, False])
def test_mmd_matches_the_estimator_written_as_loops(unbiased):
    x, y = _pts(9, 10), _pts(13, 11, shift=0.7)
    assert gaussian_mmd2(x, y, bandwidth=0.8, unbiased=unbiased) == pytest.approx(_mmd2_loops(x, y, 0.8, unbiased), rel=1e-10)


def test_mmd_of_identical_sets():
    x = _pts(40, 12)
    assert gaussian_mmd2(x, x, unbiased=False) == pytest.approx(0.0, abs=1e-15)
    # unbiased: leaving out the diagonal makes it slightly negative, -(mean off-diagonal k of 1 - k)
    assert gaussian_mmd2(x, x) < 0


def test_mmd_between_shifted_gaussians_has_its_closed_form():
    """X ~ N(0, s^2 I), Y ~ N(d, s^2 I) in D dims, kernel width sigma:
    MMD^2 = 2 (sigma^2 / (sigma^2 + 2 s^2))^(D/2) (1 - exp(-|d|^2 / (2 (sigma^2 + 2 s^2))))."""
    s, sigma, d = 0.5, 1.0, torch.tensor([1.0, 0.5], dtype=torch.float64)
    c = sigma**2 + 2 * s**2
    exact = 2 * (sigma**2 / c) ** (2 / 2) * (1 - math.exp(-float(d @ d) / (2 * c)))
    est = gaussian_mmd2(_pts(3000, 13, scale=s), _pts(3000, 14, scale=s, shift=d), bandwidth=sigma)
    assert est == pytest.approx(exact, rel=0.05)
    # one distribution: the unbiased estimate is 0 in expectation
    same = [gaussian_mmd2(_pts(200, 20 + 2 * i, scale=s), _pts(200, 21 + 2 * i, scale=s), bandwidth=sigma) for i in range(20)]
    assert abs(np.mean(same)) < 3 * np.std(same) / math.sqrt(len(same))


def test_median_bandwidth_comes_from_the_reference_set():
    y = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)  # distances 3, 4, 5
    assert median_bandwidth(y) == 4.0
    x = _pts(20, 15)
    assert gaussian_mmd2(x, y) == gaussian_mmd2(x, y, bandwidth=4.0)
    with pytest.raises(ValueError, match="bandwidth must be a positive number"):
        gaussian_mmd2(x, y, bandwidth=0.0)
