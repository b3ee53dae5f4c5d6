"""GaussianDiffusion against diffusers' DDPMScheduler and the closed forms of Ho et al. 2020."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from difflab.diffusion.process import GaussianDiffusion
from difflab.diffusion.schedules import cosine_beta_schedule

BUFFERS = [
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
]


@pytest.fixture(scope="module")
def process() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("linear", 1000)


def _ab(betas: torch.Tensor) -> np.ndarray:
    return np.cumprod(1.0 - betas.numpy().astype(np.float64))


def test_buffers_float64_and_registered(process: GaussianDiffusion) -> None:
    names = dict(process.named_buffers())
    for name in BUFFERS:
        assert name in names, name
        assert names[name].dtype == torch.float64, name
        assert names[name].shape == (1000,), name
    assert set(BUFFERS) <= set(process.state_dict())
    assert process.num_timesteps == 1000
    ab = _ab(process.betas)
    np.testing.assert_allclose(process.alphas_cumprod.numpy(), ab, rtol=1e-12)
    np.testing.assert_allclose(process.alphas_cumprod_prev.numpy(), np.r_[1.0, ab[:-1]], rtol=1e-12)
    np.testing.assert_allclose(process.sqrt_recipm1_alphas_cumprod.numpy(), np.sqrt(1 / ab - 1), rtol=1e-12)


def test_from_schedule_kwargs() -> None:
    p = GaussianDiffusion.from_schedule("cosine", 200, zero_terminal_snr=True, s=0.01)
    assert p.num_timesteps == 200
    assert p.alphas_cumprod[-1].item() == 0.0
    q = GaussianDiffusion.from_schedule("cosine", 200, s=0.01)
    torch.testing.assert_close(q.betas, cosine_beta_schedule(200, s=0.01))


@pytest.mark.parametrize("shape", [(6, 3, 4, 4), (6, 2)])
def test_q_sample_matches_diffusers_add_noise(process: GaussianDiffusion, shape) -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(shape, generator=g)
    noise = torch.randn(shape, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    ref = DDPMScheduler(num_train_timesteps=1000).add_noise(x0, noise, t)
    ours = process.q_sample(x0, t, noise)
    assert ours.dtype == torch.float32 and ours.shape == shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_coefficients_cast_to_input_dtype(process: GaussianDiffusion) -> None:
    t = torch.tensor([3, 700])
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = torch.ones(2, 3, dtype=dtype)
        assert process.q_sample(x, t, x).dtype == dtype


def test_q_posterior_closed_form(process: GaussianDiffusion) -> None:
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64)
    x_t = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 500, 999])
    betas = process.betas.numpy()
    ab = _ab(process.betas)
    ab_prev = np.r_[1.0, ab[:-1]]
    mean, var, log_var = process.q_posterior(x0, x_t, t)
    assert var.shape == (4, 1, 1, 1) and log_var.shape == (4, 1, 1, 1)
    for i, ti in enumerate(t.tolist()):
        # Ho et al. 2020, eq. 7
        c0 = np.sqrt(ab_prev[ti]) * betas[ti] / (1 - ab[ti])
        ct = np.sqrt(1 - betas[ti]) * (1 - ab_prev[ti]) / (1 - ab[ti])
        expected_mean = c0 * x0[i].numpy() + ct * x_t[i].numpy()
        np.testing.assert_allclose(mean[i].numpy(), expected_mean, rtol=1e-12, atol=1e-12)
        expected_var = (1 - ab_prev[ti]) / (1 - ab[ti]) * betas[ti]
        np.testing.assert_allclose(var[i].item(), expected_var, rtol=1e-12, atol=0)
        # log variance clipped: beta-tilde_1 at t = 0
        expected_log = np.log(expected_var) if ti > 0 else np.log((1 - ab[0]) / (1 - ab[1]) * betas[1])
        np.testing.assert_allclose(log_var[i].item(), expected_log, rtol=1e-12)


def test_q_posterior_is_exact_gaussian_conditioning(process: GaussianDiffusion) -> None:
    # q(x_{t-1} | x_t, x_0) from Bayes' rule on the scalar Gaussians q(x_{t-1}|x_0), q(x_t|x_{t-1}).
    t = torch.tensor([10, 600])
    x0 = torch.tensor([[0.3], [-0.7]], dtype=torch.float64)
    x_t = torch.tensor([[0.1], [1.2]], dtype=torch.float64)
    mean, var, _ = process.q_posterior(x0, x_t, t)
    ab = _ab(process.betas)
    for i, ti in enumerate(t.tolist()):
        a_t = 1 - process.betas[ti].item()
        prior_mean, prior_var = np.sqrt(ab[ti - 1]) * x0[i, 0].item(), 1 - ab[ti - 1]
        lik_prec = a_t / (1 - a_t)  # x_t = sqrt(a_t) x_{t-1} + sqrt(1 - a_t) eps
        post_var = 1 / (1 / prior_var + lik_prec)
        post_mean = post_var * (prior_mean / prior_var + np.sqrt(a_t) * x_t[i, 0].item() / (1 - a_t))
        np.testing.assert_allclose(mean[i, 0].item(), post_mean, rtol=1e-10)
        np.testing.assert_allclose(var[i, 0].item(), post_var, rtol=1e-10)


def test_round_trips_float64(process: GaussianDiffusion) -> None:
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(5, 3, 2, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 3, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 400, 900, 999])
    x_t = process.q_sample(x0, t, eps)
    torch.testing.assert_close(process.predict_start_from_noise(x_t, t, eps), x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(process.predict_noise_from_start(x_t, t, x0), eps, atol=1e-6, rtol=0)
    v = process.predict_v(x0, t, eps)
    torch.testing.assert_close(process.predict_start_from_v(x_t, t, v), x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(process.predict_noise_from_v(x_t, t, v), eps, atol=1e-6, rtol=0)
    # v against diffusers' get_velocity and the closed form
    ref_v = DDPMScheduler(num_train_timesteps=1000).get_velocity(x0, eps, t)
    torch.testing.assert_close(v, ref_v.double(), atol=1e-5, rtol=0)  # diffusers: float32 alphas_cumprod
    ab = torch.from_numpy(_ab(process.betas))[t].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(v, ab.sqrt() * eps - (1 - ab).sqrt() * x0)


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_split_prediction_and_target(process: GaussianDiffusion, prediction_type: str) -> None:
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(4, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 5, 500, 999])
    ab = torch.from_numpy(_ab(process.betas))[t].unsqueeze(1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    expected_target = {"eps": eps, "x0": x0, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[prediction_type]
    target = process.target(prediction_type, x0, eps, t)
    torch.testing.assert_close(target, expected_target)
    pred_x0, pred_eps = process.split_prediction(target, x_t, t, prediction_type)
    torch.testing.assert_close(pred_x0, x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(pred_eps, eps, atol=1e-6, rtol=0)


def test_snr(process: GaussianDiffusion) -> None:
    t = torch.tensor([0, 999])
    ab = _ab(process.betas)[[0, 999]]
    snr = process.snr(t)
    assert snr.dtype == torch.float64 and snr.shape == (2,)
    np.testing.assert_allclose(snr.numpy(), ab / (1 - ab), rtol=1e-12)


def test_alphas_cumprod_at(process: GaussianDiffusion) -> None:
    assert process.alphas_cumprod_at(-1).item() == 1.0
    assert process.alphas_cumprod_at(0).item() == process.alphas_cumprod[0].item()
    out = process.alphas_cumprod_at(torch.tensor([-1, 0, 999]))
    assert out.dtype == torch.float64
    assert out.tolist() == [1.0, process.alphas_cumprod[0].item(), process.alphas_cumprod[999].item()]
    with pytest.raises(ValueError, match="1000"):
        process.alphas_cumprod_at(1000)


def test_zero_terminal_snr_stays_finite() -> None:
    p = GaussianDiffusion.from_schedule("linear", 1000, zero_terminal_snr=True)
    assert p.alphas_cumprod[-1].item() == 0.0
    for name in BUFFERS:
        if name not in ("sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod"):
            assert torch.isfinite(getattr(p, name)).all(), name
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(3, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 2, generator=g, dtype=torch.float64)
    t = torch.full((3,), 999)
    x_t = p.q_sample(x0, t, eps)
    torch.testing.assert_close(x_t, eps)  # pure noise at T
    v = p.predict_v(x0, t, eps)
    torch.testing.assert_close(v, -x0)
    for prediction_type, out in (("v", v), ("x0", x0)):
        pred_x0, pred_eps = p.split_prediction(out, x_t, t, prediction_type)
        torch.testing.assert_close(pred_x0, x0)
        torch.testing.assert_close(pred_eps, eps)
    assert p.snr(t).tolist() == [0.0, 0.0, 0.0]
    # eps-prediction cannot recover x_0 from pure noise: documented as non-finite
    assert not torch.isfinite(p.predict_start_from_noise(x_t, t, eps)).all()


def test_to_dtype_and_device_keep_buffers() -> None:
    p = GaussianDiffusion.from_schedule("cosine", 10)
    state = p.state_dict()
    q = GaussianDiffusion.from_schedule("cosine", 10)
    q.load_state_dict(state)
    torch.testing.assert_close(q.alphas_cumprod, p.alphas_cumprod)


def test_bad_inputs(process: GaussianDiffusion) -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 999\].*1000"):
        process.q_sample(x, torch.tensor([0, 1000]), x)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 999\].*-1"):
        process.q_sample(x, torch.tensor([-1, 0]), x)
    with pytest.raises(ValueError, match="integer tensor"):
        process.q_sample(x, torch.tensor([0.0, 1.0]), x)
    with pytest.raises(ValueError, match="batch size 3"):
        process.q_sample(x, torch.tensor([0, 1, 2]), x)
    with pytest.raises(ValueError, match=r"shapes must match.*\(2, 4\)"):
        process.q_sample(x, torch.tensor([0, 1]), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"'epsilon'.*\['eps', 'x0', 'v'\]"):
        process.split_prediction(x, x, torch.tensor([0, 1]), "epsilon")
    with pytest.raises(ValueError, match=r"'sample'.*\['eps', 'x0', 'v'\]"):
        process.target("sample", x, x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shapes must match"):
        process.split_prediction(torch.zeros(2, 6), x, torch.tensor([0, 1]), "eps")


@pytest.mark.parametrize(
    "betas",
    [torch.tensor([]), torch.zeros(2, 2), torch.tensor([0.1, 0.0]), torch.tensor([0.1, 1.5]), torch.tensor([float("nan")])],
)
def test_bad_betas(betas: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="betas"):
        GaussianDiffusion(betas)
