"""EulerSampler against diffusers' EulerDiscreteScheduler and EDM's Algorithm 2 (arXiv:2206.00364).

Documented differences, and how the tests bridge them:

- difflab keeps every sample in the VP scale x = sqrt(alpha-bar) x_0 + sqrt(1 - alpha-bar) eps
  (the scale of the loop, DDIM and the trajectories); diffusers steps x / sqrt(alpha-bar)
  (EDM's scale). The tests convert: x_edm = sqrt(1 + sigma^2) x_vp.
- x_T: difflab starts from N(0, I) in the VP scale, i.e. std sqrt(1 + sigma_0^2) in EDM's;
  diffusers' ``init_noise_sigma`` is sigma_0 for ``linspace``/``trailing`` (a relative 1 /
  (2 sigma_0^2) ~ 2e-5 smaller). Whole runs give diffusers our start.
- Churn: diffusers calls the network before adding the churn noise, at (x, sigma), and then
  converts its output as if made at sigma-hat (eps) or at sigma (v); EDM's Algorithm 2
  evaluates D(x-hat; sigma-hat), as difflab does. They agree on one step when the output is
  given (eps), so the churn step is checked against diffusers for eps and whole churned runs
  against Algorithm 2 written out (``oracle.edm_algorithm2``).
- Karras sigmas span [sigma(0), sigma(T - 1)] whatever the spacing; diffusers takes them from
  the spaced grid, which is the same range for ``linspace`` (used for the Karras cases).
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from difflab.diffusion.process import GaussianDiffusion
from difflab.samplers import EulerSampler, generate, vp_sigmas
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


def _oracle(process, sampler: EulerSampler, prediction_type: str, n: int) -> EulerDiscreteScheduler:
    sched = EulerDiscreteScheduler(
        trained_betas=process.betas.numpy(),
        prediction_type=DIFFUSERS_PREDICTION[prediction_type],
        use_karras_sigmas=sampler.use_karras_sigmas,
        timestep_spacing="linspace" if sampler.use_karras_sigmas else sampler.spacing,
    )
    sched.set_timesteps(n)
    sched.set_begin_index(0)
    sched.is_scale_input_called = True
    return sched


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_single_steps_match_diffusers_float64(process, karras: bool, prediction_type: str) -> None:
    n = 10
    sampler = EulerSampler(num_steps=n, use_karras_sigmas=karras, clip_sample=False)
    state = sampler.init_state(process, prediction_type)
    with float64_scheduler(EulerDiscreteScheduler):
        sched = _oracle(process, sampler, prediction_type, n)
        set_sigmas(sched, state.sigmas)
        torch.testing.assert_close(sched.timesteps.double(), state.timesteps.double(), rtol=0, atol=1e-4)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
        for i in range(n):
            out = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
            model = Scripted([out])
            ours = sampler.advance(model, x, state)
            assert model.calls[0][0] is x and model.calls[0][1] == state.t(i)
            ref = sched.step(out, sched.timesteps[i], x * math.sqrt(1 + state.sigma(i) ** 2))
            assert ref.prev_sample.dtype == torch.float64
            torch.testing.assert_close(ours.pred_x0, ref.pred_original_sample, rtol=0, atol=1e-10)
            torch.testing.assert_close(ours.prev_sample * math.sqrt(1 + state.sigma(i + 1) ** 2), ref.prev_sample, rtol=0, atol=1e-10)
            x = ours.prev_sample


@pytest.mark.parametrize("prediction_type", ["eps", "v"])
def test_karras_range_matches_diffusers_float64(process, prediction_type: str) -> None:
    # EDM's sigma_max = 80 (and a raised sigma_min): diffusers' sigma_min / sigma_max options
    n = 8
    sampler = EulerSampler(num_steps=n, use_karras_sigmas=True, sigma_min=0.05, sigma_max=80.0, clip_sample=False)
    state = sampler.init_state(process, prediction_type)
    assert state.sigmas[0] == pytest.approx(80.0) and state.sigmas[-2] == pytest.approx(0.05)
    with float64_scheduler(EulerDiscreteScheduler):
        sched = EulerDiscreteScheduler(
            trained_betas=process.betas.numpy(), prediction_type=DIFFUSERS_PREDICTION[prediction_type],
            use_karras_sigmas=True, sigma_min=0.05, sigma_max=80.0,
        )
        sched.set_timesteps(n)
        sched.set_begin_index(0)
        sched.is_scale_input_called = True
        set_sigmas(sched, state.sigmas)
        torch.testing.assert_close(sched.timesteps.double(), state.timesteps, rtol=0, atol=1e-4)
        g = torch.Generator().manual_seed(4)
        x = torch.randn(3, 5, generator=g, dtype=torch.float64)
        for i in range(n):
            out = torch.randn(3, 5, generator=g, dtype=torch.float64)
            ours = sampler.advance(Scripted([out]), x, state)
            ref = sched.step(out, sched.timesteps[i], x * math.sqrt(1 + state.sigma(i) ** 2))
            torch.testing.assert_close(ours.prev_sample * math.sqrt(1 + state.sigma(i + 1) ** 2), ref.prev_sample, rtol=0, atol=1e-10)
            x = ours.prev_sample


def test_karras_range_is_checked(process) -> None:
    with pytest.raises(ValueError, match=r"sigma_max=500 must lie in the schedule's range \[0.01, 157.4\]"):
        EulerSampler(use_karras_sigmas=True, sigma_max=500.0).init_state(process, "eps")
    with pytest.raises(ValueError, match="pass use_karras_sigmas=true"):
        EulerSampler(sigma_max=80.0)
    with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
        EulerSampler(use_karras_sigmas=True, sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="sigma_max must be a number > 0 or null"):
        EulerSampler(use_karras_sigmas=True, sigma_max=0.0)


def test_churn_step_matches_diffusers_float64(process) -> None:
    n = 10
    sampler = EulerSampler(num_steps=n, s_churn=3.0, s_tmin=0.5, s_tmax=60.0, clip_sample=False)
    state = sampler.init_state(process, "eps")
    churned = 0
    with float64_scheduler(EulerDiscreteScheduler):
        sched = _oracle(process, sampler, "eps", n)
        set_sigmas(sched, state.sigmas)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
        for i in range(n):
            out = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
            model = Scripted([out])
            ours = sampler.advance(model, x, state, torch.Generator().manual_seed(10 + i))
            ref = sched.step(
                out, sched.timesteps[i], x * math.sqrt(1 + state.sigma(i) ** 2), s_churn=3.0, s_tmin=0.5, s_tmax=60.0,
                generator=torch.Generator().manual_seed(10 + i),
            )
            torch.testing.assert_close(ours.prev_sample * math.sqrt(1 + state.sigma(i + 1) ** 2), ref.prev_sample, rtol=0, atol=1e-10)
            if 0.5 <= state.sigma(i) <= 60.0:
                churned += 1
                assert isinstance(model.calls[0][1], float) and model.calls[0][1] > state.t(i)  # at sigma-hat
            x = ours.prev_sample
    assert 0 < churned < n


@pytest.mark.parametrize("prediction_type", ["eps", "v"])
@pytest.mark.parametrize("karras", [False, True])
def test_churned_run_is_edm_algorithm2(process, prediction_type: str, karras: bool) -> None:
    n, options = 12, {"s_churn": 4.0, "s_tmin": 0.1, "s_tmax": 30.0, "s_noise": 1.007}
    sampler = EulerSampler(num_steps=n, use_karras_sigmas=karras, clip_sample=False, **options)
    ours = generate(
        smooth_model, process, sampler, (3, 2, 3), torch.Generator().manual_seed(2), progress=False,
        prediction_type=prediction_type,
    )
    # the same run in float32 through Algorithm 2 (without lines 9-11)
    state = sampler.init_state(process, prediction_type)
    g = torch.Generator().manual_seed(2)
    t_steps = state.sigmas.tolist()
    x0 = torch.randn(3, 2, 3, generator=g) * math.sqrt(1 + t_steps[0] ** 2)
    denoise = edm_denoiser(smooth_model, vp_sigmas(process).log(), prediction_type)
    ref = edm_algorithm2(
        denoise, t_steps, x0, g, heun=False, S_churn=4.0, S_tmin=0.1, S_tmax=30.0, S_noise=1.007
    )
    assert_close_float32(ours, ref)


@pytest.mark.parametrize("n", [10, 20])
@pytest.mark.parametrize("prediction_type", ["eps", "v"])
@pytest.mark.parametrize("karras", [False, True])
def test_whole_run_matches_diffusers_float32(process, n: int, prediction_type: str, karras: bool) -> None:
    sampler = EulerSampler(num_steps=n, use_karras_sigmas=karras, clip_sample=False)
    shape = (2, 1, 5, 5)
    ours = generate(
        smooth_model, process, sampler, shape, torch.Generator().manual_seed(3), progress=False,
        prediction_type=prediction_type,
    )
    sched = _oracle(process, sampler, prediction_type, n)
    sigma_0 = float(sampler.init_state(process, prediction_type).sigmas[0])
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(3)) * math.sqrt(1 + sigma_0**2)
    assert_close_float32(ours, run_diffusers(sched, smooth_model, x_T))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"s_churn": -1.0}, "s_churn must be a number >= 0, got -1.0"),
        ({"s_noise": float("nan")}, "s_noise must be a number >= 0"),
        ({"s_tmin": 2.0, "s_tmax": 1.0}, "s_tmax must be >= s_tmin"),
        ({"s_churn": "40"}, "s_churn must be a number"),
    ],
)
def test_bad_options(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EulerSampler(**kwargs)
