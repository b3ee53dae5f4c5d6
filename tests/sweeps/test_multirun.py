"""Launching many runs for real (subprocesses, tiny models, W&B offline); slow on a busy CPU."""

from __future__ import annotations

import csv
import math

import pytest
from omegaconf import OmegaConf

from tests.sweeps.helpers import TINY, output, train, wandb_runs

pytestmark = pytest.mark.slow


def test_grid_multirun_one_dir_and_one_wandb_run_per_job_in_one_group(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = train(["-m", *TINY, "objective=eps,v", "schedule=linear,cosine", f"hydra.sweep.dir={sweep_dir}"])
    assert proc.returncode == 0, output(proc)[-3000:]
    assert "multirun: 4 jobs, 0 failed" in proc.stdout
    job_dirs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in job_dirs] == ["0", "1", "2", "3"]
    seen = set()
    groups = set()
    for job_dir in job_dirs:
        assert (job_dir / "checkpoints" / "last.ckpt").is_file()
        runs = wandb_runs(job_dir)
        assert len(runs) == 1, job_dir
        run = runs[0]
        assert run["state"] == "finished"
        groups.add(run["group"])
        assert run["config"]["group"] == run["group"]  # dashboards filter on config.group
        overrides = run["config"]["overrides"]
        swept = tuple(o for o in overrides if o.startswith(("objective=", "schedule=")))
        seen.add(swept)
        for o in swept:  # the name shows the swept values, the config holds them
            assert o in run["display_name"].split(",")
        objective = swept[0].split("=")[1]
        assert run["config"]["objective"]["target"] == objective
        assert run["config"]["sweep"]["job_num"] == int(job_dir.name)
    assert groups == {f"train-{sweep_dir.name}"}
    assert len(seen) == 4


def test_failed_job_does_not_stop_the_sweep(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = train(["-m", *TINY, "optimizer.lr=-1,1e-3", f"hydra.sweep.dir={sweep_dir}"])
    assert proc.returncode == 1, output(proc)[-3000:]
    assert "multirun: 2 jobs, 1 failed" in proc.stdout
    assert "FAILED job 0 [" in proc.stdout and "optimizer.lr must be a positive number" in proc.stdout
    record = OmegaConf.load(sweep_dir / "failures" / "job_0.yaml")
    assert "optimizer.lr=-1" in record.overrides
    # the job after the failure ran to the end
    assert (sweep_dir / "1" / "checkpoints" / "last.ckpt").is_file()
    (run,) = wandb_runs(sweep_dir / "1")
    assert run["state"] == "finished" and run["config"]["optimizer"]["lr"] == 1e-3
    assert [o for o in run["config"]["overrides"] if o.startswith("optimizer.lr=")] == ["optimizer.lr=0.001"]


def test_optuna_two_trials_report_the_best(tmp_path):
    sweep_dir = tmp_path / "study"
    proc = train([
        "hparams_search=optuna", *TINY, "logger=csv",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweep.dir={sweep_dir}",
    ])
    assert proc.returncode == 0, output(proc)[-3000:]
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert math.isfinite(results.best_value)
    assert set(results.best_params) == {"optimizer.lr", "lr_warmup_steps", "callbacks.ema.decay", "schedule", "objective"}
    assert "best trial:" in proc.stdout and "multirun: 2 jobs, 0 failed" in proc.stdout


def test_ddp_sim_in_a_multirun(tmp_path):
    """Lightning re-runs the script for rank 1: it must run this job, not start the sweep again."""
    sweep_dir = tmp_path / "sweep"
    proc = train(["-m", *TINY, "trainer=ddp_sim", "logger=csv", "objective=eps,v", f"hydra.sweep.dir={sweep_dir}"])
    assert proc.returncode == 0, output(proc)[-3000:]
    assert "multirun: 2 jobs, 0 failed" in proc.stdout
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]
    for job in ("0", "1"):
        assert (sweep_dir / job / "checkpoints" / "last.ckpt").is_file()
        assert (sweep_dir / job / "train_ddp_process_1.log").is_file()  # rank 1 ran in the job's dir
        rows = list(csv.DictReader(open(sweep_dir / job / "csv" / "metrics.csv")))
        assert any(r.get("val/loss") for r in rows)
