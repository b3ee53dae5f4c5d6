"""The diffusion core: noise schedules, the Gaussian forward process and training objectives."""

from difflab.diffusion.objectives import (
    WEIGHTINGS,
    DiffusionObjective,
    ObjectiveOutput,
    min_snr_weight,
    sample_timesteps,
)
from difflab.diffusion.process import PREDICTION_TYPES, GaussianDiffusion
from difflab.diffusion.schedules import (
    SCHEDULES,
    cosine_beta_schedule,
    get_beta_schedule,
    linear_beta_schedule,
    rescale_zero_terminal_snr,
    scaled_linear_beta_schedule,
    sigmoid_beta_schedule,
)

__all__ = [
    "PREDICTION_TYPES",
    "SCHEDULES",
    "WEIGHTINGS",
    "DiffusionObjective",
    "GaussianDiffusion",
    "ObjectiveOutput",
    "cosine_beta_schedule",
    "get_beta_schedule",
    "linear_beta_schedule",
    "min_snr_weight",
    "rescale_zero_terminal_snr",
    "sample_timesteps",
    "scaled_linear_beta_schedule",
    "sigmoid_beta_schedule",
]
