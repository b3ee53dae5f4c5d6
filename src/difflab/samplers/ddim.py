"""DDIM sampler (Song et al. 2021, arXiv:2010.02502, eqs. 12 and 16).

``eta = 0`` gives the deterministic DDIM; ``eta = 1`` over all T steps gives the DDPM ancestral
sampler with sigma_t^2 = beta-tilde_t. The alpha-bar of t_prev < 0 is 1 (diffusers
``set_alpha_to_one=True``), so the last step returns the x_0 estimate.
"""

from __future__ import annotations

import torch
from torch import Tensor

from difflab.diffusion.process import GaussianDiffusion
from difflab.samplers.base import Generators, Sampler, StepOutput, key_number

__all__ = ["DDIMSampler"]


class DDIMSampler(Sampler):
    """Generalised (non-Markovian) sampler of Song et al. 2021 with stochasticity ``eta`` in [0, 1].

    Noise is drawn from the explicit generator only when ``eta > 0`` and ``t_prev >= 0``
    (sigma is 0 at the last step). The eps used in the "direction pointing to x_t" is the
    model's, not re-derived from a clipped x_0 (diffusers ``use_clipped_model_output=False``).
    """

    name = "ddim"

    def __init__(
        self,
        num_steps: int = 50,
        eta: float = 0.0,
        spacing: str = "trailing",
        clip_sample: bool = True,
        clip_range: float = 1.0,
        dynamic_thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        steps_offset: int = 0,
    ) -> None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
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
        self.eta = float(eta)

    def option_suffix(self) -> str:
        """``_eta<eta>`` when eta != 0: ``ddim50``, ``ddim50_eta1``."""
        return "" if self.eta == 0 else f"_eta{key_number(self.eta)}"

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
        """One DDIM step from ``t`` to ``t_prev`` (formulas (12) and (16) of arXiv:2010.02502).

        Notation (code name -> paper symbol; the paper's alpha_t is our alpha-bar_t):

        - ``alpha_prod_t``, ``alpha_prod_t_prev`` -> alpha_t, alpha_{t-1} of the paper (1 if t_prev < 0)
        - ``pred_eps``                          -> eps_theta(x_t, t)
        - ``pred_x0``                           -> f_theta(x_t, t), the "predicted x_0"
        - ``std_dev_t``                         -> sigma_t(eta)
        - ``pred_sample_direction``             -> "direction pointing to x_t"
        - ``prev_sample``                       -> x_{t-1}
        """
        self.check_step_args(process, model_output, t, t_prev, x_t, prediction_type)
        dtype, device = x_t.dtype, x_t.device

        # 1. compute alphas, betas (alpha-bar of t_prev < 0 is 1)
        alpha_prod_t = process.alphas_cumprod_at(t)
        alpha_prod_t_prev = process.alphas_cumprod_at(t_prev)
        beta_prod_t = 1.0 - alpha_prod_t
        beta_prod_t_prev = 1.0 - alpha_prod_t_prev

        # 2. compute the "predicted x_0" and eps, formula (12) of arXiv:2010.02502
        t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long, device=device)
        pred_x0, pred_eps = process.split_prediction(model_output, x_t, t_batch, prediction_type)

        # 3. clip or threshold the predicted x_0 (Saharia et al. 2022, arXiv:2205.11487, sec. 2.3)
        pred_x0 = self.postprocess_x0(pred_x0)

        # 4. sigma_t(eta) = eta * sqrt((1 - alpha_{t-1}) / (1 - alpha_t)) * sqrt(1 - alpha_t / alpha_{t-1}),
        #    formula (16)
        variance = beta_prod_t_prev / beta_prod_t * (1.0 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = self.eta * variance.sqrt()

        # 5. "direction pointing to x_t": sqrt(1 - alpha_{t-1} - sigma_t^2) * eps, formula (12)
        #    (clamped at 0 against rounding: the exact value is >= 0)
        direction_coeff = (beta_prod_t_prev - std_dev_t**2).clamp(min=0.0).sqrt()
        pred_sample_direction = direction_coeff.to(device=device, dtype=dtype) * pred_eps

        # 6. x_{t-1} without the random noise: sqrt(alpha_{t-1}) * predicted x_0 + direction, formula (12)
        prev_sample = alpha_prod_t_prev.sqrt().to(device=device, dtype=dtype) * pred_x0 + pred_sample_direction

        # 7. add sigma_t * z, formula (12); sigma_t = 0 at the last step, so no draw there
        if self.eta > 0 and t_prev >= 0:
            z = self.draw_noise(x_t, generator, noise)
            prev_sample = prev_sample + std_dev_t.to(device=device, dtype=dtype) * z
        return StepOutput(prev_sample=prev_sample, pred_x0=pred_x0)
