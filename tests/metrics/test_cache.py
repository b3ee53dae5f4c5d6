"""Real-statistics cache: reuse, invalidation, safe and atomic files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from difflab.metrics import RealStats, RealStatsCache


def make_key(**overrides):
    key = {
        "dataset": "mnist5k",
        "split": "train",
        "feature": "digits",
        "feature_hash": "abc123",
        "n": 50,
        "image_shape": [1, 28, 28],
        "seed": 0,
    }
    key.update(overrides)
    return key


class Counter:
    def __init__(self, n_rows: int = 50, dim: int = 4):
        self.calls = 0
        self.n_rows, self.dim = n_rows, dim

    def __call__(self):
        self.calls += 1
        return np.random.default_rng(self.calls).normal(size=(self.n_rows, self.dim))


def test_second_call_reuses_the_file(tmp_path):
    cache = RealStatsCache(tmp_path)
    compute = Counter()
    first = cache.get_or_compute(make_key(), compute)
    second = RealStatsCache(tmp_path).get_or_compute(make_key(), compute)  # a fresh instance too
    assert compute.calls == 1
    for a, b in [(first.mu, second.mu), (first.sigma, second.sigma), (first.features, second.features)]:
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(second.sigma, np.cov(second.features, rowvar=False), rtol=1e-12)
    assert second.key == make_key()


@pytest.mark.parametrize(
    "change", [{"n": 60}, {"feature": "inception"}, {"feature_hash": "def456"}, {"seed": 1}, {"split": "val"}]
)
def test_changing_the_protocol_gives_a_new_entry(tmp_path, change):
    cache = RealStatsCache(tmp_path)
    compute = Counter()
    cache.get_or_compute(make_key(), compute)
    key = make_key(**change)
    compute.n_rows = key["n"]
    cache.get_or_compute(key, compute)
    assert compute.calls == 2
    assert cache.path(key) != cache.path(make_key())
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_files_are_safe_and_complete(tmp_path):
    cache = RealStatsCache(tmp_path / "nested")
    cache.get_or_compute(make_key(), Counter())
    path = cache.path(make_key())
    assert path.name.startswith("mnist5k-train-digits-n50-")
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["features", "mu", "sigma"]
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["key"] == make_key()
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, path.with_suffix(".json").name])


def test_key_must_name_the_protocol(tmp_path):
    key = make_key()
    del key["feature_hash"]
    with pytest.raises(ValueError, match="feature_hash"):
        RealStatsCache(tmp_path).get_or_compute(key, Counter())


def test_compute_fn_must_return_n_rows(tmp_path):
    with pytest.raises(ValueError, match="n=50"):
        RealStatsCache(tmp_path).get_or_compute(make_key(), Counter(n_rows=49))


def test_the_evaluator_reads_real_statistics_back_from_the_cache(tmp_path, digits, mnist_train, mnist_val, monkeypatch):
    from difflab.evaluation import Evaluator

    class Source:  # the data-module interface the evaluator reads: name, image_shape, real_images
        name, image_shape = "mnist5k", (1, 28, 28)

        def real_images(self, split, n=None, seed=0):
            return {"train": mnist_train[0], "val": mnist_val[0]}[split]

    first = Evaluator(Source(), n=100, cache_dir=tmp_path, extractor=digits)._real("val", 0, 100)
    assert isinstance(first, RealStats) and first.n == 100 and first.mu.shape == (128,)
    assert first.key["feature_hash"] == digits.weights_hash and first.key["image_shape"] == [1, 28, 28]

    def no_extract(*args, **kwargs):
        raise AssertionError("the cached statistics should have been reused")

    monkeypatch.setattr(digits, "extract", no_extract)
    second = Evaluator(Source(), n=100, cache_dir=tmp_path, extractor=digits)._real("val", 0, 100)
    np.testing.assert_array_equal(first.features, second.features)
    monkeypatch.undo()

    third = Evaluator(Source(), n=120, cache_dir=tmp_path, extractor=digits)._real("val", 0, 120)
    assert third.n == 120
    assert len(list(tmp_path.glob("*.npz"))) == 2
