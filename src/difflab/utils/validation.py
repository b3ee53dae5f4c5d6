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
``overrides.yaml`` before the job starts, with every command-line override as typed. This
replaces, in those files, the values of secret-looking keys (``api_key``, ``token``,
``secret``, ``password``, ...) and the value of ``WANDB_API_KEY`` by ``<redacted>``.
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
from difflab.utils.hydra import _SECRET, REDACTED

RESUME_CHOICES = ("auto", "never")
# values shorter than this are not scrubbed by value (they would match ordinary text)
MIN_SECRET_LEN = 4


# --------------------------------------------------------------------------- messages
def key_message(key: str, error: BaseException | str, node: Any = None) -> str:
    """``"<key>.<arg> must ..."`` when the message starts with an argument of ``node``, else ``"<key>: ..."``.

    Constructors raise ``ValueError("eta must be a number in [0, 1], got 1.5")``; with the
    config key in front that reads ``sampler.eta must be a number in [0, 1], got 1.5``.
    """
    msg = " ".join(str(error).split())
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


def _bool(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")


def check_run_settings(cfg: DictConfig) -> None:
    """Top-level keys of conf/train.yaml and the trainer's step counts."""
    resume = cfg.get("resume", "auto")
    if resume not in (None, False) and str(resume).lower() not in RESUME_CHOICES:
        raise ConfigError(
            f"resume must be auto (continue from <run dir>/checkpoints/last.ckpt if it exists) or never/false, "
            f"got {resume!r}; to resume from a file set ckpt_path=PATH"
        )
    _int(cfg, "seed", minimum=0)
    _int(cfg, "lr_warmup_steps", minimum=0)
    _int(cfg, "max_consecutive_nonfinite", minimum=1)
    for key in ("compile", "channels_last"):
        _bool(cfg, key)
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
    check_resolvable(cfg)


# --------------------------------------------------------------------------- secrets
def secret_values(cfg: Any = None) -> list[str]:
    """The values to keep out of files: ``WANDB_API_KEY`` and values of secret-looking keys of ``cfg``."""
    found: list[str] = []
    key = os.environ.get("WANDB_API_KEY")
    if key:
        found.append(key)

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if isinstance(k, str) and _SECRET.search(k) and isinstance(v, (str, int)) and not isinstance(v, bool):
                    found.append(str(v))
                else:
                    walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    if cfg is not None:
        try:
            plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False) if isinstance(cfg, DictConfig) else cfg
        except OmegaConfBaseException:
            plain = OmegaConf.to_container(cfg, resolve=False)
        walk(plain)
    return sorted({v for v in found if len(v) >= MIN_SECRET_LEN}, key=len, reverse=True)


# `+secret_token=abc`, `logger.wandb.api_key=abc`: an override of a secret-looking key
_OVERRIDE = re.compile(
    r"(?P<key>[+~]{0,2}[A-Za-z0-9_.\-/@]*(?:api[_-]?key|token|secret|password|passwd|credential)[A-Za-z0-9_.\-]*)"
    r"(?P<sep>\s*[=:]\s*)(?P<value>\"[^\"]*\"|'[^']*'|[^,\s\]\}]+)",
    re.IGNORECASE,
)


def redact_text(text: str, values: list[str]) -> str:
    """``text`` with every ``values`` entry and every ``key=value`` of a secret-looking key redacted."""
    for v in values:
        text = text.replace(v, REDACTED)
    return _OVERRIDE.sub(lambda m: m.group("key") + m.group("sep") + (m.group("value") if m.group("value").startswith("${") else REDACTED), text)


def redact_overrides(overrides: list[str], values: list[str] | None = None) -> list[str]:
    """Command-line overrides with secret values redacted (for W&B run names and configs)."""
    return [redact_text(str(o), values or secret_values()) for o in overrides]


def scrub_run_dir(output_dir: str | os.PathLike, cfg: Any = None, subdir: str = ".hydra") -> list[Path]:
    """Redact secrets in the YAML files Hydra wrote; returns the files that changed."""
    values = secret_values(cfg)
    changed = []
    folder = Path(output_dir) / subdir
    if not folder.is_dir():
        return changed
    for path in sorted(folder.glob("*.yaml")):
        try:
            text = path.read_text()
        except OSError:
            continue
        new = redact_text(text, values)
        if new != text:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(new)
            os.replace(tmp, path)
            changed.append(path)
    return changed
