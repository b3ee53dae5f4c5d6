"""DDPMSampler against diffusers' DDPMScheduler.step (Ho et al. 2020, eq. 7 / Algorithm 2).

The oracle gets our float64 alphas_cumprod so that both sides compute in float64; the same
noise comes from two generators in the same state.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from difflab.diffusion.process import GaussianDiffusion
from difflab.samplers import DDPMSampler, prev_timesteps

DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


@pytest.fixture(scope="module")
def process() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("linear", 1000)


def _oracle(process: GaussianDiffusion, n: int, **config) -> DDPMScheduler:
    sched = DDPMScheduler(num_train_timesteps=process.num_timesteps, **config)
    sched.set_timesteps(n)
    sched.alphas_cumprod = process.alphas_cumprod.clone()
    return sched


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_step_matches_diffusers(process: GaussianDiffusion, prediction_type: str, spacing: str) -> None:
    n = 10
    sampler = DDPMSampler(num_steps=n, spacing=spacing)
    sched = _oracle(
        process, n, prediction_type=DIFFUSERS_PREDICTION[prediction_type], timestep_spacing=spacing, clip_sample=True
    )
    timesteps = sampler.timesteps(1000)
    assert torch.equal(timesteps, sched.timesteps)
    previous = prev_timesteps(timesteps)
    g = torch.Generator().manual_seed(0)
    for i in (0, 4, n - 1):
        t, t_prev = int(timesteps[i]), int(previous[i])
        x_t = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
        out = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
        ours = sampler.step(
            process, out, t, t_prev, x_t, torch.Generator().manual_seed(100 + i), prediction_type=prediction_type
        )
        ref = sched.step(out, t, x_t, generator=torch.Generator().manual_seed(100 + i))
        torch.testing.assert_close(ours.pred_x0, ref.pred_original_sample, atol=1e-8, rtol=0)
        torch.testing.assert_close(ours.prev_sample, ref.prev_sample, atol=1e-8, rtol=0)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_variance_types_match_diffusers(process: GaussianDiffusion, variance_type: str) -> None:
    sampler = DDPMSampler(variance_type=variance_type, clip_sample=False)
    sched = _oracle(process, 1000, variance_type=variance_type, clip_sample=False)
    g = torch.Generator().manual_seed(1)
    for t in (999, 500, 1, 0):
        x_t = torch.randn(4, 3, generator=g, dtype=torch.float64)
        out = torch.randn(4, 3, generator=g, dtype=torch.float64)
        ours = sampler.step(process, out, t, t - 1, x_t, torch.Generator().manual_seed(t), prediction_type="eps")
        ref = sched.step(out, t, x_t, generator=torch.Generator().manual_seed(t))
        torch.testing.assert_close(ours.prev_sample, ref.prev_sample, atol=1e-8, rtol=0)


def test_dynamic_thresholding_matches_diffusers(process: GaussianDiffusion) -> None:
    sampler = DDPMSampler(
        num_steps=20, dynamic_thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.5
    )
    sched = _oracle(
        process, 20, prediction_type="sample", thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.5
    )
    g = torch.Generator().manual_seed(2)
    x_t = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    out = 3 * torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64) * torch.tensor([0.2, 0.5, 1, 2.0]).reshape(
        -1, 1, 1, 1
    ).double()
    ours = sampler.step(process, out, 500, 450, x_t, torch.Generator().manual_seed(3), prediction_type="x0")
    ref = sched.step(out, 500, x_t, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours.pred_x0, ref.pred_original_sample, atol=1e-8, rtol=0)
    torch.testing.assert_close(ours.prev_sample, ref.prev_sample, atol=1e-8, rtol=0)
    assert ours.pred_x0.abs().max() <= 1.0


def test_full_run_matches_diffusers_loop(process: GaussianDiffusion) -> None:
    sampler = DDPMSampler(num_steps=20, spacing="leading")
    sched = _oracle(process, 20)

    def model(x, t):
        return 0.5 * torch.tanh(x) + 1e-3 * t.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))

    x0 = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ga, gb = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = x0.clone(), x0.clone()
    timesteps = sampler.timesteps(1000)
    for t, t_prev in zip(timesteps.tolist(), prev_timesteps(timesteps).tolist()):
        tb = torch.full((2,), t)
        a = sampler.step(process, model(a, tb), t, t_prev, a, ga, prediction_type="eps").prev_sample
        b = sched.step(model(b, tb), t, b, generator=gb).prev_sample
    torch.testing.assert_close(a, b, atol=1e-8, rtol=0)


def test_noise_only_before_last_step(process: GaussianDiffusion) -> None:
    sampler = DDPMSampler(clip_sample=False)
    x_t = torch.randn(2, 3, generator=torch.Generator().manual_seed(6))
    out = torch.randn(2, 3, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(8)
    state = g.get_state()
    last = sampler.step(process, out, 0, -1, x_t, g, prediction_type="eps")
    assert torch.equal(g.get_state(), state)  # no draw at the last step
    # the last step returns the posterior mean = x_0-hat (alpha-bar_{-1} = 1)
    torch.testing.assert_close(last.prev_sample, last.pred_x0)
    sampler.step(process, out, 5, 4, x_t, g, prediction_type="eps")
    assert not torch.equal(g.get_state(), state)


def test_explicit_noise_equals_generator_draw(process: GaussianDiffusion) -> None:
    sampler = DDPMSampler()
    x_t = torch.randn(2, 3, generator=torch.Generator().manual_seed(6))
    out = torch.randn(2, 3, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(2, 3, generator=torch.Generator().manual_seed(9))
    a = sampler.step(process, out, 10, 9, x_t, torch.Generator().manual_seed(9), prediction_type="eps")
    b = sampler.step(process, out, 10, 9, x_t, noise=noise, prediction_type="eps")
    torch.testing.assert_close(a.prev_sample, b.prev_sample)


def test_bad_options() -> None:
    with pytest.raises(ValueError, match=r"'learned'.*\['fixed_small', 'fixed_large'\]"):
        DDPMSampler(variance_type="learned")
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"'epsilon'.*\['eps', 'x0', 'v'\]"):
        DDPMSampler().step(GaussianDiffusion.from_schedule("linear", 100), x, 10, 9, x, prediction_type="epsilon")


def test_stochastic_step_needs_generator(process: GaussianDiffusion) -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="generator"):
        DDPMSampler().step(process, x, 10, 9, x, None, prediction_type="eps")
