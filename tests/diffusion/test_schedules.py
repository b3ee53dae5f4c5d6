"""Schedules against diffusers' DDPMScheduler and the papers' closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_rescale

from difflab.diffusion.schedules import (
    SCHEDULES,
    cosine_beta_schedule,
    get_beta_schedule,
    linear_beta_schedule,
    rescale_zero_terminal_snr,
    scaled_linear_beta_schedule,
    sigmoid_beta_schedule,
)


@pytest.mark.parametrize(
    ("name", "diffusers_name"),
    [("linear", "linear"), ("scaled_linear", "scaled_linear"), ("cosine", "squaredcos_cap_v2")],
)
def test_betas_match_diffusers(name: str, diffusers_name: str) -> None:
    kwargs = {"beta_start": 0.00085, "beta_end": 0.012} if name == "scaled_linear" else {}
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name, **kwargs).betas
    ours = get_beta_schedule(name, 1000)
    assert ours.dtype == torch.float64
    assert ours.shape == (1000,)
    torch.testing.assert_close(ours, ref.double(), atol=1e-6, rtol=0)


def test_cosine_matches_diffusers_for_other_t() -> None:
    ref = DDPMScheduler(num_train_timesteps=250, beta_schedule="squaredcos_cap_v2").betas
    torch.testing.assert_close(cosine_beta_schedule(250), ref.double(), atol=1e-6, rtol=0)


def test_linear_is_rescaled_with_t() -> None:
    # improved-diffusion get_named_beta_schedule("linear"): scale = 1000 / T
    for T in (100, 500, 4000):
        expected = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T, dtype=np.float64)
        np.testing.assert_allclose(linear_beta_schedule(T).numpy(), expected, rtol=0, atol=1e-12)


def test_linear_too_few_steps_raises() -> None:
    with pytest.raises(ValueError, match="betas outside"):
        linear_beta_schedule(10)


def test_sigmoid_matches_paper_algorithm() -> None:
    # Jabri et al. 2022 (arXiv:2212.11972), Algorithm 1, written out independently in numpy.
    def gamma(t: np.ndarray, start=-3.0, end=3.0, tau=1.0, clip_min=1e-5) -> np.ndarray:
        sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
        v_start, v_end = sig(start / tau), sig(end / tau)
        out = (v_end - sig((t * (end - start) + start) / tau)) / (v_end - v_start)
        return np.clip(out, clip_min, 1.0)

    for T, tau in ((1000, 1.0), (300, 0.7)):
        t = np.arange(T + 1) / T
        g = gamma(t, tau=tau)
        expected = np.minimum(1.0 - g[1:] / g[:-1], 0.999)
        ours = sigmoid_beta_schedule(T, tau=tau).numpy()
        np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.cumprod(1 - ours), g[1:] / g[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("T", [1, 2, 50, 1000, 4000])
@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_alphas_cumprod_strictly_decreasing(name: str, T: int, zero_terminal_snr: bool) -> None:
    if name == "linear" and T < 25:
        T = 25  # the 1000/T rescaling needs T > 20 (T = 20 makes the last beta 1)
    if zero_terminal_snr and T < 2:
        T = 2
    betas = get_beta_schedule(name, T, zero_terminal_snr=zero_terminal_snr)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    assert bool(((betas > 0) & (betas <= 1)).all())
    ab = np.cumprod(1.0 - betas.numpy())
    assert ab[0] < 1.0
    assert np.all(np.diff(ab) < 0)
    assert (ab[-1] == 0.0) == zero_terminal_snr


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_rescale_zero_terminal_snr(name: str) -> None:
    betas = get_beta_schedule(name, 1000)
    rescaled = rescale_zero_terminal_snr(betas)
    ab_old = np.cumprod(1.0 - betas.numpy())
    ab_new = np.cumprod(1.0 - rescaled.numpy())
    assert ab_new[-1] == 0.0  # SNR_T = ab / (1 - ab) = 0 exactly
    assert rescaled[-1].item() == 1.0
    assert math.isclose(ab_new[0], ab_old[0], rel_tol=1e-12)
    # sqrt(ab) is an affine map of the old sqrt(ab) (Lin et al. 2023, Algorithm 1)
    a, b = np.sqrt(ab_old), np.sqrt(ab_new)
    expected = (a - a[-1]) * a[0] / (a[0] - a[-1])
    np.testing.assert_allclose(b, expected, rtol=1e-9, atol=1e-12)
    ref = diffusers_rescale(betas.clone())
    torch.testing.assert_close(rescaled, ref.double(), atol=1e-10, rtol=0)


def test_rescale_accepts_float32() -> None:
    betas = linear_beta_schedule(1000).float()
    out = rescale_zero_terminal_snr(betas)
    assert out.dtype == torch.float64
    # computed in float64: diffusers on the float64 betas is the reference (its float32 path is
    # off by ~3e-6 near the end)
    torch.testing.assert_close(out, diffusers_rescale(betas.double()), atol=1e-12, rtol=0)


def test_get_beta_schedule_forwards_kwargs() -> None:
    torch.testing.assert_close(
        get_beta_schedule("scaled_linear", 100, beta_start=1e-3, beta_end=0.02),
        scaled_linear_beta_schedule(100, beta_start=1e-3, beta_end=0.02),
    )
    torch.testing.assert_close(
        get_beta_schedule("cosine", 100, zero_terminal_snr=True),
        rescale_zero_terminal_snr(cosine_beta_schedule(100)),
    )


def test_unknown_schedule_name() -> None:
    with pytest.raises(ValueError, match=r"'quadratic'.*\['cosine', 'linear', 'scaled_linear', 'sigmoid'\]"):
        get_beta_schedule("quadratic", 100)


@pytest.mark.parametrize("T", [0, -5, 2.5, True])
def test_bad_num_timesteps(T) -> None:
    with pytest.raises(ValueError, match="num_timesteps"):
        get_beta_schedule("cosine", T)
    with pytest.raises(ValueError, match="num_timesteps"):
        cosine_beta_schedule(T)


def test_unknown_schedule_kwargs() -> None:
    with pytest.raises(ValueError, match=r"\['foo'\].*'cosine'.*\['s', 'max_beta'\]"):
        get_beta_schedule("cosine", 100, foo=1.0)
    with pytest.raises(ValueError, match="beta_start"):
        get_beta_schedule("cosine", 100, beta_start=1e-4)


def test_rescale_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        rescale_zero_terminal_snr(torch.tensor([0.1]))
    with pytest.raises(ValueError, match="1-D"):
        rescale_zero_terminal_snr(torch.full((2, 3), 0.1))


def test_sigmoid_bad_tau() -> None:
    with pytest.raises(ValueError, match="tau"):
        sigmoid_beta_schedule(100, tau=0.0)
