"""Shared test fixtures: the Hydra config of the repo, composed without running anything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


def compose_train(overrides: list[str] | None = None, output_dir: str | None = None):
    """Compose conf/train.yaml with overrides, as `python train.py` would (no run dir created)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from difflab.config import register_configs
    from difflab.utils.hydra import register_resolvers

    register_resolvers()
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides or []), return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.output_dir = output_dir or "/tmp/difflab-test-output"
        cfg.paths.root_dir = str(ROOT)
    return cfg


# --------------------------------------------------------------------------- real digits
@pytest.fixture(scope="session")
def digits():
    """The shipped digits feature network (feature passes are the slow part: built once)."""
    from difflab.metrics import build_feature_extractor

    return build_feature_extractor("digits")


@pytest.fixture(scope="session")
def mnist_train():
    from difflab.data.mnist5k import load_mnist5k

    x, y = load_mnist5k("train")
    return x[:, None], y


@pytest.fixture(scope="session")
def mnist_val():
    from difflab.data.mnist5k import load_mnist5k

    x, y = load_mnist5k("val")
    return x[:, None], y
