"""Training objective: what the model predicts (eps | x0 | v) and how each timestep is weighted.

Notation (code name -> paper symbol):

- ``t``        -> t, drawn uniformly from {0, ..., T-1} (Ho et al. 2020, arXiv:2006.11239, Algorithm 1)
- ``noise``    -> epsilon ~ N(0, I)
- ``snr``      -> SNR(t) = alpha-bar_t / (1 - alpha-bar_t)
- ``gamma``    -> gamma of Min-SNR-gamma (Hang et al. 2023, arXiv:2303.09556)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from difflab.diffusion.process import PREDICTION_TYPES, GaussianDiffusion

__all__ = [
    "WEIGHTINGS",
    "DiffusionObjective",
    "ObjectiveOutput",
    "min_snr_weight",
    "sample_timesteps",
]

#: Loss weightings over timesteps.
WEIGHTINGS: tuple[str, ...] = ("uniform", "min_snr")


def sample_timesteps(
    batch_size: int,
    num_timesteps: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Tensor:
    """Timesteps uniform on {0, ..., num_timesteps - 1} (Ho et al. 2020, Algorithm 1, line 3).

    Drawn on the generator's device from ``generator`` and then moved to ``device``, so the
    draw depends only on the generator's state.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be an integer >= 1, got {num_timesteps!r}")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    t = torch.randint(
        0, num_timesteps, (batch_size,), generator=generator, device=generator.device, dtype=torch.long
    )
    return t.to(device) if device is not None else t


def min_snr_weight(snr: Tensor, target: str, gamma: float) -> Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023, arXiv:2303.09556, sec. 3.4 and eq. 9 ff.).

    The x0-loss weight is min(SNR, gamma); expressed for the other targets
    (||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2, ||v - v_hat||^2 = (SNR + 1) ||x0 - x0_hat||^2):

    - eps: min(SNR, gamma) / SNR
    - x0:  min(SNR, gamma)
    - v:   min(SNR, gamma) / (SNR + 1)

    Limits, taken so that no NaN appears: at SNR = 0 (zero terminal SNR) eps -> 1 (the limit of
    SNR / SNR), x0 -> 0, v -> 0; at SNR = inf eps -> 0, x0 -> gamma, v -> 0.
    """
    if target not in PREDICTION_TYPES:
        raise ValueError(f"unknown target {target!r}; choose one of {list(PREDICTION_TYPES)}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma!r}")
    clipped = torch.clamp(snr, max=gamma)
    if target == "eps":
        # min(snr, gamma) / snr = 1 for snr <= gamma, gamma / snr above (0 at snr = inf).
        return torch.where(snr <= gamma, torch.ones_like(snr), gamma / snr)
    elif target == "x0":
        return clipped
    elif target == "v":
        return clipped / (snr + 1.0)
    else:  # pragma: no cover - guarded above
        raise ValueError(f"unknown target {target!r}; choose one of {list(PREDICTION_TYPES)}")


@dataclass
class ObjectiveOutput:
    """Per-sample loss (B,) and the timesteps (B,) it was computed at."""

    loss_per_sample: Tensor
    t: Tensor

    @property
    def loss(self) -> Tensor:
        """The batch mean of ``loss_per_sample``."""
        return self.loss_per_sample.mean()


class DiffusionObjective:
    """Denoising objective: regress ``target`` (eps | x0 | v) with a per-timestep weight.

    ``weighting="uniform"`` is the simple loss of Ho et al. 2020 (eq. 14) for the chosen target;
    ``"min_snr"`` multiplies it by :func:`min_snr_weight` with ``gamma`` (Hang et al. 2023).
    """

    def __init__(self, target: str = "eps", weighting: str = "min_snr", gamma: float = 5.0) -> None:
        if target not in PREDICTION_TYPES:
            raise ValueError(f"unknown target {target!r}; choose one of {list(PREDICTION_TYPES)}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose one of {list(WEIGHTINGS)}")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
            raise ValueError(f"gamma must be a number > 0, got {gamma!r}")
        self.target = target
        self.weighting = weighting
        self.gamma = float(gamma)

    def __repr__(self) -> str:
        return f"DiffusionObjective(target={self.target!r}, weighting={self.weighting!r}, gamma={self.gamma})"

    sample_timesteps = staticmethod(sample_timesteps)

    def weights(self, process: GaussianDiffusion, t: Tensor) -> Tensor:
        """Loss weight per sample, float64 of shape (B,) on the process' buffer device."""
        snr = process.snr(t)
        if self.weighting == "uniform":
            return torch.ones_like(snr)
        return min_snr_weight(snr, self.target, self.gamma)

    def loss(
        self, process: GaussianDiffusion, model_output: Tensor, x0: Tensor, noise: Tensor, t: Tensor
    ) -> Tensor:
        """Weighted squared error per sample, shape (B,): the mean over all non-batch dims.

        Computed in at least float32 (a bf16/fp16 model output is upcast).
        """
        if model_output.shape != x0.shape:
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)} but x0 has shape {tuple(x0.shape)}; "
                "they must match"
            )
        target = process.target(self.target, x0, noise, t)
        dtype = torch.promote_types(model_output.dtype, torch.float32)
        err = (model_output.to(dtype) - target.to(dtype)) ** 2
        per_sample = err.reshape(err.shape[0], -1).mean(dim=1)
        weights = self.weights(process, t).to(device=per_sample.device, dtype=dtype)
        return per_sample * weights

    def __call__(
        self,
        model: Callable[..., Tensor],
        process: GaussianDiffusion,
        x0: Tensor,
        generator: torch.Generator,
        y: Tensor | None = None,
    ) -> ObjectiveOutput:
        """One training evaluation (Ho et al. 2020, Algorithm 1).

        Draws ``t`` and then the noise from ``generator`` (on its device, then moved to x0's
        device), forms x_t = q_sample(x0, t, noise), calls ``model(x_t, t)`` (or
        ``model(x_t, t, y)`` when ``y`` is given) and returns the per-sample loss.
        """
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if x0.ndim < 1 or x0.shape[0] < 1:
            raise ValueError(f"x0 must have a non-empty batch dimension, got shape {tuple(x0.shape)}")
        t = sample_timesteps(x0.shape[0], process.num_timesteps, generator, x0.device)
        noise = torch.randn(
            x0.shape, generator=generator, device=generator.device, dtype=x0.dtype
        ).to(x0.device)
        x_t = process.q_sample(x0, t, noise)
        model_output = model(x_t, t) if y is None else model(x_t, t, y)
        return ObjectiveOutput(loss_per_sample=self.loss(process, model_output, x0, noise, t), t=t)
