"""The learning rate is logged by LearningRateMonitor as train/lr; no logger: no error."""

from __future__ import annotations

import csv
from functools import partial

import lightning as L
import pytest
import torch

from difflab.backbones import MLP
from difflab.callbacks.lr_monitor import LRMonitor
from difflab.diffusion.objectives import DiffusionObjective
from difflab.diffusion.process import GaussianDiffusion
from difflab.module import DiffusionModule
from difflab.samplers import DDIMSampler
from difflab.utils.lr import LRSchedule


def _fit(tmp_path, logger, steps=6):
    torch.manual_seed(0)
    module = DiffusionModule(
        backbone=MLP(dim=2, hidden=8, depth=1, time_embed_dim=8),
        process=GaussianDiffusion.from_schedule("cosine", num_timesteps=50),
        objective=DiffusionObjective("eps"),
        sampler=DDIMSampler(num_steps=2),
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
        lr_scheduler=LRSchedule("linear", warmup_steps=2, min_lr_ratio=0.0),
        image_shape=(2,),
    )
    data = torch.utils.data.DataLoader(torch.randn(64, 2), batch_size=8)
    trainer = L.Trainer(max_steps=steps, logger=logger, callbacks=[LRMonitor()], log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, accelerator="cpu", limit_val_batches=0)
    trainer.fit(module, data)
    return trainer


def test_lr_is_logged_as_train_lr(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    trainer = _fit(tmp_path, CSVLogger(tmp_path, name="csv", version=0))
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    lrs = [(int(r["step"]), float(r["train/lr"])) for r in rows if r.get("train/lr")]
    assert not any(k.startswith("lr-") for k in rows[0])  # not LearningRateMonitor's default name
    # the lr each step used: warm-up (s + 1) / 2, then linear decay to 0 at step 6
    assert lrs == [(s, pytest.approx(1e-2 * f)) for s, f in enumerate([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])]
    assert trainer.global_step == 6


def test_no_logger_no_error(tmp_path):
    assert _fit(tmp_path, False, steps=3).global_step == 3
