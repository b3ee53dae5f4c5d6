"""run(cfg): build data, model, callbacks, loggers and trainer from the config; fit; return the metric.

Validation comes first and is cheap: the schedule, objective and sampler are built (pure,
milliseconds), then the data module and backbone are constructed and the backbone is
called once on a dummy batch of the data's shape. Any mistake stops the run here with one
line, before a data set is loaded or a logger is started.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig

from difflab.errors import CheckpointError, ConfigError, DifflabError
from difflab.module import DiffusionModule
from difflab.utils.hydra import print_config_tree, to_plain_dict
from difflab.utils.logging import get_logger
from difflab.utils.validation import key_message, scrub_run_dir, validate_config

log = get_logger(__name__)

CONFIG_ORDER = ("data", "backbone", "schedule", "objective", "sampler", "optimizer", "trainer", "callbacks", "logger", "paths")


def _instantiate(node: Any, key: str, **kwargs: Any) -> Any:
    """hydra.utils.instantiate with the config key named in the error."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except hydra.errors.InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, (ValueError, TypeError, DifflabError)):
            raise ConfigError(key_message(key, cause, node)) from None
        raise


def build_core(cfg: DictConfig):
    """(process, objective, sampler) from the config; validates the sampler against T."""
    process = _instantiate(cfg.schedule, "schedule")
    objective = _instantiate(cfg.objective, "objective")
    sampler = _instantiate(cfg.sampler, "sampler")
    T = process.num_timesteps
    try:
        sampler.timesteps(T)
    except ValueError as e:
        raise ConfigError(f"{key_message('sampler', e, cfg.sampler)} (schedule.num_timesteps={T})") from None
    if float(process.alphas_cumprod[-1]) == 0.0 and objective.target == "eps":
        raise ConfigError(
            "schedule.zero_terminal_snr=true needs objective=v or objective=x0: with eps-prediction x0 is "
            "undefined at the last timestep (Lin et al. 2023, sec. 3.2)"
        )
    return process, objective, sampler


def check_backbone(backbone: torch.nn.Module, image_shape: tuple[int, ...], key: str = "backbone") -> None:
    """Call the backbone once on a dummy batch of the data's shape: mismatches stop the run now."""
    x = torch.zeros(2, *image_shape)
    t = torch.zeros(2, dtype=torch.long)
    try:
        with torch.no_grad():
            out = backbone(x, t)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(
            f"{key} cannot take data of shape {tuple(image_shape)}: {e}. Set the backbone's "
            "in_channels / image_size to the data's, or change data.image_size / data.channels."
        ) from None
    if out.shape != x.shape:
        raise ConfigError(f"{key} maps {tuple(x.shape)} to {tuple(out.shape)}; it must keep the shape")


def build_module(cfg: DictConfig, image_shape: tuple[int, ...], config_dict: dict | None = None) -> DiffusionModule:
    process, objective, sampler = build_core(cfg)
    backbone = _instantiate(cfg.backbone, "backbone")
    check_backbone(backbone, image_shape)
    optimizer = _instantiate(cfg.optimizer, "optimizer")
    lr = cfg.optimizer.get("lr")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"optimizer.lr must be a positive number, got {lr}")
    module = DiffusionModule(
        backbone=backbone,
        process=process,
        objective=objective,
        sampler=sampler,
        optimizer=optimizer,
        lr_warmup_steps=cfg.lr_warmup_steps,
        seed=cfg.seed,
        val_seed=cfg.val_seed,
        max_consecutive_nonfinite=cfg.max_consecutive_nonfinite,
        channels_last=cfg.channels_last,
        image_shape=image_shape,
        config=config_dict,
    )
    if cfg.get("compile"):
        # in place: the state-dict keys stay those of the plain backbone, so checkpoints of
        # compiled and plain runs load into each other
        module.backbone.compile()
    return module


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    dm = _instantiate(cfg.data, "data")
    return dm


def _instantiate_group(node: DictConfig | None, key: str) -> list[Any]:
    out = []
    for name, sub in (node or {}).items():
        if isinstance(sub, DictConfig) and "_target_" in sub:
            out.append(_instantiate(sub, f"{key}.{name}"))
    return out


def _share_cpu_threads(trainer: L.Trainer) -> None:
    """Several CPU processes of one run (DDP on CPU) split the cores instead of each taking all:
    oversubscribed OpenMP threads make small ops hundreds of times slower."""
    from lightning.pytorch.accelerators import CPUAccelerator

    if isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // trainer.num_devices))


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
    trainer.save_checkpoint(str(path))
    cb.last_model_path = str(path)


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """ckpt_path if given (must exist), else with resume=auto <run dir>/checkpoints/last.ckpt (or a newer hpc_ckpt_N.ckpt)."""
    if cfg.get("ckpt_path"):
        path = Path(str(cfg.ckpt_path)).expanduser()
        if not path.is_file():
            raise CheckpointError(f"ckpt_path={cfg.ckpt_path}: no such file. Give the path of a .ckpt file, e.g. <run dir>/checkpoints/last.ckpt")
        from difflab.utils.checkpoint import load_checkpoint

        load_checkpoint(path)  # weights_only: an unsafe or truncated file stops here with one line
        return str(path)
    if str(cfg.get("resume", "auto")).lower() == "auto":
        # the newest of last.ckpt and the hpc_ckpt_N.ckpt Lightning saves when SLURM signals
        # the end of a job's time (a requeued job runs again in the same run dir)
        run_dir = Path(cfg.paths.output_dir)
        found = [p for p in [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
        last = max(found, key=lambda p: p.stat().st_mtime) if found else None
        if last is not None:
            log.info("resume=auto: resuming from %s", last)
            return str(last)
    return None


def run(cfg: DictConfig) -> float | None:
    """Train one model; returns ``cfg.optimized_metric`` (for sweepers), or None if absent."""
    from difflab.utils.loggers import finish_loggers

    # 1. validate everything that is cheap to validate, before anything heavy is built
    validate_config(cfg)
    scrub_run_dir(cfg.paths.output_dir, cfg)  # secrets out of the .hydra/*.yaml Hydra wrote
    config_dict = to_plain_dict(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the initial weights follow cfg.seed
    datamodule = build_datamodule(cfg)
    image_shape = tuple(datamodule.image_shape)
    module = build_module(cfg, image_shape, config_dict=config_dict)
    ckpt_path = resolve_ckpt_path(cfg)

    if cfg.get("print_config", True) and int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
        print_config_tree(cfg, CONFIG_ORDER)

    # 2. build the rest
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    callbacks = _instantiate_group(cfg.get("callbacks"), "callbacks")
    if not cfg.trainer.get("enable_progress_bar", True):  # trainer.enable_progress_bar=false wins
        from lightning.pytorch.callbacks import ProgressBar

        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = _instantiate_group(cfg.get("logger"), "logger")
    trainer: L.Trainer = _instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)
    _share_cpu_threads(trainer)
    for logger in loggers:
        logger.log_hyperparams(config_dict)

    # 3. fit
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        save_final_checkpoint(trainer)
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
