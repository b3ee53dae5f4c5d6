"""Exact log-likelihood in bits/dim through the probability-flow ODE.

The probability-flow ODE of a diffusion process (Song et al. 2021, arXiv:2011.13456, sec. 4.3
and appendix D.2) is a continuous normalising flow from the data to the prior. Along its
trajectories the log-density changes by the divergence of the drift (the instantaneous change
of variables, Chen et al. 2018, arXiv:1806.07366, theorem 1), so

    log p_start(x_start) = log p_end(x_end) + integral_{start}^{end} div f(x(tau), tau) dtau.

The divergence is computed exactly (one backward pass per dimension) for small data, or with
Hutchinson's trace estimator ``E[v^T (df/dx) v] = tr(df/dx)`` for images (FFJORD, Grathwohl et
al. 2019, arXiv:1810.01367, sec. 3.1), with one probe per sample held fixed over the whole
solve. The ODE is solved by torchdiffeq (``dopri5``, rtol = atol = 1e-5 by default, as Song et
al.'s ``likelihood.py``).

Continuous time on a discrete model
-----------------------------------
difflab's :class:`~difflab.diffusion.process.GaussianDiffusion` is a discrete VP process: T
values alpha-bar_0 > ... > alpha-bar_{T-1}. The continuous view used here:

- the log-SNR lambda_i = log(alpha-bar_i / (1 - alpha-bar_i)) (Kingma et al. 2021,
  arXiv:2107.00630) is interpolated *linearly* in a float timestep s in [0, T - 1], so
  alpha-bar(s) = sigmoid(lambda(s)) equals the schedule exactly at every integer s;
  alpha(s)^2 = sigmoid(lambda), sigma(s)^2 = sigmoid(-lambda) (VP: alpha^2 + sigma^2 = 1);
- the backbone is called with the float timestep s (every difflab backbone embeds t with a
  sinusoidal embedding of float t, :func:`difflab.backbones.unet.timestep_embedding`; diffusers'
  UNet2DModel does the same). Between integer steps this asks the network for times it never
  saw in training; the embedding is smooth, and the error is that of the interpolation;
- the ODE is integrated in lambda rather than in s. For x_lambda = alpha x_0 + sigma eps the
  SDE's drift and diffusion are f = d log alpha / d lambda and g^2 = d sigma^2 / d lambda -
  2 f sigma^2 (Lu et al. 2022, arXiv:2206.00927, sec. 2.1, with lambda as the time); with
  alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda) they are f = sigma^2 / 2 and
  g^2 = -sigma^2 (negative: lambda falls as noise is added), and the probability-flow drift
  f x - g^2 / 2 * score with score = -eps-hat / sigma (Song et al. 2021, eq. 13) is

      dx/dlambda = (sigma^2 x - sigma eps-hat(x, s(lambda))) / 2

  (the likelihood does not depend on the time variable). In s the drift would carry
  d lambda / ds, which jumps at every integer step under a piecewise-linear lambda(s); in
  lambda it is bounded and continuous, which suits an adaptive solver. The model output is turned into eps-hat with the continuous alpha(s),
  sigma(s) (eps: itself; x0: (x - alpha x0) / sigma; v: alpha v + sigma x, Salimans & Ho 2022,
  arXiv:2202.00512, appendix D): ``GaussianDiffusion.split_prediction`` takes integer t only.

Endpoints and the prior
-----------------------
The solve starts at s = ``t_start`` (default 0, the first training timestep, where
alpha-bar_0 is closest to 1) with x(s_start) = x_data: like Song et al. (who start at
t = epsilon = 1e-5), the model density at the smallest noise level, p_{s_start}, stands in for
the data density (sigma(0) = sqrt(beta_0), e.g. 0.01 for the linear schedule). It ends at
s = ``t_end`` (default T - 1, or T - 2 for a zero-terminal-SNR schedule, where lambda_{T-1} =
-inf) and scores x_end under the prior N(0, I), the VP process's limit (alpha-bar_{T-1} = 4e-5
for the default linear schedule).

The whole batch is one ODE system with a shared adaptive step size (as in Song et al.'s
code): a sample's value depends on its batch mates only through the solver's step choice,
i.e. within the tolerance.

Bits per dimension and dequantisation
-------------------------------------
8-bit data x_int in {0, ..., 255} is dequantised with uniform noise u ~ U[0, 1)^D as
x = (x_int + u) / 256 * 2 - 1 (Song et al.'s ``likelihood.py``: ``(data * 255 + u) / 256``,
then scaled to [-1, 1]). Each bin has width 2/256 in [-1, 1], so by Jensen's inequality
log P(x_int) >= E_u[log p(x)] + D log(2/256) (Theis et al. 2016, arXiv:1511.01844), and

    bpd = -log p(x) / (D ln 2) - log2(2 / 256) = -log p(x) / (D ln 2) + 7,

Song et al.'s ``offset = 7 - inverse_scaler(-1)`` for data centred on [-1, 1]. As in their code
the model was trained on the levels x_int / 127.5 - 1 (spacing 2/255) while the bins have width
2/256: the dequantised data are the training data shrunk by 255/256 plus noise. (Ho et al.
2020, arXiv:2006.11239, sec. 3.3, score a discretised decoder on bins centred on the levels
instead; the two figures are close but not the same quantity.) The noise is
drawn per sample from ``dequantize_seed`` and the sample's index, the Hutchinson probes from
``hutchinson_seed`` and the index (independent streams), so a figure does not depend on the
batch size or on how the samples are split across processes (pass ``indices``).

How to report bits/dim on the 500 val digits
--------------------------------------------
::

    from difflab.evaluation.likelihood import bits_per_dim
    from difflab.utils.checkpoint import load_model
    import hydra

    model = load_model("<run dir>/checkpoints/last.ckpt")          # EMA weights, eval mode
    data = hydra.utils.instantiate(model.config["data"])
    x0 = data.real_images("val")                                     # uint8 (500, 1, 28, 28)
    out = bits_per_dim(model.backbone, model.process, model.objective.target, x0, batch_size=100)
    key = f"nll/bpd/{out['key']}"                                    # nll/bpd/ode_dopri5_rtol1e-5_atol1e-5_hutch
    print(key, out["mean"], "+-", out["stderr"], "NFE", out["nfe"])

On one accelerator this is a few minutes; on two CPU cores it is heavy (Hutchinson needs one
forward and one backward per function evaluation, dopri5 some hundreds of evaluations).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from difflab.diffusion.process import PREDICTION_TYPES, GaussianDiffusion
from difflab.evaluation.protocol import sample_seed
from difflab.samplers.base import key_number

__all__ = [
    "DEQUANT_OFFSET_BITS",
    "DIVERGENCES",
    "ContinuousVP",
    "bits_per_dim",
    "log_likelihood",
    "settings_key",
    "uniform_dequantize",
]

#: -log2(bin width) of 8-bit data scaled to [-1, 1]: -log2(2 / 256) = log2(128) = 7 bits.
DEQUANT_OFFSET_BITS: float = math.log2(128.0)
#: How the divergence of the drift is computed.
DIVERGENCES: tuple[str, ...] = ("exact", "rademacher", "gaussian")
_STREAM_DEQUANT, _STREAM_PROBE = 1, 2


class ContinuousVP:
    """The discrete VP schedule as a function of a float timestep s in [0, T - 1].

    lambda(s) (log-SNR) is interpolated linearly between the integer steps; alpha-bar(s) =
    sigmoid(lambda(s)) matches ``process.alphas_cumprod`` at every integer s. All in float64.
    """

    def __init__(self, process: GaussianDiffusion) -> None:
        ab = process.alphas_cumprod.detach().to(device="cpu", dtype=torch.float64)
        self.num_timesteps = int(ab.shape[0])
        self.log_snr_table = torch.log(ab) - torch.log1p(-ab)  # -inf where alpha-bar = 0
        if self.num_timesteps < 2:
            raise ValueError("the probability-flow ODE needs a process with at least 2 timesteps")
        finite = torch.isfinite(self.log_snr_table)
        #: the last timestep with a finite log-SNR (T - 2 under zero terminal SNR)
        self.last_finite = int(torch.nonzero(finite).max())
        if not bool((self.log_snr_table[1 : self.last_finite + 1] < self.log_snr_table[: self.last_finite]).all()):
            raise ValueError("alphas_cumprod must decrease strictly for a continuous-time view")

    def log_snr(self, s: Tensor | float) -> Tensor:
        """lambda(s), linear between integer steps; ``s`` in [0, T - 1]."""
        s = torch.as_tensor(s, dtype=torch.float64)
        table = self.log_snr_table.to(s.device)
        i = s.floor().clamp(0, self.num_timesteps - 2).long()
        w = s - i
        lo, hi = table[i], table[i + 1]
        return torch.where(w == 0, lo, lo + w * (hi - lo))

    def timestep(self, lam: Tensor) -> Tensor:
        """The inverse of :meth:`log_snr`: the float timestep s with lambda(s) = ``lam``."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        table = self.log_snr_table[: self.last_finite + 1].to(lam.device)
        # table decreases; searchsorted needs increasing values
        j = torch.searchsorted(-table, -lam.reshape(-1), right=True).reshape(lam.shape)
        i = (j - 1).clamp(0, max(self.last_finite - 1, 0))
        lo, hi = table[i], table[i + 1]
        return i.to(torch.float64) + (lo - lam) / (lo - hi)

    @staticmethod
    def alpha_sigma(lam: Tensor) -> tuple[Tensor, Tensor]:
        """alpha = sqrt(sigmoid(lambda)), sigma = sqrt(sigmoid(-lambda))."""
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {list(PREDICTION_TYPES)}")


def _eps_from_output(out: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str) -> Tensor:
    """eps-hat from a model output of type eps | x0 | v at continuous (alpha, sigma)."""
    if prediction_type == "eps":
        return out
    if prediction_type == "x0":  # x = alpha x0 + sigma eps (Ho et al. 2020, eq. 4)
        return (x - alpha * out) / sigma
    if prediction_type == "v":  # eps = alpha v + sigma x (Salimans & Ho 2022, appendix D)
        return alpha * out + sigma * x
    raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {list(PREDICTION_TYPES)}")


def _per_sample(kind: str, shape: Sequence[int], seed: int, indices: Sequence[int], stream: int) -> Tensor:
    """One draw of ``shape`` per sample index, each from its own generator (float64, CPU)."""
    out = []
    for i in indices:
        g = torch.Generator().manual_seed(sample_seed(seed, i, f"likelihood{stream}"))
        if kind == "uniform":
            out.append(torch.rand(tuple(shape), generator=g, dtype=torch.float64))
        elif kind == "rademacher":
            out.append(torch.randint(0, 2, tuple(shape), generator=g).to(torch.float64) * 2 - 1)
        else:
            out.append(torch.randn(tuple(shape), generator=g, dtype=torch.float64))
    return torch.stack(out) if out else torch.empty(0, *shape, dtype=torch.float64)


def _to_int_levels(x0: Tensor) -> Tensor:
    """8-bit levels (int64) of uint8 data, or of floats in [-1, 1] scaled as x_int / 127.5 - 1."""
    if x0.dtype == torch.uint8:
        return x0.long()
    if not x0.dtype.is_floating_point:
        raise ValueError(f"x0 must be uint8 or floating point in [-1, 1], got dtype {x0.dtype}")
    levels = (x0.double() + 1.0) * 127.5
    rounded = levels.round()
    err = float((levels - rounded).abs().max()) if x0.numel() else 0.0
    if err > 1e-3 or float(rounded.min()) < 0 or float(rounded.max()) > 255:
        raise ValueError(
            "dequantize=True needs 8-bit data: uint8, or floats x_int / 127.5 - 1 in [-1, 1] "
            f"(these are {err:.3g} off the 8-bit grid or out of range); pass dequantize=False for continuous data"
        )
    return rounded.long()


def uniform_dequantize(x0: Tensor, seed: int = 0, indices: Sequence[int] | None = None) -> Tensor:
    """Uniformly dequantised data in [-1, 1): (x_int + u) / 256 * 2 - 1, u ~ U[0, 1) (float64).

    ``x0`` is uint8 or floats on the 8-bit grid x_int / 127.5 - 1. Sample i's noise comes from
    its own generator, seeded by (``seed``, ``indices[i]``) (default index: i).
    """
    levels = _to_int_levels(x0)
    indices = list(range(x0.shape[0])) if indices is None else [int(i) for i in indices]
    u = _per_sample("uniform", x0.shape[1:], seed, indices, _STREAM_DEQUANT).to(levels.device)
    return (levels.double() + u) / 256.0 * 2.0 - 1.0


def _model_dtype(model: Callable[..., Tensor], default: torch.dtype) -> torch.dtype:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            if p.dtype.is_floating_point:
                return p.dtype
    return default


def _format_tol(value: float) -> str:
    mantissa, exponent = f"{value:.0e}".split("e")
    if float(f"{value:.0e}") == value:
        return f"{mantissa}e{int(exponent)}"
    return key_number(value)


def settings_key(settings: dict[str, Any]) -> str:
    """A metric-key fragment naming the solver settings, e.g. ``ode_dopri5_rtol1e-5_atol1e-5_hutch``.

    ``exact`` divergence gives ``_exact``, Hutchinson with a Rademacher probe ``_hutch`` and with
    a Gaussian probe ``_hutchgauss``; ``_t{start}-{end}`` marks endpoints other than the
    default ones and ``_nodeq`` a figure without dequantisation.
    """
    div = {"exact": "exact", "rademacher": "hutch", "gaussian": "hutchgauss"}[settings["divergence"]]
    key = f"ode_{settings['method']}_rtol{_format_tol(settings['rtol'])}_atol{_format_tol(settings['atol'])}_{div}"
    if settings.get("endpoints", "default") != "default":
        key = f"{key}_t{key_number(settings['t_start'])}-{key_number(settings['t_end'])}"
    return key if settings.get("dequantize", True) else f"{key}_nodeq"


class _ProbabilityFlow(nn.Module):
    """The augmented ODE (x, delta) in lambda: dx/dlambda = (sigma^2 x - sigma eps-hat) / 2,
    d delta/dlambda = div_x of that drift."""

    def __init__(
        self,
        model: Callable[..., Tensor],
        vp: ContinuousVP,
        prediction_type: str,
        divergence: str,
        probe: Tensor | None,
        model_dtype: torch.dtype,
        y: Tensor | None,
    ) -> None:
        super().__init__()
        self.model = model
        self.vp = vp
        self.prediction_type = prediction_type
        self.divergence = divergence
        self.probe = probe
        self.model_dtype = model_dtype
        self.y = y
        self.nfe = 0

    def eps_hat(self, x: Tensor, lam: Tensor) -> Tensor:
        s = self.vp.timestep(lam.detach().to(torch.float64).cpu())
        alpha, sigma = self.vp.alpha_sigma(lam.detach().to(torch.float64).cpu())
        t = s.to(device=x.device, dtype=self.model_dtype).expand(x.shape[0]).contiguous()
        xm = x.to(self.model_dtype)
        out = self.model(xm, t) if self.y is None else self.model(xm, t, self.y)
        self.nfe += 1
        if out.shape != x.shape:
            raise ValueError(f"the model returned shape {tuple(out.shape)} for input {tuple(x.shape)}; it must match")
        out = out.to(x.dtype)
        return _eps_from_output(out, x, alpha.to(x), sigma.to(x), self.prediction_type)

    def forward(self, lam: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x = state[0]
        _, sigma = self.vp.alpha_sigma(lam.detach().to(torch.float64).cpu())
        sigma = sigma.to(x)
        batch, dims = x.shape[0], x[0].numel()
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            eps = self.eps_hat(x, lam)
            # div of (sigma^2 x - sigma eps) / 2 = (sigma^2 D - sigma div eps) / 2; the linear
            # part is exact, only div eps-hat is computed (exactly or estimated).
            if self.divergence == "exact":
                flat = eps.reshape(batch, dims)
                div_eps = torch.zeros(batch, dtype=x.dtype, device=x.device)
                for d in range(dims):
                    (grad,) = torch.autograd.grad(flat[:, d].sum(), x, retain_graph=d < dims - 1)
                    div_eps = div_eps + grad.reshape(batch, dims)[:, d]
            else:
                probe = self.probe.to(x)
                (grad,) = torch.autograd.grad((eps * probe).sum(), x)
                div_eps = (grad * probe).reshape(batch, dims).sum(1)
        drift = 0.5 * (sigma**2 * x.detach() - sigma * eps.detach())
        div = 0.5 * (sigma**2 * dims - sigma * div_eps.detach())
        return drift, div


def log_likelihood(
    model: Callable[..., Tensor],
    process: GaussianDiffusion,
    prediction_type: str,
    x: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    divergence: str = "exact",
    hutchinson_seed: int = 0,
    indices: Sequence[int] | None = None,
    t_start: float = 0.0,
    t_end: float | None = None,
    y: Tensor | None = None,
    options: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float64,
    prior_log_prob: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, int]:
    """log p_{t_start}(x) in nats per sample (shape (B,)) for continuous data ``x``, and the NFE.

    One ODE solve for the whole batch (see the module docstring). ``model(x_t, t[, y])`` takes
    float timesteps t of shape (B,); ``divergence`` is ``exact``, ``rademacher`` or
    ``gaussian`` (Hutchinson's probe, drawn per sample from ``hutchinson_seed`` and
    ``indices``). ``options`` go to ``torchdiffeq.odeint``; the state is kept in ``dtype``.
    ``prior_log_prob(x_end) -> (B,)`` replaces the N(0, I) prior (e.g. a known marginal at
    ``t_end`` in a test).
    """
    from torchdiffeq import odeint

    _check_prediction_type(prediction_type)
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {list(DIVERGENCES)}")
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x must be a batch (B, ...) with B >= 1, got shape {tuple(x.shape)}")
    vp = ContinuousVP(process)
    t_end = float(vp.last_finite if t_end is None else t_end)
    if not 0.0 <= t_start < t_end <= vp.last_finite:
        raise ValueError(
            f"need 0 <= t_start < t_end <= {vp.last_finite} (the last timestep with alpha-bar > 0), "
            f"got t_start={t_start}, t_end={t_end}"
        )
    batch = x.shape[0]
    dims = x[0].numel()
    indices = list(range(batch)) if indices is None else [int(i) for i in indices]
    if len(indices) != batch:
        raise ValueError(f"indices has {len(indices)} entries for a batch of {batch}")
    probe = None
    if divergence != "exact":
        probe = _per_sample(divergence, x.shape[1:], hutchinson_seed, indices, _STREAM_PROBE)
        probe = probe.to(device=x.device, dtype=dtype)

    func = _ProbabilityFlow(model, vp, prediction_type, divergence, probe, _model_dtype(model, dtype), y)
    lams = torch.stack([vp.log_snr(t_start), vp.log_snr(t_end)]).to(device=x.device, dtype=dtype)
    x_start = x.detach().to(dtype)
    delta0 = torch.zeros(batch, dtype=dtype, device=x.device)
    was_training = model.training if isinstance(model, nn.Module) else False
    if isinstance(model, nn.Module):
        model.eval()
    options = dict(options or {})
    if _is_adaptive(method):
        # torchdiffeq's adaptive solvers step past the last time and interpolate back; a step
        # that ends exactly at t_end keeps every evaluation inside the schedule's range.
        options.setdefault("step_t", lams[-1:])
    try:
        # The divergence needs autograd, also when the caller samples under inference_mode:
        # leave it and work on a normal copy of the data (an inference tensor cannot require grad).
        with torch.inference_mode(False), torch.no_grad():
            xs, deltas = odeint(func, (x_start.clone(), delta0.clone()), lams.clone(), rtol=rtol, atol=atol,
                                method=method, options=options)
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)
    x_end, delta = xs[-1], deltas[-1]
    if prior_log_prob is None:
        prior = -0.5 * dims * math.log(2 * math.pi) - 0.5 * x_end.reshape(batch, dims).pow(2).sum(1)
    else:
        prior = prior_log_prob(x_end).to(delta)
    return prior + delta, func.nfe


def bits_per_dim(
    model: Callable[..., Tensor],
    process: GaussianDiffusion,
    prediction_type: str,
    x0: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    exact_divergence: bool | None = None,
    exact_max_dim: int = 16,
    probe: str = "rademacher",
    hutchinson_seed: int = 0,
    dequantize: bool = True,
    dequantize_seed: int = 0,
    batch_size: int | None = None,
    indices: Sequence[int] | None = None,
    t_start: float = 0.0,
    t_end: float | None = None,
    y: Tensor | None = None,
    options: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Bits/dim of ``x0`` under the probability-flow ODE of ``model`` (Song et al. 2021, arXiv:2011.13456).

    Args:
        model: ``model(x_t, t[, y])`` with float timesteps t (B,) in [0, T - 1], predicting
            ``prediction_type`` (eps | x0 | v); e.g. ``load_model(...).backbone``. Put in eval
            mode for the solve (dropout off) and restored afterwards.
        process: the model's GaussianDiffusion (its alphas_cumprod define the ODE).
        prediction_type: ``load_model(...).objective.target``.
        x0: (N, ...) data: uint8, or floats in [-1, 1] (8-bit levels x_int / 127.5 - 1 when
            ``dequantize``; any floats otherwise).
        rtol, atol, method, options: torchdiffeq ``odeint`` settings.
        exact_divergence: None = exact when the dimension D <= ``exact_max_dim``, Hutchinson
            otherwise; True / False force it.
        probe: Hutchinson's probe, ``rademacher`` (FFJORD's default, lower variance) or
            ``gaussian``.
        hutchinson_seed, dequantize_seed: seeds of the per-sample probe and dequantisation
            noise (sample i's draws depend on the seed and ``indices[i]`` only).
        dequantize: uniform dequantisation of 8-bit data and the +7 bits of its bin width;
            False scores ``x0`` as continuous data (bits/dim of the density, may be negative).
        batch_size: samples per ODE solve (default: all at once).
        indices: global indices of the samples (default 0..N-1), for a split across processes.
        t_start, t_end: the float timesteps where the solve starts and ends (default 0 and the
            last timestep with alpha-bar > 0).
        y: class labels for a conditional backbone (N,), or None.
        progress: called with (samples done, N) after each batch.

    Returns:
        ``bpd`` (N,) float64 per sample, ``log_likelihood`` (N,) in nats (of the dequantised
        data when ``dequantize``), ``mean``, ``std``, ``stderr`` (floats), ``n``, ``nfe`` (model
        forward calls, all batches), ``nfe_per_batch``, ``settings`` (method, rtol, atol,
        divergence, seeds, dequantize, t_start, t_end, the continuous-time parametrisation,
        prior) and ``key`` (:func:`settings_key`, e.g. ``ode_dopri5_rtol1e-5_atol1e-5_hutch``).
    """
    if x0.ndim < 2 or x0.shape[0] < 1:
        raise ValueError(f"x0 must be a batch (N, ...) with N >= 1, got shape {tuple(x0.shape)}")
    if probe not in ("rademacher", "gaussian"):
        raise ValueError(f"unknown probe {probe!r}; choose 'rademacher' or 'gaussian'")
    n = x0.shape[0]
    dims = x0[0].numel()
    if exact_divergence is None:
        exact_divergence = dims <= exact_max_dim
    divergence = "exact" if exact_divergence else probe
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    if len(indices) != n:
        raise ValueError(f"indices has {len(indices)} entries for {n} samples")
    if y is not None and y.shape[0] != n:
        raise ValueError(f"y has {y.shape[0]} labels for {n} samples")
    batch_size = n if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    vp = ContinuousVP(process)
    t_end_value = float(vp.last_finite if t_end is None else t_end)

    if dequantize:
        x = uniform_dequantize(x0, seed=dequantize_seed, indices=indices)
    else:
        if not x0.dtype.is_floating_point:
            raise ValueError(f"dequantize=False needs floating-point data, got dtype {x0.dtype}")
        x = x0.to(torch.float64)
    device = _model_device(model, x0.device)
    logps, nfes = [], []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        logp, nfe = log_likelihood(
            model, process, prediction_type, x[start:stop].to(device),
            rtol=rtol, atol=atol, method=method, divergence=divergence, hutchinson_seed=hutchinson_seed,
            indices=indices[start:stop], t_start=t_start, t_end=t_end_value,
            y=None if y is None else y[start:stop].to(device), options=options,
        )
        logps.append(logp.cpu())
        nfes.append(nfe)
        if progress is not None:
            progress(stop, n)
    logp = torch.cat(logps)
    bpd = -logp / (dims * math.log(2.0))
    if dequantize:
        bpd = bpd + DEQUANT_OFFSET_BITS
    std = float(bpd.std()) if n > 1 else 0.0
    settings = {
        "method": method,
        "rtol": rtol,
        "atol": atol,
        "divergence": divergence,
        "hutchinson_seed": None if divergence == "exact" else hutchinson_seed,
        "dequantize": dequantize,
        "dequantize_seed": dequantize_seed if dequantize else None,
        "t_start": float(t_start),
        "t_end": t_end_value,
        "endpoints": "default" if t_start == 0 and t_end is None else "custom",
        "time": "log-SNR linear between integer timesteps",
        "prior": "N(0, I)",
    }
    return {
        "bpd": bpd,
        "log_likelihood": logp,
        "mean": float(bpd.mean()),
        "std": std,
        "stderr": std / math.sqrt(n),
        "n": n,
        "nfe": sum(nfes),
        "nfe_per_batch": nfes,
        "settings": settings,
        "key": settings_key(settings),
    }


#: torchdiffeq's adaptive Runge-Kutta methods (used if its solver table cannot be read).
_ADAPTIVE = ("adaptive_heun", "bosh3", "dopri5", "dopri8", "fehlberg2")


def _is_adaptive(method: str) -> bool:
    try:  # torchdiffeq's own table (a private module; it has held it since 0.2)
        from torchdiffeq._impl.odeint import SOLVERS
        from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver
    except ImportError:
        return method in _ADAPTIVE
    if method not in SOLVERS:
        raise ValueError(f"unknown ODE method {method!r}; choose one of {sorted(SOLVERS)}")
    return issubclass(SOLVERS[method], RKAdaptiveStepsizeODESolver)


def _model_device(model: Callable[..., Tensor], default: torch.device) -> torch.device:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
    return default
