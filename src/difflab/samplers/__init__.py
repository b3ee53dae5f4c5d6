"""Samplers: one file per sampler; ``loop.generate`` runs them through one contract (see ``base``)."""

from difflab.samplers.base import (
    SPACINGS,
    ModelFn,
    Sampler,
    SamplerState,
    SigmaSampler,
    StepOutput,
    karras_sigmas,
    make_timesteps,
    prev_timesteps,
    sigma_to_t,
    split_output,
    t_to_sigma,
    threshold_sample,
    vp_sigmas,
)
from difflab.samplers.ddim import DDIMSampler
from difflab.samplers.ddpm import DDPMSampler
from difflab.samplers.dpm_solver import DPMSolverSampler
from difflab.samplers.euler import EulerSampler
from difflab.samplers.euler_ancestral import EulerAncestralSampler
from difflab.samplers.heun import HeunSampler
from difflab.samplers.loop import Trajectory, generate
from difflab.samplers.unipc import UniPCSampler

#: Samplers by config name (the options of the ``sampler`` group; each class' ``name``).
SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls
    for cls in (DDPMSampler, DDIMSampler, DPMSolverSampler, EulerSampler, EulerAncestralSampler, HeunSampler, UniPCSampler)
}

__all__ = [
    "SAMPLERS",
    "SPACINGS",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "EulerAncestralSampler",
    "EulerSampler",
    "HeunSampler",
    "ModelFn",
    "Sampler",
    "SamplerState",
    "SigmaSampler",
    "StepOutput",
    "Trajectory",
    "UniPCSampler",
    "generate",
    "karras_sigmas",
    "make_timesteps",
    "prev_timesteps",
    "sigma_to_t",
    "split_output",
    "t_to_sigma",
    "threshold_sample",
    "vp_sigmas",
]
