"""Callbacks that inject faults into a run; added with overrides such as
``+callbacks.nan._target_=tests.faults.inject.InjectNaN +callbacks.nan.steps=[3]``."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from difflab.callbacks.ema import find_ema


class InjectNaN(Callback):
    """Fill the batch with NaN before the steps whose global step is in ``steps`` or >= ``from_step``."""

    def __init__(self, steps: list[int] | None = None, from_step: int | None = None) -> None:
        self.steps = set(steps or [])
        self.from_step = from_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if step in self.steps or (self.from_step is not None and step >= self.from_step):
            batch[0].fill_(float("nan"))


class Slow(Callback):
    """Sleep after each batch, so that a test can signal a run between steps."""

    def __init__(self, seconds: float = 0.5) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)


class Record(Callback):
    """Snapshots after every batch (after the optimizer and EMA updates): kept in ``Record.snapshots``."""

    snapshots: list[dict[str, Any]] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        Record.snapshots = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        ema = find_ema(trainer)
        opt = trainer.optimizers[0]
        sched = trainer.lr_scheduler_configs[0].scheduler
        Record.snapshots.append(
            {
                "global_step": trainer.global_step,
                "batch_idx": batch_idx,
                "batch": batch[0].detach().double().sum().item(),
                "skipped": pl_module.last_step_skipped,
                "skipped_steps": pl_module.skipped_steps,
                "weights": {k: v.detach().clone() for k, v in pl_module.backbone.state_dict().items()},
                "ema": {k: v.detach().clone() for k, v in ema.ema_model.state_dict().items()},
                "ema_updates": ema.num_updates,
                "optimizer": copy.deepcopy(opt.state_dict()),
                "lr": opt.param_groups[0]["lr"],
                "scheduler_epoch": sched.last_epoch,
            }
        )


def same_tensors(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of nested containers of tensors and numbers."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))
    return a == b


class Heartbeat(Callback):
    """Write the global step to ``path`` after every batch (atomically), so a test can follow a run."""

    def __init__(self, path: str, sleep: float = 0.0) -> None:
        self.path = path
        self.sleep = sleep

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import os

        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            f.write(str(trainer.global_step))
        os.replace(tmp, self.path)
        if self.sleep:
            time.sleep(self.sleep)


def read_step(path) -> int:
    try:
        return int(open(path).read() or -1)
    except (OSError, ValueError):
        return -1


class SignalSelf(Callback):
    """Send ``signal`` to this process after the batch that reaches global step ``at_step``."""

    def __init__(self, at_step: int, signal: str = "SIGTERM") -> None:
        self.at_step = at_step
        self.signal = signal

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import os
        import signal as _signal

        if trainer.global_step == self.at_step - 1:
            os.kill(os.getpid(), getattr(_signal, self.signal))  # arrives during this step
