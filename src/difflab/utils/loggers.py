"""Loggers: images and tables to whichever loggers take them (W&B, TensorBoard; others are
skipped), the W&B logger (offline without credentials, one W&B run per run dir), closing."""

from __future__ import annotations

import os

import numpy as np
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger


def log_image(logger: Logger, key: str, image: np.ndarray, step: int, caption: str | None = None) -> bool:
    """Log an H x W x C uint8 image; returns False for loggers that take no images (CSV)."""
    if isinstance(logger, WandbLogger):
        import wandb

        logger.experiment.log({key: wandb.Image(image, caption=caption), "trainer/global_step": step})
        return True
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(key, image, global_step=step, dataformats="HWC")
        return True
    return False


def log_table(logger: Logger, key: str, columns: list[str], rows: list[list]) -> bool:
    """Log a table to W&B (other loggers: False)."""
    if isinstance(logger, WandbLogger):
        logger.log_table(key=key, columns=columns, data=rows)
        return True
    return False


def make_wandb_logger(mode: str = "auto", save_dir: str = ".", **kwargs) -> WandbLogger:
    """A WandbLogger that runs offline when no API key is configured.

    ``mode``: auto (online with credentials, else offline), online, offline or disabled.
    The environment variable ``WANDB_MODE`` wins over the config.
    """
    from difflab.utils.sweeps import wandb_identity
    from difflab.utils.wandb_env import resolve_wandb_mode

    resolved = resolve_wandb_mode(mode)
    tags = kwargs.pop("tags", None)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    # name = this job's overrides, group = the multirun's sweep; overrides/sweep go into the config
    identity = wandb_identity()
    for key in ("name", "group"):
        if kwargs.get(key) is None and identity.get(key):
            kwargs[key] = identity[key]
    if identity.get("config"):
        kwargs["config"] = {**identity["config"], **(kwargs.get("config") or {})}
    if tags:
        kwargs["tags"] = list(tags)
    from difflab.utils.secrets import redact

    kwargs = redact(kwargs)  # a token typed into the name, notes or tags stays out of W&B
    from pathlib import Path

    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if kwargs.get("id") is None and kwargs.get("version") is None and resolved != "disabled":
        # a resumed run (same run dir) continues its W&B run: one unbroken history
        kwargs["id"] = wandb_run_id(save_dir)
    logger = WandbLogger(save_dir=save_dir, offline=resolved == "offline", mode=resolved, **kwargs)
    _start_without_secret_args(logger)
    return logger


WANDB_ID_FILE = "wandb/run_id"


def wandb_run_id(save_dir: str | os.PathLike) -> str:
    """The W&B run id of the run in ``save_dir`` (the run dir): read from
    ``<save_dir>/wandb/run_id``, or made and written there by the first start.

    W&B resumes a run given its id (WandbLogger passes ``resume="allow"``), so a run that
    resumes in the same run dir (``resume=auto``, a re-run sweep job, a requeued SLURM job)
    logs into the same W&B run. Processes other than global rank 0 only read the file (DDP
    ranks start after rank 0 has built its loggers)."""
    import secrets
    import string
    from pathlib import Path

    path = Path(save_dir) / WANDB_ID_FILE
    try:
        stored = path.read_text().strip()
    except OSError:
        stored = ""
    if stored and all(c.isalnum() or c in "-_" for c in stored):
        return stored
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    if _global_rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(run_id + "\n")
        os.replace(tmp, path)
    return run_id


def _global_rank() -> int:
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(key)
        if value and value.isdigit():
            return int(value)
    return 0


def _start_without_secret_args(logger: WandbLogger) -> None:
    """W&B records the command line (sys.argv) with each run: if it holds a secret (a value of
    a secret-looking key, a token-shaped value, or WANDB_API_KEY), start the run now with
    those values redacted."""
    import sys

    from difflab.utils.secrets import override_secret_values
    from difflab.utils.validation import redact_overrides, secret_values

    values = secret_values() + override_secret_values(sys.argv[1:])
    redacted = redact_overrides(sys.argv, values)
    if redacted == sys.argv:
        return
    saved = sys.argv[:]
    sys.argv[:] = redacted
    try:
        logger.experiment  # noqa: B018 - creates the run (rank 0 only) while argv is redacted
    finally:
        sys.argv[:] = saved


def finish_loggers(loggers: list[Logger], trainer=None) -> None:
    """Close every logger; finish W&B runs (and say how to sync offline ones)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            run = logger._experiment  # do not create a run just to finish it
            if run is None:
                continue
            offline = bool(getattr(getattr(run, "settings", None), "_offline", False)) or getattr(run, "offline", False)
            run_dir = getattr(run, "dir", None)
            failed = trainer is not None and getattr(trainer.state, "status", None) == "interrupted"
            run.finish(exit_code=1 if failed else 0)  # this job's run, before the next job starts
            if offline and (trainer is None or trainer.is_global_zero):
                sync_dir = run_dir.rsplit("/files", 1)[0] if run_dir else "<run dir>/wandb/offline-run-*"
                print(f"W&B ran offline. To upload this run: wandb sync {sync_dir}")
        else:
            try:
                logger.finalize("success")
            except Exception:  # a logger that cannot finalize must not hide the run's result
                pass
