"""UniPC multistep sampler (Zhao et al. 2023, arXiv:2302.04867), data-prediction form.

Each step evaluates the model once at the predicted sample, then

1. corrects that sample with UniC-p (sec. 3.2, eq. 7): the new model output enters the
   polynomial of the previous step, raising its order by one at no extra network evaluation
   (the model output itself is not recomputed at the corrected point);
2. predicts the next sample with UniP-p (sec. 3.1, eq. 5 and Algorithm 2), an Adams-type
   multistep expansion in the half log-SNR lambda whose coefficients rho solve the order
   conditions R_p(h) rho = g_p(h) (Theorem 3.1), with B(h) = e^h - 1 (``bh2``) or B(h) = h
   (``bh1``), as in diffusers' ``UniPCMultistepScheduler`` (``predict_x0=True``).

The first steps use the orders the history allows; with ``lower_order_final`` step i uses at
most order S - i; the step to sigma = 0 is first order and returns the x_0 estimate.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from difflab.samplers.base import Generators, SamplerState, SigmaSampler, StepOutput, vp_coefficients

__all__ = ["UNIPC_SOLVER_TYPES", "UniPCSampler"]

#: B(h) of the UniPC order conditions: h (``bh1``) or e^h - 1 (``bh2``, better at few steps).
UNIPC_SOLVER_TYPES: tuple[str, ...] = ("bh1", "bh2")


def _coefficients(rks: list[float], hh: float, solver_type: str) -> tuple[Tensor, Tensor, float, float]:
    """R_p (p x p, rows r_k^(j-1)), g_p / B(h), h phi_1(h) and B(h) of arXiv:2302.04867, Theorem 3.1.

    ``hh`` is -h for the data-prediction form; h phi_1 = e^hh - 1 and
    g_j = j! h phi_(j+1)(hh) with phi_(k+1)(x) = (phi_k(x) - 1 / k!) / x.
    """
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if solver_type == "bh1" else math.expm1(hh)
    factorial = 1
    rows, b = [], []
    for j in range(1, len(rks) + 1):
        rows.append([rk ** (j - 1) for rk in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= j + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return torch.tensor(rows, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), h_phi_1, b_h


class UniPCSampler(SigmaSampler):
    """UniPC-p multistep (UniP predictor + UniC corrector) of order 1, 2 or 3; one network evaluation per step.

    The history (past lambda, x_0 estimates, the sample before the last prediction and that
    prediction's order) lives in the per-call :class:`SamplerState`.
    """

    name = "unipc"

    def __init__(
        self,
        num_steps: int = 20,
        order: int = 2,
        solver_type: str = "bh2",
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
        if solver_type not in UNIPC_SOLVER_TYPES:
            raise ValueError(f"unknown solver_type {solver_type!r}; choose one of {list(UNIPC_SOLVER_TYPES)}")
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
        self.solver_type = solver_type
        self.lower_order_final = bool(lower_order_final)

    def variant(self) -> str:
        """``unipc`` (order 2, bh2), ``unipc3``, then ``_bh1``, ``_nolof`` and the grid off their defaults."""
        part = "unipc" + ("" if self.order == 2 else str(self.order))
        if self.solver_type != "bh2":
            part += f"_{self.solver_type}"
        if not self.lower_order_final:
            part += "_nolof"
        return part + self.grid_suffix()

    def step_order(self, i: int, num_steps: int) -> int:
        """UniP's order at step ``i``: warm-up (i + 1), ``lower_order_final`` (S - i), 1 to sigma = 0."""
        order = min(self.order, num_steps - i) if self.lower_order_final else self.order
        if i == num_steps - 1:
            order = 1
        return min(order, i + 1)

    def advance(
        self,
        model: Callable[[Tensor, int | float], Tensor],
        x: Tensor,
        state: SamplerState,
        generator: Generators | None = None,
        *,
        noise: Tensor | None = None,
    ) -> StepOutput:
        """Step ``state.index``: model call at sigma_i, UniC on x_i, UniP from sigma_i to sigma_{i+1}.

        ``state.history`` holds ``(lambda, sigma, x_0 estimate)`` of the last ``order`` grid
        points; ``state.memory`` the sample before the last prediction and that prediction's order.
        """
        i = state.index
        num_steps = state.num_steps
        if not 0 <= i < num_steps:
            raise ValueError(f"state.index must lie in [0, {num_steps - 1}], got {i}; create a new state per call")
        sigma = state.sigma(i)
        alpha_s0, sigma_s0 = vp_coefficients(sigma)
        lambda_s0 = math.log(alpha_s0) - math.log(sigma_s0)
        pred_x0, _ = self.denoise(model, x, sigma, state.t(i), state)

        # 1. UniC: correct x_i with the new model output (eq. 7 of arXiv:2302.04867)
        if state.history:
            x = self._corrector(
                pred_x0, state.memory["last_sample"], state.history, lambda_s0, alpha_s0, sigma_s0,
                state.memory["last_order"],
            )

        state.history.append((lambda_s0, sigma_s0, pred_x0))
        del state.history[: -self.order]
        order = self.step_order(i, num_steps)
        state.memory["last_sample"], state.memory["last_order"] = x, order
        state.index += 1

        # 2. UniP to sigma_{i+1}; the first-order step to sigma = 0 lands on the x_0 estimate
        sigma_next = state.sigma(i + 1)
        if sigma_next == 0:
            return StepOutput(prev_sample=pred_x0, pred_x0=pred_x0)
        prev = self._predictor(x, state.history, sigma_next, order)
        return StepOutput(prev_sample=prev, pred_x0=pred_x0)

    def _predictor(self, x, history, sigma_next, order) -> Tensor:
        """UniP-p (sec. 3.1, eq. 5): x_t = sigma_t / sigma_s0 x - alpha_t h phi_1 m0 - alpha_t B(h) sum_k rho_k D1_k."""
        lambda_s0, sigma_s0, m0 = history[-1]
        alpha_t, sigma_t = vp_coefficients(sigma_next)
        h = math.log(alpha_t) - math.log(sigma_t) - lambda_s0
        rks, D1s = [], []
        for k in range(1, order):
            lambda_sk, _, mk = history[-(k + 1)]
            rk = (lambda_sk - lambda_s0) / h
            rks.append(rk)
            D1s.append((mk - m0) / rk)
        R, b, h_phi_1, b_h = _coefficients([*rks, 1.0], -h, self.solver_type)
        x_t = (sigma_t / sigma_s0) * x - (alpha_t * h_phi_1) * m0
        if D1s:
            rhos = [0.5] if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
            x_t = x_t - (alpha_t * b_h) * sum(rho * d for rho, d in zip(rhos, D1s))
        return x_t

    def _corrector(self, model_t, last_sample, history, lambda_t, alpha_t, sigma_t, order) -> Tensor:
        """UniC-p (sec. 3.2, eq. 7): redo the last step with the model output m_t at its end point."""
        lambda_s0, sigma_s0, m0 = history[-1]
        h = lambda_t - lambda_s0
        rks, D1s = [], []
        for k in range(1, order):
            lambda_sk, _, mk = history[-(k + 1)]
            rk = (lambda_sk - lambda_s0) / h
            rks.append(rk)
            D1s.append((mk - m0) / rk)
        R, b, h_phi_1, b_h = _coefficients([*rks, 1.0], -h, self.solver_type)
        rhos = [0.5] if order == 1 else torch.linalg.solve(R, b).tolist()
        x_t = (sigma_t / sigma_s0) * last_sample - (alpha_t * h_phi_1) * m0
        correction = rhos[-1] * (model_t - m0)
        for rho, d in zip(rhos[:-1], D1s):
            correction = correction + rho * d
        return x_t - (alpha_t * b_h) * correction
