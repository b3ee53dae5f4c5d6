"""Preemption: on SIGTERM or SIGUSR1, save ``last.ckpt`` at the next step boundary and stop.

Clusters announce a preemption with a signal and a grace period: SLURM sends SIGTERM (or,
with ``--signal=USR1@90``, SIGUSR1 ahead of time), Kubernetes and most schedulers SIGTERM.
The handler only sets a flag; the callback acts at the next safe point, the end of a training
batch (after the optimizer and EMA updates) or the end of a validation run: it writes
``<checkpoint dir>/last.ckpt`` with ``trainer.save_checkpoint`` (atomic, see
``difflab.utils.checkpoint_io``) and sets ``trainer.should_stop``. The run then ends as a
normal run does and exits with code 0; ``resume=auto`` with the same run dir continues it.

Lightning 2.x installs its own SIGTERM handler while fitting (it raises ``SIGTERMException``
at the next batch, without saving) and handles SIGUSR1 only under ``SLURMEnvironment`` with
auto-requeue. This callback installs its handlers when training starts, replacing
Lightning's for these signals, and puts the previous handlers back when training ends.
Under DDP the flag is all-reduced at each check, so every rank stops at the same step even
when only one rank got the signal.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from difflab.utils.logging import get_logger

log = get_logger(__name__)


class Preemption(Callback):
    """Save ``last.ckpt`` and stop cleanly on a signal.

    Args:
        signals: the signal names to handle (default SIGTERM and SIGUSR1).
        dirpath: where to write ``last.ckpt``; default: the ModelCheckpoint's folder, else
            ``<trainer.default_root_dir>/checkpoints``.
        filename: the checkpoint's file name.
        slurm_requeue: under SLURM (``SLURM_JOB_ID`` set), after saving on SIGUSR1 rank 0 runs
            ``scontrol requeue`` for this job (as Lightning's SLURM handler does), so the job
            starts again in the same run dir and resumes from ``last.ckpt`` (``resume=auto``).
    """

    def __init__(
        self,
        signals: list[str] | tuple[str, ...] = ("SIGTERM", "SIGUSR1"),
        dirpath: str | None = None,
        filename: str = "last.ckpt",
        slurm_requeue: bool = True,
    ) -> None:
        names = [signals] if isinstance(signals, str) else list(signals)
        known = {s.name for s in signal.valid_signals() if isinstance(s, signal.Signals)}
        bad = [n for n in names if n not in known or n in ("SIGKILL", "SIGSTOP")]
        if bad or not names:
            raise ValueError(
                f"callbacks.preemption.signals must be a non-empty list of catchable signal names such as "
                f"SIGTERM, SIGUSR1; got {names}"
            )
        if not filename.endswith(".ckpt"):
            raise ValueError(f"callbacks.preemption.filename must end with .ckpt, got {filename!r}")
        self.signals = [getattr(signal, n) for n in names]
        self.dirpath = dirpath
        self.filename = filename
        self.slurm_requeue = bool(slurm_requeue)
        self.requeued = False
        self.received: int | None = None
        self.saved_path: Path | None = None
        self._previous: dict[int, Any] = {}

    # ------------------------------------------------------------------ handlers
    def _handler(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum
        # the message is printed at the next step boundary, not here (the handler must be short)

    def _install(self) -> None:
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def _restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning's own signal connector has registered its handlers
        self.received = None
        self._install()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self._maybe_stop(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._maybe_stop(trainer)

    # ------------------------------------------------------------------ acting
    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        if self.dirpath:
            return Path(self.dirpath) / self.filename
        ckpt = trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath:
            return Path(ckpt.dirpath) / self.filename
        return Path(trainer.default_root_dir) / "checkpoints" / self.filename

    def _maybe_stop(self, trainer: L.Trainer) -> None:
        flag = self.received is not None
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce_boolean_decision(flag, all=False)
        if not flag or self.saved_path is not None and trainer.should_stop:
            return
        name = signal.Signals(self.received).name if self.received is not None else "a signal on another rank"
        path = self.checkpoint_path(trainer)
        ckpt = trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and ckpt.save_last and path.name == f"{ckpt.CHECKPOINT_NAME_LAST}.ckpt":
            # so that the resumed ModelCheckpoint keeps writing this file, not last-v1.ckpt
            ckpt.last_model_path = str(path)
        trainer.save_checkpoint(str(path), weights_only=False)  # the full state, for resume
        self.saved_path = path
        if isinstance(ckpt, ModelCheckpoint) and hasattr(ckpt, "_last_checkpoint_saved"):
            # ModelCheckpoint.on_train_end writes last.ckpt when it has saved none itself (a signal
            # before the first validation); that save, after the loop has closed the epoch, would
            # replace this one with a checkpoint that says the interrupted epoch was completed
            ckpt._last_checkpoint_saved = str(path)
            ckpt._last_global_step_saved = trainer.global_step
        trainer.should_stop = True
        # A stop request makes Lightning validate once more (as for early stopping); within a
        # grace period that time is better spent exiting. The checkpoint is on disk already.
        epoch_loop = trainer.fit_loop.epoch_loop
        if trainer.training and hasattr(epoch_loop, "_skip_next_val"):
            epoch_loop._skip_next_val = True
        log.warning(
            "received %s: saved %s at global step %d and stopping; resume with the same hydra.run.dir "
            "(resume=auto) or ckpt_path=%s",
            name, path, trainer.global_step, path,
        )
        if self.received == signal.SIGUSR1 and trainer.is_global_zero:
            self._requeue()

    def _requeue(self) -> None:
        """``scontrol requeue`` this SLURM job (array task), like Lightning's SLURM handler."""
        import os
        import subprocess

        job = os.environ.get("SLURM_JOB_ID")
        if not (self.slurm_requeue and job):
            return
        array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        job_id = f"{array_job}_{array_task}" if array_job and array_task else job
        try:
            result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("could not requeue SLURM job %s: %s; re-submit it to resume", job_id, e)
            return
        self.requeued = result.returncode == 0
        if self.requeued:
            log.warning("requeued SLURM job %s: it resumes from the saved checkpoint", job_id)
        else:
            log.warning("scontrol requeue %s failed (%s); re-submit the job to resume", job_id, result.stderr.strip())
