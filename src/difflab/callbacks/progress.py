"""Training progress as the global step against ``trainer.max_steps``, with an ETA.

Lightning's bar restarts every epoch and counts batches (with accumulation, more than
optimizer steps). A diffusion run is planned in optimizer steps, so this bar shows
``step 1234/3000`` over the whole run (resumed runs start at their step), its rate and ETA.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

__all__ = ["StepProgressBar"]


class StepProgressBar(TQDMProgressBar):
    """One bar for the whole fit: global step / max_steps (epochs when max_steps is not set)."""

    def _total(self, trainer: L.Trainer) -> int | None:
        return trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        total = self._total(trainer)
        if total is None:  # an epoch-bounded run: Lightning's bar per epoch
            return super().on_train_epoch_start(trainer)
        bar = self.train_progress_bar
        if bar.total != total:  # the first epoch (of this process): one bar from here to the end
            bar.reset(total=total)
            bar.initial = bar.n = trainer.global_step
            bar.unit = "step"
            bar.set_description("training")
            bar.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._total(trainer) is None:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        bar = self.train_progress_bar
        if bar is not None and not bar.disable and bar.n != step and self._should_update(step, bar.total):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
