"""High-level helpers: protocol keys, scoring, the data floor, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difflab.metrics import ArrayImages, RealStatsCache, data_floor, protocol_key, real_stats, score


@pytest.fixture(scope="module")
def source(mnist_train, mnist_val):
    return ArrayImages("mnist5k", {"train": mnist_train[0], "val": mnist_val[0]})


@pytest.fixture(scope="module")
def real_val(source, digits):
    return real_stats(source, "val", 500, digits, cache=None)


def test_protocol_key():
    assert protocol_key("fid", "digits", "ddim", 50, 0.0, 2000) == "fid/digits/ddim50/n2000"
    assert protocol_key("fid", "digits", "DDIM", 50, 1.0, 2000) == "fid/digits/ddim50_eta1/n2000"
    assert protocol_key("kid", "inception", "ddim", 100, 0.5, 10000) == "kid/inception/ddim100_eta0.5/n10000"
    assert protocol_key("fid", "digits", "ddpm", 1000, 1.0, 500) == "fid/digits/ddpm1000/n500"


@pytest.mark.parametrize("bad", [{"metric": "is"}, {"n": 1}, {"n": 0}])
def test_protocol_key_rejects_bad_input(bad):
    args = {"metric": "fid", "feature_name": "digits", "sampler_name": "ddim", "num_steps": 50, "eta": 0.0, "n": 100}
    args.update(bad)
    with pytest.raises(ValueError, match="accepted: fid, kid|n must be"):
        protocol_key(**args)


def test_score_images_and_features_agree_and_carry_the_protocol(source, digits, real_val, mnist_train):
    fake = torch.from_numpy(mnist_train[0][::45])  # 100 real train digits as stand-in samples
    result = score(fake, real_val, digits, kid_num_subsets=10, kid_subset_size=50)
    again = score(digits.extract(fake), real_val, digits, kid_num_subsets=10, kid_subset_size=50)
    assert result["fid"] == again["fid"] and result["kid"] == again["kid"]
    p = result["protocol"]
    assert p["feature"] == "digits" and p["feature_hash"] == digits.weights_hash
    assert p["n_fake"] == 100 and p["n_real"] == 500
    assert p["real"] == {"dataset": "mnist5k", "split": "val", "n": 500, "image_shape": [1, 28, 28], "seed": 0}
    assert p["kid"] == {"num_subsets": 10, "subset_size": 50, "seed": 0}
    only_fid = score(fake, real_val, digits, metrics=("fid",))
    assert set(only_fid) == {"fid", "protocol"}


def test_data_floor_is_small_and_noise_is_far_above(source, digits, tmp_path):
    floor = data_floor(source, 500, digits, cache=RealStatsCache(tmp_path), kid_num_subsets=10, kid_subset_size=250)
    assert 0 < floor["fid"] < 3.0
    assert floor["protocol"]["real"]["split"] == "train" and "val" in floor["protocol"]["fake"]
    real_train = real_stats(source, "train", 500, digits, RealStatsCache(tmp_path))  # cached by data_floor
    noise = torch.randint(0, 256, (500, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    bad = score(noise, real_train, digits, kid_num_subsets=10, kid_subset_size=250)
    assert bad["fid"] > 100 * floor["fid"]
    assert bad["kid"] > 0.5 > abs(floor["kid"])


def test_score_rejects_bad_input(digits, real_val):
    images = torch.zeros(10, 1, 28, 28, dtype=torch.uint8)
    with pytest.raises(ValueError, match="accepted: fid, kid"):
        score(images, real_val, digits, metrics=("fid", "inception_score"))
    with pytest.raises(ValueError, match="n must be"):
        score(images[:1], real_val, digits)
    with pytest.raises(ValueError, match="to_uint8"):
        score(images.float(), real_val, digits)
    with pytest.raises(ValueError, match="dim 128"):
        score(np.zeros((10, 64)), real_val, digits)


def test_score_refuses_stats_from_another_feature_network(digits, real_val):
    from difflab.metrics import RealStats

    other = RealStats(real_val.mu, real_val.sigma, real_val.features, {**real_val.key, "feature_hash": "0" * 16})
    with pytest.raises(ValueError, match="feature network"):
        score(real_val.features, other, digits)


def test_real_stats_rejects_bad_n(source, digits):
    with pytest.raises(ValueError, match="n must be"):
        real_stats(source, "val", 1, digits)
    with pytest.raises(ValueError, match="has 500 images"):
        real_stats(source, "val", 501, digits)
