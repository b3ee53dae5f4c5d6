"""What sample.py and its tasks share: the device, integer checks, the run dir, npz files, the sampler node.

Kept below ``difflab.sample`` so that the tasks (:mod:`difflab.tasks`) reuse them without
importing the entry point's library (imports run downward only).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from difflab.errors import ConfigError

__all__ = ["check_int", "output_dir", "resolve_device", "sampler_node", "write_npz"]


def resolve_device(name: str | None) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cpu``, ``cuda``, ``cuda:N`` as given."""
    name = str(name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: CUDA is not available on this machine; use device=cpu or device=auto")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r}: accepted are auto, cpu, cuda or cuda:N")
    return device


def check_int(key: str, value: Any, minimum: int, why: str = "") -> int:
    """``value`` as an int, or a ConfigError naming ``key`` when it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}{why}, got {value!r}")
    return int(value)


_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(path: str | Path, arrays: dict[str, Any]) -> Path:
    """``np.savez`` without timestamps: the same arrays give the same bytes (no pickles)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
    tmp.replace(path)
    return path


def sampler_node(cfg: DictConfig, ckpt_sampler: dict[str, Any]) -> DictConfig:
    """The sampler config: a chosen group option (``sampler=ddim``) as is; else the checkpoint's,
    with any ``+sampler.KEY=VALUE`` overrides merged on top."""
    ckpt_sampler = {k: v for k, v in ckpt_sampler.items() if k != "prediction_type"}  # older checkpoints
    node = cfg.get("sampler")
    if node is None:
        return OmegaConf.create(ckpt_sampler)
    if "_target_" in node:
        return OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    return OmegaConf.merge(OmegaConf.create(ckpt_sampler), OmegaConf.to_container(node, resolve=True))


def output_dir(cfg: DictConfig) -> Path:
    """``paths.output_dir`` (the Hydra run dir), or a ConfigError when it is not set."""
    try:
        out = cfg.paths.output_dir
    except Exception:  # composed without Hydra's runtime (e.g. in tests) and not set
        raise ConfigError("paths.output_dir is not set; run through sample.py or set hydra.run.dir") from None
    return Path(str(out))
