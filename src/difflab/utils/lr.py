"""Learning-rate schedules: linear warm-up, then constant, cosine or linear decay to a floor.

:func:`lr_factor` is the whole schedule, a pure function of the optimizer step: the factor
that multiplies the optimizer's base ``lr``. :class:`LRSchedule` holds its settings (what
``conf/lr_scheduler/*.yaml`` builds) and turns them into a ``torch.optim.lr_scheduler.LambdaLR``
stepped once per optimizer step.

With ``w`` warm-up steps, ``T`` total steps, floor ``r = min_lr_ratio`` and
``p = clamp((step - w) / (T - w), 0, 1)``:

- warm-up (``step < w``): ``(step + 1) / w`` (reaches the full lr at step ``w - 1``)
- ``constant``: 1
- ``cosine``: ``r + (1 - r) * (1 + cos(pi * p)) / 2`` (SGDR without restarts, Loshchilov &
  Hutter 2017, arXiv:1608.03983, eq. 5; the schedule of diffusers' train_unconditional.py)
- ``linear``: ``r + (1 - r) * (1 - p)``

After ``T`` steps the factor stays at ``r``. The same values as torch's ``LinearLR`` (warm-up),
``CosineAnnealingLR`` (``eta_min = r * lr``) and ``LinearLR`` (``end_factor = r``) chained by
``SequentialLR`` at milestone ``w``; tests/utils/test_lr.py checks that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("constant", "cosine", "linear")

__all__ = ["SCHEDULES", "LRSchedule", "lr_factor"]


def lr_factor(step: int, name: str = "constant", warmup_steps: int = 0, total_steps: int | None = None, min_lr_ratio: float = 0.0) -> float:
    """The multiplier of the base learning rate at optimizer step ``step`` (0-based).

    ``total_steps`` is needed by ``cosine`` and ``linear`` (the step at which the decay reaches
    ``min_lr_ratio``); ``constant`` ignores it and ``min_lr_ratio``.
    """
    if name not in SCHEDULES:
        raise ValueError(f"name must be one of {', '.join(SCHEDULES)}, got {name!r}")
    step = int(step)
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "constant":
        return 1.0
    if total_steps is None:
        raise ValueError(f"the {name} schedule needs total_steps (the step where the decay ends)")
    span = total_steps - warmup_steps
    progress = 1.0 if span <= 0 else min(1.0, max(0.0, (step - warmup_steps) / span))
    if name == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0 - progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


@dataclass(frozen=True)
class LRSchedule:
    """Settings of a warm-up + decay schedule (see :func:`lr_factor`).

    Args:
        name: constant | cosine | linear.
        warmup_steps: linear warm-up from ``lr / warmup_steps`` to ``lr`` over this many optimizer steps.
        min_lr_ratio: the floor of the decay as a fraction of the base lr (cosine, linear).
        total_steps: the optimizer step at which the decay reaches the floor; None: the
            trainer's step count (``trainer.max_steps``, or Lightning's estimate from the epochs).
    """

    name: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    total_steps: int | None = None

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"name must be one of {', '.join(SCHEDULES)}, got {self.name!r}")
        if isinstance(self.warmup_steps, bool) or int(self.warmup_steps) != self.warmup_steps or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not (isinstance(self.min_lr_ratio, (int, float)) and 0.0 <= self.min_lr_ratio <= 1.0):
            raise ValueError(f"min_lr_ratio must be a number in [0, 1] (the floor as a fraction of optimizer.lr), got {self.min_lr_ratio!r}")
        if self.total_steps is not None and (int(self.total_steps) != self.total_steps or self.total_steps < 1):
            raise ValueError(f"total_steps must be an integer >= 1 or null (trainer.max_steps), got {self.total_steps!r}")

    def factor(self, step: int, total_steps: int | None = None) -> float:
        """:func:`lr_factor` with these settings; ``total_steps`` fills in a None ``self.total_steps``."""
        total = self.total_steps if self.total_steps is not None else total_steps
        return lr_factor(step, self.name, self.warmup_steps, total, self.min_lr_ratio)

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
        """A LambdaLR for ``optimizer`` (step it once per optimizer step).

        The lambda is a plain function, so the scheduler's state dict holds the step count only
        and a resumed run follows the schedule of its own config.
        """
        total = self.total_steps if self.total_steps is not None else total_steps
        if self.name != "constant" and (total is None or total < 1):
            raise ValueError(
                f"lr_scheduler={self.name} decays over trainer.max_steps, which is not set; set trainer.max_steps "
                "or lr_scheduler.total_steps"
            )
        # a warm-up as long as the run is allowed (validation says so in one line): lr_factor
        # ramps up over the whole run and never reaches the decay
        name, warmup, ratio = self.name, self.warmup_steps, self.min_lr_ratio

        def lr_lambda(step: int) -> float:
            return lr_factor(step, name, warmup, total, ratio)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
