"""Point data (toy2d) on the evaluation path: SWD and MMD against real points, with a floor."""

from __future__ import annotations

import pytest
import torch

from difflab.data import Toy2DDataModule
from difflab.evaluation.points import PointEvaluator


@pytest.fixture(scope="module")
def moons():
    dm = Toy2DDataModule()
    dm.setup()
    return dm


def test_real_points_score_near_the_floor_and_noise_far(moons):
    ev = PointEvaluator(moons, n=500)
    floor = ev.floor()
    assert set(floor) == {"swd_floor/points/n500", "mmd_floor/points/n500"}
    real = moons.real_points("val")[:500]
    close = ev.score(iter([real[:250], real[250:]]), 500)
    far = ev.score(iter([torch.randn(500, 2) * 3]), 500)
    assert close["swd"] < 0.1 < 0.3 < far["swd"] and close["mmd"] < 0.01 < far["mmd"]
    assert close == ev.score(iter([real]), 500)  # the batches do not matter
    assert ev.score(iter([real]), 500, seed=1)["swd"] != close["swd"]  # the projections follow the seed


def test_bad_input(moons):
    with pytest.raises(ValueError, match="swd, mmd"):
        PointEvaluator(moons, metrics=["fid"])
    with pytest.raises(ValueError, match="n must"):
        PointEvaluator(moons, n=1)


def test_point_samples_get_no_pixel_diagnostics(moons):
    """Points are not quantised: evaluate records no clamped share or overshoot for them."""
    from difflab.diffusion.process import GaussianDiffusion
    from difflab.evaluation import evaluate
    from difflab.samplers import DDIMSampler

    ev = PointEvaluator(moons, n=20)
    result = evaluate(lambda x, t: 0.5 * x, GaussianDiffusion.from_schedule("cosine", 50), DDIMSampler(num_steps=2),
                      "eps", ev, batch_size=8)
    assert result.scores and "clamped" not in result.values and "overshoot" not in result.values
