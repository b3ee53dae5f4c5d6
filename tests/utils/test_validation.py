"""validate_config: misleading errors become one line naming the real cause and the fix."""

from __future__ import annotations

import pytest

from difflab.errors import ConfigError
from difflab.utils.validation import validate_config
from tests.conftest import compose_train


def _error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as e:
        validate_config(compose_train(overrides))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_linear_schedule_reaching_beta_one_names_the_cause_not_zero_terminal_snr():
    msg = _error(["schedule=linear", "schedule.num_timesteps=20", "sampler.num_steps=10"])
    assert "zero_terminal_snr" not in msg
    assert "num_timesteps=20" in msg and "beta = 1" in msg and "num_timesteps >= 21" in msg
    validate_config(compose_train(["schedule=linear", "schedule.num_timesteps=21", "sampler.num_steps=10"]))
    # with v-prediction alpha-bar_T = 0 is learnable (as with zero_terminal_snr): no error
    validate_config(compose_train(["schedule=linear", "schedule.num_timesteps=20", "sampler.num_steps=10", "objective=v"]))


def test_toy2d_with_an_image_backbone_says_backbone_mlp():
    msg = _error(["data=toy2d"])
    assert "backbone=mlp" in msg and "toy2d" in msg
    assert "list index" not in msg and "cannot resolve" not in msg


def test_mlp_on_images_does_not_speak_of_image_backbone_arguments():
    msg = _error(["backbone=mlp"])
    assert "in_channels" not in msg and "image_size" not in msg
    assert "backbone=unet" in msg and "(1, 28, 28)" in msg
    validate_config(compose_train(["data=toy2d", "backbone=mlp"]))


@pytest.mark.parametrize("env", [{"WANDB_MODE": "offline"}, {"WANDB_MODE": None}])
def test_wandb_log_model_offline_is_one_line(env, monkeypatch, tmp_path):
    for k, v in env.items():
        monkeypatch.delenv(k, raising=False) if v is None else monkeypatch.setenv(k, v)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb"))
    msg = _error(["logger.wandb.log_model=true"])
    assert "logger.wandb.log_model=true" in msg and "offline" in msg and "log_model=false" in msg
    validate_config(compose_train(["logger.wandb.log_model=false"]))


def test_a_warmup_as_long_as_the_run_is_said_in_one_line(caplog):
    """The default schedule decays; a short first run (warm-up longer than the run) still runs."""
    import logging

    with caplog.at_level(logging.WARNING):
        validate_config(compose_train(["lr_scheduler=cosine", "lr_warmup_steps=500", "trainer.max_steps=400"]))
    (msg,) = [r.getMessage() for r in caplog.records if "never decays" in r.getMessage()]
    assert "lr_warmup_steps=500" in msg and "trainer.max_steps=400" in msg and "\n" not in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        validate_config(compose_train(["lr_scheduler=constant", "lr_warmup_steps=500", "trainer.max_steps=400"]))
    assert not [r for r in caplog.records if "never decays" in r.getMessage()]
