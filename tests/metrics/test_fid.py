"""FID / KID against closed forms, independent implementations and sanity orderings."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from difflab.metrics import FeatureStats, frechet_distance, kernel_inception_distance


def fid_by_eigenvalues(f1: np.ndarray, f2: np.ndarray) -> float:
    """Independent FID: Tr((S1 S2)^1/2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)) (a symmetric PSD matrix)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(eig, 0, None)).sum())


def fid_of(f1: np.ndarray, f2: np.ndarray) -> float:
    a, b = FeatureStats.from_features(f1), FeatureStats.from_features(f2)
    return frechet_distance(a.mean(), a.cov(), b.mean(), b.cov())


# --- FeatureStats -------------------------------------------------------------------------


def test_feature_stats_equals_numpy_mean_and_cov():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(1037, 16)) * rng.uniform(0.1, 5, size=16) + 1e4  # large mean: no cancellation
    stats = FeatureStats(16)
    for chunk in np.array_split(f, [1, 2, 100, 513, 900]):  # uneven batches, one of size 1
        stats.update(chunk)
    assert stats.count == len(f)
    np.testing.assert_allclose(stats.mean(), f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov(), np.cov(f, rowvar=False), rtol=1e-9, atol=1e-9)


def test_feature_stats_merge_equals_one_pass():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(500, 8))
    a, b = FeatureStats.from_features(f[:123]), FeatureStats.from_features(f[123:])
    a.merge(b)
    np.testing.assert_allclose(a.cov(), np.cov(f, rowvar=False), rtol=1e-12, atol=1e-12)


def test_feature_stats_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats.from_features(np.zeros((1, 4))).cov()
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        FeatureStats(4).update(np.zeros((3, 5)))


# --- FID ------------------------------------------------------------------------------------


def test_fid_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    d1, d2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(expected, rel=1e-12)


def test_fid_of_a_set_with_itself_is_zero(real_halves):
    a, _ = real_halves
    s = FeatureStats.from_features(a)
    fid = frechet_distance(s.mean(), s.cov(), s.mean(), s.cov())
    assert abs(fid) < 1e-6 * np.trace(s.cov())


def test_fid_halves_small_noise_large(real_halves, noise_features):
    a, b = real_halves
    halves = fid_of(a, b)
    noise = fid_of(noise_features, b)
    assert 0 < halves < 2.0
    assert noise > 100 * halves


def test_fid_agrees_with_independent_computation(real_halves, noise_features):
    a, b = real_halves
    for f1, f2 in [(a, b), (noise_features, b)]:
        assert fid_of(f1, f2) == pytest.approx(fid_by_eigenvalues(f1, f2), abs=1e-3)


def test_fid_agrees_with_reference_formula_on_random_covariances():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(300, 20)), rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20)) + 0.5
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert fid_of(a, b) == pytest.approx(ref, rel=1e-9)
    assert fid_of(a, b) == pytest.approx(fid_by_eigenvalues(a, b), rel=1e-9)


def test_fid_singular_covariances_fall_back_to_eps():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(5, 10))  # rank 4 < 10: singular covariance
    b = rng.normal(size=(5, 10))
    assert np.isfinite(fid_of(a, b))


def test_fid_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# --- KID ------------------------------------------------------------------------------------


def mmd2_unbiased_loops(x: np.ndarray, y: np.ndarray) -> float:
    """Independent unbiased MMD^2 (Gretton et al. 2012, eq. 3) with k(a, b) = (a.b / d + 1)^3."""
    m, d = x.shape

    def k(a, b):
        return (np.dot(a, b) / d + 1) ** 3

    off = ~np.eye(m, dtype=bool)
    kxx = np.array([[k(x[i], x[j]) for j in range(m)] for i in range(m)])
    kyy = np.array([[k(y[i], y[j]) for j in range(m)] for i in range(m)])
    kxy = np.array([[k(x[i], y[j]) for j in range(m)] for i in range(m)])
    return kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean()


def test_kid_matches_loop_implementation():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(40, 6)) + 0.3
    # subset_size = n: every subset is the whole set (in another order), so KID = MMD^2, std = 0
    mean, std = kernel_inception_distance(x, y, num_subsets=3, subset_size=40)
    assert mean == pytest.approx(mmd2_unbiased_loops(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_halves_near_zero_noise_large(real_halves, noise_features):
    a, b = real_halves
    halves, halves_std = kernel_inception_distance(a, b, num_subsets=20, subset_size=500)
    noise, _ = kernel_inception_distance(noise_features, b, num_subsets=20, subset_size=500)
    assert abs(halves) < max(3 * halves_std, 0.02)
    assert noise > 0.5
    assert noise > 30 * max(abs(halves), halves_std)


def test_kid_is_seeded():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(100, 4)), rng.normal(size=(100, 4))
    assert kernel_inception_distance(x, y, 5, 50, seed=1) == kernel_inception_distance(x, y, 5, 50, seed=1)


def test_kid_clips_subset_size_with_a_warning():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(50, 4))
    with pytest.warns(UserWarning, match="subset_size=30"):
        kernel_inception_distance(x, y, num_subsets=2, subset_size=1000)
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(x[:1], y)
