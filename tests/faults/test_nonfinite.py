"""NaN losses: a step with a non-finite gradient norm is skipped; too many in a row stop the run."""

from __future__ import annotations

import csv

import pytest
import torch

from tests.faults.conftest import load_ckpt, one_error_line, run_main
from tests.faults.inject import Record, same_tensors

INJECT = "+callbacks.nan._target_=tests.faults.inject.InjectNaN"
RECORD = "+callbacks.zz_record._target_=tests.faults.inject.Record"


def test_skipped_step_changes_no_weight_moment_or_ema(tmp_path):
    run_main(tmp_path, [INJECT, "+callbacks.nan.steps=[3]", RECORD, "trainer.max_steps=6",
                        "trainer.val_check_interval=3", "logger=csv", "lr_warmup_steps=4"])
    snaps = {s["global_step"]: s for s in Record.snapshots}
    before, nan, after = snaps[3], snaps[4], snaps[5]  # the batch run at global step 3 is the NaN one
    assert nan["skipped"] and not before["skipped"] and not after["skipped"]
    # weights, AdamW moments and step counts, EMA weights and update count: untouched
    assert same_tensors(before["weights"], nan["weights"])
    assert same_tensors(before["optimizer"], nan["optimizer"])
    assert same_tensors(before["ema"], nan["ema"]) and before["ema_updates"] == nan["ema_updates"]
    # ... and training goes on afterwards
    assert not same_tensors(nan["weights"], after["weights"]) and after["ema_updates"] == nan["ema_updates"] + 1
    assert all(torch.isfinite(v).all() for v in after["weights"].values())
    # Lightning still counts the skipped step: global_step and the LR schedule (warm-up) advance
    assert nan["scheduler_epoch"] == before["scheduler_epoch"] + 1
    assert nan["skipped_steps"] == 1 and snaps[6]["skipped_steps"] == 1
    # the running count is logged as train/skipped_steps, first at the skipped step
    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    logged = [(int(r["step"]), float(r["train/skipped_steps"])) for r in rows if r.get("train/skipped_steps")]
    assert logged[0] == (3, 1.0) and {v for _, v in logged} == {1.0}, logged


def test_consecutive_nonfinite_steps_stop_with_one_line_and_keep_last_ckpt(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(tmp_path, [INJECT, "+callbacks.nan.from_step=4", "max_consecutive_nonfinite=3",
                            "trainer.max_steps=20", "trainer.val_check_interval=2"])
    assert exit_info.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert "3 consecutive steps had a non-finite loss" in line and "optimizer.lr" in line
    ckpts = tmp_path / "checkpoints"
    good = load_ckpt(ckpts / "step_0000004.ckpt")
    last = load_ckpt(ckpts / "last.ckpt")  # loads, whole; written at step 6, between the NaN steps
    assert last["global_step"] == 6 and last["difflab"]["skipped_steps"] == 2
    assert same_tensors(good["state_dict"], last["state_dict"])  # the weights of the last good step
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert not list(ckpts.glob(".*.tmp"))
