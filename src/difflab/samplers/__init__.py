"""Samplers: one file per sampler, each a stateless ``step``; ``loop.generate`` runs them."""

from difflab.samplers.base import (
    SPACINGS,
    Sampler,
    StepOutput,
    make_timesteps,
    prev_timesteps,
    threshold_sample,
)
from difflab.samplers.ddim import DDIMSampler
from difflab.samplers.ddpm import DDPMSampler
from difflab.samplers.loop import Trajectory, generate

#: Samplers by config name.
SAMPLERS: dict[str, type[Sampler]] = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
}

__all__ = [
    "SAMPLERS",
    "SPACINGS",
    "DDIMSampler",
    "DDPMSampler",
    "Sampler",
    "StepOutput",
    "Trajectory",
    "generate",
    "make_timesteps",
    "prev_timesteps",
    "threshold_sample",
]
