"""The contract every registered sampler keeps: stateless steps, typed output, validated input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from difflab.diffusion.process import GaussianDiffusion
from difflab.samplers import SAMPLERS, DDIMSampler, DDPMSampler, Sampler, StepOutput, threshold_sample

# a stochastic configuration of every sampler
CONFIGS = {"ddpm": {"num_steps": 25}, "ddim": {"num_steps": 25, "eta": 0.5}}


@pytest.fixture(scope="module")
def process() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("cosine", 100)


def test_registry() -> None:
    assert SAMPLERS == {"ddpm": DDPMSampler, "ddim": DDIMSampler}
    assert set(CONFIGS) == set(SAMPLERS)
    for cls in SAMPLERS.values():
        assert issubclass(cls, Sampler)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_timesteps(name: str, process) -> None:
    ts = SAMPLERS[name](**CONFIGS[name]).timesteps(process.num_timesteps)
    assert ts.dtype == torch.long and ts.shape == (25,)
    assert bool((ts[1:] < ts[:-1]).all()) and ts.min() >= 0 and ts.max() < 100


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("shape", [(3, 2), (2, 3, 4, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_output_and_statelessness(name: str, shape, dtype, process) -> None:
    sampler = SAMPLERS[name](**CONFIGS[name])
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(shape, generator=g, dtype=dtype)
    out = torch.randn(shape, generator=g, dtype=dtype)
    a = sampler.step(process, out, 60, 56, x_t, torch.Generator().manual_seed(1), prediction_type="eps")
    assert isinstance(a, StepOutput)
    for tensor in (a.prev_sample, a.pred_x0):
        assert tensor.shape == shape and tensor.dtype == dtype and torch.isfinite(tensor).all()
    # any order, any pair, no priming: the same inputs give the same outputs
    sampler.step(process, out, 3, -1, x_t, torch.Generator().manual_seed(2), prediction_type="v")
    sampler.step(process, out, 99, 0, x_t, torch.Generator().manual_seed(2), prediction_type="eps")
    b = sampler.step(process, out, 60, 56, x_t, torch.Generator().manual_seed(1), prediction_type="eps")
    assert torch.equal(a.prev_sample, b.prev_sample)
    c = sampler.step(process, out, 60, 56, x_t, torch.Generator().manual_seed(3), prediction_type="eps")
    assert not torch.equal(a.prev_sample, c.prev_sample)  # stochastic configs use the generator


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_last_step_returns_pred_x0(name: str, prediction_type: str, process) -> None:
    sampler = SAMPLERS[name](**CONFIGS[name])
    g = torch.Generator().manual_seed(4)
    x_t = torch.randn(4, 2, generator=g)
    out = torch.randn(4, 2, generator=g)
    state = g.get_state()
    res = sampler.step(process, out, 2, -1, x_t, g, prediction_type=prediction_type)
    assert torch.equal(g.get_state(), state)  # no noise at the last step
    torch.testing.assert_close(res.prev_sample, res.pred_x0)
    assert res.pred_x0.abs().max() <= 1.0  # clip_sample defaults to True


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_clip_range(name: str, process) -> None:
    sampler = SAMPLERS[name](**CONFIGS[name], clip_range=0.5)
    x = torch.full((2, 3), 3.0)
    res = sampler.step(process, x, 50, 40, x, torch.Generator(), prediction_type="x0")
    assert torch.equal(res.pred_x0, torch.full((2, 3), 0.5))
    free = SAMPLERS[name](**CONFIGS[name], clip_sample=False)
    assert torch.equal(free.step(process, x, 50, 40, x, torch.Generator(), prediction_type="x0").pred_x0, x)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_bad_step_arguments(name: str, process) -> None:
    sampler = SAMPLERS[name](**CONFIGS[name])
    x = torch.zeros(2, 3)
    g = torch.Generator()
    with pytest.raises(ValueError, match=r"t must be an int in \[0, 99\], got 100"):
        sampler.step(process, x, 100, 50, x, g, prediction_type="eps")
    with pytest.raises(ValueError, match=r"t must be an int in \[0, 99\], got -1"):
        sampler.step(process, x, -1, -2, x, g, prediction_type="eps")
    with pytest.raises(ValueError, match=r"t_prev must be an int in \[-1, t - 1 = 49\], got 50"):
        sampler.step(process, x, 50, 50, x, g, prediction_type="eps")
    with pytest.raises(ValueError, match=r"t_prev.*got -2"):
        sampler.step(process, x, 50, -2, x, g, prediction_type="eps")
    with pytest.raises(ValueError, match=r"model_output has shape \(2, 4\) but x_t has shape \(2, 3\)"):
        sampler.step(process, torch.zeros(2, 4), 50, 40, x, g, prediction_type="eps")
    with pytest.raises(ValueError, match=r"'epsilon'.*\['eps', 'x0', 'v'\]"):
        sampler.step(process, x, 50, 40, x, g, prediction_type="epsilon")
    with pytest.raises(ValueError, match=r"noise has shape"):
        sampler.step(process, x, 50, 40, x, noise=torch.zeros(1, 3), prediction_type="eps")


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spacing": "even"}, r"'even'.*\['linspace', 'leading', 'trailing'\]"),
        ({"num_steps": 0}, "num_steps.*0"),
        ({"clip_range": 0.0}, "clip_range.*0.0"),
        ({"dynamic_thresholding_ratio": 1.5}, r"dynamic_thresholding_ratio.*\(0, 1\].*1.5"),
        ({"sample_max_value": 0.5}, "sample_max_value.*0.5"),
    ],
)
def test_bad_options(name: str, kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SAMPLERS[name](**kwargs)


def test_threshold_sample_matches_diffusers() -> None:
    sched = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.8, sample_max_value=2.0)
    x = torch.randn(5, 3, 6, 6, generator=torch.Generator().manual_seed(0)) * torch.tensor(
        [0.3, 1.0, 1.5, 2.5, 5.0]
    ).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(threshold_sample(x, 0.8, 2.0), sched._threshold_sample(x))


def test_threshold_sample_closed_form_2d() -> None:
    x = torch.tensor([[0.2, -0.4], [3.0, -1.5], [10.0, 0.0]], dtype=torch.float64)
    out = threshold_sample(x, ratio=1.0, max_value=4.0).numpy()
    # s = max |x| per row, clamped to [1, 4]; x -> clip(x, -s, s) / s
    expected = np.array([[0.2, -0.4], [1.0, -0.5], [1.0, 0.0]])
    np.testing.assert_allclose(out, expected)
