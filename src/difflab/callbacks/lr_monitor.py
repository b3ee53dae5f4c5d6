"""Log the learning rate with Lightning's LearningRateMonitor, under the scheduler's name.

``DiffusionModule.configure_optimizers`` names its scheduler ``train/lr``, so the key is
``train/lr`` (LearningRateMonitor's default would be ``lr-AdamW``). Lightning's monitor
raises when the trainer has no logger; this one then does nothing, so ``logger=none`` runs
(``debug=fdr``, tests) keep the default callbacks.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor


class LRMonitor(LearningRateMonitor):
    """``LearningRateMonitor`` (logged at the start of each optimizer step's first batch, so
    the value is the lr that step uses) that is idle when the trainer has no logger."""

    def __init__(self, logging_interval: str | None = "step", log_momentum: bool = False, log_weight_decay: bool = False) -> None:
        super().__init__(logging_interval=logging_interval, log_momentum=log_momentum, log_weight_decay=log_weight_decay)
        self.active = True

    def on_train_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self.active = bool(trainer.loggers)
        if self.active:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if self.active:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if self.active:
            super().on_train_epoch_start(trainer, *args, **kwargs)
