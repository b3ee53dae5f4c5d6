"""difflab <-> diffusers: scheduler configs for exported pipelines, schedule checks for imported UNets.

Names on the two sides (difflab -> diffusers ``DDPMScheduler`` / ``DDIMScheduler`` config):

- ``process.betas`` (float64)                -> ``trained_betas`` (diffusers keeps them as float32)
- ``objective.target`` eps | x0 | v          -> ``prediction_type`` epsilon | sample | v_prediction
- ``sampler.spacing`` / ``steps_offset``     -> ``timestep_spacing`` / ``steps_offset``
- ``sampler.clip_sample`` / ``clip_range``   -> ``clip_sample`` / ``clip_sample_range``
- ``sampler.dynamic_thresholding``           -> ``thresholding`` (with ``dynamic_thresholding_ratio``,
  ``sample_max_value``; Saharia et al. 2022, arXiv:2205.11487, sec. 2.3)
- ``DDPMSampler.variance_type``              -> ``variance_type`` (fixed_small | fixed_large)
- alpha-bar of t_prev < 0 is 1               -> DDIM ``set_alpha_to_one=True``
- ``sampler.num_steps`` and DDIM ``eta``     -> the pipeline call (``num_inference_steps``, ``eta``)

Betas that are already rescaled to zero terminal SNR (Lin et al. 2023, arXiv:2305.08891) are
written as they are with ``rescale_betas_zero_snr=false``, so diffusers does not rescale them again.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch

from difflab.backbones.diffusers_unet import resolve_pretrained
from difflab.diffusion.process import GaussianDiffusion
from difflab.errors import ConfigError
from difflab.samplers.base import Sampler, make_timesteps
from difflab.utils.logging import get_logger

log = get_logger(__name__)

__all__ = [
    "PIPELINES",
    "PREDICTION_TO_DIFFUSERS",
    "PREDICTION_FROM_DIFFUSERS",
    "check_pretrained_schedule",
    "ddim_grid_note",
    "diffusers_alphas_cumprod",
    "scheduler_config",
]

PREDICTION_TO_DIFFUSERS: dict[str, str] = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
PREDICTION_FROM_DIFFUSERS: dict[str, str] = {v: k for k, v in PREDICTION_TO_DIFFUSERS.items()}
#: pipeline name -> (diffusers pipeline class, scheduler class)
PIPELINES: dict[str, tuple[str, str]] = {
    "ddpm": ("DDPMPipeline", "DDPMScheduler"),
    "ddim": ("DDIMPipeline", "DDIMScheduler"),
}
#: alpha-bar of a pretrained model's scheduler and of the run may differ by this much (float32 betas)
ALPHA_BAR_TOL = 1e-4


def scheduler_config(process: GaussianDiffusion, prediction_type: str, sampler: Sampler, kind: str) -> dict[str, Any]:
    """The ``DDPMScheduler`` (``kind="ddpm"``) or ``DDIMScheduler`` (``"ddim"``) config of a run.

    The betas travel exactly (``trained_betas``, float64 written, read as float32 by
    diffusers); the step options come from ``sampler`` where it has them (a DDIM run exported
    as a DDPM pipeline gets ``variance_type="fixed_small"``, DDIM's eta = 1 variance).
    """
    if kind not in PIPELINES:
        raise ConfigError(f"pipeline={kind!r} is not one of {['auto', *PIPELINES]}")
    if prediction_type not in PREDICTION_TO_DIFFUSERS:
        raise ConfigError(f"prediction type {prediction_type!r} has no diffusers name; expected one of {list(PREDICTION_TO_DIFFUSERS)}")
    config: dict[str, Any] = {
        "num_train_timesteps": process.num_timesteps,
        "trained_betas": [float(b) for b in process.betas.double().tolist()],
        "prediction_type": PREDICTION_TO_DIFFUSERS[prediction_type],
        "timestep_spacing": sampler.spacing,
        "steps_offset": int(sampler.steps_offset),
        "clip_sample": bool(sampler.clip_sample),
        "clip_sample_range": float(sampler.clip_range),
        "thresholding": bool(sampler.dynamic_thresholding),
        "dynamic_thresholding_ratio": float(sampler.dynamic_thresholding_ratio),
        "sample_max_value": float(sampler.sample_max_value),
        # the betas above are final: a zero-terminal-SNR schedule is already rescaled
        "rescale_betas_zero_snr": False,
    }
    if kind == "ddpm":
        config["variance_type"] = getattr(sampler, "variance_type", "fixed_small")
    else:
        config["set_alpha_to_one"] = True
    return config


def ddim_grid_note(sampler: Sampler, num_train_timesteps: int) -> str | None:
    """Why ``DDIMScheduler`` would step differently from difflab's DDIM, or None when it does not.

    difflab steps from each timestep of the grid to the next one (to -1, alpha-bar 1, at the
    end); ``DDIMScheduler.step`` steps from t to t - T // S. They agree when the grid is
    evenly spaced by T // S and its last entry is below T // S (e.g. ``trailing`` or
    ``leading`` spacing with T divisible by S).
    """
    T = int(num_train_timesteps)
    S = T if sampler.num_steps is None else int(sampler.num_steps)
    grid = make_timesteps(T, S, sampler.spacing, sampler.steps_offset).tolist()
    ratio = T // S
    ours = grid[1:] + [-1]
    theirs = [t - ratio if t - ratio >= 0 else -1 for t in grid]
    if ours == theirs:
        return None
    return (
        f"diffusers' DDIMScheduler steps from t to t - {ratio} (T // num_inference_steps) while difflab steps "
        f"along its {sampler.spacing} grid ({grid[:3]}...); with T={T}, {S} steps they differ, so the pipeline "
        "is close to, not the same as, the run's sampler (choose num_inference_steps that divide T)"
    )


def diffusers_alphas_cumprod(config: dict[str, Any]) -> torch.Tensor:
    """alpha-bar (float64) of a diffusers scheduler config, as diffusers computes it (its DDPMScheduler
    reads the beta fields: ``trained_betas`` or ``beta_schedule`` / ``beta_start`` / ``beta_end``,
    ``num_train_timesteps``, ``rescale_betas_zero_snr``)."""
    from diffusers import DDPMScheduler

    accepted = set(inspect.signature(DDPMScheduler.__init__).parameters) - {"self"}
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "rescale_betas_zero_snr")
    kwargs = {k: config[k] for k in keys if k in config and k in accepted}
    try:
        scheduler = DDPMScheduler(**kwargs)
    except (NotImplementedError, ValueError, TypeError) as e:
        raise ConfigError(f"the scheduler config's betas cannot be computed by diffusers ({e})") from None
    return scheduler.alphas_cumprod.double()


def _describe(config: dict[str, Any]) -> str:
    T = config.get("num_train_timesteps", 1000)
    if config.get("trained_betas") is not None:
        betas = f"trained_betas (T={len(config['trained_betas'])})"
    else:
        name = config.get("beta_schedule", "linear")
        ends = f" {config.get('beta_start', 0.0001)}..{config.get('beta_end', 0.02)}" if "linear" in name else ""
        betas = f"beta_schedule={name}{ends}, T={T}"
    if config.get("rescale_betas_zero_snr"):
        betas += ", zero terminal SNR"
    return f"{betas}, prediction_type={config.get('prediction_type', 'epsilon')}"


def _suggest(config: dict[str, Any]) -> str:
    """difflab overrides that reproduce a scheduler config's schedule and prediction type (best effort)."""
    T = int(config.get("num_train_timesteps", 1000))
    target = PREDICTION_FROM_DIFFUSERS.get(config.get("prediction_type", "epsilon"))
    parts: list[str] = []
    name = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is None and name in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
        if name == "linear":  # difflab's linear schedule scales its end points by 1000 / T
            parts += ["schedule=linear", f"schedule.beta_start={start * T / 1000:g}", f"schedule.beta_end={end * T / 1000:g}"]
        elif name == "scaled_linear":
            parts += ["schedule=scaled_linear", f"schedule.beta_start={start:g}", f"schedule.beta_end={end:g}"]
        else:
            parts.append("schedule=cosine")
        parts.append(f"schedule.num_timesteps={T}")
        if config.get("rescale_betas_zero_snr"):
            parts.append("schedule.zero_terminal_snr=true")
    if target is not None:
        parts.append(f"objective={target}")
    return " ".join(parts)


def check_pretrained_schedule(folder: str | Path, process: GaussianDiffusion, objective_target: str) -> None:
    """Raise ConfigError (one line) when a pretrained folder's scheduler config disagrees with the run.

    ``folder`` is what ``backbone.pretrained`` names (a model or pipeline folder, see
    :func:`~difflab.backbones.diffusers_unet.resolve_pretrained`). Its scheduler config gives
    alpha-bar (computed by diffusers) and the prediction type; the run's ``process`` must have
    the same T and alpha-bar (to :data:`ALPHA_BAR_TOL`) and ``objective_target`` (eps | x0 | v)
    must be that prediction type. A folder without a scheduler config is not checked (a warning
    says so).
    """
    try:
        _, scheduler_path = resolve_pretrained(folder)
    except ValueError as e:
        raise ConfigError(f"backbone.{e}") from None
    if scheduler_path is None:
        log.warning(
            "backbone.pretrained=%s has no scheduler config (scheduler/scheduler_config.json): the run's schedule "
            "and objective cannot be checked against the ones it was trained with", folder,
        )
        return
    try:
        config = json.loads(scheduler_path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"backbone.pretrained={folder}: {scheduler_path} cannot be read ({e})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"backbone.pretrained={folder}: {scheduler_path} is not a JSON object")

    problems: list[str] = []
    theirs = diffusers_alphas_cumprod(config)
    ours = process.alphas_cumprod.detach().cpu().double()
    if theirs.numel() != ours.numel():
        problems.append(f"it has T={theirs.numel()} timesteps, the run schedule.num_timesteps={ours.numel()}")
    else:
        diff = (theirs - ours).abs()
        worst = int(diff.argmax())
        if float(diff[worst]) > ALPHA_BAR_TOL:
            problems.append(
                f"alpha-bar differs by up to {float(diff[worst]):.3g} (t={worst}: {float(theirs[worst]):.4g} there, "
                f"{float(ours[worst]):.4g} in the run's schedule)"
            )
    prediction = config.get("prediction_type", "epsilon")
    target = PREDICTION_FROM_DIFFUSERS.get(prediction)
    if target != objective_target:
        problems.append(f"it predicts {prediction} ({target or 'no difflab objective'}), the run objective={objective_target}")
    if problems:
        suggestion = _suggest(config)
        fix = f"; train with {suggestion}" if suggestion else "; train with a schedule and objective that match it"
        raise ConfigError(
            f"backbone.pretrained={folder} was trained with {_describe(config)}, unlike this run: "
            f"{'; '.join(problems)}{fix}"
        )
