"""Classifier-free guidance, once, for every sampler (the loop's :class:`~difflab.samplers.base.ModelFn`).

Ho & Salimans 2022 (arXiv:2207.12598), eq. 6: with the conditional output c = D(x_t, t, y)
and the unconditional u = D(x_t, t, null),

    guided = u + w (c - u)

(w = 1: purely conditional, w = 0: unconditional; the paper's w is ours minus one). The two
passes run as ONE batched forward (the batch concatenated with itself, labels then null
labels) but count as 2 network evaluations (NFE): the cost of a guided step is the cost of
two unguided ones on any hardware whose time grows with the batch.

Prediction space: guidance combines the model's raw output, whatever the objective trained
it to predict (eps, x0 or v), as diffusers does. For one x_t and t, eps, x0 and v are affine
maps of each other with the same coefficients for both passes (x0 = (x_t - sqrt(1 - a) eps)
/ sqrt(a), v = sqrt(a) eps - sqrt(1 - a) x0), and u + w (c - u) is an affine combination
(weights 1 - w and w sum to 1), so guiding eps, x0 or v gives the same step: the choice
only matters for the rescale below (and it stays defined where eps is not, at zero terminal
SNR).

Options:

- ``rescale`` phi (Lin et al. 2023, arXiv:2305.08891, sec. 3.4, eqs. 15-17): the guided
  output is scaled per sample to the standard deviation of the conditional one,
  x_rescaled = x_cfg std(c) / std(x_cfg), then mixed x = phi x_rescaled + (1 - phi) x_cfg
  (std over all non-batch dims; the paper applies it to v-predictions, we to the raw output,
  like diffusers' ``rescale_noise_cfg``);
- ``interval`` (sigma_lo, sigma_hi] (Kynkäänniemi et al. 2024, arXiv:2404.07724, sec. 3):
  guidance only at noise levels sigma in the interval, sigma = sqrt((1 - alpha-bar) /
  alpha-bar) (the EDM noise level of the VP process, so the paper's values carry over);
  outside it the step is purely conditional and costs 1 NFE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from difflab.samplers.base import key_number

__all__ = ["Guidance", "apply_guidance", "guidance_key", "guided_nfe", "rescale_guided"]


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance settings: scale w, rescale phi, sigma interval (see the module doc)."""

    scale: float = 1.0
    rescale: float = 0.0
    interval: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        scale = _number("guidance_scale", self.scale)
        if scale < 0:
            raise ValueError(f"guidance_scale must be >= 0 (0: unconditional, 1: conditional), got {self.scale!r}")
        rescale = _number("guidance_rescale", self.rescale)
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"guidance_rescale must be in [0, 1] (Lin et al. use 0.7), got {self.rescale!r}")
        interval = self.interval
        if interval is not None:
            if isinstance(interval, (str, bytes)) or not isinstance(interval, Sequence) or len(interval) != 2:
                raise ValueError(f"guidance_interval must be [sigma_lo, sigma_hi] or null, got {interval!r}")
            lo, hi = (_number("guidance_interval", v) for v in interval)
            if not 0 <= lo < hi:
                raise ValueError(f"guidance_interval must be [sigma_lo, sigma_hi] with 0 <= sigma_lo < sigma_hi, got {list(interval)}")
            interval = (lo, hi)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "rescale", rescale)
        object.__setattr__(self, "interval", interval)

    @property
    def unconditional(self) -> bool:
        return self.scale == 0.0

    def scale_at(self, sigma: float | None) -> float:
        """The scale at noise level ``sigma``: w inside the interval (or without one), else 1."""
        if self.interval is None or sigma is None:
            return self.scale
        lo, hi = self.interval
        return self.scale if lo < sigma <= hi else 1.0


def rescale_guided(guided: Tensor, cond: Tensor, phi: float) -> Tensor:
    """Lin et al. 2023 (arXiv:2305.08891), eqs. 15-17: guided rescaled to std(cond), mixed by phi."""
    if phi == 0.0:
        return guided
    dims = tuple(range(1, guided.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True).clamp_min(torch.finfo(guided.dtype).tiny)
    rescaled = guided * (std_cond / std_guided)
    return phi * rescaled + (1.0 - phi) * guided


def apply_guidance(cond: Tensor, uncond: Tensor, scale: float, rescale: float = 0.0) -> Tensor:
    """u + w (c - u) (Ho & Salimans 2022, arXiv:2207.12598, eq. 6), then the optional rescale."""
    guided = uncond + scale * (cond - uncond)
    return rescale_guided(guided, cond, rescale)


def guidance_key(guidance: Guidance | None, nfe: int, labels: str | None = None) -> str | None:
    """The guidance part of a metric key: ``cfg<w>[_rescale<phi>][_int<lo>-<hi>]_nfe<NFE>[_<labels>]``.

    ``nfe`` counts the network evaluations per sample of the guided run (2 per guided
    evaluation: :func:`guided_nfe`), since the sampler's own part counts unguided ones.
    ``labels`` names the label scheme (``uniform``, ``class3``, ``list``). None without guidance.
    """
    if guidance is None:
        return None
    parts = [f"cfg{key_number(guidance.scale)}"]
    if guidance.rescale:
        parts.append(f"rescale{key_number(guidance.rescale)}")
    if guidance.interval is not None:
        parts.append(f"int{key_number(guidance.interval[0])}-{key_number(guidance.interval[1])}")
    parts.append(f"nfe{int(nfe)}")
    if labels:
        parts.append(str(labels))
    return "_".join(parts)


def guided_nfe(process: Any, sampler: Any, prediction_type: str, guidance: Guidance | None) -> int:
    """Network evaluations per sample of a run of ``sampler`` under ``guidance``, counted by the loop.

    A guided evaluation counts 2 (conditional and unconditional pass), a purely conditional
    or unconditional one 1 (w = 1, w = 0, or a step outside the guidance interval). The run is
    made with a zero model on a (1, 1) sample, so the count is exact for every sampler and
    interval without knowing the sampler's grid.
    """
    from difflab.samplers.loop import generate

    if guidance is None:
        return int(sampler.nfe(process.num_timesteps))

    class _Zero(torch.nn.Module):
        num_classes = 1

        def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
            return torch.zeros_like(x)

    device = process.betas.device
    _, trajectory = generate(
        _Zero(), process, sampler, (1, 1), torch.Generator(device="cpu").manual_seed(0), return_trajectory=True,
        progress=False, prediction_type=prediction_type, y=torch.zeros(1, dtype=torch.long), device=device,
        guidance_scale=guidance.scale, guidance_rescale=guidance.rescale, guidance_interval=guidance.interval,
        null_label=1,
    )
    return int(trajectory.nfe)
