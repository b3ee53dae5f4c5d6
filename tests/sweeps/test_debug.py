"""debug=fdr, debug=overfit, debug=profiler run and do what they say (subprocesses)."""

from __future__ import annotations

import csv

import pytest

from tests.sweeps.helpers import output, train

BACKBONE = ["backbone.base_channels=8", "backbone.channel_mult=[1,2]", "backbone.num_res_blocks=1",
            "print_config=false", "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_overfit_one_batch_drives_the_loss_down_5x(tmp_path):
    proc = train(["debug=overfit", *BACKBONE, f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 0, output(proc)[-3000:]
    rows = [r for r in csv.DictReader(open(tmp_path / "csv" / "metrics.csv")) if r.get("train/loss")]
    losses = [float(r["train/loss"]) for r in rows]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first / last >= 5, (first, last)
    assert f"overfit check PASSED: train/loss fell {first / last:.1f}x" in proc.stdout  # the run's own verdict


@pytest.mark.slow
def test_fast_dev_run(tmp_path):
    proc = train(["debug=fdr", *BACKBONE, "sampler.num_steps=2", f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 0, output(proc)[-3000:]
    assert not (tmp_path / "wandb").exists()


@pytest.mark.slow
def test_profiler_report_in_the_run_dir(tmp_path):
    proc = train(["debug=profiler", *BACKBONE, "trainer.max_steps=3", "trainer.val_check_interval=3",
                  "trainer.limit_val_batches=1", "data.batch_size=16", f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 0, output(proc)[-3000:]
    report = (tmp_path / "profiler" / "fit-profile.txt").read_text()
    assert "run_training_batch" in report or "training_step" in report
