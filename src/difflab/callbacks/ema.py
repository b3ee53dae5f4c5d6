"""Exponential moving average of the backbone's weights.

The EMA copy is what sample grids, validation samples and FID use (Ho et al. 2020 use
decay 0.9999). It lives in this callback, is saved in every checkpoint under
``checkpoint["callbacks"]["EMA"]`` together with the update count, and is restored on
resume. Under DDP every rank applies the same update to the same (all-reduced) weights,
so the EMA weights are identical on all ranks without any communication.

A run may keep further EMAs of the same training trajectory, each a named EMA callback
(``name``: e.g. ``callbacks.ema_slow={_target_: difflab.callbacks.ema.EMA, name: slow,
decay: 0.9999}``): they are saved in the checkpoint under ``EMA:<name>`` and sampled with
``load_model(ckpt, ema="slow")`` (``python sample.py ... ema=slow``), while the unnamed one
serves the grids, validation and FID. One training run then compares several decays, paired.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from difflab.utils.checkpoint import EMA_STATE_KEY, ema_state_from_checkpoint  # noqa: F401 (re-exported)


def ema_decay_at(num_updates: int, decay: float, warmup: bool) -> float:
    """Decay used for update number ``num_updates`` (0-based).

    With ``warmup`` the decay ramps as ``min(decay, (1 + n) / (10 + n))`` (the schedule of
    TensorFlow's ExponentialMovingAverage with ``num_updates``), so early EMA weights are not
    dominated by the random initialisation.
    """
    if not warmup:
        return decay
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


class EMA(Callback):
    """EMA of the backbone: ``ema <- decay * ema + (1 - decay) * weights`` after each optimizer step.

    Args:
        decay: the target decay (e.g. 0.999 for short runs, 0.9999 for the DDPM recipe).
        warmup: ramp the decay up from 0.1 (see :func:`ema_decay_at`).
        update_every: update every this many optimizer steps.
        start_step: do not update before this global step (the EMA copies the weights then).
        name: ``None`` for the run's EMA (its weights serve sampling, validation and FID); a name
            for a further EMA kept only in the checkpoint (``checkpoint["callbacks"]["EMA:<name>"]``).
    """

    state_key_name = EMA_STATE_KEY

    def __init__(self, decay: float = 0.999, warmup: bool = True, update_every: int = 1, start_step: int = 0,
                 name: str | None = None) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"callbacks.ema.decay must be in [0, 1), got {decay}")
        if update_every < 1:
            raise ValueError(f"callbacks.ema.update_every must be >= 1, got {update_every}")
        if start_step < 0:
            raise ValueError(f"callbacks.ema.start_step must be >= 0, got {start_step}")
        if name is not None and (not isinstance(name, str) or not name or ":" in name or "/" in name):
            raise ValueError(f"callbacks.*.name of an EMA must be a non-empty word without ':' or '/', got {name!r}")
        self.name = name
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.update_every = int(update_every)
        self.start_step = int(start_step)
        self.num_updates = 0
        self.ema_model: nn.Module | None = None
        self._pending_state: dict[str, Any] | None = None
        self._last_global_step = -1

    @property
    def state_key(self) -> str:
        return self.state_key_name if self.name is None else f"{self.state_key_name}:{self.name}"

    # ------------------------------------------------------------------ life cycle
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.ema_model is None:
            self.ema_model = uncompiled_copy(pl_module.backbone).eval().requires_grad_(False)
        self.ema_model.to(pl_module.device)
        if self.name is None and hasattr(pl_module, "set_eval_backbone"):  # validation and the sampling callbacks use it
            pl_module.set_eval_backbone(self.ema_model)
        if self._pending_state is not None:
            self._load(self._pending_state)
            self._pending_state = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The strategy may have moved the module after setup (e.g. to a GPU).
        self.ema_model.to(pl_module.device)
        if self.num_updates == 0:
            # Fresh EMA (also when resuming from a checkpoint without EMA state): start from
            # the weights the run starts from, not from the random initialisation; after
            # init_from (utils.checkpoint.init_weights_from) from the file's EMA weights.
            initial = getattr(pl_module, "initial_ema_state", None)
            self.ema_model.load_state_dict(initial if initial is not None else pl_module.backbone.state_dict())
        self._last_global_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_global_step:  # gradient accumulation: no optimizer step yet
            return
        self._last_global_step = step
        if getattr(pl_module, "last_step_skipped", False):
            return
        if step < self.start_step or step % self.update_every:
            return
        self.update(pl_module.backbone)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA update from ``model`` (the raw backbone), with foreach kernels."""
        d = ema_decay_at(self.num_updates, self.decay, self.warmup)
        ema_params = [p for p in self.ema_model.parameters()]
        params = [p.detach() for p in model.parameters()]
        float_pairs = [(e, p) for e, p in zip(ema_params, params) if e.is_floating_point()]
        if float_pairs:
            e, p = zip(*float_pairs)
            torch._foreach_lerp_(list(e), [x.to(y.dtype) for x, y in zip(p, e)], 1.0 - d)
        for e_buf, buf in zip(self.ema_model.buffers(), model.buffers()):
            e_buf.copy_(buf)
        self.num_updates += 1

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        if self.ema_model is None:
            return {}
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "state_dict": {k: v.detach().clone() for k, v in self.ema_model.state_dict().items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.ema_model is None:
            self._pending_state = state_dict
        else:
            self._load(state_dict)

    def _load(self, state: dict[str, Any]) -> None:
        self.num_updates = int(state["num_updates"])
        self.ema_model.load_state_dict(state["state_dict"])


def uncompiled_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that runs eagerly, also when ``model`` was compiled
    (``torch.compile(model)`` or ``model.compile()``): the EMA weights serve sampling and
    validation at other batch sizes and in eval mode, where a compiled forward would recompile."""
    model = getattr(model, "_orig_mod", model)
    copy_ = copy.deepcopy(model)
    if getattr(copy_, "_compiled_call_impl", None) is not None:
        copy_._compiled_call_impl = None
    return copy_


def find_ema(trainer: L.Trainer | None, name: str | None = None) -> EMA | None:
    """The EMA callback of a trainer (the unnamed one, or the one called ``name``), if it has one."""
    if trainer is None:
        return None
    for cb in trainer.callbacks:
        if isinstance(cb, EMA) and cb.name == name:
            return cb
    return None
