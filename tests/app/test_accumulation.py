"""Gradient accumulation: trainer.val_check_interval counts optimizer steps, not batches."""

from __future__ import annotations

import csv

import pytest

from difflab.build import val_check_batches
from tests.conftest import compose_train


def test_val_check_batches():
    assert val_check_batches(500, 1) == 500
    assert val_check_batches(500, 4) == 2000
    assert val_check_batches(0.5, 4) == 0.5  # a fraction of an epoch stays one
    assert val_check_batches(None, 4) is None


def test_the_trainer_gets_the_interval_in_batches(tmp_path):
    from difflab.build import build_trainer

    cfg = compose_train(["trainer=cpu", "trainer.val_check_interval=3", "trainer.accumulate_grad_batches=4"],
                        output_dir=str(tmp_path))
    assert build_trainer(cfg, [], []).val_check_interval == 12


@pytest.mark.slow
@pytest.mark.parametrize("accumulate", [2])
def test_validation_every_n_optimizer_steps_under_accumulation(tmp_path, accumulate):
    from difflab.train import run

    cfg = compose_train(
        [
            "trainer=cpu", "logger=csv", "trainer.max_steps=4", "trainer.val_check_interval=2",
            f"trainer.accumulate_grad_batches={accumulate}", "trainer.limit_val_batches=1",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1",
            "callbacks=[model_checkpoint,ema]", "backbone.base_channels=8", "backbone.channel_mult=[1,2]",
            "backbone.num_res_blocks=1", "data.batch_size=8", "data.val_batch_size=8", "print_config=false",
        ],
        output_dir=str(tmp_path),
    )
    run(cfg)
    (metrics,) = tmp_path.glob("csv/**/metrics.csv")
    val_steps = [int(r["step"]) for r in csv.DictReader(open(metrics)) if r.get("val/loss")]
    # validation after optimizer steps 2 and 4 (logged at step index 1 and 3), not after every batch pair
    assert val_steps == [1, 3]
