"""difflab.utils.sweeps without running a sweep: identity, failure records, summary, DDP command."""

from __future__ import annotations

import math
import sys

import pytest
from omegaconf import OmegaConf, open_dict

from difflab.utils import sweeps
from tests.sweeps.test_sweep_configs import _compose_with_hydra


@pytest.fixture
def hydra_job(tmp_path):
    """Hydra's runtime config of job 1 of a multirun over objective, as a launcher would set it."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    cfg = _compose_with_hydra(["objective=v", "schedule=linear"])
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(tmp_path / "2025-01-31_12-00-00")
        cfg.hydra.job.num = 1
        cfg.hydra.job.name = "train"
        cfg.hydra.job.override_dirname = "objective=v,schedule=linear"
        cfg.hydra.runtime.output_dir = str(tmp_path / "2025-01-31_12-00-00" / "1")
        cfg.hydra.runtime.cwd = str(tmp_path)
        cfg.hydra.overrides.hydra = ["hydra.mode=MULTIRUN", "hydra.sweep.dir=x", "hydra/launcher=basic", "hydra.verbose=true"]
    HydraConfig.instance().set_config(cfg)
    yield cfg
    HydraConfig.instance().cfg = None


def test_identity_outside_hydra_is_empty():
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None
    assert sweeps.wandb_identity() == {}
    assert not sweeps.is_multirun()


def test_identity_of_a_multirun_job(hydra_job):
    ident = sweeps.wandb_identity()
    assert ident["name"] == "objective=v,schedule=linear"
    assert ident["group"] == "train-2025-01-31_12-00-00" == ident["config"]["sweep"]["group"]
    assert ident["config"]["overrides"] == ["objective=v", "schedule=linear"]
    assert ident["config"]["sweep"]["job_num"] == 1


def test_run_job_records_a_failure_and_returns_nan(hydra_job, tmp_path, capsys):
    from difflab.errors import ConfigError

    def failing(cfg):
        try:
            raise ConfigError("optimizer.lr must be a positive number, got -1")
        except ConfigError:
            raise SystemExit(2) from None  # what difflab.train.main does with a user error

    assert math.isnan(sweeps.run_job(failing, None))
    record = OmegaConf.load(tmp_path / "2025-01-31_12-00-00" / "failures" / "job_1.yaml")
    assert record.error == "ConfigError: optimizer.lr must be a positive number, got -1"
    assert record.overrides == ["objective=v", "schedule=linear"]
    assert "job 1 failed" in capsys.readouterr().err


def test_run_job_passes_keyboard_interrupt(hydra_job):
    def interrupted(cfg):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweeps.run_job(interrupted, None)


def test_run_job_outside_a_multirun_raises():
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None
    with pytest.raises(ValueError):
        sweeps.run_job(lambda cfg: (_ for _ in ()).throw(ValueError("boom")), None)


def test_run_job_clears_ddp_environment(hydra_job, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)

    def ddp_job(cfg):
        import os

        os.environ.update(LOCAL_RANK="0", WORLD_SIZE="2", MASTER_PORT="12345")
        return 1.0

    assert sweeps.run_job(ddp_job, None) == 1.0
    import os

    assert "LOCAL_RANK" not in os.environ and "WORLD_SIZE" not in os.environ


def test_ddp_child_runs_this_job_only(hydra_job, monkeypatch):
    monkeypatch.setattr(sweeps, "_script", "/repo/train.py")
    monkeypatch.setattr(sys, "argv", ["train.py", "-m", "objective=eps,v", "schedule=linear"])
    command, cwd = sweeps.ddp_child_command(1)
    assert command[:2] == [sys.executable, "/repo/train.py"]
    assert "-m" not in command and "objective=eps,v" not in command
    assert "objective=v" in command and "schedule=linear" in command
    assert "hydra.verbose=true" in command  # the job's own hydra overrides stay
    assert not any(c.startswith(("hydra.mode", "hydra.sweep", "hydra/launcher")) for c in command)
    assert f'hydra.run.dir="{hydra_job.hydra.runtime.output_dir}"' in command
    assert "hydra.output_subdir=null" in command


def test_lightning_uses_the_child_command():
    from lightning.pytorch.strategies.launchers import subprocess_script

    sweeps.install_ddp_relaunch()
    assert subprocess_script._hydra_subprocess_cmd is sweeps.ddp_child_command


def test_summary_lists_failures_and_best_trial(tmp_path, capsys):
    for num in range(3):
        (tmp_path / str(num) / ".hydra").mkdir(parents=True)
    (tmp_path / "failures").mkdir()
    OmegaConf.save(
        OmegaConf.create({"job_num": 2, "overrides": ["optimizer.lr=-1"], "run_dir": str(tmp_path / "2"),
                          "error": "ConfigError: optimizer.lr must be a positive number", "traceback": ""}),
        tmp_path / "failures" / "job_2.yaml",
    )
    OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": {"optimizer.lr": 0.001}, "best_value": 0.5}),
                   tmp_path / "optimization_results.yaml")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    with pytest.raises(SystemExit) as e:
        sweeps.SweepSummary().on_multirun_end(config=config)
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert "3 jobs, 1 failed" in out and "FAILED job 2 [optimizer.lr=-1]" in out
    assert "best trial: 0.5 with optimizer.lr=0.001" in out
    assert (tmp_path / "summary.txt").read_text().startswith("multirun: 3 jobs")


def test_summary_without_failures_does_not_exit(tmp_path):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweeps.SweepSummary().on_multirun_end(config=config)


def test_ddp_inside_joblib_workers_stops_with_one_line(hydra_job):
    from difflab.errors import ConfigError

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    import copy

    cfg = copy.deepcopy(hydra_job)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.launcher = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"}
    HydraConfig.instance().set_config(cfg)
    with pytest.raises(ConfigError, match="use the basic launcher"):
        sweeps.ddp_child_command(1)


def test_a_rerun_in_the_same_dir_starts_without_old_failures(tmp_path):
    (tmp_path / "failures").mkdir()
    (tmp_path / "failures" / "job_0.yaml").write_text("job_num: 0\n")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweeps.SweepSummary().on_multirun_start(config=config)
    assert sweeps.summarize(tmp_path)[1] == 0
    assert (tmp_path / "failures" / "previous" / "job_0.yaml").is_file()


def test_the_group_is_in_the_logged_config_of_a_multirun_job(hydra_job):
    """W&B's config.group is the multirun's group, not null (train.yaml: group: ${dl.sweep_group:})."""
    from difflab.utils.hydra import to_plain_dict

    assert hydra_job.group == "train-2025-01-31_12-00-00" == sweeps.wandb_identity()["group"]
    with open_dict(hydra_job):
        del hydra_job["hydra"]
    assert to_plain_dict(hydra_job)["group"] == "train-2025-01-31_12-00-00"  # what train.run logs


def test_the_group_is_null_in_a_single_run_and_can_be_set():
    from hydra.core.hydra_config import HydraConfig

    from tests.conftest import compose_train

    HydraConfig.instance().cfg = None
    assert compose_train([]).group is None
    assert compose_train(["group=ablation"]).group == "ablation"
