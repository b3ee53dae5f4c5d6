"""Many runs from one command: Hydra multiruns, Optuna studies, W&B sweeps, SLURM arrays.

- ``wandb_identity()``: the W&B name, group and extra config of the current Hydra job. The
  name is the job's overrides (``objective=v,schedule=linear``); all jobs of one multirun
  share a group named after the sweep dir (``train-2025-01-31_12-00-00``).
- ``mark_finished`` / ``skip_finished_job``: a job whose fit ended normally at ``max_steps``
  leaves ``<run dir>/finished.yaml``; re-running the sweep in the same sweep dir skips it
  (no new W&B run) and resumes the others.
- ``run_job(fn, cfg, script)``: what ``train.py`` calls. In a multirun a job that fails is
  written to ``<sweep dir>/failures/job_<num>.yaml`` and returns NaN, so the other jobs
  still run (Hydra's basic launcher would stop the sweep); the process-wide state a DDP job
  leaves behind (process group, ``LOCAL_RANK`` & co) is cleared before the next job.
- ``SweepSummary``: a Hydra callback (conf/hydra/default.yaml) that prints the failed jobs
  and the Optuna study's best trial at the end of a multirun, and exits 1 if a job failed.
- DDP: Lightning re-executes the script for ranks 1..N-1 with ``sys.argv``, which under
  ``-m`` would start a whole new sweep in every child. ``ddp_child_command`` replaces
  Lightning's command by a single run of this job, in this job's run dir.

This module imports neither torch nor Lightning at import time: Hydra loads it for every run.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

FAILURES_DIR = "failures"
FINISHED_MARKER = "finished.yaml"
# environment variables Lightning's DDP launcher sets in the main process; a later job in
# the same process would read LOCAL_RANK as "launched externally" and never start its ranks
DDP_ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Hydra overrides that belong to the sweep, not to one of its jobs
_SWEEP_ONLY = ("hydra.mode", "hydra.sweep", "hydra.sweeper", "hydra/sweeper", "hydra.launcher", "hydra/launcher",
               "hydra.run.dir", "hydra.job.name", "hydra.output_subdir", "hydra.job.num", "hydra.job.id",
               "hydra.callbacks")

_script: str | None = None


# --------------------------------------------------------------------------- job identity
def hydra_config() -> Any | None:
    """Hydra's runtime config (``hydra.*``), or None outside a Hydra app (tests, notebooks)."""
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover
        return None
    return HydraConfig.get() if HydraConfig.initialized() else None


def is_multirun(hc: Any | None = None) -> bool:
    hc = hc if hc is not None else hydra_config()
    return hc is not None and str(hc.mode) in ("RunMode.MULTIRUN", "MULTIRUN")


def sweep_group(sweep_dir: str | os.PathLike, job_name: str | None = None) -> str:
    """The W&B group of a multirun: ``<job name>-<sweep dir name>``, e.g. ``train-2025-01-31_12-00-00``."""
    name = Path(str(sweep_dir)).name
    return f"{job_name}-{name}" if job_name else name


def wandb_identity() -> dict[str, Any]:
    """Name, group and config additions for this job's W&B run (empty outside Hydra).

    ``config`` holds ``overrides`` (this job's command-line overrides, as a list) and, in a
    multirun, ``sweep`` (dir, group, job number), so runs can be filtered by what was swept.
    """
    hc = hydra_config()
    if hc is None:
        return {}
    from difflab.utils.validation import redact_overrides, redact_text, secret_values

    raw = [str(o) for o in hc.overrides.task]
    # values given to secret-looking keys on the command line (e.g. +db.pwd=...) and
    # token-shaped values never reach W&B (secret_values includes this job's overrides)
    values = secret_values()
    overrides = redact_overrides(raw, values)
    name = redact_text(str(hc.job.override_dirname), values)
    out: dict[str, Any] = {"name": name or None, "config": {"overrides": overrides}}
    if is_multirun(hc):
        group = sweep_group(hc.sweep.dir, hc.job.name)
        out["group"] = group
        out["config"]["sweep"] = {"dir": str(hc.sweep.dir), "group": group, "job_num": int(hc.job.num)}
    return out


# --------------------------------------------------------------------------- finished jobs
def finished_marker(run_dir: str | os.PathLike) -> Path:
    """``<run dir>/finished.yaml``: written when a fit ended normally at ``max_steps``."""
    return Path(str(run_dir)) / FINISHED_MARKER


def _job_overrides() -> list[str] | None:
    """This job's command-line overrides, secrets redacted (None outside Hydra)."""
    hc = hydra_config()
    if hc is None:
        return None
    from difflab.utils.validation import redact_overrides

    return redact_overrides([str(o) for o in hc.overrides.task])


def mark_finished(cfg: Any, trainer: Any) -> Path | None:
    """After ``trainer.fit``: write the finished marker if the fit ended normally at its end.

    "Normally" means Lightning's status is ``finished`` and the step (or epoch) budget was
    reached; a run stopped by a signal (the Preemption callback), by an error or by Ctrl-C
    gets no marker, so a re-run sweep resumes it. The marker holds the global step, this
    job's overrides (secrets redacted), the optimized metric and the W&B run id, if any.
    Written by global rank 0 only. Returns the marker's path, or None when none was written.
    """
    from omegaconf import OmegaConf

    if not getattr(trainer, "is_global_zero", True) or str(getattr(trainer.state, "status", "")) not in (
        "finished", "TrainerStatus.FINISHED"
    ):
        return None
    if any(getattr(c, "saved_path", None) is not None for c in getattr(trainer, "callbacks", [])):
        return None  # preempted: the fit loop ended early on a signal
    if getattr(trainer, "fast_dev_run", False):
        return None  # debug=fdr writes nothing that lasts
    max_steps = int(getattr(trainer, "max_steps", -1) or -1)
    if max_steps > 0:
        if trainer.global_step < max_steps:
            return None
    elif trainer.max_epochs is None or trainer.max_epochs < 0 or trainer.current_epoch < trainer.max_epochs:
        return None
    key = str(cfg.get("optimized_metric") or "")
    metric = trainer.callback_metrics.get(key) if key else None
    wandb_id = None
    for logger in getattr(trainer, "loggers", []) or []:
        run = getattr(logger, "_experiment", None)
        wandb_id = wandb_id or (getattr(run, "id", None) if run is not None else None)
    record = {
        "global_step": int(trainer.global_step),
        "max_steps": max_steps,
        "overrides": _job_overrides(),
        "optimized_metric": key or None,
        "metric": float(metric) if metric is not None else None,
        "wandb_run_id": wandb_id,
    }
    path = finished_marker(cfg.paths.output_dir)
    tmp = path.with_name(f".{path.name}.tmp")
    OmegaConf.save(OmegaConf.create(record), tmp)
    os.replace(tmp, path)
    return path


def skip_finished_job(cfg: Any) -> dict[str, Any] | None:
    """In a multirun, the finished marker of this job when it matches this job; else None.

    A re-run sweep (the same command with ``hydra.sweep.dir=<that sweep dir>``) then skips
    the jobs that finished (same overrides, ``max_steps`` reached) and says so, instead of
    resuming them and adding an empty W&B run; unfinished jobs resume from ``last.ckpt``.
    ``resume=never`` or ``ckpt_path`` runs the job again. The caller returns the stored
    ``metric``, so a sweeper still sees the job's result.
    """
    from omegaconf import OmegaConf

    if not is_multirun() or cfg.get("ckpt_path") or str(cfg.get("resume", "auto")).lower() != "auto":
        return None
    path = finished_marker(cfg.paths.output_dir)
    if not path.is_file():
        return None
    try:
        record = OmegaConf.to_container(OmegaConf.load(path))
    except Exception:  # an unreadable marker: run the job
        return None
    max_steps = int(OmegaConf.select(cfg, "trainer.max_steps", default=-1) or -1)
    if not isinstance(record, dict) or record.get("overrides") != _job_overrides():
        return None
    if max_steps > 0 and int(record.get("global_step") or 0) < max_steps:
        return None  # the job now asks for more steps: resume it
    hc = hydra_config()
    metric = record.get("metric")
    print(
        f"job {hc.job.num if hc is not None else '?'}: finished before at global step {record.get('global_step')} "
        f"({record.get('optimized_metric')}={metric}); skipping it ({path}; resume=never runs it again)",
        flush=True,
    )
    return record


# --------------------------------------------------------------------------- one job of many
def run_job(fn: Callable[[Any], Any], cfg: Any, script: str | None = None) -> Any:
    """``fn(cfg)``; in a multirun, a failure is recorded and returned as NaN instead of raised.

    ``script``: the entry point's file (``train.py``); DDP's child processes run it again.
    """
    global _script
    if script:
        _script = os.path.abspath(script)
    install_ddp_relaunch()
    hc = hydra_config()
    if not is_multirun(hc):
        return fn(cfg)
    env_before = {k: os.environ.get(k) for k in DDP_ENV_KEYS}
    try:
        return fn(cfg)
    except KeyboardInterrupt:
        raise
    except (Exception, SystemExit) as e:
        path = record_failure(hc, e)
        print(f"job {hc.job.num} failed: {describe(e)} (recorded in {path}); the sweep goes on", file=sys.stderr)
        return math.nan
    finally:
        _finish_wandb()
        _clear_ddp_state(env_before)


def describe(e: BaseException) -> str:
    """One line: the error's type and message (a SystemExit from a handled error shows that error)."""
    if isinstance(e, SystemExit) and e.__context__ is not None:
        e = e.__context__
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def record_failure(hc: Any, e: BaseException) -> Path:
    """Write ``<sweep dir>/failures/job_<num>.yaml`` (overrides, run dir, error, traceback)."""
    from omegaconf import OmegaConf

    shown = e.__context__ if isinstance(e, SystemExit) and e.__context__ is not None else e
    log.error("job %s failed: %s", hc.job.num, describe(e), exc_info=shown)
    path = Path(str(hc.sweep.dir)) / FAILURES_DIR / f"job_{int(hc.job.num)}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "job_num": int(hc.job.num),
        "overrides": [str(o) for o in hc.overrides.task],
        "run_dir": str(hc.runtime.output_dir),
        "error": describe(e),
        "traceback": "".join(traceback.format_exception(type(shown), shown, shown.__traceback__)),
    }
    OmegaConf.save(OmegaConf.create(record), path)
    return path


def _finish_wandb() -> None:
    """A W&B run still open after a job (it failed before its loggers were closed) ends here."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1)


def _clear_ddp_state(env_before: dict[str, str | None]) -> None:
    """Undo what a DDP job left in this process, so that the next job starts its own ranks."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key, value in env_before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _stop_child_observers()


def _stop_child_observers() -> None:
    """Retire Lightning's DDP child watchers of the finished job.

    The watcher kills the main process when a child exits non-zero, which is right for one
    run and wrong for a sweep: rank 0 has already stopped its ranks and recorded the failure.
    """
    import threading

    for thread in threading.enumerate():
        if type(thread).__name__ == "_ChildProcessObserver":
            thread._run = lambda: True  # its loop ends at the next poll


# --------------------------------------------------------------------------- DDP children
def ddp_child_command(local_rank: int) -> tuple[list[str], str]:
    """The command for DDP rank ``local_rank``: this job alone, as a single run in its run dir.

    Replaces ``lightning.pytorch.strategies.launchers.subprocess_script._hydra_subprocess_cmd``,
    which re-runs ``sys.argv`` (with ``-m`` and every swept value) in ``hydra.run.dir``.
    """
    import __main__
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    hc = HydraConfig.get()
    if "joblib" in str(hc.launcher.get("_target_", "")):
        from difflab.errors import ConfigError

        raise ConfigError(
            "trainer=ddp cannot start its ranks inside hydra/launcher=joblib workers (parallel jobs would share "
            "GPUs and ports); use the basic launcher (jobs one after another) or hydra/launcher=local_gpu|slurm_gpu"
        )
    if _script:
        command = [sys.executable, _script]
    elif getattr(__main__, "__spec__", None) is not None:
        command = [sys.executable, "-m", __main__.__spec__.name]
    else:
        command = [sys.executable, os.path.abspath(sys.argv[0])]
    command += _config_flags(sys.argv[1:]) if not _script else []
    command += [o for o in hc.overrides.hydra if not str(o).lstrip("+~").startswith(_SWEEP_ONLY)]
    command += [str(o) for o in hc.overrides.task]
    command += [
        f'hydra.run.dir="{hc.runtime.output_dir}"',
        f"hydra.job.name={hc.job.name}_ddp_process_{local_rank}",
        "hydra.output_subdir=null",
    ]
    return command, get_original_cwd()


def _config_flags(argv: list[str]) -> list[str]:
    """``--config-name``/``--config-path``/``--config-dir`` flags of the command line (with values)."""
    out, take = [], False
    for arg in argv:
        if take:
            out.append(arg)
            take = False
        elif arg in ("-cn", "-cp", "-cd", "--config-name", "--config-path", "--config-dir"):
            out.append(arg)
            take = True
        elif arg.startswith(("--config-name=", "--config-path=", "--config-dir=")):
            out.append(arg)
    return out


def install_ddp_relaunch() -> None:
    """Make Lightning's DDP launcher start ranks 1..N-1 with ``ddp_child_command`` (idempotent)."""
    if "lightning" not in sys.modules and "lightning.pytorch" not in sys.modules:
        import lightning.pytorch  # noqa: F401  (the launcher module must exist to be patched)
    from lightning.pytorch.strategies.launchers import subprocess_script

    subprocess_script._hydra_subprocess_cmd = ddp_child_command


# --------------------------------------------------------------------------- end of a multirun
try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object  # type: ignore[assignment,misc]


class SweepSummary(_HydraCallback):
    """At the end of a multirun: print failed jobs and the best trial; exit 1 if a job failed."""

    def __init__(self, exit_on_failure: bool = True) -> None:
        self.exit_on_failure = exit_on_failure

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        """Failures of an earlier sweep in the same dir (a re-run) go to failures/previous/."""
        failures = Path(str(config.hydra.sweep.dir)) / FAILURES_DIR
        old = list(failures.glob("job_*.yaml"))
        if old:
            (failures / "previous").mkdir(exist_ok=True)
            for path in old:
                path.replace(failures / "previous" / path.name)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        lines, failed = summarize(sweep_dir)
        print("\n".join(lines), flush=True)
        (sweep_dir / "summary.txt").write_text("\n".join(lines) + "\n")
        if failed and self.exit_on_failure:
            raise SystemExit(1)


def summarize(sweep_dir: Path) -> tuple[list[str], int]:
    """Lines of the end-of-sweep report and the number of failed jobs."""
    from omegaconf import OmegaConf

    n_jobs = sum(1 for p in sweep_dir.glob("*/.hydra") if p.is_dir())
    failures = sorted((sweep_dir / FAILURES_DIR).glob("job_*.yaml"), key=lambda p: int(p.stem.split("_")[1]))
    lines = [f"multirun: {n_jobs} jobs, {len(failures)} failed ({sweep_dir})"]
    for path in failures:
        rec = OmegaConf.load(path)
        lines.append(f"  FAILED job {rec.job_num} [{','.join(rec.overrides)}]: {rec.error}")
        lines.append(f"         run dir {rec.run_dir}; traceback in {path}")
    results = sweep_dir / "optimization_results.yaml"
    if results.is_file():
        res = OmegaConf.to_container(OmegaConf.load(results))
        if "best_value" in res:
            params = " ".join(f"{k}={v}" for k, v in res.get("best_params", {}).items())
            lines.append(f"best trial: {res['best_value']} with {params}  ({results})")
        else:
            lines.append(f"Pareto front: {res.get('solutions')}  ({results})")
    return lines, len(failures)
