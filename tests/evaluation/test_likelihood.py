"""Exact likelihood through the probability-flow ODE, against closed forms.

Gaussian data N(mu, Sigma): every marginal of the VP process is Gaussian,
x_t ~ N(alpha mu, alpha^2 Sigma + sigma^2 I), so the exact eps-prediction is
eps*(x_t, t) = sigma (alpha^2 Sigma + sigma^2 I)^{-1} (x_t - alpha mu) and the ODE must give the
analytic log-density of the marginal at the first timestep. toy2d's gaussians8 is a mixture of
eight such Gaussians, whose exact eps (a posterior-weighted sum) is nonlinear in x_t.

The oracle models below compute alpha-bar(t) for a float t from their own interpolation of the
log-SNR (numpy), not from the module's :class:`ContinuousVP`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from difflab.diffusion.process import GaussianDiffusion
from difflab.evaluation.likelihood import (
    DEQUANT_OFFSET_BITS,
    ContinuousVP,
    bits_per_dim,
    log_likelihood,
    settings_key,
    uniform_dequantize,
)

T = 1000


@pytest.fixture(scope="module")
def process() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("linear", T)


def _abar(process: GaussianDiffusion, t: torch.Tensor) -> torch.Tensor:
    """alpha-bar at float t: log-SNR interpolated linearly (numpy), float64 (B, 1)."""
    ab = process.alphas_cumprod.numpy()
    lam = np.interp(t.detach().cpu().double().numpy(), np.arange(len(ab)), np.log(ab) - np.log1p(-ab))
    return torch.sigmoid(torch.as_tensor(lam, dtype=torch.float64)).reshape(-1, 1)


def _convert(eps: torch.Tensor, x: torch.Tensor, ab: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The model output that corresponds to ``eps`` (eps, x0 or v), at alpha-bar ``ab``."""
    a, s = ab.sqrt(), (1 - ab).sqrt()
    x0 = (x - s * eps) / a
    return {"eps": eps, "x0": x0, "v": a * eps - s * x0}[prediction_type]


class GaussianOracle:
    """The exact model of data N(mu, Sigma) in D dimensions."""

    def __init__(self, process, mu, cov, prediction_type="eps"):
        self.process, self.mu, self.cov, self.prediction_type = process, mu, cov, prediction_type

    def marginal(self, ab: float):
        """(mean, covariance) of x_t at alpha-bar ``ab``."""
        eye = torch.eye(len(self.mu), dtype=torch.float64)
        return math.sqrt(ab) * self.mu, ab * self.cov + (1 - ab) * eye

    def log_prob(self, x: torch.Tensor, ab: float) -> torch.Tensor:
        mean, cov = self.marginal(ab)
        return torch.distributions.MultivariateNormal(mean, cov).log_prob(x)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype.is_floating_point and t.shape == (x.shape[0],)
        ab = _abar(self.process, t)[:, :, None]  # (B, 1, 1)
        eye = torch.eye(len(self.mu), dtype=torch.float64)
        rhs = (x.double() - ab[:, :, 0].sqrt() * self.mu)[:, :, None]
        eps = (1 - ab[:, :, 0]).sqrt() * torch.linalg.solve(ab * self.cov + (1 - ab) * eye, rhs)[:, :, 0]
        ab = ab[:, :, 0]
        return _convert(eps, x.double(), ab, self.prediction_type).to(x.dtype)


def _gaussian(D: int, seed: int = 0, scales: tuple[float, float] = (0.02, 0.2)):
    """N(mu, Sigma) with Sigma's standard deviations evenly spread over ``scales`` in a random basis:
    anisotropic, so the Jacobian of eps* is not diagonal."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    scales = torch.linspace(*scales, D, dtype=torch.float64)
    cov = q @ torch.diag(scales**2) @ q.T
    return mu, cov


# --------------------------------------------------------------------------- continuous time
def test_continuous_vp_matches_the_schedule_at_integer_steps_and_inverts(process):
    vp = ContinuousVP(process)
    s = torch.arange(T, dtype=torch.float64)
    ab = process.alphas_cumprod
    torch.testing.assert_close(torch.sigmoid(vp.log_snr(s)), ab, rtol=1e-12, atol=0)
    frac = torch.tensor([0.0, 0.25, 17.5, 500.3, 998.9, 999.0], dtype=torch.float64)
    for si in frac:
        torch.testing.assert_close(vp.timestep(vp.log_snr(si)), si, rtol=0, atol=1e-9)
    # linear in log-SNR between steps, as the oracle's numpy interpolation
    torch.testing.assert_close(torch.sigmoid(vp.log_snr(frac)), _abar(process, frac)[:, 0], rtol=1e-12, atol=0)


def test_zero_terminal_snr_ends_at_the_last_finite_step():
    proc = GaussianDiffusion.from_schedule("linear", 50, zero_terminal_snr=True)
    vp = ContinuousVP(proc)
    assert vp.last_finite == 48
    out = log_likelihood(lambda x, t: torch.zeros_like(x), proc, "v", torch.zeros(2, 3), rtol=1e-3, atol=1e-3)
    assert torch.isfinite(out[0]).all()
    with pytest.raises(ValueError, match="t_end"):
        log_likelihood(lambda x, t: x, proc, "v", torch.zeros(2, 3), t_end=49)


# --------------------------------------------------------------------------- Gaussian data
@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_gaussian_exact_divergence_matches_the_analytic_log_density(process, prediction_type):
    D = 8
    mu, cov = _gaussian(D)
    oracle = GaussianOracle(process, mu, cov, prediction_type)
    g = torch.Generator().manual_seed(1)
    x = mu + torch.randn(6, D, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    ab0, abT = float(process.alphas_cumprod[0]), float(process.alphas_cumprod[-1])
    expected = oracle.log_prob(x, ab0)

    # With the true marginal at t_end as the prior the solve is exact up to the tolerance:
    # 1e-3 nats at rtol = atol = 1e-5, 1.5e-5 at 1e-7.
    exact_prior = lambda z: oracle.log_prob(z, abT)  # noqa: E731
    logp, nfe = log_likelihood(oracle, process, prediction_type, x, divergence="exact", prior_log_prob=exact_prior)
    torch.testing.assert_close(logp, expected, rtol=0, atol=3e-3)
    assert 20 < nfe < 1000
    if prediction_type == "eps":  # and the error shrinks with the tolerance
        logp, _ = log_likelihood(oracle, process, prediction_type, x, divergence="exact", rtol=1e-7, atol=1e-7,
                                 prior_log_prob=exact_prior)
        torch.testing.assert_close(logp, expected, rtol=0, atol=1e-4)

    # The N(0, I) prior of bits_per_dim: within 1% of the analytic value (the bound).
    out = bits_per_dim(oracle, process, prediction_type, x, dequantize=False)
    assert out["settings"]["divergence"] == "exact"
    err = out["log_likelihood"] - expected
    assert expected.mean() > 5  # the relative bound is meaningful
    assert abs(err.mean()) < 0.01 * expected.mean()
    assert err.abs().max() < 0.01 * expected.abs().mean(), err
    torch.testing.assert_close(out["bpd"], out["log_likelihood"] / (-D * math.log(2)), rtol=1e-12, atol=0)


@pytest.mark.parametrize("prediction_type", ["eps", "v"])
def test_gaussian_hutchinson_averages_to_the_analytic_log_density(process, prediction_type):
    """Each row gets its own fixed probe: 4 points x 64 probes. With a non-diagonal Jacobian a
    single estimate is noisy (std ~0.7 nats here, Rademacher); the average over the probes is
    within 1% of the analytic value and within 4 standard errors (unbiased). A Gaussian probe
    has the larger variance (2 ||M||_F^2 against Rademacher's 2 sum_{i != j} M_ij^2)."""
    D, points, repeats = 6, 4, 64
    mu, cov = _gaussian(D, seed=3, scales=(0.03, 0.06))
    oracle = GaussianOracle(process, mu, cov, prediction_type)
    g = torch.Generator().manual_seed(2)
    x = mu + torch.randn(points, D, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    x = x.repeat_interleave(repeats, 0)
    expected = oracle.log_prob(x, float(process.alphas_cumprod[0]))
    kw = dict(dequantize=False, exact_divergence=False, hutchinson_seed=5, rtol=1e-4, atol=1e-4)
    stds = {}
    for probe in ("rademacher", "gaussian"):
        out = bits_per_dim(oracle, process, prediction_type, x, probe=probe, **kw)
        assert out["settings"]["divergence"] == probe and out["settings"]["hutchinson_seed"] == 5
        err = out["log_likelihood"] - expected
        stds[probe] = float(err.std())
        assert stds[probe] > 0.2  # noisy per probe: the estimator is really used
        assert abs(float(err.mean())) < 4 * stds[probe] / math.sqrt(len(x)) + 5e-3  # unbiased
        if probe == "rademacher":
            assert abs(float(err.mean())) < 0.01 * float(expected.mean())
            per_point = err.reshape(points, repeats).mean(1)
            assert (per_point.abs() < 0.03 * expected.reshape(points, repeats)[:, 0].abs()).all(), per_point
    assert stds["gaussian"] > 2 * stds["rademacher"]

    # fixed seed: the same figure twice, another seed another one
    rows = x[::repeats]
    one = bits_per_dim(oracle, process, prediction_type, rows, **kw)
    again = bits_per_dim(oracle, process, prediction_type, rows, **kw)
    torch.testing.assert_close(again["bpd"], one["bpd"], rtol=0, atol=0)
    other = bits_per_dim(oracle, process, prediction_type, rows, **{**kw, "hutchinson_seed": 6})
    assert not torch.allclose(other["bpd"], one["bpd"])


def test_per_sample_draws_do_not_depend_on_the_batch_split(process):
    D = 5
    mu, cov = _gaussian(D, seed=4)
    oracle = GaussianOracle(process, mu, cov)
    x = mu + torch.randn(6, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    kw = dict(dequantize=False, exact_divergence=False, rtol=1e-6, atol=1e-6)
    whole = bits_per_dim(oracle, process, "eps", x, **kw)
    split = bits_per_dim(oracle, process, "eps", x, batch_size=4, **kw)
    tail = bits_per_dim(oracle, process, "eps", x[4:], indices=[4, 5], **kw)
    # the same probes; the batches differ only in the solver's steps (4e-5 bits at 1e-6)
    torch.testing.assert_close(split["bpd"], whole["bpd"], rtol=0, atol=2e-4)
    torch.testing.assert_close(tail["bpd"], whole["bpd"][4:], rtol=0, atol=2e-4)
    other_probes = bits_per_dim(oracle, process, "eps", x[4:], **kw)  # indices 0, 1
    assert (other_probes["bpd"] - tail["bpd"]).abs().max() > 1e-2
    assert len(split["nfe_per_batch"]) == 2 and split["nfe"] == sum(split["nfe_per_batch"])


# --------------------------------------------------------------------------- toy2d
class MixtureOracle:
    """The exact eps-model of toy2d's gaussians8 (equal weights, isotropic components)."""

    def __init__(self, process, centres, std):
        self.process, self.centres, self.std = process, centres, std

    def _parts(self, x, ab):
        a = ab.sqrt()[:, :, None]  # (B, 1, 1)
        var = ab[:, :, None] * self.std**2 + 1 - ab[:, :, None]
        diff = x[:, None, :] - a * self.centres[None]  # (B, K, 2)
        logw = -(diff**2).sum(-1) / (2 * var[:, :, 0]) - math.log(2 * math.pi) - torch.log(var[:, :, 0])
        return diff, var, logw

    def log_prob(self, x, ab):
        ab = torch.full((x.shape[0], 1), ab, dtype=torch.float64)
        _, _, logw = self._parts(x, ab)
        return torch.logsumexp(logw, 1) - math.log(len(self.centres))

    def __call__(self, x, t):
        ab = _abar(self.process, t)
        diff, var, logw = self._parts(x.double(), ab)
        w = torch.softmax(logw, 1)[:, :, None]
        eps = (1 - ab).sqrt() * (w * diff / var).sum(1)  # -sigma * grad log p_t
        return eps.to(x.dtype)


def test_toy2d_gaussians8_with_the_exact_score(process):
    from difflab.data.toy2d import Toy2DDataModule, standardisation

    dm = Toy2DDataModule("gaussians8", n_train=16, n_val=16, noise=0.25, seed=0, batch_size=16)
    pts = dm.real_points("val").double()[:12]
    mean, scale = standardisation("gaussians8", 0.25)
    angle = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    centres = (2.0 * torch.stack([angle.cos(), angle.sin()], 1) - torch.tensor(mean)) / scale
    oracle = MixtureOracle(process, centres, 0.25 / scale)
    expected = oracle.log_prob(pts, float(process.alphas_cumprod[0]))
    out = bits_per_dim(oracle, process, "eps", pts, dequantize=False)
    assert out["settings"]["divergence"] == "exact"
    assert (expected.abs() > 0.5).all()
    rel = (out["log_likelihood"] - expected).abs() / expected.abs()
    assert rel.max() < 0.01, rel
    # and it beats a standard normal on these points by a wide margin
    normal = -0.5 * 2 * math.log(2 * math.pi) - 0.5 * (pts**2).sum(1)
    assert out["log_likelihood"].mean() > normal.mean() + 0.5


@pytest.mark.slow
def test_toy2d_trained_mlp_beats_a_standard_normal():
    """A small MLP trained briefly on moons gives finite bits/dim below a standard normal's."""
    from difflab.backbones.mlp import MLP
    from difflab.data.toy2d import Toy2DDataModule

    torch.manual_seed(0)
    proc = GaussianDiffusion.from_schedule("linear", 100)
    dm = Toy2DDataModule("moons", n_train=4096, n_val=64, seed=0)
    train, val = dm.real_points("train"), dm.real_points("val")
    net = MLP(dim=2, hidden=64, depth=2)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(1500):
        x0 = train[torch.randint(0, len(train), (256,), generator=g)]
        t = torch.randint(0, 100, (256,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        loss = (net(proc.q_sample(x0, t, noise), t) - noise).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = bits_per_dim(net, proc, "eps", val, dequantize=False, rtol=1e-4, atol=1e-4)
    normal_bpd = (0.5 * 2 * math.log(2 * math.pi) + 0.5 * (val.double() ** 2).sum(1)) / (2 * math.log(2))
    assert torch.isfinite(out["bpd"]).all()
    assert out["mean"] < float(normal_bpd.mean()) - 0.3, (out["mean"], float(normal_bpd.mean()))


# --------------------------------------------------------------------------- dequantisation
def test_dequantisation_constant_by_hand(process):
    # 8-bit data on [-1, 1]: bins of width 2/256, so -log2(2/256) = 7 bits; a density uniform on
    # [-1, 1]^D (log p = -D ln 2) is 1 + 7 = 8 bits/dim = log2(256), the cost of uniform bytes.
    assert DEQUANT_OFFSET_BITS == 7.0
    D = 3
    assert -(-D * math.log(2)) / (D * math.log(2)) + DEQUANT_OFFSET_BITS == 8.0

    # Data N(0, I) has eps* = sigma x: the drift is zero, so log p = log N(x_deq; 0, I) exactly.
    levels = torch.tensor([[0, 128, 255], [17, 200, 64]], dtype=torch.uint8)
    x_deq = uniform_dequantize(levels, seed=11)
    lo = levels.double() / 128 - 1
    assert (x_deq >= lo).all() and (x_deq < lo + 2 / 256).all()
    out = bits_per_dim(lambda x, t: _convert((1 - _abar(process, t)).sqrt() * x, x, _abar(process, t), "eps"),
                       process, "eps", levels, dequantize_seed=11)
    hand = (0.5 * D * math.log(2 * math.pi) + 0.5 * (x_deq**2).sum(1)) / (D * math.log(2)) + 7.0
    torch.testing.assert_close(out["bpd"], hand, rtol=0, atol=1e-6)
    # floats on the 8-bit grid (x_int / 127.5 - 1, how the data modules scale) give the same figure
    floats = bits_per_dim(lambda x, t: (1 - _abar(process, t)).sqrt() * x, process, "eps",
                          levels.float() / 127.5 - 1, dequantize_seed=11)
    torch.testing.assert_close(floats["bpd"], out["bpd"], rtol=0, atol=1e-9)
    assert out["settings"]["dequantize_seed"] == 11 and out["settings"]["dequantize"] is True


def test_dequantize_refuses_data_off_the_8_bit_grid(process):
    with pytest.raises(ValueError, match="dequantize=False"):
        bits_per_dim(lambda x, t: x, process, "eps", torch.full((2, 3), 0.1234))


# --------------------------------------------------------------------------- contract
def test_settings_key_and_result_fields(process):
    out = bits_per_dim(lambda x, t: (1 - _abar(process, t)).sqrt() * x, process, "eps",
                       torch.zeros(3, 20, dtype=torch.uint8))
    assert out["key"] == "ode_dopri5_rtol1e-5_atol1e-5_hutch"  # D = 20 > 16: Hutchinson
    s = out["settings"]
    assert (s["method"], s["rtol"], s["atol"], s["divergence"], s["hutchinson_seed"]) == ("dopri5", 1e-5, 1e-5, "rademacher", 0)
    assert s["t_start"] == 0.0 and s["t_end"] == T - 1
    assert out["n"] == 3 and out["bpd"].shape == (3,) and out["nfe"] > 0
    assert settings_key({**s, "divergence": "exact", "rtol": 1e-3, "dequantize": False}) == (
        "ode_dopri5_rtol1e-3_atol1e-5_exact_nodeq"
    )
    custom = bits_per_dim(lambda x, t: (1 - _abar(process, t)).sqrt() * x, process, "eps",
                          torch.zeros(1, 2, dtype=torch.uint8), t_start=0.5, t_end=900, rtol=1e-3, atol=1e-3)
    assert custom["key"] == "ode_dopri5_rtol1e-3_atol1e-3_exact_t0.5-900"


def test_runs_under_inference_mode(process):
    """sample.py scores under torch.inference_mode(); the divergence still gets its gradients."""
    x = torch.randint(0, 256, (2, 3), dtype=torch.uint8)
    kw = dict(rtol=1e-4, atol=1e-4)
    expected = bits_per_dim(lambda x, t: (1 - _abar(process, t)).sqrt() * x, process, "eps", x, **kw)
    with torch.inference_mode():
        got = bits_per_dim(lambda x, t: (1 - _abar(process, t)).sqrt() * x, process, "eps", x, **kw)
    torch.testing.assert_close(got["bpd"], expected["bpd"], rtol=0, atol=0)


def test_bad_input_says_what_to_do(process):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="prediction_type"):
        bits_per_dim(lambda x, t: x, process, "score", x, dequantize=False)
    with pytest.raises(ValueError, match="probe"):
        bits_per_dim(lambda x, t: x, process, "eps", x, dequantize=False, exact_divergence=False, probe="sphere")
    with pytest.raises(ValueError, match="must match"):
        bits_per_dim(lambda x, t: x[:, :2], process, "eps", x, dequantize=False)


def test_backbones_take_float_timesteps():
    """The wrapper calls the backbone with float t; each difflab backbone embeds it smoothly and
    agrees with the integer call at integer t."""
    from difflab.backbones.diffusers_unet import DiffusersUNet
    from difflab.backbones.mlp import MLP
    from difflab.backbones.unet import UNet

    torch.manual_seed(0)
    cases = [
        (MLP(dim=2, hidden=16, depth=1), torch.randn(2, 2)),
        (UNet(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, image_size=8, norm_groups=4),
         torch.randn(2, 1, 8, 8)),
        (DiffusersUNet(in_channels=1, sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4), torch.randn(2, 1, 8, 8)),
    ]
    for net, x in cases:
        net.eval()
        with torch.no_grad():  # the UNets zero their output convolution at initialisation
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        with torch.no_grad():
            at_int = net(x, torch.tensor([3, 500]))
            at_float = net(x, torch.tensor([3.0, 500.0]))
            between = net(x, torch.tensor([3.5, 500.5]))
        torch.testing.assert_close(at_float, at_int, rtol=1e-5, atol=1e-6)
        assert torch.isfinite(between).all() and not torch.equal(between, at_float)
