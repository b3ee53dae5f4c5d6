"""Sweep specs, the Optuna search space and the launcher configs compose against conf/ (fast, no runs)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from omegaconf import OmegaConf

from tests.conftest import ROOT, compose_train

SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))


def _values(spec: dict) -> list:
    """The values a W&B sweep parameter can take: all listed ones, or the ends of a range."""
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    if "min" in spec and "max" in spec:
        return [spec["min"], spec["max"]]
    raise AssertionError(f"parameter spec without values/value/min+max: {spec}")


def _override(key: str, value) -> str:
    # what `${args_no_hyphens}` passes: key=value with Python's str() of the value
    return f"{key}={value}"


def test_there_are_sweep_files():
    assert {p.name for p in SWEEP_FILES} >= {"grid.yaml", "bayes.yaml"}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_passes_parameters_as_hydra_overrides(path: Path):
    spec = yaml.safe_load(path.read_text())
    assert (ROOT / spec["program"]).is_file()
    assert spec["command"] == ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
    assert spec["metric"]["goal"] in ("minimize", "maximize")
    cfg = compose_train([])
    assert OmegaConf.select(cfg, "optimized_metric") == spec["metric"]["name"] or spec["metric"]["name"]


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_every_sweep_parameter_value_composes(path: Path):
    spec = yaml.safe_load(path.read_text())
    for key, param in spec["parameters"].items():
        for value in _values(param):
            cfg = compose_train([_override(key, value)])  # a renamed key or option fails here
            if "." in key:  # a config key: the value lands there, with its type
                got = OmegaConf.select(cfg, key)
                assert got == value or (isinstance(value, float) and math.isclose(got, value)), (key, value, got)


def test_grid_combinations_pass_validation():
    """Every cell of the grid gets past run()'s cheap validation (schedule, objective, sampler)."""
    from difflab.build import build_core

    spec = yaml.safe_load((ROOT / "sweeps" / "grid.yaml").read_text())
    keys = list(spec["parameters"])
    for combo in itertools.product(*(_values(spec["parameters"][k]) for k in keys)):
        build_core(compose_train([_override(k, v) for k, v in zip(keys, combo)]))


def _search_space(name: str) -> dict[str, str]:
    raw = yaml.safe_load((ROOT / "conf" / "hparams_search" / f"{name}.yaml").read_text())
    return raw["hydra"]["sweeper"]["params"]


def _representatives(key: str, expr: str) -> list:
    override = OverridesParser.create().parse_override(f"{key}={expr}")
    value = override.value()
    if isinstance(value, ChoiceSweep):
        return list(value.list)
    if isinstance(value, IntervalSweep):
        return [value.start, value.end]
    if isinstance(value, RangeSweep):
        return [value.start]
    return [value]


# what changes the scale of val/loss: a search that varies one of these must not minimise it
LOSS_SCALE_KEYS = ("schedule", "objective")


def _varies_loss_scale(keys) -> bool:
    return any(k.split(".")[0].lstrip("+~") in LOSS_SCALE_KEYS for k in keys)


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "conf" / "hparams_search").glob("*.yaml")))
def test_hparams_search_composes_and_its_space_is_valid(name):
    cfg = compose_train([f"hparams_search={name}"])
    space = _search_space(name)
    if _varies_loss_scale(space):  # objective / schedule vary: a metric comparable across them
        assert cfg.optimized_metric.startswith("fid/"), cfg.optimized_metric
    else:
        assert cfg.optimized_metric == "val/loss"
    for key, expr in space.items():
        for value in _representatives(key, expr):
            compose_train([f"hparams_search={name}", f"{key}={value}"])


@pytest.mark.parametrize("overrides", [[], ["sampler=ddpm", "callbacks.fid.n=500"], ["sampler=ddim", "callbacks.fid.feature=inception"]])
def test_optuna_minimises_the_key_the_fid_callback_logs(overrides):
    """The key is built as the FID score's key is: by protocol_key from the run's sampler."""
    import hydra

    from difflab.evaluation.protocol import protocol_key, sampler_key

    cfg = compose_train(["hparams_search=optuna", *overrides])
    sampler = hydra.utils.instantiate(cfg.sampler)
    expected = protocol_key("fid", cfg.callbacks.fid.feature, sampler_key(sampler, cfg.schedule.num_timesteps), cfg.callbacks.fid.n)
    assert cfg.optimized_metric == expected and cfg.callbacks.fid.at_end
    if not overrides:
        assert cfg.optimized_metric == "fid/digits/dpmpp2m_sde_nfe30/n1000"


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_wandb_sweeps_that_vary_objective_or_schedule_do_not_use_val_loss(path: Path):
    spec = yaml.safe_load(path.read_text())
    name = spec["metric"]["name"]
    if _varies_loss_scale(spec["parameters"]):
        assert name == compose_train(["+k=${dl.metric_key:fid}"]).k  # what the default FID callback logs
    else:
        assert name == "val/loss"


def _compose_with_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from difflab.config import register_configs
    from difflab.utils.hydra import register_resolvers

    register_resolvers()
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_optuna_sweeper_is_configured():
    cfg = _compose_with_hydra(["hparams_search=optuna"])
    assert "OptunaSweeper" in cfg.hydra.sweeper._target_
    assert str(cfg.hydra.mode) in ("MULTIRUN", "RunMode.MULTIRUN")
    assert set(cfg.hydra.sweeper.params) == {"optimizer.lr", "lr_warmup_steps", "callbacks.ema.decay", "schedule", "objective"}
    cfg = _compose_with_hydra(["hparams_search=optuna_optimizer"])
    assert "OptunaSweeper" in cfg.hydra.sweeper._target_
    assert set(cfg.hydra.sweeper.params) == {"optimizer.lr", "lr_scheduler", "lr_warmup_steps", "callbacks.ema.decay"}


def test_slurm_launcher_runs_one_task_per_gpu_and_requeues_on_usr1():
    cfg = _compose_with_hydra(["hydra/launcher=slurm_gpu", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["tasks_per_node"] == launcher["gpus_per_node"] == 4 and launcher["nodes"] == 2
    assert launcher["additional_parameters"]["signal"] == f"USR1@{launcher['signal_delay_s']}"
    assert launcher["timeout_min"] > 0


def test_local_launcher_composes():
    cfg = _compose_with_hydra(["hydra/launcher=local_gpu"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("LocalLauncher") and launcher["tasks_per_node"] == 1


def test_multirun_end_callback_is_configured():
    cfg = _compose_with_hydra([])
    assert cfg.hydra.callbacks.sweep_summary._target_ == "difflab.utils.sweeps.SweepSummary"
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${hydra.job.num}"  # fixed per job: a requeued job finds its checkpoints


@pytest.mark.parametrize("debug", ["fdr", "overfit", "profiler"])
def test_debug_configs_exist(debug):
    assert (ROOT / "conf" / "debug" / f"{debug}.yaml").is_file()
    compose_train([f"debug={debug}"])
