"""DDIMSampler against diffusers' DDIMScheduler.step (Song et al. 2021, arXiv:2010.02502, eqs. 12, 16).

diffusers' DDIMScheduler derives t_prev as t - T // n, which is not the next entry of a
``linspace`` grid. To check a step on any (t, t_prev) pair, the oracle is built with
``num_train_timesteps = t - t_prev`` and ``num_inference_steps = 1`` (so its stride is exactly
t - t_prev) and given our float64 alphas_cumprod of the full process.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from difflab.diffusion.process import GaussianDiffusion
from difflab.samplers import DDIMSampler, DDPMSampler, prev_timesteps

DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


@pytest.fixture(scope="module")
def process() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("linear", 1000)


def _oracle_step(process, t, t_prev, out, x_t, prediction_type, eta=0.0, noise=None, **config):
    sched = DDIMScheduler(
        num_train_timesteps=t - t_prev, prediction_type=DIFFUSERS_PREDICTION[prediction_type], **config
    )
    sched.alphas_cumprod = process.alphas_cumprod.clone()
    sched.num_inference_steps = 1
    return sched.step(out, t, x_t, eta=eta, variance_noise=noise if eta > 0 else None)


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_step_matches_diffusers(process, prediction_type: str, spacing: str, eta: float) -> None:
    n = 10
    sampler = DDIMSampler(num_steps=n, eta=eta, spacing=spacing)
    timesteps = sampler.timesteps(1000)
    previous = prev_timesteps(timesteps)
    g = torch.Generator().manual_seed(0)
    for i in (0, 5, n - 1):
        t, t_prev = int(timesteps[i]), int(previous[i])
        x_t = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
        out = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
        noise = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
        ours = sampler.step(process, out, t, t_prev, x_t, noise=noise, prediction_type=prediction_type)
        ref = _oracle_step(process, t, t_prev, out, x_t, prediction_type, eta, noise, clip_sample=True)
        torch.testing.assert_close(ours.pred_x0, ref.pred_original_sample, atol=1e-8, rtol=0)
        torch.testing.assert_close(ours.prev_sample, ref.prev_sample, atol=1e-8, rtol=0)


def test_generator_noise_equals_explicit_noise(process) -> None:
    sampler = DDIMSampler(eta=1.0)
    x_t = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    out = torch.randn(2, 3, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(2, 3, generator=torch.Generator().manual_seed(3))
    a = sampler.step(process, out, 500, 480, x_t, torch.Generator().manual_seed(3), prediction_type="eps")
    b = sampler.step(process, out, 500, 480, x_t, noise=noise, prediction_type="eps")
    torch.testing.assert_close(a.prev_sample, b.prev_sample)


def test_full_run_matches_diffusers_loop(process) -> None:
    # trailing with T // n == stride, so the real DDIMScheduler walks the same grid
    sampler = DDIMSampler(num_steps=50, spacing="trailing")
    sched = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing", prediction_type="v_prediction")
    sched.set_timesteps(50)
    sched.alphas_cumprod = process.alphas_cumprod.clone()
    timesteps = sampler.timesteps(1000)
    assert torch.equal(timesteps, sched.timesteps)

    def model(x, t):
        return 0.5 * torch.tanh(x) - 1e-3 * t.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))

    a = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    b = a.clone()
    for t, t_prev in zip(timesteps.tolist(), prev_timesteps(timesteps).tolist()):
        tb = torch.full((2,), t)
        a = sampler.step(process, model(a, tb), t, t_prev, a, prediction_type="v").prev_sample
        b = sched.step(model(b, tb), t, b).prev_sample
    torch.testing.assert_close(a, b, atol=1e-8, rtol=0)


def test_eta_one_all_steps_equals_ddpm_fixed_small() -> None:
    process = GaussianDiffusion.from_schedule("cosine", 100)
    ddim = DDIMSampler(num_steps=100, eta=1.0, spacing="leading", clip_sample=False)
    ddpm = DDPMSampler(variance_type="fixed_small", clip_sample=False)
    assert torch.equal(ddim.timesteps(100), ddpm.timesteps(100))

    def model(x, t):
        return torch.sin(x) + 1e-2 * t.to(x.dtype).unsqueeze(1)

    a = torch.randn(8, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    b = a.clone()
    ga, gb = torch.Generator().manual_seed(6), torch.Generator().manual_seed(6)
    timesteps = ddpm.timesteps(100)
    for t, t_prev in zip(timesteps.tolist(), prev_timesteps(timesteps).tolist()):
        tb = torch.full((8,), t)
        a = ddim.step(process, model(a, tb), t, t_prev, a, ga, prediction_type="eps").prev_sample
        b = ddpm.step(process, model(b, tb), t, t_prev, b, gb, prediction_type="eps").prev_sample
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


def test_eta_zero_is_deterministic_and_draws_nothing(process) -> None:
    sampler = DDIMSampler(eta=0.0)
    x_t = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    out = torch.randn(2, 3, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    a = sampler.step(process, out, 500, 480, x_t, g, prediction_type="eps")
    assert torch.equal(g.get_state(), state)
    b = sampler.step(process, out, 500, 480, x_t, None, prediction_type="eps")
    assert torch.equal(a.prev_sample, b.prev_sample)


def test_zero_terminal_snr_first_step_is_finite_with_v() -> None:
    p = GaussianDiffusion.from_schedule("linear", 1000, zero_terminal_snr=True)
    sampler = DDIMSampler(num_steps=10, spacing="trailing")
    x_t = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    v = torch.randn(2, 3, generator=torch.Generator().manual_seed(2))
    out = sampler.step(p, v, 999, 899, x_t, prediction_type="v")
    assert torch.isfinite(out.prev_sample).all()
    torch.testing.assert_close(out.pred_x0, (-v).clamp(-1, 1))  # x_0 = -v at zero SNR


@pytest.mark.parametrize("eta", [-0.1, 1.5, float("nan"), "0.5"])
def test_bad_eta(eta) -> None:
    with pytest.raises(ValueError, match=r"eta must be a number in \[0, 1\]"):
        DDIMSampler(eta=eta)


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
@pytest.mark.parametrize("setting", ["explicit", "guided"])
def test_clipped_model_output_matches_diffusers(process, prediction_type: str, setting: str) -> None:
    """use_clipped_model_output=True (or the default on a guided output) is diffusers' option of
    that name: eps re-derived from the clipped x_0; explicit False stays diffusers' default."""
    g = torch.Generator().manual_seed(4)
    x_t, out, noise = (3 * torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    t, t_prev = 600, 540
    ref = _oracle_step(process, t, t_prev, out, x_t, prediction_type, 0.6, noise, clip_sample=True)
    sched = DDIMScheduler(num_train_timesteps=t - t_prev, prediction_type=DIFFUSERS_PREDICTION[prediction_type],
                          clip_sample=True)
    sched.alphas_cumprod = process.alphas_cumprod.clone()
    sched.num_inference_steps = 1
    ref_clipped = sched.step(out, t, x_t, eta=0.6, variance_noise=noise, use_clipped_model_output=True)
    if setting == "explicit":
        ours = DDIMSampler(eta=0.6, use_clipped_model_output=True).step(process, out, t, t_prev, x_t, noise=noise,
                                                                        prediction_type=prediction_type)
        raw = DDIMSampler(eta=0.6, use_clipped_model_output=False).step(process, out, t, t_prev, x_t, noise=noise,
                                                                        prediction_type=prediction_type, guided=True)
    else:
        ours = DDIMSampler(eta=0.6).step(process, out, t, t_prev, x_t, noise=noise, prediction_type=prediction_type,
                                         guided=True)
        raw = DDIMSampler(eta=0.6).step(process, out, t, t_prev, x_t, noise=noise, prediction_type=prediction_type)
    assert not torch.allclose(ref_clipped.prev_sample, ref.prev_sample)  # the clip is active: the two differ
    torch.testing.assert_close(ours.prev_sample, ref_clipped.prev_sample, atol=1e-8, rtol=0)
    torch.testing.assert_close(raw.prev_sample, ref.prev_sample, atol=1e-8, rtol=0)


def test_clipped_model_output_key_and_validation() -> None:
    assert DDIMSampler(num_steps=50, eta=1.0).key_part(1000) == "ddim50_eta1"
    assert DDIMSampler(num_steps=50, eta=1.0, use_clipped_model_output=True).key_part(1000) == "ddim50_eta1_clipeps"
    assert DDIMSampler(num_steps=50, use_clipped_model_output=False).key_part(1000) == "ddim50_modeleps"
    # nothing is clipped: the two eps are one, the key names nothing
    assert DDIMSampler(num_steps=50, clip_sample=False, use_clipped_model_output=True).key_part(1000) == "ddim50_noclip"
    with pytest.raises(ValueError, match="use_clipped_model_output must be true"):
        DDIMSampler(use_clipped_model_output="yes")
