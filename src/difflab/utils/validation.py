"""Checks that run before anything is built, and secrets kept out of the run dir.

``validate_config(cfg)`` is the first thing ``difflab.train.run`` does. Every problem it
finds is a :class:`~difflab.errors.ConfigError` whose message names the key, the value and
what is allowed, so ``train.py`` prints one ``error: ...`` line and exits with code 2. The
checks of the parts themselves (sampler, objective, backbone, optimizer) live with the parts
and in ``difflab.train.build_core`` / ``check_backbone``; this module holds what belongs to
no part: the top-level run settings, the data module's arguments (which the backbone's
``${dl.data_shape:...}`` interpolation would otherwise report as an interpolation error),
and interpolations that cannot be resolved.

``scrub_run_dir(output_dir, cfg)``: Hydra writes ``.hydra/config.yaml``, ``hydra.yaml`` and
``overrides.yaml`` before the job starts (and, in a multirun, ``multirun.yaml``), with every
command-line override as typed. This replaces, in those files, the values of secret-looking
keys, token-shaped values and the value of ``WANDB_API_KEY`` by ``<redacted>``
(``difflab.utils.secrets`` says what counts as a secret).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue, OmegaConfBaseException

from difflab.errors import ConfigError, DifflabError
from difflab.utils.secrets import (  # noqa: F401  (REDACTED, redact_text: re-exported)
    REDACTED,
    env_secrets,
    override_secret_values,
    redact_text,
    secret_values_of,
)

RESUME_CHOICES = ("auto", "never")


# --------------------------------------------------------------------------- messages
def key_message(key: str, error: BaseException | str, node: Any = None) -> str:
    """``"<key>.<arg> must ..."`` when the message starts with an argument of ``node``, else ``"<key>: ..."``.

    Constructors raise ``ValueError("eta must be a number in [0, 1], got 1.5")``; with the
    config key in front that reads ``sampler.eta must be a number in [0, 1], got 1.5``.
    """
    msg = " ".join(str(error).split())
    if msg.startswith(f"{key}.") or msg.startswith(f"{key}:") or msg.startswith(f"{key} "):
        return msg  # the constructor already named its key (callbacks.ema.decay must ...)
    first = re.match(r"[A-Za-z_][A-Za-z0-9_]*", msg)
    if first and isinstance(node, DictConfig) and first.group(0) in node and not first.group(0).startswith("_"):
        return f"{key}.{msg}"
    return f"{key}: {msg}"


def _root_cause(e: BaseException) -> BaseException:
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        nxt = e.__cause__ or e.__context__
        if nxt is None:
            break
        e = nxt
    return e


# --------------------------------------------------------------------------- checks
def _int(cfg: DictConfig, key: str, minimum: int, allowed_extra: tuple[int, ...] = ()) -> None:
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or (value < minimum and value not in allowed_extra):
        extra = f" (or {', '.join(map(str, allowed_extra))})" if allowed_extra else ""
        raise ConfigError(f"{key} must be an integer >= {minimum}{extra}, got {value!r}")


def _bool(cfg: DictConfig, key: str, nullable: bool = True) -> None:
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    if (value is not None or not nullable) and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")


def check_run_settings(cfg: DictConfig) -> None:
    """Top-level keys of conf/train.yaml and the trainer's step counts."""
    resume = cfg.get("resume", "auto")
    if resume not in (None, False) and str(resume).lower() not in RESUME_CHOICES:
        raise ConfigError(
            f"resume must be auto (continue from <run dir>/checkpoints/last.ckpt if it exists) or never/false, "
            f"got {resume!r}; to resume from a file set ckpt_path=PATH"
        )
    if cfg.get("init_from") and cfg.get("ckpt_path"):
        raise ConfigError(
            f"init_from={cfg.init_from} (new run from a checkpoint's weights) and ckpt_path={cfg.ckpt_path} (resume a "
            "run with its step and optimizer) exclude each other; drop one"
        )
    if cfg.get("init_from"):
        path = Path(str(cfg.init_from)).expanduser()
        if not path.is_file():
            raise ConfigError(f"init_from={cfg.init_from}: no such file; give a .ckpt of a difflab run, e.g. <run dir>/checkpoints/last.ckpt")
    _int(cfg, "seed", minimum=0)
    _int(cfg, "lr_warmup_steps", minimum=0)
    _int(cfg, "max_consecutive_nonfinite", minimum=1)
    for key in ("compile", "channels_last"):
        _bool(cfg, key)
    if "malloc_tuning" in cfg:
        _bool(cfg, "malloc_tuning", nullable=False)  # null would read as false in one script and fail in the other
    if "trainer" in cfg:
        _int(cfg, "trainer.max_steps", minimum=1, allowed_extra=(-1,))
        _int(cfg, "trainer.accumulate_grad_batches", minimum=1)
        vci = OmegaConf.select(cfg, "trainer.val_check_interval", throw_on_missing=False)
        if vci is not None and (isinstance(vci, bool) or not isinstance(vci, (int, float)) or not vci > 0):
            raise ConfigError(
                f"trainer.val_check_interval must be a number of steps >= 1 or a fraction of an epoch in (0, 1], "
                f"got {vci!r}"
            )
        clip = OmegaConf.select(cfg, "trainer.gradient_clip_val", throw_on_missing=False)
        if clip is not None and (
            isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip < 0 or not math.isfinite(clip)
        ):
            raise ConfigError(f"trainer.gradient_clip_val must be a number >= 0 (0 or null: no clipping), got {clip!r}")


def check_data(cfg: DictConfig) -> None:
    """Build the data module (constructors do no I/O): bad arguments name ``data.<arg>``."""
    import hydra

    if "data" not in cfg:
        return
    node = cfg.data
    for k in node:
        if OmegaConf.is_missing(node, k):
            raise ConfigError(f"data.{k} is required and has no value (e.g. data.{k}=...); data={node.get('_target_')}")
    try:
        hydra.utils.instantiate(node)
    except hydra.errors.InstantiationException as e:
        cause = _root_cause(e)
        if isinstance(cause, (ValueError, TypeError, DifflabError)):
            raise ConfigError(key_message("data", cause, node)) from None
        raise
    except OmegaConfBaseException as e:
        raise ConfigError(f"data: {_root_cause(e)}") from None


def _data_shape(cfg: DictConfig) -> tuple[int, ...] | None:
    import hydra

    try:
        return tuple(int(s) for s in hydra.utils.instantiate(cfg.data).image_shape)
    except Exception:  # check_data reports a data module that cannot be built
        return None


def check_backbone_for_data(cfg: DictConfig) -> None:
    """Points need a backbone for vectors (backbone=mlp), images one for images.

    A backbone class says what it takes with ``data_rank`` (1: vectors (D,), 3: images
    (C, H, W), the default). Without this check an image backbone on toy2d fails in the
    ``${dl.data_shape:${data},1}`` interpolation ("list index out of range"), and the MLP on
    images speaks of the image backbones' in_channels / image_size.
    """
    from hydra.utils import get_object

    if "data" not in cfg or "backbone" not in cfg:
        return
    target = cfg.backbone.get("_target_")
    shape = _data_shape(cfg)
    if not target or shape is None:
        return
    try:
        rank = int(getattr(get_object(str(target)), "data_rank", 3))
    except Exception:  # an unimportable target is reported when it is built
        return
    data_name = cfg.data.get("name") if len(shape) == 1 else None
    data = f"data={_choice('data', cfg)}" + (f" ({data_name})" if data_name else "")
    if len(shape) == 1 and rank != 1:
        raise ConfigError(
            f"{data} holds {shape[0]}-D points (shape {shape}), which backbone={_choice('backbone', cfg)} "
            f"({target}) cannot take: it is an image backbone; use backbone=mlp"
        )
    if len(shape) == 3 and rank == 1:
        raise ConfigError(
            f"backbone={_choice('backbone', cfg)} ({target}) takes points (vectors, e.g. data=toy2d), but {data} holds "
            f"images of shape {shape}; use backbone=unet or backbone=diffusers_unet"
        )


def _choice(group: str, cfg: DictConfig) -> str:
    """The option picked for a config group (``hydra.runtime.choices``), else the _target_'s class name."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            choice = HydraConfig.get().runtime.choices.get(group)
            if choice:
                return str(choice)
    except Exception:  # outside a Hydra app
        pass
    target = str(OmegaConf.select(cfg, f"{group}._target_", default="") or "")
    return target.rsplit(".", 1)[-1].lower() or "?"


def check_schedule(cfg: DictConfig) -> None:
    """A schedule whose betas reach 1 (alpha-bar_T = 0: zero terminal SNR without asking for it).

    The linear schedule scales its betas by 1000 / T (improved DDPM), so with the default
    beta_end = 0.02 the last beta is exactly 1.0 at T = 20; eps-prediction cannot learn that
    step (x0 is undefined there). Say so, instead of blaming ``zero_terminal_snr``, which is off.
    """
    from difflab.diffusion.schedules import get_beta_schedule

    node = cfg.get("schedule")
    if node is None or node.get("zero_terminal_snr") or node.get("name") is None:
        return
    if str(OmegaConf.select(cfg, "objective.target", default="eps")) != "eps":
        return
    kwargs = {k: v for k, v in node.items() if k not in ("_target_", "name", "num_timesteps", "zero_terminal_snr")}
    try:
        betas = get_beta_schedule(str(node.name), int(node.num_timesteps), False, **kwargs)
    except (ValueError, TypeError):  # reported with the key when the schedule is built
        return
    if float(betas[-1]) >= 1.0:
        T = int(node.num_timesteps)
        scaled = " (its betas are scaled by 1000 / T, so beta_end * 1000 / T = " if node.name == "linear" else " ("
        scaled += f"{float(betas[-1]):g})" if node.name == "linear" else f"last beta {float(betas[-1]):g})"
        fix = "schedule.num_timesteps >= 21 or a lower schedule.beta_end" if node.name == "linear" else "other schedule parameters"
        raise ConfigError(
            f"schedule={node.name} with schedule.num_timesteps={T} reaches beta = 1 at the last step{scaled}, so "
            f"alpha-bar_T = 0 and eps-prediction cannot learn that step; use {fix}, or objective=v"
        )


def check_loggers(cfg: DictConfig) -> None:
    """W&B's log_model uploads checkpoints, which an offline run cannot (Lightning would raise)."""
    from difflab.utils.wandb_env import resolve_wandb_mode

    for name, node in (cfg.get("logger") or {}).items():
        if not isinstance(node, DictConfig) or not str(node.get("_target_", "")).endswith("make_wandb_logger"):
            continue
        log_model = node.get("log_model")
        if not log_model:
            continue
        try:
            mode = resolve_wandb_mode(node.get("mode"))
        except ValueError:
            continue
        if mode == "offline":
            why = f"WANDB_MODE={os.environ['WANDB_MODE']}" if os.environ.get("WANDB_MODE") else (
                "logger.wandb.mode=offline" if node.get("mode") == "offline" else "no W&B API key is configured"
            )
            raise ConfigError(
                f"logger.{name}.log_model={str(log_model).lower()} uploads checkpoints to W&B, but W&B runs offline ({why}); "
                f"log in (`wandb login` or WANDB_API_KEY) to run online, or set logger.{name}.log_model=false"
            )


def check_lr_schedule(cfg: DictConfig) -> None:
    """A decaying schedule whose warm-up lasts the whole run never decays: said in one line.

    Not an error: the default schedule decays (cosine), and a short run such as
    ``trainer.max_steps=100`` is a normal first try; it then trains on the warm-up ramp.
    """
    node = cfg.get("lr_scheduler")
    if node is None or node.get("name", "constant") == "constant":
        return
    warmup = node.get("warmup_steps")
    total = node.get("total_steps") or OmegaConf.select(cfg, "trainer.max_steps", default=None)
    if isinstance(warmup, int) and isinstance(total, int) and total > 0 and warmup >= total:
        from difflab.utils.logging import get_logger

        get_logger(__name__).warning(
            "lr_scheduler=%s: the warm-up (lr_warmup_steps=%d) lasts the whole run (trainer.max_steps=%d), so the "
            "learning rate never decays; lower lr_warmup_steps for a decay", node.name, warmup, total,
        )


def check_resolvable(cfg: DictConfig) -> None:
    """Every interpolation resolves; an error names the key that holds it."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except (InterpolationResolutionError, MissingMandatoryValue) as e:
        key = getattr(e, "full_key", None) or "config"
        raise ConfigError(f"{key}: cannot resolve its value: {' '.join(str(_root_cause(e)).split())}") from None


def validate_config(cfg: DictConfig) -> None:
    """All cheap checks, in the order a user would fix them; raises ConfigError."""
    check_run_settings(cfg)
    check_data(cfg)
    check_backbone_for_data(cfg)
    check_resolvable(cfg)
    check_schedule(cfg)
    check_lr_schedule(cfg)
    check_loggers(cfg)


# --------------------------------------------------------------------------- secrets
def secret_values(cfg: Any = None) -> list[str]:
    """The values to keep out of files: ``WANDB_API_KEY``, values of secret-looking keys of
    ``cfg`` and, inside a Hydra job, values given to such keys on the command line."""
    found: list[str] = list(env_secrets())
    if cfg is not None:
        try:
            plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False) if isinstance(cfg, DictConfig) else cfg
        except (OmegaConfBaseException, ValueError, TypeError):
            plain = OmegaConf.to_container(cfg, resolve=False)
        found += secret_values_of(plain)
    hc = _hydra_config()
    if hc is not None:
        found += override_secret_values([str(o) for o in hc.overrides.task])
    return sorted(set(found), key=len, reverse=True)


def _hydra_config() -> Any | None:
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover
        return None
    return HydraConfig.get() if HydraConfig.initialized() else None


def redact_overrides(overrides: list[str], values: list[str] | None = None) -> list[str]:
    """Command-line overrides with secret values redacted (for W&B run names and configs)."""
    values = secret_values() if values is None else values
    return [redact_text(str(o), values) for o in overrides]


def _scrub_file(path: Path, values: list[str]) -> bool:
    try:
        text = path.read_text()
    except OSError:
        return False
    new = redact_text(text, values)
    if new == text:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)
    return True


def scrub_run_dir(output_dir: str | os.PathLike, cfg: Any = None, subdir: str = ".hydra") -> list[Path]:
    """Redact secrets in the YAML files Hydra wrote (``<run dir>/.hydra/*.yaml`` and, in a
    multirun, ``<sweep dir>/multirun.yaml``); returns the files that changed."""
    values = secret_values(cfg)
    folder = Path(output_dir) / subdir
    paths = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    hc = _hydra_config()
    if hc is not None and str(hc.mode) in ("RunMode.MULTIRUN", "MULTIRUN"):
        multirun = Path(str(hc.sweep.dir)) / "multirun.yaml"
        if multirun.is_file():
            paths.append(multirun)
    return [path for path in paths if _scrub_file(path, values)]
