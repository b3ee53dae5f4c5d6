"""Noise schedules: pure functions that return the betas of the forward process.

Every function returns a ``torch.float64`` tensor of length ``num_timesteps`` holding
``beta_1 .. beta_T`` (index 0 is the first step). Nothing here holds state; the
:class:`~difflab.diffusion.process.GaussianDiffusion` derives alphas, alphas_cumprod & co
from these betas once and owns them.

Notation (code name -> paper symbol, Ho et al. 2020, arXiv:2006.11239):

- ``betas[t]``          -> beta_t, variance of q(x_t | x_{t-1})
- ``alphas[t]``         -> alpha_t = 1 - beta_t
- ``alphas_cumprod[t]`` -> alpha-bar_t = prod_{s <= t} alpha_s
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "SCHEDULES",
    "cosine_beta_schedule",
    "get_beta_schedule",
    "linear_beta_schedule",
    "rescale_zero_terminal_snr",
    "scaled_linear_beta_schedule",
    "sigmoid_beta_schedule",
]


def _check_num_timesteps(num_timesteps: int) -> None:
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be an integer >= 1, got {num_timesteps!r}")


def _check_betas(betas: Tensor, schedule: str) -> Tensor:
    """Raise when a schedule's parameters produced betas outside (0, 1]."""
    if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas > 1).any():
        raise ValueError(
            f"the {schedule} schedule with these parameters gives betas outside (0, 1] "
            f"(min {betas.min().item():.4g}, max {betas.max().item():.4g}); "
            "change its parameters or num_timesteps"
        )
    return betas


def linear_beta_schedule(
    num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> Tensor:
    """Betas linear in t (Ho et al. 2020, arXiv:2006.11239, sec. 4).

    ``beta_start`` and ``beta_end`` are the values for T = 1000 and are multiplied by
    ``1000 / num_timesteps`` so that any T gives a process of the same total noise
    (Nichol & Dhariwal 2021, arXiv:2102.09672; improved-diffusion
    ``get_named_beta_schedule("linear")``). For T = 1000 this is the schedule of Ho et al.;
    with the defaults it needs T >= 20 (beta_end stays <= 1).
    """
    _check_num_timesteps(num_timesteps)
    scale = 1000.0 / num_timesteps
    betas = torch.linspace(
        beta_start * scale, beta_end * scale, num_timesteps, dtype=torch.float64
    )
    return _check_betas(betas, "linear")


def scaled_linear_beta_schedule(
    num_timesteps: int, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """Betas linear in sqrt(beta): ``linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2``.

    The schedule of latent diffusion (Rombach et al. 2022, arXiv:2112.10752), named
    ``scaled_linear`` in diffusers. The end points are not rescaled with T.
    """
    _check_num_timesteps(num_timesteps)
    betas = (
        torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_timesteps, dtype=torch.float64)
        ** 2
    )
    return _check_betas(betas, "scaled_linear")


def cosine_beta_schedule(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, arXiv:2102.09672, eq. 17).

    alpha-bar(t) = f(t) / f(0) with f(t) = cos(((t / T + s) / (1 + s)) * pi / 2) ** 2 and
    beta_t = min(1 - alpha-bar(t) / alpha-bar(t - 1), max_beta) (clipping of sec. 3.2).
    Same as diffusers ``squaredcos_cap_v2``.
    """
    _check_num_timesteps(num_timesteps)
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = torch.clamp(1 - f[1:] / f[:-1], max=max_beta)
    return _check_betas(betas, "cosine")


def sigmoid_beta_schedule(
    num_timesteps: int,
    start: float = -3.0,
    end: float = 3.0,
    tau: float = 1.0,
    clamp_min: float = 1e-5,
) -> Tensor:
    """Sigmoid schedule (Jabri et al. 2022, arXiv:2212.11972, Algorithm 1 ``sigmoid_schedule``).

    alpha-bar(t) = (sigmoid(end / tau) - sigmoid((t (end - start) + start) / tau))
    / (sigmoid(end / tau) - sigmoid(start / tau)) for t in [0, 1], clipped to
    [clamp_min, 1] as in the paper, so the last step keeps a small positive SNR. Betas are
    1 - alpha-bar(t_i) / alpha-bar(t_{i-1}) on t_i = i / T, clipped to at most 0.999 as in
    lucidrains/denoising-diffusion-pytorch. Larger ``tau`` gives a flatter schedule.
    """
    _check_num_timesteps(num_timesteps)
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    if not start < end:
        raise ValueError(f"start must be < end, got start={start!r}, end={end!r}")
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    alphas_cumprod = (v_end - torch.sigmoid((steps * (end - start) + start) / tau)) / (v_end - v_start)
    alphas_cumprod = alphas_cumprod.clamp(min=clamp_min, max=1.0)
    betas = torch.clamp(1 - alphas_cumprod[1:] / alphas_cumprod[:-1], max=0.999)
    return _check_betas(betas, "sigmoid")


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Rescale betas so that the last step has zero SNR (Lin et al. 2023, arXiv:2305.08891, Algorithm 1).

    sqrt(alpha-bar) is shifted so that its last value is 0 and scaled so that its first value
    is unchanged; the betas are then recovered from the new alpha-bar. The last beta becomes
    exactly 1 and alpha-bar_T exactly 0. Works for any schedule; returns float64.
    Sample with ``trailing`` spacing and predict ``v`` or ``x0`` with such a schedule
    (sec. 3.2-3.3 of the paper): x_T carries no information about x_0.
    """
    betas = torch.as_tensor(betas).to(torch.float64)
    if betas.ndim != 1 or betas.numel() < 2:
        raise ValueError(
            f"betas must be a 1-D tensor with at least 2 entries, got shape {tuple(betas.shape)}"
        )
    alphas = 1.0 - betas
    alphas_bar_sqrt = torch.cumprod(alphas, dim=0).sqrt()

    # Store the old first and last values.
    alphas_bar_sqrt_0 = alphas_bar_sqrt[0].clone()
    alphas_bar_sqrt_T = alphas_bar_sqrt[-1].clone()
    if alphas_bar_sqrt_0 == alphas_bar_sqrt_T:
        raise ValueError("betas must not all be 0 after the first step: the schedule has no noise to rescale")

    # Shift so that the last timestep is zero, then scale so that the first is unchanged.
    alphas_bar_sqrt = alphas_bar_sqrt - alphas_bar_sqrt_T
    alphas_bar_sqrt = alphas_bar_sqrt * alphas_bar_sqrt_0 / (alphas_bar_sqrt_0 - alphas_bar_sqrt_T)

    # Convert alpha-bar back to betas.
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1.0 - alphas


SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "linear": linear_beta_schedule,
    "scaled_linear": scaled_linear_beta_schedule,
    "cosine": cosine_beta_schedule,
    "sigmoid": sigmoid_beta_schedule,
}


def get_beta_schedule(
    name: str, num_timesteps: int, zero_terminal_snr: bool = False, **kwargs: float
) -> Tensor:
    """Betas (float64, length ``num_timesteps``) of the schedule registered as ``name`` in
    :data:`SCHEDULES`; ``kwargs`` go to that schedule function. With ``zero_terminal_snr``
    the betas are passed through :func:`rescale_zero_terminal_snr`.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule name {name!r}; choose one of {sorted(SCHEDULES)}")
    _check_num_timesteps(num_timesteps)
    fn = SCHEDULES[name]
    allowed = [p for p in inspect.signature(fn).parameters if p != "num_timesteps"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown parameters {unknown} for the {name!r} schedule; it accepts {allowed}"
        )
    betas = fn(num_timesteps, **kwargs)
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas
