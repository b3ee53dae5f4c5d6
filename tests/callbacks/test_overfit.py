"""debug=overfit reports whether the loss on one batch fell far enough, and fails the run if not."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from difflab.callbacks.overfit import OverfitCheck, OverfitCheckFailed, loss_drop
from tests.conftest import compose_train


def _feed(cb, losses, accumulate=1):
    trainer = SimpleNamespace(global_step=0, callback_metrics={}, is_global_zero=True, loggers=[])
    for i, loss in enumerate(losses):
        for _ in range(accumulate):
            cb.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, None, 0)
        trainer.global_step = i + 1
    return trainer


def test_loss_drop_compares_the_means_of_both_ends():
    assert loss_drop([4, 2, 9, 1, 1, 0.5], 2) == (3.0, 0.75, 4.0)
    with pytest.raises(ValueError, match="at least 4 steps"):
        loss_drop([1, 2, 3], 2)


def test_a_falling_loss_passes(capsys):
    cb = OverfitCheck(min_ratio=5, window=2)
    cb.on_train_end(_feed(cb, [1.0, 1.0, 0.5, 0.1, 0.1]), None)
    assert cb.passed and "overfit check PASSED: train/loss fell 10.0x" in capsys.readouterr().out


def test_a_flat_loss_fails_in_one_line(capsys):
    cb = OverfitCheck(min_ratio=5, window=2)
    trainer = _feed(cb, [1.0, 1.0, 0.9, 0.5, 0.5], accumulate=2)  # counted once per optimizer step
    assert len(cb.losses) == 5
    with pytest.raises(OverfitCheckFailed, match=r"overfit check FAILED: train/loss fell 2.0x .*needs >= 5x") as e:
        cb.on_train_end(trainer, None)
    assert "\n" not in str(e.value) and cb.passed is False
    assert "FAILED" in capsys.readouterr().out
    quiet = OverfitCheck(min_ratio=5, window=2, fail_run=False)
    quiet.on_train_end(_feed(quiet, [1.0, 1.0, 0.9, 0.5, 0.5]), None)
    assert quiet.passed is False


def test_too_few_steps_fail():
    cb = OverfitCheck(window=5)
    with pytest.raises(OverfitCheckFailed, match="only 3 steps recorded"):
        cb.on_train_end(_feed(cb, [1, 1, 1]), None)


@pytest.mark.slow
def test_debug_overfit_fails_the_run_when_nothing_is_learnt(tmp_path):
    from difflab.train import run

    cfg = compose_train(
        ["debug=overfit", "trainer=cpu", "logger=none", "optimizer.lr=1e-9", "trainer.max_steps=10", "lr_warmup_steps=0",
         "backbone.base_channels=8", "backbone.channel_mult=[1,2]", "backbone.num_res_blocks=1", "data.batch_size=8",
         "trainer.enable_progress_bar=false", "print_config=false"],
        output_dir=str(tmp_path),
    )
    assert cfg.callbacks.overfit_check.min_ratio == 5 and not cfg.callbacks.fid.at_end
    with pytest.raises(OverfitCheckFailed, match="overfit check FAILED"):
        run(cfg)
