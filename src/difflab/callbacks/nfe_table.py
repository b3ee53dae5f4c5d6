"""FID/KID against the number of network evaluations (NFE), once, when training ends.

For each sampler entry (e.g. DDPM over all T steps, DDIM with 10/20/50/100 steps) the final
EMA weights draw ``n`` samples, which are scored with :mod:`difflab.metrics` against the
training split of the run's data (real statistics cached; the data floor is reported
alongside). Results go to ``<run dir>/nfe_table.csv``, a plot ``<run dir>/nfe_fid.png`` and a
W&B table (``eval/nfe_table``); each score is also logged under its protocol key
(``fid/digits/ddim50/n1000``).

Every entry is drawn and scored on :mod:`difflab.evaluation`, the path of the FID callback and
sample.py: the same checkpoint, sampler and seed give the same number in all three, and the
table is the same for any number of DDP ranks (rank 0 writes and logs it).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from difflab.callbacks.base import eval_condition, evaluation_backbone
from difflab.errors import ConfigError
from difflab.evaluation import Evaluator, check_metrics, evaluate
from difflab.metrics import available_feature_extractors
from difflab.samplers import SAMPLERS, Sampler
from difflab.utils.logging import get_logger
from difflab.utils.loggers import log_image, log_table

log = get_logger(__name__)

DEFAULT_SAMPLERS: tuple[dict[str, Any], ...] = (
    {"name": "ddpm", "num_steps": None},
    {"name": "ddim", "num_steps": 10},
    {"name": "ddim", "num_steps": 20},
    {"name": "ddim", "num_steps": 50},
    {"name": "ddim", "num_steps": 100},
)

COLUMNS = [
    "sampler", "key_part", "num_steps", "nfe", "eta", "spacing", "n", "feature",
    "fid", "kid", "kid_std", "fid_key", "kid_key", "floor_fid", "floor_kid", "floor_n",
    "seconds", "global_step",
]


def _plain(entry: Any) -> dict[str, Any]:
    if isinstance(entry, DictConfig):
        return OmegaConf.to_container(entry, resolve=True)  # type: ignore[return-value]
    if isinstance(entry, Mapping):
        return dict(entry)
    raise ValueError(f"callbacks.nfe_table.samplers: each entry is a mapping {{name, num_steps}}, got {entry!r}")


class NFETable(Callback):
    """Score the final EMA weights with several samplers and step counts.

    Args:
        samplers: entries ``{name: <a sampler of the sampler group>, num_steps: int | null,
            **sampler options}``; ``num_steps: null`` means all T steps.
        n: samples per entry (also the real reference size, capped by the training split).
        feature: feature network, ``digits``, ``inception`` or ``pixels``.
        metrics: any of ``fid``, ``kid``.
        seed: sample i of every entry is drawn from a generator seeded by (seed, i).
        batch_size: samples per batch, per rank.
        enabled: false turns the callback off (handy from the command line).
        cache_dir: where real statistics are cached (None: not cached).
        output_dir: the run dir (default: ``trainer.default_root_dir``).
        floor: also compute the data floor (held-out real images vs the reference).
    """

    def __init__(
        self,
        samplers: Sequence[Mapping[str, Any]] = DEFAULT_SAMPLERS,
        n: int = 1000,
        feature: str = "digits",
        metrics: Sequence[str] = ("fid", "kid"),
        seed: int = 0,
        batch_size: int = 250,
        enabled: bool = True,
        cache_dir: str | None = None,
        output_dir: str | None = None,
        floor: bool = True,
    ) -> None:
        self.entries = [_plain(e) for e in samplers]
        if not self.entries:
            raise ValueError("callbacks.nfe_table.samplers is empty; give at least one {name, num_steps}")
        for entry in self.entries:
            if entry.get("name") not in SAMPLERS:
                raise ValueError(f"callbacks.nfe_table.samplers: unknown sampler {entry.get('name')!r}; accepted: {', '.join(SAMPLERS)}")
            if "prediction_type" in entry:
                raise ValueError("callbacks.nfe_table.samplers: leave prediction_type out; it follows the trained objective")
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"callbacks.nfe_table.n must be an integer >= 2 (a covariance needs 2 samples), got {n!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"callbacks.nfe_table.batch_size must be an integer >= 1, got {batch_size!r}")
        self.metrics = check_metrics(metrics, "callbacks.nfe_table.metrics")
        if not self.metrics:
            raise ValueError("callbacks.nfe_table.metrics is empty; accepted: fid, kid")
        if feature not in available_feature_extractors():
            raise ValueError(f"callbacks.nfe_table.feature={feature!r}; accepted: {', '.join(available_feature_extractors())}")
        self.n, self.feature, self.seed, self.batch_size = int(n), feature, int(seed), int(batch_size)
        self.enabled, self.cache_dir, self.output_dir, self.floor = bool(enabled), cache_dir, output_dir, bool(floor)
        self.rows: list[dict[str, Any]] = []
        self.floor_values: dict[str, float] = {}
        self.csv_path: Path | None = None
        self.plot_path: Path | None = None

    def build_samplers(self, num_timesteps: int) -> list[Sampler]:
        """One sampler per entry, validated against T (a bad entry raises ConfigError)."""
        samplers = []
        for i, entry in enumerate(self.entries):
            options = {k: v for k, v in entry.items() if k != "name"}
            try:
                sampler = SAMPLERS[entry["name"]](**options)
                sampler.steps(num_timesteps)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"callbacks.nfe_table.samplers[{i}] {entry}: {e} (schedule.num_timesteps={num_timesteps})") from None
            samplers.append(sampler)
        return samplers

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.enabled and stage == "fit":  # bad entries stop the run before the first step
            self.build_samplers(pl_module.process.num_timesteps)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            self.evaluate(trainer, pl_module)

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[dict[str, Any]]:
        """Score every entry on the evaluation path (a collective: every rank calls it)."""
        shape = pl_module.image_shape
        datamodule = getattr(trainer, "datamodule", None)
        if shape is None or len(shape) != 3 or datamodule is None or not hasattr(datamodule, "real_images"):
            log.warning("NFETable: needs an image data module with real_images(); skipped")
            return []
        T = pl_module.process.num_timesteps
        evaluator = Evaluator(datamodule, self.feature, self.metrics, self.n, self.cache_dir, device=pl_module.device,
                              floor=self.floor)
        step = trainer.global_step
        self.rows = []
        labels, guidance, scheme = eval_condition(pl_module, self.n, datamodule)  # as the FID callback
        decode = getattr(pl_module, "decode", None)  # a latent model: score decoded samples
        for sampler in self.build_samplers(T):
            if decode is not None:  # latents: x_0 clipped to the range of the training latents
                from difflab.latent import clip_for_latents

                clip_for_latents(sampler, pl_module.clip_bound)
            start = time.perf_counter()
            with evaluation_backbone(pl_module) as model:
                result = evaluate(model, pl_module.process, sampler, pl_module.objective.target, evaluator, self.seed,
                                  self.batch_size, pl_module.device,
                                  progress=f"NFE table {sampler.key_part(T)}" if trainer.is_global_zero else False,
                                  labels=labels, guidance=guidance, label_scheme=scheme,
                                  shape=shape, decode=decode)
            self.floor_values = result.floor
            row: dict[str, Any] = {
                "sampler": sampler.name, "key_part": sampler.key_part(T),
                "num_steps": sampler.steps(T), "nfe": result.protocol["nfe"], "eta": float(getattr(sampler, "eta", 0.0)),
                "spacing": getattr(sampler, "spacing", None), "n": self.n, "feature": self.feature,
                "seconds": round(time.perf_counter() - start, 3), "global_step": step,
                "kid_std": result.values.get("kid_std"),
            }
            for metric in ("fid", "kid"):
                key = next((k for k in result.scores if k.startswith(f"{metric}/")), None)
                fkey = next((k for k in result.floor if k.startswith(f"{metric}_floor/")), None)
                row[metric], row[f"{metric}_key"] = (result.scores[key], key) if key else (None, None)
                row[f"floor_{metric}"] = result.floor[fkey] if fkey else None
                if fkey:
                    row["floor_n"] = int(fkey.rsplit("/n", 1)[1])
            self.rows.append(row)
            log.info("NFETable: %s", ", ".join(f"{k}={v:.4g}" for k, v in result.scores.items()))
        if trainer.is_global_zero:
            self._write(trainer, step)
        return self.rows

    def _write(self, trainer: L.Trainer, step: int) -> None:
        out = Path(self.output_dir) if self.output_dir else Path(trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.csv_path = out / "nfe_table.csv"
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
        metric = "fid" if "fid" in self.metrics else self.metrics[0]
        self.plot_path = plot_nfe(self.rows, out / f"nfe_{metric}.png", metric)
        for logger in trainer.loggers:
            log_table(logger, "eval/nfe_table", COLUMNS, [[row.get(k) for k in COLUMNS] for row in self.rows])
            scalars = {row[f"{m}_key"]: row[m] for row in self.rows for m in self.metrics if row.get(m) is not None}
            scalars.update(self.floor_values)
            logger.log_metrics(scalars, step=step)
            log_image(logger, f"eval/nfe_{metric}", _read_png(self.plot_path), step=step, caption=f"{metric} against NFE")
        log.info("NFE table written to %s and %s", self.csv_path, self.plot_path)


def curve_label(row: dict[str, Any]) -> str:
    """One curve per sampler variant: its key part without the step count or NFE
    (``ddim50_eta1`` -> ``ddim_eta1``, ``dpmpp2m_nfe10`` -> ``dpmpp2m``)."""
    import re

    key = str(row.get("key_part") or row["sampler"])
    return re.sub(r"_nfe\d+$", "", re.sub(r"^(ddim|ddpm)\d+", r"\1", key))


def plot_nfe(rows: list[dict[str, Any]], path: str | Path, metric: str = "fid") -> Path:
    """A PNG of ``metric`` against NFE (log scale), one line per sampler, the data floor dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label in sorted({curve_label(r) for r in rows}):
        pts = sorted((r["nfe"], r[metric]) for r in rows if curve_label(r) == label and r.get(metric) is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    floors = [r[f"floor_{metric}"] for r in rows if r.get(f"floor_{metric}") is not None]
    if floors:
        ax.axhline(floors[0], color="grey", linestyle="--", label=f"data floor (n={rows[0].get('floor_n')})")
    ax.set_xscale("log")
    nfes = sorted({r["nfe"] for r in rows})
    if nfes:  # label the NFE values themselves, not powers of ten
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xticks(nfes)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("NFE (network evaluations per sample)")
    n = rows[0]["n"] if rows else "?"
    feature = rows[0]["feature"] if rows else "?"
    ax.set_ylabel(f"{metric.upper()} ({feature}, n={n})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))
