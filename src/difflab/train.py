"""run(cfg): build data, model, callbacks, loggers and trainer from the config; fit; return the metric.

Validation comes first: the config values are checked, the data are read and checked, the
schedule, objective, sampler, backbone (called once on a dummy batch of the data's shape),
optimizer and callbacks are built, and a resume checkpoint is loaded safely and compared
with the config. Any mistake stops the run here with one
line, before a data set is loaded or a logger is started.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from difflab.build import build_callbacks, build_datamodule, build_loggers, build_module, build_trainer
from difflab.errors import CheckpointError, DifflabError
from difflab.utils.hydra import print_config_tree, to_plain_dict
from difflab.utils.logging import get_logger
from difflab.utils.runtime import tune_malloc
from difflab.utils.validation import scrub_run_dir, validate_config

log = get_logger(__name__)

CONFIG_ORDER = ("data", "backbone", "schedule", "objective", "sampler", "optimizer", "lr_scheduler", "trainer", "callbacks", "logger", "paths")


def save_final_checkpoint(trainer: L.Trainer) -> None:
    """Write last.ckpt at the end of a finished fit when the last save is older.

    ModelCheckpoint saves at validation only, so with trainer.max_steps not a multiple of
    val_check_interval the final steps would otherwise be missing from last.ckpt."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    cb = trainer.checkpoint_callback
    if not isinstance(cb, ModelCheckpoint) or not cb.save_last or cb.dirpath is None:
        return
    if trainer.state.status != "finished" or getattr(cb, "_last_global_step_saved", -1) >= trainer.global_step:
        return
    if any(getattr(c, "saved_path", None) is not None for c in trainer.callbacks):
        return  # the preemption callback saved mid-epoch; a save after fit would mark the epoch done
    path = Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
    trainer.save_checkpoint(str(path), weights_only=False)  # the full state: resume continues from it
    cb.last_model_path = str(path)


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """ckpt_path if given, else with resume=auto the newest of <run dir>/checkpoints/last.ckpt
    and hpc_ckpt_N.ckpt. Either is loaded safely (weights only) and compared with the run's
    config: an unsafe, truncated or mismatched checkpoint stops the run in one line."""
    from difflab.utils.checkpoint import check_same_model, load_checkpoint

    if cfg.get("ckpt_path"):
        path = Path(str(cfg.ckpt_path)).expanduser()
        if not path.is_file():
            raise CheckpointError(f"ckpt_path={cfg.ckpt_path}: no such file. Give the path of a .ckpt file, e.g. <run dir>/checkpoints/last.ckpt")
        check_same_model(load_checkpoint(path), cfg, f"ckpt_path={path}")
        return str(path)
    if str(cfg.get("resume", "auto")).lower() != "auto":
        return None
    # the newest of last.ckpt and the hpc_ckpt_N.ckpt Lightning saves when SLURM signals the
    # end of a job's time (a requeued job runs again in the same run dir)
    run_dir = Path(cfg.paths.output_dir)
    found = [p for p in [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    if not found:
        return None
    last = max(found, key=lambda p: p.stat().st_mtime)
    try:
        check_same_model(load_checkpoint(last), cfg, f"resume=auto: {last}")
    except CheckpointError as e:
        others = sorted(str(p) for p in (run_dir / "checkpoints").glob("*.ckpt") if p != last)
        alt = f"resume from another checkpoint with ckpt_path={others[-1]}, or " if others else ""
        raise CheckpointError(f"{e}. To go on, {alt}start fresh with resume=never (or a new run dir)") from None
    log.info("resume=auto: resuming from %s", last)
    return str(last)


def run(cfg: DictConfig) -> float | None:
    """Train one model; returns ``cfg.optimized_metric`` (for sweepers), or None if absent."""
    from difflab.utils.loggers import finish_loggers
    from difflab.utils.sweeps import mark_finished, skip_finished_job

    if (done := skip_finished_job(cfg)) is not None:  # a re-run sweep: this job finished before
        return done.get("metric")
    # 1. validate everything that is cheap to validate, before anything heavy is built
    validate_config(cfg)
    tune_malloc(cfg.get("malloc_tuning", True))  # CPU speed: freed memory is reused, not faulted in again
    scrub_run_dir(cfg.paths.output_dir, cfg)  # secrets out of the .hydra/*.yaml Hydra wrote
    config_dict = to_plain_dict(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the initial weights follow cfg.seed
    datamodule = build_datamodule(cfg)
    image_shape = tuple(datamodule.image_shape)
    module = build_module(cfg, image_shape, config_dict=config_dict)
    ckpt_path = resolve_ckpt_path(cfg)
    if cfg.get("init_from"):  # fine-tuning: weights only (validate_config refuses it with ckpt_path)
        if ckpt_path is None:
            from difflab.utils.checkpoint import init_weights_from

            loaded = init_weights_from(module, cfg.init_from)
            log.info("init_from: raw%s weights of %s (step %s); step, optimizer and EMA count start at 0",
                     " and EMA" if loaded.ema else "", loaded.path, loaded.source_step)
        else:  # resume=auto found this run's own checkpoint (e.g. after a preemption): continue it
            log.info("init_from=%s not applied: resuming this run from %s", cfg.init_from, ckpt_path)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    callbacks = build_callbacks(cfg)

    if cfg.get("print_config", True) and int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
        print_config_tree(cfg, CONFIG_ORDER)

    # 2. loggers and trainer: nothing is logged before every check above has passed
    loggers = build_loggers(cfg)
    trainer = build_trainer(cfg, callbacks, loggers)
    for logger in loggers:
        logger.log_hyperparams(config_dict)

    # 3. fit
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        save_final_checkpoint(trainer)
        mark_finished(cfg, trainer)  # <run dir>/finished.yaml when the fit reached max_steps
    finally:
        finish_loggers(loggers, trainer)

    metric = trainer.callback_metrics.get(cfg.get("optimized_metric") or "")
    return float(metric) if metric is not None else None


def main(cfg: DictConfig) -> float | None:
    """Entry point behind ``train.py``: user errors exit with one line, not a traceback."""
    try:
        return run(cfg)
    except DifflabError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
