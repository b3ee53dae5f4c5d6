"""debug=overfit's verdict: did the training loss on the one repeated batch fall far enough?

Overfitting a single batch is the quickest check that backbone, objective and optimizer can
learn at all: the loss must fall by a large factor within a few dozen steps. This callback
records ``train/loss`` after every optimizer step and, when training ends, compares the mean
of the first ``window`` steps with the mean of the last ``window``. It prints one line,
``overfit check PASSED: train/loss fell 11.3x ...`` or ``overfit check FAILED: ...``, logs
``debug/overfit_ratio`` and ``debug/overfit_passed``, and with ``fail_run`` a failure ends the
run with that line as its error (``train.py`` exits 2).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from difflab.errors import DifflabError
from difflab.utils.logging import get_logger

log = get_logger(__name__)


class OverfitCheckFailed(DifflabError, RuntimeError):
    """The loss on one repeated batch did not fall by ``min_ratio``."""


def loss_drop(losses: list[float], window: int) -> tuple[float, float, float]:
    """(mean of the first ``window`` losses, mean of the last ``window``, their ratio)."""
    if len(losses) < 2 * window:
        raise ValueError(f"the overfit check needs at least {2 * window} steps (2 x window), got {len(losses)}")
    first = sum(losses[:window]) / window
    last = sum(losses[-window:]) / window
    return first, last, (first / last if last > 0 else math.inf)


class OverfitCheck(Callback):
    """Report whether ``train/loss`` fell by at least ``min_ratio`` (first vs last ``window`` steps).

    Args:
        min_ratio: the factor the loss must fall by (mean of the first window / mean of the last).
        window: steps averaged at each end (the loss of one step is noisy: t and the noise
            are drawn anew every step).
        fail_run: raise :class:`OverfitCheckFailed` (one line, exit code 2) when the check fails.
    """

    def __init__(self, min_ratio: float = 5.0, window: int = 5, fail_run: bool = True) -> None:
        if not (isinstance(min_ratio, (int, float)) and min_ratio > 1):
            raise ValueError(f"callbacks.overfit_check.min_ratio must be a number > 1, got {min_ratio!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"callbacks.overfit_check.window must be an integer >= 1, got {window!r}")
        self.min_ratio = float(min_ratio)
        self.window = int(window)
        self.fail_run = bool(fail_run)
        self.losses: list[float] = []
        self.passed: bool | None = None
        self.message: str | None = None
        self._last_step = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self._last_step:  # gradient accumulation: no optimizer step yet
            return
        self._last_step = trainer.global_step
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            loss = trainer.callback_metrics.get("train/loss")
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self.losses.append(float(loss.detach()))

    def verdict(self) -> tuple[bool, str]:
        """(passed, the one-line report) for the losses recorded so far."""
        first, last, ratio = loss_drop(self.losses, self.window)
        ok = math.isfinite(first) and ratio >= self.min_ratio
        line = (
            f"overfit check {'PASSED' if ok else 'FAILED'}: train/loss fell {ratio:.1f}x on one batch "
            f"({first:.4g} -> {last:.4g}, mean of the first and last {self.window} of {len(self.losses)} steps; "
            f"needs >= {self.min_ratio:g}x)"
        )
        if not ok:
            line += "; check the model, objective and optimizer.lr, or give it more trainer.max_steps"
        return ok, line

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if len(self.losses) < 2 * self.window:
            self.passed, self.message = False, (
                f"overfit check FAILED: only {len(self.losses)} steps recorded, it needs {2 * self.window} (2 x window); "
                "raise trainer.max_steps"
            )
        else:
            self.passed, self.message = self.verdict()
        if trainer.is_global_zero:
            print(self.message)
            log.info(self.message)
            ratio = loss_drop(self.losses, self.window)[2] if len(self.losses) >= 2 * self.window else float("nan")
            for logger in trainer.loggers:
                logger.log_metrics({"debug/overfit_ratio": ratio, "debug/overfit_passed": float(self.passed)}, step=trainer.global_step)
        if not self.passed and self.fail_run:
            raise OverfitCheckFailed(self.message)
