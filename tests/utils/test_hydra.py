"""The machine-dependent resolvers of conf/: precision and memory format."""

from __future__ import annotations

import pytest
import torch

from difflab.utils import hydra as dh


@pytest.mark.parametrize("fast_bf16, expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_precision_on_a_cpu_follows_native_bf16(monkeypatch, fast_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dh, "cpu_has_fast_bf16", lambda: fast_bf16)
    assert dh.auto_precision("auto") == expected
    assert dh.auto_precision("16-mixed") == "16-mixed"  # an explicit choice is kept


@pytest.mark.parametrize("bf16, expected", [(True, "bf16-mixed"), (False, "16-mixed")])
def test_auto_precision_on_a_gpu(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert dh.auto_precision("auto") == expected


@pytest.mark.parametrize(
    "accelerator, cuda, precision, expected",
    [
        ("cpu", False, "bf16-mixed", False),  # oneDNN's channels-last bf16 path is the slow one
        ("cpu", True, "bf16-true", False),
        ("cpu", False, "32-true", True),
        ("auto", False, "bf16-mixed", False),
        ("auto", False, "32-true", True),
        ("auto", True, "bf16-mixed", True),  # a GPU: NHWC kernels
        ("gpu", True, "16-mixed", True),
        ("cuda", True, "bf16-mixed", True),
    ],
)
def test_auto_channels_last(monkeypatch, accelerator, cuda, precision, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert dh.auto_channels_last(accelerator, precision) is expected


def test_the_default_config_resolves_channels_last_from_trainer_settings():
    from omegaconf import OmegaConf

    from tests.conftest import compose_train

    for overrides, expected in [
        (["trainer.accelerator=cpu", "trainer.precision=bf16-mixed"], False),
        (["trainer.accelerator=cpu", "trainer.precision=32-true"], True),
        (["trainer.accelerator=cpu", "trainer.precision=bf16-mixed", "channels_last=true"], True),
    ]:
        cfg = compose_train(overrides)
        assert OmegaConf.select(cfg, "channels_last") is expected, overrides
