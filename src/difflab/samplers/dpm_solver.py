"""Multistep DPM-Solver and DPM-Solver++ (Lu et al. 2022, arXiv:2206.00927; Lu et al. 2022b, arXiv:2211.01095).

Both integrate the probability-flow ODE in the half log-SNR lambda = log(alpha / sigma_vp)
(x = alpha x_0 + sigma_vp eps), solving its linear part exactly:

- ``dpmsolver++`` (data prediction): x_t = (sigma_t / sigma_s) x_s - alpha_t sum_k h^(k+1)
  phi_(k+1)(h) x_0^(k)(lambda_s) (arXiv:2211.01095, eq. 9), multistep: Algorithm 2 (2M) and
  its third-order extension; it stays stable with clipped/thresholded x_0 and under guidance;
- ``dpmsolver`` (noise prediction): the same expansion of eps (arXiv:2206.00927, eq. 3.6;
  multistep form of arXiv:2211.01095, appendix B);
- ``sde-dpmsolver++``: the data-prediction solver of the reverse SDE, which adds fresh noise of
  std sigma_t sqrt(1 - e^(-2h)) at every step (diffusers' ``sde-dpmsolver++``; first order it is
  DDPM-like ancestral sampling, arXiv:2211.01095, sec. 5 and appendix; Gonzalez et al. 2023,
  arXiv:2305.14267, for the exponential SDE solvers).

``solver_type`` selects the second-order difference: ``midpoint`` (the paper's 2M, the
``D1 / 2`` term) or ``heun`` (the ``(e^(-h) - 1) / h + 1`` weight of the linear-multistep form).
The first steps use the lower orders the history allows (warm-up); with fewer than 15 steps
and ``lower_order_final`` the last two steps use orders 1 and 2 (stable at few steps), and the
step to sigma = 0 is always first order, which returns the x_0 estimate itself. This is
diffusers' ``DPMSolverMultistepScheduler`` with ``final_sigmas_type="zero"``.
"""

from __future__ import annotations

import math
from typing import Callable

from torch import Tensor

from difflab.samplers.base import Generators, SamplerState, SigmaSampler, StepOutput, vp_coefficients

__all__ = ["ALGORITHMS", "SOLVER_TYPES", "DPMSolverSampler"]

#: Data prediction (``dpmsolver++``), noise prediction (``dpmsolver``), the SDE variant of ``dpmsolver++``.
ALGORITHMS: tuple[str, ...] = ("dpmsolver++", "dpmsolver", "sde-dpmsolver++")
#: The second-order difference of the multistep update.
SOLVER_TYPES: tuple[str, ...] = ("midpoint", "heun")


class DPMSolverSampler(SigmaSampler):
    """DPM-Solver(++) multistep of order 1, 2 or 3; one network evaluation per step.

    The history of past (lambda, model output) pairs lives in the per-call
    :class:`SamplerState`, never on the sampler.
    """

    name = "dpm_solver"

    def __init__(
        self,
        num_steps: int = 20,
        order: int = 2,
        algorithm: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        spacing: str = "trailing",
        use_karras_sigmas: bool = False,
        rho: float = 7.0,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        clip_sample: bool = True,
        clip_range: float = 1.0,
        dynamic_thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        steps_offset: int = 0,
    ) -> None:
        if isinstance(order, bool) or order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {list(ALGORITHMS)}")
        if solver_type not in SOLVER_TYPES:
            raise ValueError(f"unknown solver_type {solver_type!r}; choose one of {list(SOLVER_TYPES)}")
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
        self.order = int(order)
        self.algorithm = algorithm
        self.solver_type = solver_type
        self.lower_order_final = bool(lower_order_final)

    def variant(self) -> str:
        """``dpmpp2m``, ``dpm3m``, ``dpmpp2m_sde``..., then ``_heun``, ``_nolof`` and the grid off their defaults."""
        part = ("dpm" if self.algorithm == "dpmsolver" else "dpmpp") + f"{self.order}m"
        if self.algorithm == "sde-dpmsolver++":
            part += "_sde"
        if self.solver_type != "midpoint" and self.order > 1:
            part += f"_{self.solver_type}"
        if not self.lower_order_final and self.order > 1:
            part += "_nolof"
        return part + self.grid_suffix()

    def step_order(self, i: int, num_steps: int) -> int:
        """The order of step ``i`` of ``num_steps``: warm-up, ``lower_order_final``, first order to sigma = 0."""
        if self.order == 1 or i == 0 or i == num_steps - 1:
            return 1
        if self.order == 2 or i == 1 or (self.lower_order_final and num_steps < 15 and i == num_steps - 2):
            return 2
        return 3

    def advance(
        self,
        model: Callable[[Tensor, int | float], Tensor],
        x: Tensor,
        state: SamplerState,
        generator: Generators | None = None,
        *,
        noise: Tensor | None = None,
    ) -> StepOutput:
        """Step ``state.index`` from lambda_s (sigma_i) to lambda_t (sigma_{i+1}).

        Notation (code name -> symbol of arXiv:2211.01095; s0, s1, s2 = the current and the two
        previous grid points, t = the next one):

        - ``alpha_*``, ``sigma_*``   -> alpha, sigma of x = alpha x_0 + sigma eps
        - ``lambda_*``               -> lambda = log(alpha / sigma)
        - ``h``, ``h_0``, ``h_1``        -> lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
        - ``r0``, ``r1``               -> h_0 / h, h_1 / h
        - ``m0``, ``m1``, ``m2``         -> x_theta (or eps_theta) at s0, s1, s2
        - ``D1``, ``D2``               -> the scaled first and second divided differences
        """
        i = state.index
        num_steps = state.num_steps
        if not 0 <= i < num_steps:
            raise ValueError(f"state.index must lie in [0, {num_steps - 1}], got {i}; create a new state per call")
        sigma_s0_ve, sigma_t_ve = state.sigma(i), state.sigma(i + 1)

        # 1. the model output as the solver's quantity: x_0 (dpmsolver++) or eps (dpmsolver)
        pred_x0, pred_eps = self.denoise(model, x, sigma_s0_ve, state.t(i), state)
        m0 = pred_eps if self.algorithm == "dpmsolver" else pred_x0
        alpha_s0, sigma_s0 = vp_coefficients(sigma_s0_ve)
        lambda_s0 = math.log(alpha_s0) - math.log(sigma_s0)
        state.history.append((lambda_s0, m0))
        del state.history[: -self.order]
        state.index += 1

        # 2. the step to sigma = 0 is first order and lands on the x_0 estimate: for dpmsolver++
        #    x_t = (0 / sigma_s) x_s + alpha_t (1 - e^(-inf)) x_0 = x_0; for dpmsolver it is the
        #    limit sigma_t (e^h - 1) -> alpha_t sigma_s / alpha_s of the same update
        if sigma_t_ve == 0:
            return StepOutput(prev_sample=pred_x0, pred_x0=pred_x0)

        alpha_t, sigma_t = vp_coefficients(sigma_t_ve)
        lambda_t = math.log(alpha_t) - math.log(sigma_t)
        h = lambda_t - lambda_s0
        order = self.step_order(i, num_steps)
        z = self.draw_noise(x, generator, noise) if self.algorithm == "sde-dpmsolver++" else None

        if order == 1:
            prev = self._first_order(x, m0, h, alpha_s0, sigma_s0, alpha_t, sigma_t, z)
        elif order == 2:
            lambda_s1, m1 = state.history[-2]
            r0 = (lambda_s0 - lambda_s1) / h
            D0, D1 = m0, (1.0 / r0) * (m0 - m1)
            prev = self._second_order(x, D0, D1, h, alpha_s0, sigma_s0, alpha_t, sigma_t, z)
        else:
            (lambda_s2, m2), (lambda_s1, m1) = state.history[-3], state.history[-2]
            h_0, h_1 = lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
            r0, r1 = h_0 / h, h_1 / h
            D1_0, D1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
            D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
            D2 = (1.0 / (r0 + r1)) * (D1_0 - D1_1)
            prev = self._third_order(x, m0, D1, D2, h, alpha_s0, sigma_s0, alpha_t, sigma_t, z)
        return StepOutput(prev_sample=prev, pred_x0=pred_x0)

    # ------------------------------------------------------------------ the updates
    def _first_order(self, x, m0, h, alpha_s, sigma_s, alpha_t, sigma_t, z):
        """DPM-Solver-1 (arXiv:2206.00927, eq. 3.7; = DDIM) and DPM-Solver++(1) (arXiv:2211.01095, eq. 9, k = 0)."""
        if self.algorithm == "dpmsolver++":
            return (sigma_t / sigma_s) * x - (alpha_t * (math.exp(-h) - 1.0)) * m0
        if self.algorithm == "dpmsolver":
            return (alpha_t / alpha_s) * x - (sigma_t * (math.exp(h) - 1.0)) * m0
        return (
            (sigma_t / sigma_s * math.exp(-h)) * x
            + (alpha_t * (1.0 - math.exp(-2.0 * h))) * m0
            + (sigma_t * math.sqrt(1.0 - math.exp(-2.0 * h))) * z
        )

    def _second_order(self, x, D0, D1, h, alpha_s, sigma_s, alpha_t, sigma_t, z):
        """Multistep second order: DPM-Solver++(2M) (arXiv:2211.01095, Algorithm 2) and its noise form."""
        if self.algorithm == "dpmsolver++":
            coeff = alpha_t * (math.exp(-h) - 1.0)
            base = (sigma_t / sigma_s) * x - coeff * D0
            if self.solver_type == "midpoint":
                return base - (0.5 * coeff) * D1
            return base + (alpha_t * ((math.exp(-h) - 1.0) / h + 1.0)) * D1
        if self.algorithm == "dpmsolver":
            coeff = sigma_t * (math.exp(h) - 1.0)
            base = (alpha_t / alpha_s) * x - coeff * D0
            if self.solver_type == "midpoint":
                return base - (0.5 * coeff) * D1
            return base - (sigma_t * ((math.exp(h) - 1.0) / h - 1.0)) * D1
        coeff = alpha_t * (1.0 - math.exp(-2.0 * h))
        base = (sigma_t / sigma_s * math.exp(-h)) * x + coeff * D0 + (sigma_t * math.sqrt(1.0 - math.exp(-2.0 * h))) * z
        if self.solver_type == "midpoint":
            return base + (0.5 * coeff) * D1
        return base + (alpha_t * ((1.0 - math.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * D1

    def _third_order(self, x, D0, D1, D2, h, alpha_s, sigma_s, alpha_t, sigma_t, z):
        """Multistep third order (arXiv:2206.00927, eq. 3.8 in lambda; arXiv:2211.01095, appendix B)."""
        if self.algorithm == "dpmsolver++":
            return (
                (sigma_t / sigma_s) * x
                - (alpha_t * (math.exp(-h) - 1.0)) * D0
                + (alpha_t * ((math.exp(-h) - 1.0) / h + 1.0)) * D1
                - (alpha_t * ((math.exp(-h) - 1.0 + h) / h**2 - 0.5)) * D2
            )
        if self.algorithm == "dpmsolver":
            return (
                (alpha_t / alpha_s) * x
                - (sigma_t * (math.exp(h) - 1.0)) * D0
                - (sigma_t * ((math.exp(h) - 1.0) / h - 1.0)) * D1
                - (sigma_t * ((math.exp(h) - 1.0 - h) / h**2 - 0.5)) * D2
            )
        return (
            (sigma_t / sigma_s * math.exp(-h)) * x
            + (alpha_t * (1.0 - math.exp(-2.0 * h))) * D0
            + (alpha_t * ((1.0 - math.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * D1
            + (alpha_t * ((1.0 - math.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * D2
            + (sigma_t * math.sqrt(1.0 - math.exp(-2.0 * h))) * z
        )

