"""Samplers: one file per sampler; ``loop.generate`` runs them through one contract (see ``base``).

Options of the ``sampler`` group (``name``: method; NFE per sample for S steps; ``key_part(1000)``):

- ``ddpm``: ancestral DDPM (arXiv:2006.11239); S (all T by default); ``ddpm1000``
- ``ddim``: DDIM, eta in [0, 1] (arXiv:2010.02502); S; ``ddim50``, ``ddim50_eta1``
- ``dpm_solver``: DPM-Solver(++) orders 1-3 multistep, SDE variant (arXiv:2206.00927,
  2211.01095); S; ``dpmpp2m_nfe20``, ``dpmpp3m_sde_karras_nfe20``
- ``euler``: Euler in sigma with EDM's churn (arXiv:2206.00364); S; ``euler_nfe20``
- ``euler_ancestral``: Euler ancestral; S; ``euler_a_nfe20``
- ``heun``: EDM's Heun with churn (arXiv:2206.00364, Algorithm 2); 2S - 1; ``heun_nfe35``
- ``unipc``: UniPC multistep, bh2 (arXiv:2302.04867); S; ``unipc_nfe20``

Every sampler but DDPM and DDIM also takes ``use_karras_sigmas`` (``rho``, ``sigma_min``,
``sigma_max``), which makes the model's timesteps fractional.
"""

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
