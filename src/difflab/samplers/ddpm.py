"""Ancestral DDPM sampler (Ho et al. 2020, arXiv:2006.11239, eq. 7 and Algorithm 2).

Supports skipped steps as diffusers' ``DDPMScheduler.step`` does: for a pair (t, t_prev) the
step uses the process between the two visited timesteps, whose single-step beta is
1 - alpha-bar_t / alpha-bar_{t_prev}. With t_prev = t - 1 this is exactly eq. 7.
"""

from __future__ import annotations

import torch
from torch import Tensor

from difflab.diffusion.process import GaussianDiffusion
from difflab.samplers.base import Generators, Sampler, StepOutput

__all__ = ["VARIANCE_TYPES", "DDPMSampler"]

#: sigma_t^2 = beta-tilde_t ("fixed_small") or beta_t ("fixed_large"), Ho et al. 2020 sec. 3.2.
VARIANCE_TYPES: tuple[str, ...] = ("fixed_small", "fixed_large")


class DDPMSampler(Sampler):
    """Ancestral sampling x_{t_prev} ~ N(mu-tilde(x_t, x_0-hat), sigma_t^2 I).

    ``num_steps=None`` visits all T timesteps. Fresh noise is drawn from the explicit generator
    at every step except the last (``t_prev < 0``), which returns the posterior mean.
    """

    name = "ddpm"
    default_spacing = "leading"

    def __init__(
        self,
        num_steps: int | None = None,
        spacing: str = "leading",
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        clip_range: float = 1.0,
        dynamic_thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        steps_offset: int = 0,
    ) -> None:
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(
                f"unknown variance_type {variance_type!r}; choose one of {list(VARIANCE_TYPES)}"
            )
        super().__init__(
            num_steps=num_steps,
            spacing=spacing,
            clip_sample=clip_sample,
            clip_range=clip_range,
            dynamic_thresholding=dynamic_thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            sample_max_value=sample_max_value,
            steps_offset=steps_offset,
        )
        self.variance_type = variance_type

    def option_suffix(self) -> str:
        """``_fixed_large`` when the variance is not the default ``fixed_small``."""
        return "" if self.variance_type == "fixed_small" else f"_{self.variance_type}"

    def step(
        self,
        process: GaussianDiffusion,
        model_output: Tensor,
        t: int,
        t_prev: int,
        x_t: Tensor,
        generator: Generators | None = None,
        *,
        prediction_type: str,
        noise: Tensor | None = None,
    ) -> StepOutput:
        """One ancestral step from ``t`` to ``t_prev`` (Ho et al. 2020, eqs. 6-7, 15; Algorithm 2).

        Notation (code name -> paper symbol):

        - ``alpha_prod_t``, ``alpha_prod_t_prev`` -> alpha-bar_t, alpha-bar_{t_prev} (1 if t_prev < 0)
        - ``current_alpha_t``, ``current_beta_t`` -> alpha_t, beta_t of the (possibly skipped) step
        - ``pred_x0``                           -> x_0-hat, the model's estimate of x_0
        - ``pred_prev_mean``                    -> mu-tilde_t(x_t, x_0-hat)
        - ``variance``                          -> sigma_t^2
        - ``noise``                             -> z ~ N(0, I)
        """
        self.check_step_args(process, model_output, t, t_prev, x_t, prediction_type)
        dtype = x_t.dtype

        # 1. compute alphas, betas (alpha-bar of t_prev < 0 is 1)
        alpha_prod_t = process.alphas_cumprod_at(t)
        alpha_prod_t_prev = process.alphas_cumprod_at(t_prev)
        beta_prod_t = 1.0 - alpha_prod_t
        beta_prod_t_prev = 1.0 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1.0 - current_alpha_t

        # 2. compute the predicted x_0 ("x_0-hat", eq. 15 of arXiv:2006.11239 inverted)
        t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
        pred_x0, _ = process.split_prediction(model_output, x_t, t_batch, prediction_type)

        # 3. clip or threshold x_0-hat (Saharia et al. 2022, arXiv:2205.11487, sec. 2.3)
        pred_x0 = self.postprocess_x0(pred_x0)

        # 4. coefficients of x_0-hat and x_t in mu-tilde_t, formula (7) of arXiv:2006.11239
        pred_x0_coeff = alpha_prod_t_prev.sqrt() * current_beta_t / beta_prod_t
        current_sample_coeff = current_alpha_t.sqrt() * beta_prod_t_prev / beta_prod_t

        # 5. posterior mean mu-tilde_t(x_t, x_0-hat), formula (7)
        pred_prev_mean = (
            pred_x0_coeff.to(device=x_t.device, dtype=dtype) * pred_x0
            + current_sample_coeff.to(device=x_t.device, dtype=dtype) * x_t
        )

        # 6. add noise sigma_t z except at the last step, Algorithm 2 line 4;
        #    sigma_t^2 = beta-tilde_t (formula (7)) or beta_t (sec. 3.2)
        if t_prev < 0:
            return StepOutput(prev_sample=pred_prev_mean, pred_x0=pred_x0)
        if self.variance_type == "fixed_small":
            variance = beta_prod_t_prev / beta_prod_t * current_beta_t
        elif self.variance_type == "fixed_large":
            variance = current_beta_t
        else:  # pragma: no cover - validated in __init__
            raise ValueError(f"unknown variance_type {self.variance_type!r}")
        z = self.draw_noise(x_t, generator, noise)
        prev_sample = pred_prev_mean + variance.sqrt().to(device=x_t.device, dtype=dtype) * z
        return StepOutput(prev_sample=prev_sample, pred_x0=pred_x0)
