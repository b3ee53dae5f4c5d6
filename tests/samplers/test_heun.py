"""HeunSampler against diffusers' HeunDiscreteScheduler and EDM's Algorithm 2 (arXiv:2206.00364).

The differences of scale and start are those of test_euler.py (difflab's samples are VP-scaled;
whole runs give diffusers our start). diffusers' Heun has no churn, so Heun with churn is
checked against Algorithm 2 written out (``oracle.edm_algorithm2``). diffusers runs a step as
two ``step`` calls (its grid repeats every inner sigma); difflab's one ``advance`` makes both
network calls.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import HeunDiscreteScheduler

from difflab.diffusion.process import GaussianDiffusion
from difflab.samplers import HeunSampler, generate, vp_sigmas
from tests.samplers.oracle import (
    DIFFUSERS_PREDICTION,
    Scripted,
    assert_close_float32,
    edm_algorithm2,
    edm_denoiser,
    float64_scheduler,
    run_diffusers,
    set_sigmas,
    smooth_model,
)


@pytest.fixture(scope="module")
def process() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("linear", 1000)


def _oracle(process, sampler: HeunSampler, prediction_type: str, n: int) -> HeunDiscreteScheduler:
    sched = HeunDiscreteScheduler(
        trained_betas=process.betas.numpy(),
        prediction_type=DIFFUSERS_PREDICTION[prediction_type],
        use_karras_sigmas=sampler.use_karras_sigmas,
        timestep_spacing="linspace" if sampler.use_karras_sigmas else sampler.spacing,
    )
    sched.set_timesteps(n)
    sched.set_begin_index(0)
    return sched


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_single_steps_match_diffusers_float64(process, karras: bool, prediction_type: str) -> None:
    n = 10
    sampler = HeunSampler(num_steps=n, use_karras_sigmas=karras, clip_sample=False)
    state = sampler.init_state(process, prediction_type)
    s = state.sigmas
    with float64_scheduler(HeunDiscreteScheduler):
        sched = _oracle(process, sampler, prediction_type, n)
        set_sigmas(sched, torch.cat([s[:1], s[1:-1].repeat_interleave(2), s[-1:]]))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
        for i in range(n):
            sigma, sigma_next = state.sigma(i), state.sigma(i + 1)
            outs = [torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(2)]
            model = Scripted(outs)
            ours = sampler.advance(model, x, state)
            ref = sched.step(outs[0], sched.timesteps[0], x * math.sqrt(1 + sigma**2))
            torch.testing.assert_close(ours.pred_x0, ref.pred_original_sample, rtol=0, atol=1e-10)
            if sigma_next > 0:
                # the second network call: at the Euler prediction, VP-scaled, at the next timestep
                assert len(model.calls) == 2 and model.calls[1][1] == state.t(i + 1)
                torch.testing.assert_close(model.calls[1][0], ref.prev_sample / math.sqrt(1 + sigma_next**2), rtol=0, atol=1e-10)
                ref = sched.step(outs[1], sched.timesteps[0], ref.prev_sample)
            else:
                assert len(model.calls) == 1  # the last step is a plain Euler step
            assert ref.prev_sample.dtype == torch.float64
            torch.testing.assert_close(ours.prev_sample * math.sqrt(1 + sigma_next**2), ref.prev_sample, rtol=0, atol=1e-10)
            x = ours.prev_sample


@pytest.mark.parametrize("n", [10, 20])
@pytest.mark.parametrize("prediction_type", ["eps", "v"])
@pytest.mark.parametrize("karras", [False, True])
def test_whole_run_matches_diffusers_float32(process, n: int, prediction_type: str, karras: bool) -> None:
    sampler = HeunSampler(num_steps=n, use_karras_sigmas=karras, clip_sample=False)
    shape = (2, 1, 5, 5)
    ours = generate(
        smooth_model, process, sampler, shape, torch.Generator().manual_seed(3), progress=False,
        prediction_type=prediction_type,
    )
    sched = _oracle(process, sampler, prediction_type, n)
    assert len(sched.timesteps) == sampler.nfe(1000) == 2 * n - 1  # one diffusers step per evaluation
    sigma_0 = float(sampler.init_state(process, prediction_type).sigmas[0])
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(3)) * math.sqrt(1 + sigma_0**2)
    assert_close_float32(ours, run_diffusers(sched, smooth_model, x_T))


@pytest.mark.parametrize("prediction_type", ["eps", "v", "x0"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003},  # EDM's ImageNet-64 setting
        {"s_churn": 5.0, "use_karras_sigmas": True},
    ],
    ids=["deterministic", "churn", "churn-karras"],
)
def test_run_is_edm_algorithm2(process, prediction_type: str, options) -> None:
    n = 9
    sampler = HeunSampler(num_steps=n, clip_sample=False, **options)
    ours = generate(
        smooth_model, process, sampler, (3, 2, 3), torch.Generator().manual_seed(5), progress=False,
        prediction_type=prediction_type,
    )
    state = sampler.init_state(process, prediction_type)
    g = torch.Generator().manual_seed(5)
    t_steps = state.sigmas.tolist()
    x0 = torch.randn(3, 2, 3, generator=g) * math.sqrt(1 + t_steps[0] ** 2)
    denoise = edm_denoiser(smooth_model, vp_sigmas(process).log(), prediction_type)
    ref = edm_algorithm2(
        denoise, t_steps, x0, g, heun=True, S_churn=sampler.s_churn, S_tmin=sampler.s_tmin, S_tmax=sampler.s_tmax,
        S_noise=sampler.s_noise,
    )
    assert_close_float32(ours, ref)


def test_nfe_is_two_per_step_but_the_last() -> None:
    assert HeunSampler(num_steps=18, use_karras_sigmas=True).nfe(1000) == 35  # EDM's CIFAR-10 setting
    assert HeunSampler(num_steps=1).nfe(1000) == 1
    assert HeunSampler(num_steps=10).key_part(1000) == "heun_nfe19"


def _gaussian_run(sampler, n: int = 1000) -> torch.Tensor:
    """Samples of x_0 ~ N(0.5, 0.1^2) in 2-D drawn with its exact eps on the cosine schedule."""
    process = GaussianDiffusion.from_schedule("cosine", 1000)
    ab_all, mu, s = process.alphas_cumprod, 0.5, 0.1

    def model(x_t, t):
        ab = ab_all[t].unsqueeze(1)
        x0 = mu + ab.sqrt() * s**2 / (ab * s**2 + 1 - ab) * (x_t.double() - ab.sqrt() * mu)
        return ((x_t.double() - ab.sqrt() * x0) / (1 - ab).sqrt()).to(x_t.dtype)

    return generate(model, process, sampler, (n, 2), torch.Generator().manual_seed(0), progress=False,
                    prediction_type="eps")


@pytest.mark.parametrize("name", ["euler", "ddim"])
def test_first_order_samplers_land_on_a_gaussian_on_the_cosine_grid(name):
    from difflab.samplers import SAMPLERS

    x = _gaussian_run(SAMPLERS[name](num_steps=10))
    assert float((x.mean(0) - 0.5).abs().max()) < 0.01


def test_heun_lands_on_a_gaussian_on_the_cosine_grid():
    # the first step goes from sigma(T - 1) = 2.03e4 to 6.4, a factor of 3,000: Heun's trapezoid
    # over it amplifies any mismatch between the step's sigma and the timestep the model sees
    # there (a sigma table floored at alpha-bar 2**-24, i.e. 4096, put every sample at +1)
    x = _gaussian_run(HeunSampler(num_steps=10))
    assert float((x.mean(0) - 0.5).abs().max()) < 0.01
