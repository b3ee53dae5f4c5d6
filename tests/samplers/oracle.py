"""Helpers that run diffusers' schedulers as oracles for the samplers.

diffusers computes its alpha and sigma tables in float32 and casts the sample to float32 inside
``step``. For single steps in float64, :func:`float64_scheduler` builds and runs a scheduler with
``torch.float32`` read as ``torch.float64`` inside the scheduler's module, and :func:`set_sigmas`
replaces its float32 sigma table (set from numpy float32 in ``set_timesteps``) by our float64 one.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Callable, Iterator

import torch

DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


class _Float64Torch:
    """``torch`` with ``float32`` meaning ``float64`` (everything else is torch's)."""

    float32 = torch.float64

    def __getattr__(self, name: str):
        return getattr(torch, name)


@contextlib.contextmanager
def float64_scheduler(cls: type) -> Iterator[None]:
    """Within the block, ``cls``' module computes in float64 where it would use float32."""
    module = importlib.import_module(cls.__module__)
    original = module.torch
    module.torch = _Float64Torch()
    try:
        yield
    finally:
        module.torch = original


def set_sigmas(sched, sigmas: torch.Tensor) -> None:
    """Give the scheduler our float64 noise levels (same values as its float32 ones, to rounding)."""
    assert sched.sigmas.shape == sigmas.shape, (sched.sigmas.shape, sigmas.shape)
    torch.testing.assert_close(sched.sigmas.double(), sigmas, rtol=2e-6, atol=1e-7)
    sched.sigmas = sigmas.clone()


class Scripted:
    """A model callable that returns given outputs in order and records what it was called with."""

    def __init__(self, outputs: list[torch.Tensor]) -> None:
        self.outputs = list(outputs)
        self.calls: list[tuple[torch.Tensor, int | float]] = []

    def __call__(self, x: torch.Tensor, t: int | float) -> torch.Tensor:
        self.calls.append((x, t))
        return self.outputs[len(self.calls) - 1]


def smooth_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in network: smooth in x and t, O(1) outputs, works for any prediction type."""
    t = t.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
    return 0.6 * torch.tanh(x) + 0.3 * torch.sin(3.0 * x + t / 150.0) - 2e-4 * t


def run_diffusers(
    sched, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
    generator: torch.Generator | None = None, num_steps: int | None = None, **step_kwargs,
) -> torch.Tensor:
    """diffusers' pipeline loop: scale the input, call the model at each timestep, step (the first ``num_steps``)."""
    for t in sched.timesteps[:num_steps]:
        inp = sched.scale_model_input(x, t)
        out = model(inp, t.reshape(1).expand(x.shape[0]))
        if generator is not None:
            step_kwargs["generator"] = generator
        x = sched.step(out, t, x, **step_kwargs).prev_sample
    return x


def assert_close_float32(ours: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-4) -> None:
    """Whole float32 runs: within ``rtol`` of each entry, or of the largest entry for entries near 0."""
    assert ours.dtype == ref.dtype == torch.float32 and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=rtol * float(ref.abs().max()))


def edm_denoiser(model, log_sigmas: torch.Tensor, prediction_type: str):
    """D(x; sigma) of a VP network in EDM's scale (Karras et al. 2022, arXiv:2206.00364, Table 1).

    The network sees c_in x = x / sqrt(sigma^2 + 1) at the fractional timestep of sigma;
    eps: D = x - sigma F; v: D = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) F; x0: D = F.
    """
    from difflab.samplers import sigma_to_t

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        t = float(sigma_to_t(torch.tensor(sigma, dtype=torch.float64), log_sigmas))
        F = model(x / (sigma**2 + 1) ** 0.5, torch.full((x.shape[0],), t, dtype=x.dtype))
        if prediction_type == "eps":
            return x - sigma * F
        if prediction_type == "v":
            return x / (sigma**2 + 1) - sigma / (sigma**2 + 1) ** 0.5 * F
        return F

    return denoise


def edm_algorithm2(
    denoise, t_steps: list[float], x: torch.Tensor, generator: torch.Generator, *, heun: bool,
    S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = float("inf"), S_noise: float = 1.0,
) -> torch.Tensor:
    """Algorithm 2 of Karras et al. 2022 (arXiv:2206.00364), line by line; ``heun=False`` drops lines 9-11.

    ``t_steps`` holds t_0 > ... > t_{N-1} > t_N = 0 and ``x`` is x_0 ~ N(0, t_0^2 I). eps_i is
    drawn from ``generator`` only when gamma_i > 0 (it has no effect otherwise).
    """
    N = len(t_steps) - 1
    for i in range(N):  # 2
        t_i, t_next = t_steps[i], t_steps[i + 1]
        gamma = min(S_churn / N, 2**0.5 - 1) if S_tmin <= t_i <= S_tmax else 0.0  # 4
        t_hat = t_i + gamma * t_i  # 5
        if gamma > 0:  # 3 and 6
            eps = S_noise * torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x_hat = x + (t_hat**2 - t_i**2) ** 0.5 * eps
        else:
            x_hat = x
        d = (x_hat - denoise(x_hat, t_hat)) / t_hat  # 7
        x_next = x_hat + (t_next - t_hat) * d  # 8
        if heun and t_next != 0:  # 9
            d_prime = (x_next - denoise(x_next, t_next)) / t_next  # 10
            x_next = x_hat + (t_next - t_hat) * (0.5 * d + 0.5 * d_prime)  # 11
        x = x_next
    return x  # 12
