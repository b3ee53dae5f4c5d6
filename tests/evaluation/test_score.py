"""Scoring on torchmetrics: against closed forms and the reference FID formula, the floor at
the score's own n, seeded KID, cached real statistics, one network pass per batch."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from difflab.diffusion.process import GaussianDiffusion
from difflab.evaluation import Evaluator, evaluate
from difflab.evaluation.score import _SharedFeatures
from difflab.metrics import RealStatsCache
from difflab.samplers import DDIMSampler


class Images:
    """A data module stand-in: uint8 (N, 1, 28, 28) splits."""

    name = "mnist5k"
    image_shape = (1, 28, 28)

    def __init__(self, train: np.ndarray, val: np.ndarray) -> None:
        self.splits = {"train": train, "val": val}

    def real_images(self, split, n=None, seed=0):
        return self.splits[split] if n is None else self.splits[split][:n]


@pytest.fixture(scope="module")
def mnist(mnist_train, mnist_val):
    return Images(mnist_train[0], mnist_val[0])


def frechet_reference(mu1, s1, mu2, s2):
    """pytorch-fid's calculate_frechet_distance (scipy sqrtm), the formula FID papers use."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_torchmetrics_fid_equals_the_closed_form_for_two_gaussians():
    """With exact moments, torchmetrics' eigenvalue formula, scipy's sqrtm formula and the
    closed form Tr((S1^1/2 S2 S1^1/2)^1/2) agree to 1e-10 (relative)."""
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(0)
    d = 64
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T / d + 0.1 * np.eye(d), b @ b.T / d + 0.1 * np.eye(d)
    mu1 = rng.normal(size=d) * 5 + 20
    mu2 = mu1 + rng.normal(size=d) * 0.3
    w, v = np.linalg.eigh(s1)
    root = v @ np.diag(np.sqrt(w)) @ v.T
    closed = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.linalg.eigvalsh(root @ s2 @ root)).sum()
    tm = float(_compute_fid(*(torch.tensor(m) for m in (mu1, s1, mu2, s2))))
    assert tm == pytest.approx(closed, rel=1e-10)
    assert frechet_reference(mu1, s1, mu2, s2) == pytest.approx(closed, rel=1e-10)
    # diagonal covariances: sum (sqrt(s1) - sqrt(s2))^2
    d1, d2 = np.diag(rng.uniform(0.5, 2, d)), np.diag(rng.uniform(0.5, 2, d))
    diag_closed = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(np.diag(d1)) - np.sqrt(np.diag(d2))) ** 2).sum()
    assert float(_compute_fid(*(torch.tensor(m) for m in (mu1, d1, mu2, d2)))) == pytest.approx(diag_closed, rel=1e-10)


def test_filled_real_states_score_like_update_and_like_the_reference(mnist, digits):
    """The cached real features enter as metric states: the same FID as passing the real
    images through update(), and as the reference formula on the same features."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    ev = Evaluator(mnist, n=300, floor=False, extractor=digits)
    fake = torch.from_numpy(mnist.splits["val"][:300])
    ours = ev.score(iter([fake[:150], fake[150:]]), 300)["fid"]

    ref = ev._real("train", 0, 300)
    fake_f = digits.extract(fake)
    reference = frechet_reference(ref.mu, ref.sigma, fake_f.mean(0), np.cov(fake_f, rowvar=False))
    assert ours == pytest.approx(reference, rel=1e-6)

    images = mnist.splits["train"][np.sort(np.random.default_rng(0).permutation(4500)[:300])]
    plain = FrechetInceptionDistance(feature=_SharedFeatures(digits))
    plain.update(torch.from_numpy(images), real=True)
    plain.update(fake, real=False)
    assert float(plain.compute()) == pytest.approx(ours, rel=1e-6)


def test_floor_at_the_scores_own_n_from_disjoint_sets(mnist, digits, tmp_path):
    saves = []

    class Cache(RealStatsCache):
        def save(self, key, stats):
            saves.append((key["split"], key["start"], key["n"]))
            return super().save(key, stats)

    ev = Evaluator(mnist, n=200, extractor=digits)  # val holds 500 >= 200: val against train
    ev.cache = Cache(tmp_path)
    assert set(ev.floor()) == {"fid_floor/digits/n200", "kid_floor/digits/n200"}
    assert sorted(saves) == [("train", 0, 200), ("val", 0, 200)]

    saves.clear()
    ev = Evaluator(mnist, n=1000, extractor=digits, metrics=["fid"])  # val too small: the next 1000 of train
    ev.cache = Cache(tmp_path)
    floor = ev.floor()
    assert list(floor) == ["fid_floor/digits/n1000"] and 0 < floor["fid_floor/digits/n1000"] < 3
    assert sorted(saves) == [("train", 0, 1000), ("train", 1000, 1000)]

    ev = Evaluator(mnist, n=3000, extractor=digits, metrics=["fid"])  # 4500 train: two sets of 2250 at most
    assert list(ev.floor()) == ["fid_floor/digits/n2250"]
    assert ev.n_real == 3000


def test_real_halves_score_low_noise_high_and_kid_is_seeded(mnist, digits):
    ev = Evaluator(mnist, n=500, floor=False, extractor=digits)
    real = torch.from_numpy(mnist.splits["val"])
    noise = torch.randint(0, 256, (500, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a, b = ev.score(iter([real]), 500, seed=0), ev.score(iter([real]), 500, seed=0)
    assert a == b  # KID's subsets are drawn from the seed, not the global RNG
    torch.manual_seed(123)
    assert ev.score(iter([real]), 500, seed=0) == a
    assert ev.score(iter([real]), 500, seed=1)["kid"] != a["kid"]
    bad = ev.score(iter([noise]), 500)
    assert a["fid"] < 3 < 50 < bad["fid"] and abs(a["kid"]) < 0.03 < 0.5 < bad["kid"]


def test_kid_subset_size_is_clipped_to_n(mnist, digits):
    ev = Evaluator(mnist, n=20, floor=False, extractor=digits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither a torchmetrics error nor a warning at n < 1000
        out = ev.score(iter([torch.from_numpy(mnist.splits["val"][:20])]), 20)
    assert np.isfinite(out["kid"]) and out["kid_std"] >= 0


def test_the_feature_network_runs_once_per_batch(mnist, digits):
    calls = []
    original = digits.forward
    digits.forward = lambda x: calls.append(len(x)) or original(x)
    try:
        ev = Evaluator(mnist, n=40, floor=False, extractor=digits)
        ev._real("train", 0, 40)
        calls.clear()
        ev.score(iter([torch.from_numpy(mnist.splits["val"][:40])]), 40)
    finally:
        del digits.forward
    assert calls == [40]  # FID and KID share the features of the batch


def test_evaluate_names_the_result_and_keeps_the_samples(mnist, digits):
    process = GaussianDiffusion.from_schedule("cosine", 100)
    ev = Evaluator(mnist, n=12, extractor=digits)
    result = evaluate(lambda x, t: 0.5 * x, process, DDIMSampler(num_steps=3, eta=1.0), "eps", ev, seed=0,
                      batch_size=5, keep_samples=True)
    assert set(result.scores) == {"fid/digits/ddim3_eta1/n12", "kid/digits/ddim3_eta1/n12"}
    assert set(result.floor) == {"fid_floor/digits/n12", "kid_floor/digits/n12"}
    assert result.samples.shape == (12, 1, 28, 28) and result.samples.dtype == torch.uint8
    assert result.protocol["nfe"] == 3 and result.protocol["n"] == 12 and result.protocol["world_size"] == 1
    again = evaluate(lambda x, t: 0.5 * x, process, DDIMSampler(num_steps=3, eta=1.0), "eps", ev, seed=0, batch_size=12)
    assert again.scores == pytest.approx(result.scores, rel=1e-5)  # the same samples; features of other batches


def test_clamped_count_is_what_quantisation_changes():
    from difflab.evaluation.score import clamped_count

    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 1.2
    unclamped = torch.floor((x.double() + 1) / 2 * 255 + 0.5)  # to_uint8 before its clamp
    changed = (unclamped < 0) | (unclamped > 255)
    count, overshoot = clamped_count(x).tolist()
    assert count == float(changed.sum())
    assert overshoot == pytest.approx(float((x.double().abs() - 1)[changed].sum()), rel=1e-5)
    edge = torch.tensor([1.0, 1.0039, 1.0040, -1.0039, -1.5, 0.0])
    assert clamped_count(edge).tolist() == pytest.approx([2.0, 0.504], rel=1e-4)


def test_evaluate_records_the_share_of_clamped_pixel_values(mnist, digits):
    process = GaussianDiffusion.from_schedule("cosine", 100)
    ev = Evaluator(mnist, n=6, extractor=digits)
    sampler = DDIMSampler(num_steps=2, eta=0.0)

    def first_row_out_of_range(x):
        x = x.clamp(-1, 1).clone()
        x[:, :, 0, :] = 1.5
        return x

    values = evaluate(lambda x, t: 0.5 * x, process, sampler, "eps", ev, batch_size=4,
                      decode=first_row_out_of_range).values
    assert values["clamped"] == pytest.approx(1 / 28)  # one row of 28 in every image
    assert values["overshoot"] == pytest.approx(0.5 / 28)  # each 0.5 beyond 1
    inside = evaluate(lambda x, t: 0.5 * x, process, sampler, "eps", ev, batch_size=4, decode=lambda x: x.clamp(-1, 1))
    assert inside.values["clamped"] == inside.values["overshoot"] == 0.0 and not any(k.startswith("clamped") for k in inside.scores)


def test_bad_input(mnist):
    with pytest.raises(ValueError, match="unknown metric"):
        Evaluator(mnist, metrics=["fid", "is"])
    with pytest.raises(ValueError, match="n must be"):
        Evaluator(mnist, n=1)
    with pytest.raises(ValueError, match="feature"):
        Evaluator(mnist, feature="resnet")
    points = Images(np.zeros((4, 1, 28, 28), np.uint8), np.zeros((4, 1, 28, 28), np.uint8))
    points.image_shape = (2,)
    with pytest.raises(ValueError, match="images"):
        Evaluator(points)
