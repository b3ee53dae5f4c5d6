"""check_pretrained_schedule: a pretrained folder's scheduler config against the run's schedule and
objective (diffusers computes the folder's alpha-bar); scheduler_config and the DDIM grid note."""

from __future__ import annotations

import logging
import shlex

import pytest
import torch
from diffusers import DDPMScheduler

from difflab.diffusion.process import GaussianDiffusion
from difflab.errors import ConfigError
from difflab.samplers import DDIMSampler, DDPMSampler
from difflab.utils.diffusers_interop import (
    check_pretrained_schedule,
    ddim_grid_note,
    diffusers_alphas_cumprod,
    scheduler_config,
)


def folder(tmp_path, **scheduler_kw):
    """A pipeline-like folder: unet/config.json (never read here) and scheduler/scheduler_config.json."""
    (tmp_path / "unet").mkdir(parents=True, exist_ok=True)
    (tmp_path / "unet" / "config.json").write_text("{}")
    DDPMScheduler(**scheduler_kw).save_pretrained(str(tmp_path / "scheduler"))
    return tmp_path


def process_from(suggestion: str) -> tuple[GaussianDiffusion, str]:
    """The process and objective target that a suggested set of overrides builds."""
    kv = dict(item.split("=", 1) for item in shlex.split(suggestion))
    kwargs = {k.split(".", 1)[1]: v for k, v in kv.items() if k.startswith("schedule.")}
    kwargs = {k: (int(v) if k == "num_timesteps" else v == "true" if k == "zero_terminal_snr" else float(v))
              for k, v in kwargs.items()}
    return GaussianDiffusion.from_schedule(kv["schedule"], **kwargs), kv["objective"]


def test_ddpm_cifar10_layout_matches_linear_eps(tmp_path):
    # google/ddpm-cifar10-32: DDPMScheduler, linear 1e-4..0.02, T=1000, epsilon
    path = folder(tmp_path, num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_large")
    check_pretrained_schedule(path, GaussianDiffusion.from_schedule("linear", 1000), "eps")
    check_pretrained_schedule(path / "unet", GaussianDiffusion.from_schedule("linear", 1000), "eps")  # the model folder


def test_disagreements_are_one_line_and_say_what_to_use(tmp_path):
    path = folder(tmp_path, num_train_timesteps=1000, beta_schedule="linear")
    with pytest.raises(ConfigError) as e:
        check_pretrained_schedule(path, GaussianDiffusion.from_schedule("cosine", 1000), "v")
    message = str(e.value)
    assert "\n" not in message and "alpha-bar differs by up to" in message
    assert "it predicts epsilon (eps), the run objective=v" in message
    suggestion = message.split("train with ", 1)[1]
    assert suggestion.startswith("schedule=linear") and suggestion.endswith("objective=eps")
    check_pretrained_schedule(path, *process_from(suggestion))  # the suggestion passes the check

    with pytest.raises(ConfigError, match=r"T=1000 timesteps, the run schedule.num_timesteps=500"):
        check_pretrained_schedule(path, GaussianDiffusion.from_schedule("linear", 500), "eps")


@pytest.mark.parametrize(
    "scheduler_kw",
    [
        dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
        dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
             prediction_type="epsilon"),
        dict(num_train_timesteps=400, beta_schedule="linear", beta_start=0.0002, beta_end=0.03,
             prediction_type="sample"),
        dict(num_train_timesteps=1000, beta_schedule="scaled_linear", rescale_betas_zero_snr=True,
             prediction_type="v_prediction"),
    ],
)
def test_the_suggested_overrides_reproduce_a_diffusers_schedule(tmp_path, scheduler_kw):
    path = folder(tmp_path, **scheduler_kw)
    with pytest.raises(ConfigError) as e:
        check_pretrained_schedule(path, GaussianDiffusion.from_schedule("sigmoid", 50), "eps")
    check_pretrained_schedule(path, *process_from(str(e.value).split("train with ", 1)[1]))


def test_a_model_folder_without_scheduler_is_not_checked(tmp_path, caplog):
    (tmp_path / "config.json").write_text("{}")
    with caplog.at_level(logging.WARNING):
        check_pretrained_schedule(tmp_path, GaussianDiffusion.from_schedule("cosine", 10), "eps")
    assert "has no scheduler config" in caplog.text


def test_missing_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="backbone.pretrained=.*does not exist"):
        check_pretrained_schedule(tmp_path / "nope", GaussianDiffusion.from_schedule("cosine", 10), "eps")


@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_scheduler_config_carries_the_exact_betas(zero_terminal_snr):
    process = GaussianDiffusion.from_schedule("cosine", 200, zero_terminal_snr=zero_terminal_snr)
    config = scheduler_config(process, "v", DDIMSampler(num_steps=20, eta=1.0), "ddim")
    assert config["trained_betas"] == process.betas.tolist() and config["rescale_betas_zero_snr"] is False
    assert config["prediction_type"] == "v_prediction" and config["timestep_spacing"] == "trailing"
    # diffusers reads them back without rescaling them again (alpha-bar_T stays exactly 0)
    ours, theirs = process.alphas_cumprod, diffusers_alphas_cumprod(config)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)
    assert (float(theirs[-1]) == 0.0) == zero_terminal_snr
    ddpm = scheduler_config(process, "x0", DDPMSampler(variance_type="fixed_large", spacing="linspace"), "ddpm")
    assert ddpm["variance_type"] == "fixed_large" and ddpm["prediction_type"] == "sample" and "set_alpha_to_one" not in ddpm


def test_ddim_grid_note_says_when_ddimscheduler_steps_elsewhere():
    assert ddim_grid_note(DDIMSampler(num_steps=50, spacing="trailing"), 1000) is None
    assert ddim_grid_note(DDIMSampler(num_steps=50, spacing="leading"), 1000) is None
    assert "t - 33" in ddim_grid_note(DDIMSampler(num_steps=3, spacing="trailing"), 100)
    assert ddim_grid_note(DDIMSampler(num_steps=50, spacing="linspace"), 1000) is not None
