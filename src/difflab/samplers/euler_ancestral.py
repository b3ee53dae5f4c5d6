"""Euler ancestral sampler: an Euler step down to sigma-down, then fresh noise up to sigma_{i+1}.

The ancestral step of Ho et al. 2020 (arXiv:2006.11239, Algorithm 2) written in the EDM sigma
variables (Karras et al. 2022, arXiv:2206.00364, Table 1): from sigma to sigma_next the DDPM
posterior q(x_next | x, x_0) has variance sigma_up^2 = sigma_next^2 (sigma^2 - sigma_next^2)
/ sigma^2 (in the scale x / sqrt(alpha-bar)); the deterministic part is an Euler step of the
probability-flow ODE to sigma_down = sqrt(sigma_next^2 - sigma_up^2). ``eta`` scales sigma_up
as in k-diffusion's ``get_ancestral_step`` (eta = 1: diffusers' ``EulerAncestralDiscreteScheduler``;
eta = 0: the deterministic Euler sampler).
"""

from __future__ import annotations

import math
from typing import Callable

from torch import Tensor

from difflab.samplers.base import Generators, SamplerState, SigmaSampler, StepOutput, key_number

__all__ = ["EulerAncestralSampler"]


class EulerAncestralSampler(SigmaSampler):
    """Euler ancestral steps in sigma; one network evaluation per step, fresh noise at every step but the last."""

    name = "euler_ancestral"

    def __init__(
        self,
        num_steps: int = 20,
        spacing: str = "trailing",
        use_karras_sigmas: bool = False,
        rho: float = 7.0,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        eta: float = 1.0,
        s_noise: float = 1.0,
        clip_sample: bool = True,
        clip_range: float = 1.0,
        dynamic_thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        steps_offset: int = 0,
    ) -> None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
        if isinstance(s_noise, bool) or not isinstance(s_noise, (int, float)) or not s_noise >= 0:
            raise ValueError(f"s_noise must be a number >= 0, got {s_noise!r}")
        super().__init__(
            num_steps=num_steps,
            spacing=spacing,
            use_karras_sigmas=use_karras_sigmas,
            rho=rho,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
            clip_sample=clip_sample,
            clip_range=clip_range,
            dynamic_thresholding=dynamic_thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            sample_max_value=sample_max_value,
            steps_offset=steps_offset,
        )
        self.eta = float(eta)
        self.s_noise = float(s_noise)

    def variant(self) -> str:
        """``euler_a``, then the grid, then ``_eta<eta>`` / ``_snoise<s_noise>`` off their defaults of 1."""
        part = "euler_a" + self.grid_suffix()
        if self.eta != 1.0:
            part += f"_eta{key_number(self.eta)}"
        if self.s_noise != 1.0:
            part += f"_snoise{key_number(self.s_noise)}"
        return part

    def advance(
        self,
        model: Callable[[Tensor, int | float], Tensor],
        x: Tensor,
        state: SamplerState,
        generator: Generators | None = None,
        *,
        noise: Tensor | None = None,
    ) -> StepOutput:
        """Step ``state.index``: sigma -> sigma_next (Euler to sigma_down, then noise of std sigma_up).

        Notation: ``x_i`` = x / sqrt(alpha-bar) (EDM scale), ``denoised`` = D(x_i; sigma) (the
        clipped x_0 estimate), ``d`` = (x_i - D) / sigma the ODE slope (arXiv:2206.00364, eq. 3).
        """
        i = state.index
        if not 0 <= i < state.num_steps:
            raise ValueError(f"state.index must lie in [0, {state.num_steps - 1}], got {i}; create a new state per call")
        sigma, sigma_next = state.sigma(i), state.sigma(i + 1)

        # 1. D(x_i; sigma) from the VP sample and the slope d = (x_i - D) / sigma
        x_i = x * math.sqrt(1.0 + sigma**2)
        denoised, _ = self.denoise(model, x, sigma, state.t(i), state)
        d = (x_i - denoised) / sigma

        # 2. split sigma_next^2 = sigma_down^2 + sigma_up^2 with sigma_up the DDPM posterior std
        sigma_up = min(sigma_next, self.eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)

        # 3. Euler step of the probability-flow ODE to sigma_down, then fresh noise up to sigma_next
        x_next = x_i + (sigma_down - sigma) * d
        if sigma_up > 0:
            x_next = x_next + (self.s_noise * sigma_up) * self.draw_noise(x, generator, noise)

        state.index += 1
        return StepOutput(prev_sample=x_next / math.sqrt(1.0 + sigma_next**2), pred_x0=denoised)
