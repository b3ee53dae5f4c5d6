"""Euler sampler on the probability-flow ODE in sigma, with EDM's stochastic churn.

Karras et al. 2022 (arXiv:2206.00364), Algorithm 2 without its second-order correction
(lines 9-11; :mod:`difflab.samplers.heun` keeps them). The discrete VP model is read as an
EDM denoiser (Table 1, "VP" column): with sigma = sqrt((1 - alpha-bar) / alpha-bar), the
sample x / sqrt(alpha-bar) = x_0 + sigma eps follows dx/dsigma = (x - D(x; sigma)) / sigma
(eq. 3 with s(t) = 1), and the network sees the VP input x / sqrt(1 + sigma^2) at the
(fractional) timestep of sigma, as in diffusers' ``EulerDiscreteScheduler``.
"""

from __future__ import annotations

import math
from typing import Callable

from torch import Tensor

from difflab.samplers.base import Generators, SamplerState, SigmaSampler, StepOutput, key_number

__all__ = ["EulerSampler"]


class EulerSampler(SigmaSampler):
    """First-order steps in sigma (Algorithm 2 of arXiv:2206.00364, lines 3-8).

    Churn (``s_churn`` > 0): at each step whose sigma lies in [``s_tmin``, ``s_tmax``] the
    sample is first pushed up to sigma-hat = sigma (1 + gamma), gamma = min(s_churn / N,
    sqrt(2) - 1), by fresh noise of std ``s_noise`` sqrt(sigma-hat^2 - sigma^2) (lines 4-6),
    and the model is evaluated there (at the fractional timestep of sigma-hat). ``s_churn = 0``
    is the deterministic ODE solver. One network evaluation per step.
    """

    name = "euler"
    #: Heun's correction (lines 9-11 of Algorithm 2); :class:`HeunSampler` turns it on.
    second_order = False

    def __init__(
        self,
        num_steps: int = 20,
        spacing: str = "trailing",
        use_karras_sigmas: bool = False,
        rho: float = 7.0,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = math.inf,
        s_noise: float = 1.0,
        clip_sample: bool = True,
        clip_range: float = 1.0,
        dynamic_thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        steps_offset: int = 0,
    ) -> None:
        for key, value in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_tmax", s_tmax), ("s_noise", s_noise)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
                raise ValueError(f"{key} must be a number >= 0, got {value!r}")
        if s_tmax < s_tmin:
            raise ValueError(f"s_tmax must be >= s_tmin, got s_tmin={s_tmin!r}, s_tmax={s_tmax!r}")
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
        self.s_churn = float(s_churn)
        self.s_tmin = float(s_tmin)
        self.s_tmax = float(s_tmax)
        self.s_noise = float(s_noise)

    def variant(self) -> str:
        """``euler`` (or ``heun``), then the grid, then ``_churn<s_churn>`` (and its non-default range/noise)."""
        part = self.name + self.grid_suffix()
        if self.s_churn > 0:
            part += f"_churn{key_number(self.s_churn)}"
            if self.s_tmin > 0 or math.isfinite(self.s_tmax):
                part += f"_tmin{key_number(self.s_tmin)}_tmax{key_number(self.s_tmax)}"
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
        """Step ``state.index``: sigma_i -> sigma_{i+1} (Algorithm 2 of arXiv:2206.00364).

        Notation (code name -> paper symbol):

        - ``sigma``, ``sigma_next``  -> t_i, t_{i+1} (sigma(t) = t in EDM)
        - ``x_i``                    -> x_i = x / sqrt(alpha-bar) (``x`` is the VP sample)
        - ``gamma``, ``sigma_hat``    -> gamma_i, t-hat_i
        - ``x_hat``                  -> x-hat_i
        - ``denoised``               -> D_theta(x-hat_i; t-hat_i), the (clipped) x_0 estimate
        - ``d``, ``d_prime``          -> d_i, d'_i
        - ``x_next``                 -> x_{i+1}
        """
        i = state.index
        num_steps = state.num_steps
        if not 0 <= i < num_steps:
            raise ValueError(f"state.index must lie in [0, {num_steps - 1}], got {i}; create a new state per call")
        sigma, sigma_next = state.sigma(i), state.sigma(i + 1)

        # 1. x_i in the EDM scale: x / sqrt(alpha-bar) = sqrt(1 + sigma^2) x
        x_i = x * math.sqrt(1.0 + sigma**2)

        # 2. churn: gamma_i = min(S_churn / N, sqrt(2) - 1) if t_i in [S_tmin, S_tmax] (line 4),
        #    t-hat_i = t_i + gamma_i t_i (line 5), x-hat_i = x_i + sqrt(t-hat_i^2 - t_i^2) eps_i (line 6)
        gamma = min(self.s_churn / num_steps, math.sqrt(2.0) - 1.0) if self.s_tmin <= sigma <= self.s_tmax else 0.0
        if gamma > 0:
            sigma_hat = sigma * (gamma + 1.0)
            eps = self.s_noise * self.draw_noise(x, generator, noise)
            x_hat = x_i + math.sqrt(sigma_hat**2 - sigma**2) * eps
            t_hat: int | float = state.t_of_sigma(sigma_hat)
            x_in = x_hat / math.sqrt(1.0 + sigma_hat**2)
        else:
            sigma_hat, x_hat, t_hat, x_in = sigma, x_i, state.t(i), x

        # 3. D_theta(x-hat_i; t-hat_i): the network sees the VP input x-hat / sqrt(1 + t-hat^2)
        denoised, _ = self.denoise(model, x_in, sigma_hat, t_hat, state)

        # 4. d_i = (x-hat_i - D_theta(x-hat_i; t-hat_i)) / t-hat_i (line 7), Euler step (line 8)
        d = (x_hat - denoised) / sigma_hat
        x_next = x_hat + (sigma_next - sigma_hat) * d

        # 5. second-order correction if t_{i+1} != 0 (lines 9-11), Heun only
        if self.second_order and sigma_next > 0:
            denoised_next, _ = self.denoise(
                model, x_next / math.sqrt(1.0 + sigma_next**2), sigma_next, state.t(i + 1), state
            )
            d_prime = (x_next - denoised_next) / sigma_next
            x_next = x_hat + (sigma_next - sigma_hat) * (0.5 * d + 0.5 * d_prime)

        state.index += 1
        # 6. back to the VP scale of sigma_{i+1} (sigma = 0: the clean sample itself)
        return StepOutput(prev_sample=x_next / math.sqrt(1.0 + sigma_next**2), pred_x0=denoised)
