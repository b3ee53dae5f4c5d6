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
    generator: torch.Generator | None = None, **step_kwargs,
) -> torch.Tensor:
    """diffusers' pipeline loop: scale the input, call the model at each timestep, step."""
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        out = model(inp, t.reshape(1).expand(x.shape[0]))
        x = sched.step(out, t, x, generator=generator, **step_kwargs).prev_sample
    return x
