"""DiffusionObjective: targets, Min-SNR-gamma weights (Hang et al. 2023) and the explicit generator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from difflab.diffusion.objectives import DiffusionObjective, min_snr_weight, sample_timesteps
from difflab.diffusion.process import GaussianDiffusion


@pytest.fixture(scope="module")
def process() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("cosine", 200)


def _snr(process: GaussianDiffusion, t: list[int]) -> np.ndarray:
    ab = np.cumprod(1.0 - process.betas.numpy())[t]
    return ab / (1.0 - ab)


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weights_closed_form(process: GaussianDiffusion, target: str, gamma: float) -> None:
    t = [0, 3, 20, 60, 100, 150, 199]
    snr = _snr(process, t)
    assert snr.max() > gamma > snr.min()  # both branches of the min are exercised
    clipped = np.minimum(snr, gamma)
    expected = {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[target]
    w = DiffusionObjective(target, "min_snr", gamma).weights(process, torch.tensor(t))
    assert w.dtype == torch.float64 and w.shape == (len(t),)
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-12)


def test_uniform_weights(process: GaussianDiffusion) -> None:
    w = DiffusionObjective("v", weighting="uniform").weights(process, torch.tensor([0, 199]))
    assert w.tolist() == [1.0, 1.0]
    assert DiffusionObjective("v").weighting == "min_snr"  # the default, in code, schema and YAML


def test_min_snr_limits_without_nan() -> None:
    snr = torch.tensor([0.0, 1.0, 5.0, 10.0, math.inf], dtype=torch.float64)
    eps = min_snr_weight(snr, "eps", 5.0)
    x0 = min_snr_weight(snr, "x0", 5.0)
    v = min_snr_weight(snr, "v", 5.0)
    assert eps.tolist() == [1.0, 1.0, 1.0, 0.5, 0.0]
    assert x0.tolist() == [0.0, 1.0, 5.0, 5.0, 5.0]
    assert v.tolist() == [0.0, 0.5, 5.0 / 6.0, 5.0 / 11.0, 0.0]


def test_min_snr_zero_terminal_snr_process() -> None:
    p = GaussianDiffusion.from_schedule("linear", 100, zero_terminal_snr=True)
    t = torch.tensor([0, 99])
    for target, last in (("eps", 1.0), ("x0", 0.0), ("v", 0.0)):
        w = DiffusionObjective(target, "min_snr").weights(p, t)
        assert torch.isfinite(w).all()
        assert w[1].item() == last


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
@pytest.mark.parametrize("weighting", ["uniform", "min_snr"])
def test_loss_per_sample(process: GaussianDiffusion, target: str, weighting: str) -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 5, 5, generator=g)
    noise = torch.randn(4, 3, 5, 5, generator=g)
    out = torch.randn(4, 3, 5, 5, generator=g)
    t = torch.tensor([1, 50, 120, 199])
    obj = DiffusionObjective(target, weighting, gamma=2.0)
    loss = obj.loss(process, out, x0, noise, t)
    assert loss.shape == (4,)

    ab = np.cumprod(1.0 - process.betas.numpy())[t.numpy()].reshape(-1, 1, 1, 1)
    x0n, nn_, outn = x0.double().numpy(), noise.double().numpy(), out.double().numpy()
    tgt = {"eps": nn_, "x0": x0n, "v": np.sqrt(ab) * nn_ - np.sqrt(1 - ab) * x0n}[target]
    mse = ((outn - tgt) ** 2).reshape(4, -1).mean(axis=1)
    snr = ab.ravel() / (1 - ab.ravel())
    if weighting == "min_snr":
        c = np.minimum(snr, 2.0)
        mse = mse * {"eps": c / snr, "x0": c, "v": c / (snr + 1)}[target]
    np.testing.assert_allclose(loss.double().numpy(), mse, rtol=1e-5)


def test_sample_timesteps_reproducible() -> None:
    a = sample_timesteps(1000, 50, torch.Generator().manual_seed(7), "cpu")
    b = sample_timesteps(1000, 50, torch.Generator().manual_seed(7), "cpu")
    c = sample_timesteps(1000, 50, torch.Generator().manual_seed(8), "cpu")
    assert a.dtype == torch.long and a.shape == (1000,)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 49
    assert len(torch.unique(a)) == 50  # covers {0..49}
    # the draw is torch.randint on the generator
    ref = torch.randint(0, 50, (1000,), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, ref)


def test_call_draws_t_then_noise_from_generator(process: GaussianDiffusion) -> None:
    seen = {}

    def model(x_t, t, y=None):
        seen["x_t"], seen["t"], seen["y"] = x_t, t, y
        return torch.zeros_like(x_t)

    x0 = torch.rand(3, 1, 4, 4) * 2 - 1
    obj = DiffusionObjective("eps", weighting="uniform")
    y = torch.tensor([1, 2, 3])
    res = obj(model, process, x0, torch.Generator().manual_seed(11), y=y)
    g = torch.Generator().manual_seed(11)
    t = torch.randint(0, 200, (3,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    assert torch.equal(res.t, t) and torch.equal(seen["t"], t)
    assert seen["y"] is y
    torch.testing.assert_close(seen["x_t"], process.q_sample(x0, t, noise))
    torch.testing.assert_close(res.loss_per_sample, (noise**2).reshape(3, -1).mean(1))
    torch.testing.assert_close(res.loss, res.loss_per_sample.mean())

    res2 = obj(lambda x, t: torch.zeros_like(x), process, x0, torch.Generator().manual_seed(11))
    assert torch.equal(res2.loss_per_sample, res.loss_per_sample)


def test_bad_inputs(process: GaussianDiffusion) -> None:
    with pytest.raises(ValueError, match=r"'noise'.*\['eps', 'x0', 'v'\]"):
        DiffusionObjective("noise")
    with pytest.raises(ValueError, match=r"'p2'.*\['uniform', 'min_snr'\]"):
        DiffusionObjective("eps", "p2")
    with pytest.raises(ValueError, match="gamma.*-1"):
        DiffusionObjective("eps", "min_snr", gamma=-1.0)
    obj = DiffusionObjective()
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"model_output has shape \(2, 4\)"):
        obj.loss(process, torch.zeros(2, 4), x, x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="t must lie"):
        obj.loss(process, x, x, x, torch.tensor([0, 200]))
    with pytest.raises(ValueError, match="batch_size"):
        sample_timesteps(0, 10, torch.Generator())
    with pytest.raises(ValueError, match="num_timesteps"):
        sample_timesteps(4, 0, torch.Generator())
    with pytest.raises(ValueError, match="generator"):
        sample_timesteps(4, 10, None)  # type: ignore[arg-type]
