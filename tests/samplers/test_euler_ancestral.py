"""EulerAncestralSampler against diffusers' EulerAncestralDiscreteScheduler.

Differences of scale and start as in test_euler.py. diffusers draws (and discards) noise at the
last step, where sigma_up = 0; difflab draws none there. diffusers' scheduler accepts no
x0-prediction; difflab's does (the x_0 conversion is the one of every sampler).
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler

from difflab.diffusion.process import GaussianDiffusion
from difflab.samplers import EulerAncestralSampler, EulerSampler, generate
from tests.samplers.oracle import (
    DIFFUSERS_PREDICTION,
    Scripted,
    assert_close_float32,
    float64_scheduler,
    run_diffusers,
    set_sigmas,
    smooth_model,
)


@pytest.fixture(scope="module")
def process() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("linear", 1000)


def _oracle(process, prediction_type: str, n: int) -> EulerAncestralDiscreteScheduler:
    sched = EulerAncestralDiscreteScheduler(
        trained_betas=process.betas.numpy(), prediction_type=DIFFUSERS_PREDICTION[prediction_type],
        timestep_spacing="trailing",
    )
    sched.set_timesteps(n)
    sched.set_begin_index(0)
    sched.is_scale_input_called = True
    return sched


@pytest.mark.parametrize("prediction_type", ["eps", "v"])
def test_single_steps_match_diffusers_float64(process, prediction_type: str) -> None:
    n = 10
    sampler = EulerAncestralSampler(num_steps=n, clip_sample=False)
    state = sampler.init_state(process, prediction_type)
    with float64_scheduler(EulerAncestralDiscreteScheduler):
        sched = _oracle(process, prediction_type, n)
        set_sigmas(sched, state.sigmas)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
        for i in range(n):
            out = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
            ours = sampler.advance(Scripted([out]), x, state, torch.Generator().manual_seed(20 + i))
            ref = sched.step(
                out, sched.timesteps[i], x * math.sqrt(1 + state.sigma(i) ** 2), generator=torch.Generator().manual_seed(20 + i)
            )
            assert ref.prev_sample.dtype == torch.float64
            torch.testing.assert_close(ours.pred_x0, ref.pred_original_sample, rtol=0, atol=1e-10)
            torch.testing.assert_close(ours.prev_sample * math.sqrt(1 + state.sigma(i + 1) ** 2), ref.prev_sample, rtol=0, atol=1e-10)
            x = ours.prev_sample


@pytest.mark.parametrize("n", [10, 20])
@pytest.mark.parametrize("prediction_type", ["eps", "v"])
def test_whole_run_matches_diffusers_float32(process, n: int, prediction_type: str) -> None:
    sampler = EulerAncestralSampler(num_steps=n, clip_sample=False)
    shape = (2, 1, 5, 5)
    ours = generate(
        smooth_model, process, sampler, shape, torch.Generator().manual_seed(3), progress=False,
        prediction_type=prediction_type,
    )
    sched = _oracle(process, prediction_type, n)
    sigma_0 = float(sampler.init_state(process, prediction_type).sigmas[0])
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(shape, generator=g) * math.sqrt(1 + sigma_0**2)
    assert_close_float32(ours, run_diffusers(sched, smooth_model, x_T, generator=g))


def test_eta_zero_is_euler(process) -> None:
    a = generate(
        smooth_model, process, EulerAncestralSampler(num_steps=8, eta=0.0), (3, 4), torch.Generator().manual_seed(1),
        progress=False, prediction_type="v",
    )
    b = generate(
        smooth_model, process, EulerSampler(num_steps=8), (3, 4), torch.Generator().manual_seed(1),
        progress=False, prediction_type="v",
    )
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_noise_is_the_ddpm_posterior_std(process) -> None:
    # sigma_up^2 = sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2: in the VP scale, the DDPM
    # posterior variance beta-tilde between the two grid points (Ho et al. 2020, eq. 7)
    sampler = EulerAncestralSampler(num_steps=10, clip_sample=False)
    state = sampler.init_state(process, "x0")
    state.index = 3
    x0 = torch.zeros(20000, 1, dtype=torch.float64)
    out = sampler.advance(Scripted([x0]), torch.zeros_like(x0), state, torch.Generator().manual_seed(0))
    t, t_prev = state.t(3), state.t(4)
    ab, ab_prev = float(process.alphas_cumprod[t]), float(process.alphas_cumprod[t_prev])
    beta_tilde = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    assert float(out.prev_sample.std()) == pytest.approx(math.sqrt(beta_tilde), rel=0.02)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"eta": 1.5}, r"eta must be a number in \[0, 1\], got 1.5"), ({"s_noise": -1}, "s_noise must be a number >= 0")],
)
def test_bad_options(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EulerAncestralSampler(**kwargs)
