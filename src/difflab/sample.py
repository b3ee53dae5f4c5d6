"""run(cfg): checkpoint -> samples (.npz + grid PNG), optionally scored with FID/KID.

    python sample.py ckpt=<run dir>/checkpoints/last.ckpt sampler=ddim sampler.num_steps=50 \\
        n=1000 seed=0 batch_size=250 device=auto use_ema=true metrics=[fid,kid] feature=digits

Writes into the run dir (``outputs/sample/runs/<date>_<time>`` unless ``hydra.run.dir`` is given):

- ``samples.npz``: ``images`` uint8 (N, H, W, C) and the protocol (``sampler``, ``num_steps``,
  ``eta``, ``seed``, ``n``, ``use_ema``, ``checkpoint``, ``global_step``, and ``protocol``, all of
  it as a JSON string); load with ``np.load(path)`` (no pickle needed);
- ``grid.png``: the first 64 samples;
- with ``metrics``: ``metrics.json`` and a printed table (metric, protocol key, value, floor).

Reproducible: batch b draws from ``torch.Generator().manual_seed(batch_seed(seed, b))`` on the
CPU, so the same seed (and batch size) gives byte-identical files on the same device, and the
initial noise is the same on CPU and GPU. Samples are scored against the training split of
the checkpoint's data set with :mod:`difflab.metrics`; the data floor (held-out real images
against the same reference) is reported next to each score.
"""

from __future__ import annotations

import json
import math
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from difflab.diffusion.process import GaussianDiffusion
from difflab.errors import ConfigError, DifflabError
from difflab.samplers import SAMPLERS, Sampler, generate
from difflab.utils.images import make_grid_uint8, save_png, to_uint8
from difflab.utils.logging import get_logger

log = get_logger(__name__)

__all__ = [
    "Scorer",
    "batch_seed",
    "check_metrics",
    "main",
    "resolve_device",
    "run",
    "sample_batches",
    "sampler_info",
    "write_npz",
]

NPZ_NAME = "samples.npz"
GRID_NAME = "grid.png"
METRICS_NAME = "metrics.json"
#: The real reference is drawn with this seed, whatever the sampling seed: scores of
#: different sampling seeds share one reference.
REAL_SEED = 0
#: KID subset size (Binkowski et al. 2018 use 1000), capped by the number of samples.
KID_SUBSET_SIZE = 1000


# --------------------------------------------------------------------------- inputs
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


def check_metrics(metrics: Any) -> tuple[str, ...]:
    """The metric names as a tuple; unknown ones raise ConfigError listing the accepted ones."""
    from difflab.metrics import METRICS

    if metrics is None:
        return ()
    if isinstance(metrics, str):
        metrics = [m for m in metrics.replace(",", " ").split() if m]
    names = tuple(str(m).lower() for m in metrics)
    bad = [m for m in names if m not in METRICS]
    if bad:
        raise ConfigError(f"metrics: unknown metric(s) {', '.join(bad)}; accepted: {', '.join(METRICS)} (e.g. metrics=[fid,kid])")
    return tuple(dict.fromkeys(names))


def check_feature(feature: str) -> str:
    from difflab.metrics import available_feature_extractors

    names = available_feature_extractors()
    if feature not in names:
        raise ConfigError(f"feature={feature!r} is not a feature network; accepted: {', '.join(names)}")
    return feature


def _check_int(key: str, value: Any, minimum: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}{why}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- sampling
def batch_seed(seed: int, batch_index: int) -> int:
    """The seed of batch ``batch_index``: fixed by (seed, index), independent of rank and device."""
    return (int(seed) * 0x9E3779B1 + int(batch_index) * 0x85EBCA6B + 1) % (2**63 - 1)


def num_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def batch_size_of(b: int, n: int, batch_size: int) -> int:
    return min(batch_size, n - b * batch_size)


def sample_batches(
    model: nn.Module,
    process: GaussianDiffusion,
    sampler: Sampler,
    image_shape: Sequence[int],
    n: int,
    seed: int,
    batch_size: int,
    device: torch.device | str,
    batches: Sequence[int] | None = None,
    progress: bool = True,
    *,
    prediction_type: str,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(batch index, uint8 images (B, C, H, W) on the CPU)`` for the batches of n samples.

    ``batches`` picks a subset of the batch indices (e.g. one DDP rank's share); the images of
    a batch depend only on (seed, batch index, batch_size), not on which subset is drawn.
    """
    from tqdm.auto import tqdm

    total = num_batches(n, batch_size)
    indices = list(range(total)) if batches is None else list(batches)
    for b in tqdm(indices, desc="sampling", unit="batch", disable=not progress, dynamic_ncols=True):
        size = batch_size_of(b, n, batch_size)
        generator = torch.Generator().manual_seed(batch_seed(seed, b))
        x = generate(model, process, sampler, (size, *image_shape), generator, progress=False, device=device,
                     prediction_type=prediction_type)
        yield b, to_uint8(x).cpu()


def sampler_info(sampler: Sampler, num_timesteps: int) -> dict[str, Any]:
    """Name, number of network evaluations (steps) and eta of a sampler, for protocol keys."""
    name = next((k for k, cls in SAMPLERS.items() if type(sampler) is cls), None)
    if name is None:
        name = next((k for k, cls in SAMPLERS.items() if isinstance(sampler, cls)), type(sampler).__name__.lower())
    info = {"sampler": name, "num_steps": int(sampler.timesteps(num_timesteps).numel()), "eta": float(getattr(sampler, "eta", 0.0))}
    info["spacing"] = sampler.spacing
    return info


# --------------------------------------------------------------------------- scoring
class Scorer:
    """FID/KID of samples against the training split of a data set, under one protocol.

    The real reference is ``n_real = min(n, size of train)`` training images drawn with
    :data:`REAL_SEED`; its statistics are cached in ``cache_dir``. The data floor (held-out
    ``val`` images against the training reference, :func:`difflab.metrics.data_floor`) uses
    ``n_floor = min(n, size of train, size of val)`` on both sides. Both are computed once,
    on first use, so one Scorer serves several samplers.
    """

    def __init__(
        self,
        datamodule: Any,
        feature: str,
        metrics: Sequence[str],
        n: int,
        cache_dir: str | Path | None,
        device: torch.device | str = "cpu",
        batch_size: int = 256,
        floor: bool = True,
    ) -> None:
        from difflab.metrics import RealStatsCache, build_feature_extractor

        self.datamodule = datamodule
        self.metrics = check_metrics(metrics)
        self.feature = check_feature(feature)
        self.n = _check_int("n", n, 2, " to compute FID/KID (a covariance needs 2 samples)")
        self.batch_size = batch_size
        self.cache = RealStatsCache(cache_dir) if cache_dir else None
        if not hasattr(datamodule, "real_images"):
            raise ConfigError(f"data {type(datamodule).__name__} has no real_images(); FID/KID need an image data set")
        shape = tuple(getattr(datamodule, "image_shape", ()) or ())
        if len(shape) != 3:
            raise ConfigError(f"FID/KID need images (C, H, W); the data {getattr(datamodule, 'name', '?')!r} has shape {shape}")
        with _as_config_error("metrics"):
            self.extractor = build_feature_extractor(self.feature, device=device)
        self.with_floor = floor
        self._real = None
        self._floor: dict[str, Any] | None = None

    def _split_size(self, split: str) -> int | None:
        self.datamodule.setup()
        dataset = getattr(self.datamodule, f"{split}_set", None)
        return len(dataset) if dataset is not None else None

    @property
    def n_real(self) -> int:
        size = self._split_size("train")
        return min(self.n, size) if size else self.n

    @property
    def n_floor(self) -> int | None:
        sizes = [s for s in (self._split_size("train"), self._split_size("val")) if s]
        n = min([self.n, *sizes])
        return n if n >= 2 and len(sizes) == 2 else None

    @property
    def real(self):
        from difflab.metrics import real_stats

        if self._real is None:
            with _as_config_error("metrics"):
                self._real = real_stats(self.datamodule, "train", self.n_real, self.extractor, self.cache, seed=REAL_SEED, batch_size=self.batch_size)
        return self._real

    @property
    def floor(self) -> dict[str, Any] | None:
        from difflab.metrics import data_floor

        if self._floor is None and self.with_floor and self.n_floor is not None:
            with _as_config_error("metrics (data floor)"):
                self._floor = data_floor(
                    self.datamodule, self.n_floor, self.extractor, self.cache, seed=REAL_SEED, metrics=self.metrics,
                    kid_subset_size=min(KID_SUBSET_SIZE, self.n_floor),
                )
            self._floor["n"] = self.n_floor
        return self._floor

    def features(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """Feature rows (N, D) of uint8 images (N, C, H, W)."""
        with _as_config_error("metrics"):
            return self.extractor.extract(images, batch_size=self.batch_size)

    def score(self, fake: Any, info: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows ``{metric, key, value, std, floor, floor_n, n}`` for uint8 images or feature rows of the samples."""
        from difflab.metrics import protocol_key, score
        from difflab.metrics.evaluate import floor_key

        with _as_config_error("metrics"):
            subset = min(KID_SUBSET_SIZE, len(fake), self.real.n)
            result = score(
                fake, self.real, self.extractor, self.metrics, batch_size=self.batch_size, seed=REAL_SEED, kid_subset_size=subset
            )
        n_fake = int(result["protocol"]["n_fake"])
        floor = self.floor
        rows = []
        for metric in self.metrics:
            rows.append(
                {
                    "metric": metric,
                    "key": protocol_key(metric, self.feature, info["sampler"], info["num_steps"], info["eta"], n_fake),
                    "value": float(result[metric]),
                    "std": float(result[f"{metric}_std"]) if f"{metric}_std" in result else None,
                    "floor": float(floor[metric]) if floor else None,
                    "floor_n": floor["n"] if floor else None,
                    "floor_key": floor_key(metric, self.feature, floor["n"]) if floor else None,
                    "n": n_fake,
                    "n_real": self.real.n,
                    "protocol": result["protocol"],
                }
            )
        return rows


class _as_config_error:
    """Turn the metrics library's input errors (ValueError, missing weights) into one-line errors."""

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, tp, value, tb) -> bool:
        from difflab.metrics import FeatureWeightsNotFoundError

        if value is not None and isinstance(value, (ValueError, FeatureWeightsNotFoundError)) and not isinstance(value, DifflabError):
            raise ConfigError(f"{self.where}: {value}") from None
        return False


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table: metric, protocol key, value, floor."""
    floor_n = next((r["floor_n"] for r in rows if r.get("floor_n")), None)
    header = ["metric", "protocol key", "value", f"floor (real vs real, n={floor_n})" if floor_n else "floor"]
    body = [
        [r["metric"], r["key"], f"{r['value']:.6g}", "-" if r.get("floor") is None else f"{r['floor']:.6g}"] for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------- files
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


def _sampler_node(cfg: DictConfig, ckpt_sampler: dict[str, Any]) -> DictConfig:
    """The sampler config: a chosen group option (``sampler=ddim``) as is; else the checkpoint's,
    with any ``+sampler.KEY=VALUE`` overrides merged on top."""
    ckpt_sampler = {k: v for k, v in ckpt_sampler.items() if k != "prediction_type"}  # older checkpoints
    node = cfg.get("sampler")
    if node is None:
        return OmegaConf.create(ckpt_sampler)
    if "_target_" in node:
        return OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    return OmegaConf.merge(OmegaConf.create(ckpt_sampler), OmegaConf.to_container(node, resolve=True))


def _output_dir(cfg: DictConfig) -> Path:
    try:
        out = cfg.paths.output_dir
    except Exception:  # composed without Hydra's runtime (e.g. in tests) and not set
        raise ConfigError("paths.output_dir is not set; run through sample.py or set hydra.run.dir") from None
    return Path(str(out))


# --------------------------------------------------------------------------- run
def run(cfg: DictConfig) -> dict[str, Any]:
    """Sample ``n`` images from ``cfg.ckpt``; write samples.npz, grid.png (and metrics.json).

    Returns ``{"npz": path, "grid": path, "metrics": rows or [], "sampler": info}``.
    """
    from difflab.train import build_core
    from difflab.utils.checkpoint import load_model

    # 1. validate the cheap things first, before the checkpoint is read or anything sampled
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.get("ckpt"):
        raise ConfigError("ckpt is required: ckpt=<run dir>/checkpoints/last.ckpt (or an exported .safetensors file)")
    metrics = check_metrics(cfg.get("metrics"))
    n = _check_int("n", cfg.n, 2 if metrics else 1, " with metrics (a covariance needs 2 samples)" if metrics else "")
    batch_size = _check_int("batch_size", cfg.batch_size, 1)
    seed = _check_int("seed", cfg.seed, 0)
    grid_n = _check_int("grid_size", cfg.get("grid_size", 64), 0)
    feature = check_feature(str(cfg.feature)) if metrics else str(cfg.feature)
    device = resolve_device(cfg.get("device", "auto"))
    out_dir = _output_dir(cfg)

    # 2. the model, and the sampler (the checkpoint's unless one is chosen)
    model = load_model(str(cfg.ckpt), use_ema=bool(cfg.use_ema))
    if cfg.use_ema and not model.used_ema:
        log.warning("%s has no EMA weights; sampling with the raw weights", cfg.ckpt)
    with open_dict(cfg):  # conf/sampler/*.yaml read ${objective.target}: the checkpoint's objective
        cfg.objective = model.config["objective"]
    sampler_cfg = _sampler_node(cfg, model.config["sampler"])
    core = OmegaConf.create({"schedule": model.config["schedule"], "objective": model.config["objective"], "sampler": sampler_cfg})
    _, _, sampler = build_core(core)
    info = sampler_info(sampler, model.process.num_timesteps)
    scorer = None
    if metrics:
        import hydra

        datamodule = hydra.utils.instantiate(model.config["data"])
        cache_dir = cfg.get("cache_dir") or Path(str(cfg.paths.cache_dir)) / "real_stats"
        scorer = Scorer(datamodule, feature, metrics, n, cache_dir, device=device, batch_size=batch_size)

    # 3. sample
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    backbone = model.backbone.to(device)
    process = model.process.to(device)
    log.info(
        "sampling n=%d with %s (%d steps, eta=%g) from %s (%s weights) on %s",
        n, info["sampler"], info["num_steps"], info["eta"], cfg.ckpt, "EMA" if model.used_ema else "raw", device,
    )
    start = time.perf_counter()
    images = torch.cat(
        [x for _, x in sample_batches(backbone, process, sampler, model.image_shape, n, seed, batch_size, device, progress=bool(cfg.get("progress", True)), prediction_type=model.objective.target)]
    )
    seconds = time.perf_counter() - start
    if images.ndim != 4:
        raise ConfigError(f"sample.py writes images; this checkpoint's data has shape {tuple(model.image_shape)}")

    # 4. files
    protocol = {
        "checkpoint": str(cfg.ckpt),
        "global_step": model.global_step,
        "use_ema": model.used_ema,
        "n": n,
        "seed": seed,
        "batch_size": batch_size,
        "device": device.type,
        **info,
        "sampler_config": OmegaConf.to_container(sampler_cfg, resolve=True),
        "data": (model.config.get("data") or {}).get("_target_"),
        "image_shape": list(model.image_shape),
    }
    arrays = {
        "images": images.permute(0, 2, 3, 1).contiguous().numpy(),
        "sampler": np.array(info["sampler"]),
        "num_steps": np.array(info["num_steps"], dtype=np.int64),
        "eta": np.array(info["eta"], dtype=np.float64),
        "seed": np.array(seed, dtype=np.int64),
        "n": np.array(n, dtype=np.int64),
        "use_ema": np.array(model.used_ema),
        "checkpoint": np.array(str(cfg.ckpt)),
        "global_step": np.array(-1 if model.global_step is None else model.global_step, dtype=np.int64),
        "protocol": np.array(json.dumps(protocol, sort_keys=True)),
    }
    npz = write_npz(out_dir / NPZ_NAME, arrays)
    grid = save_png(make_grid_uint8(images[:grid_n]), out_dir / GRID_NAME) if grid_n else None
    print(f"{n} samples ({info['sampler']}, {info['num_steps']} steps, {seconds:.1f} s) -> {npz}")

    # 5. metrics
    rows: list[dict[str, Any]] = []
    if scorer is not None:
        rows = scorer.score(images, info)
        floor = scorer.floor
        report = {
            "protocol": protocol,
            "feature": feature,
            "metrics": {r["key"]: r["value"] for r in rows},
            "rows": [{k: v for k, v in r.items() if k != "protocol"} for r in rows],
            "score_protocol": rows[0]["protocol"],
            "floor": None if floor is None else {"n": floor["n"], **{m: floor[m] for m in metrics}, "protocol": floor["protocol"]},
        }
        (out_dir / METRICS_NAME).write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
        print(format_table(rows))
        print(f"metrics -> {out_dir / METRICS_NAME}")
    return {"npz": npz, "grid": grid, "metrics": rows, "sampler": info, "output_dir": out_dir}


def main(cfg: DictConfig) -> dict[str, Any]:
    """Entry point behind ``sample.py``: input errors exit with one line (code 2), not a traceback."""
    try:
        return run(cfg)
    except DifflabError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
