"""FID / KID during training: n samples with the EMA weights, split across DDP ranks.

At each trigger (every N steps, every N epochs, at the end of training) every rank draws
its share of the n samples (:func:`split_counts`: n // world_size each, the first
n % world_size ranks one more) from a generator seeded by (seed, rank), quantizes them with
:func:`difflab.utils.images.to_uint8` (the bytes a saved PNG holds) and takes their features.
The features are gathered (padded to the largest share, cut back to each rank's count),
rank 0 scores them against the cached statistics of the real data
(:func:`difflab.metrics.real_stats`) and the scores are broadcast back, so that every rank
holds the same ``trainer.callback_metrics`` (what sweepers read and ``ModelCheckpoint`` may
monitor). Every rank takes part in the same collectives in the same order; only rank 0
logs and writes files.

Logged keys name the protocol (:func:`difflab.metrics.protocol_key`), e.g.
``fid/digits/ddim50/n2000`` and ``kid/digits/ddim50/n2000``; once per run the data floor
(real held-out images against the real reference, same n) is logged as
``fid_floor/digits/n2000``. The protocol itself (feature network and weights hash, sampler,
steps, eta, n, world size and the samples each rank made) goes into the logger's config
(``fid_protocol``), the W&B run summary, and ``<run dir>/fid/step_XXXXXXX.json`` together
with the scores.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from difflab.callbacks.base import evaluation_backbone, image_shape_of
from difflab.metrics import (
    METRICS,
    FeatureExtractor,
    RealStats,
    RealStatsCache,
    build_feature_extractor,
    data_floor,
    floor_key,
    protocol_key,
    real_stats,
    score,
)
from difflab.samplers import SAMPLERS, Sampler, generate
from difflab.utils.images import to_uint8
from difflab.utils.logging import get_logger

log = get_logger(__name__)

__all__ = ["FID", "rank_seed", "sampler_name", "split_counts"]

#: Real statistics are cached in this sub-folder of ``cache_dir``.
STATS_SUBDIR = "real_stats"


def split_counts(n: int, world_size: int) -> list[int]:
    """How many of ``n`` samples each of ``world_size`` ranks makes: equal shares, the
    first ``n % world_size`` ranks one more. Deterministic; the counts sum to n."""
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n}")
    if int(world_size) != world_size or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size}")
    base, rem = divmod(int(n), int(world_size))
    return [base + (1 if r < rem else 0) for r in range(int(world_size))]


def rank_seed(seed: int, rank: int) -> int:
    """A 63-bit seed for (seed, rank): distinct ranks never draw the same noise.

    sha256-based, so it is the same in every process (Python's ``hash`` of a str is not).
    """
    digest = hashlib.sha256(f"difflab.fid:{int(seed)}:{int(rank)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def sampler_name(sampler: Sampler) -> str:
    """The config name of a sampler (``ddim``, ``ddpm``), else its class name without "Sampler"."""
    for name, cls in SAMPLERS.items():
        if type(sampler) is cls:
            return name
    cls_name = type(sampler).__name__
    return (cls_name[: -len("Sampler")] if cls_name.endswith("Sampler") else cls_name).lower()


class FID(Callback):
    """FID and KID of samples from the evaluation (EMA) weights, logged under protocol keys.

    Args:
        every_n_steps: score every this many optimizer steps (0: never by steps).
        every_n_epochs: score at the end of every this many training epochs (0: never by epochs).
        at_end: score when training ends.
        n: number of generated samples, over all ranks together; also the n of the real
            reference statistics, so both sides have the same bias.
        feature: the feature network (``digits`` | ``inception``).
        weights_path: weights of the feature network (default: the shipped / cached ones).
        metrics: any of ``fid``, ``kid``.
        sampler: a sampler (or a config node with ``_target_``) to use instead of the module's.
        seed: rank r draws its samples from a generator seeded by (seed, r); the same seed gives
            the same initial noise at every trigger, so scores across steps share their noise.
        batch_size: samples generated (and features taken) per batch on each rank.
        real_split: the split of the real reference statistics.
        real_seed: chooses the subset of n real images (when the split holds more than n).
        cache_dir: real statistics are cached under ``<cache_dir>/real_stats`` (None: not cached).
        log_floor: log the data floor once per run: real ``floor_split`` images against the real
            reference, both at n (or at the size of ``floor_split`` if smaller, with a warning).
        floor_split: the held-out split of the data floor.
        kid_subset_size: KID subset size (clipped to n).
        kid_num_subsets: KID subsets.
        dirname: sub-folder of the run dir for the per-trigger JSON files.
    """

    def __init__(
        self,
        every_n_steps: int = 0,
        every_n_epochs: int = 0,
        at_end: bool = True,
        n: int = 2000,
        feature: str = "digits",
        weights_path: str | None = None,
        metrics: Sequence[str] = ("fid", "kid"),
        sampler: Any = None,
        seed: int = 0,
        batch_size: int = 250,
        real_split: str = "train",
        real_seed: int = 0,
        cache_dir: str | None = None,
        log_floor: bool = True,
        floor_split: str = "val",
        kid_subset_size: int = 1000,
        kid_num_subsets: int = 100,
        dirname: str = "fid",
    ) -> None:
        for name, value in (("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if int(value) != value or value < 0:
                raise ValueError(f"callbacks.fid.{name} must be an integer >= 0, got {value}")
        if int(n) != n or n < 2:
            raise ValueError(f"callbacks.fid.n must be an integer >= 2 (a covariance needs 2 samples), got {n}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"callbacks.fid.batch_size must be an integer >= 1, got {batch_size}")
        metrics = (metrics,) if isinstance(metrics, str) else tuple(str(m) for m in metrics)
        bad = [m for m in metrics if m not in METRICS]
        if bad or not metrics:
            raise ValueError(f"callbacks.fid.metrics: unknown {bad or list(metrics)}; accepted: {', '.join(METRICS)}")
        if kid_subset_size < 2 or kid_num_subsets < 1:
            raise ValueError("callbacks.fid.kid_subset_size must be >= 2 and kid_num_subsets >= 1")
        self.every_n_steps = int(every_n_steps)
        self.every_n_epochs = int(every_n_epochs)
        self.at_end = bool(at_end)
        self.n = int(n)
        self.feature = str(feature)
        self.weights_path = weights_path
        self.metrics = metrics
        self.sampler = sampler
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.real_split = str(real_split)
        self.real_seed = int(real_seed)
        self.cache_dir = cache_dir
        self.log_floor = bool(log_floor)
        self.floor_split = str(floor_split)
        self.kid_subset_size = int(kid_subset_size)
        self.kid_num_subsets = int(kid_num_subsets)
        self.dirname = dirname

        self.extractor: FeatureExtractor | None = None
        self.cache: RealStatsCache | None = RealStatsCache(Path(cache_dir) / STATS_SUBDIR) if cache_dir else None
        self._real: RealStats | None = None
        self._floor: dict[str, float] | None = None
        self._protocol_logged = False
        self._last_step = -1
        self.last_result: dict[str, Any] | None = None

    # ------------------------------------------------------------------ set-up
    def _sampler(self, pl_module: L.LightningModule) -> Sampler:
        sampler = self.sampler
        if sampler is None:
            return pl_module.sampler
        if not isinstance(sampler, Sampler):  # a config node (not instantiated by Hydra)
            import hydra

            sampler = self.sampler = hydra.utils.instantiate(sampler)
        if not isinstance(sampler, Sampler):
            raise ValueError(f"callbacks.fid.sampler must be a difflab sampler, got {type(sampler).__name__}")
        return sampler

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        image_shape_of(pl_module, "callbacks.fid")
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "real_images") or not hasattr(dm, "name"):
            raise ValueError(
                "callbacks.fid needs a data module with `name` and `real_images(split, n, seed)` "
                "(every difflab data module has them)"
            )
        sampler = self._sampler(pl_module)
        sampler.timesteps(pl_module.process.num_timesteps)  # a bad num_steps fails now, not at the first score
        if self.extractor is None:
            self.extractor = build_feature_extractor(self.feature, weights_path=self.weights_path)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.extractor.to(pl_module.device)

    # ------------------------------------------------------------------ triggers
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self.evaluate(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_end:
            self.evaluate(trainer, pl_module)

    # ------------------------------------------------------------------ the work
    def protocol_keys(self, pl_module: L.LightningModule) -> dict[str, str]:
        """metric -> log key, e.g. ``{"fid": "fid/digits/ddim50/n2000"}``."""
        sampler = self._sampler(pl_module)
        steps = sampler.num_steps if sampler.num_steps is not None else pl_module.process.num_timesteps
        eta = float(getattr(sampler, "eta", 0.0))
        return {m: protocol_key(m, self.feature, sampler_name(sampler), steps, eta, self.n) for m in self.metrics}

    def _local_features(self, pl_module: L.LightningModule, count: int, rank: int) -> np.ndarray:
        """Features (count, D) of ``count`` samples drawn from the (seed, rank) generator."""
        generator = torch.Generator().manual_seed(rank_seed(self.seed, rank))
        sampler = self._sampler(pl_module)
        shape = tuple(pl_module.image_shape)
        chunks = []
        with evaluation_backbone(pl_module) as model, torch.inference_mode():
            for start in range(0, count, self.batch_size):
                b = min(self.batch_size, count - start)
                x = generate(model, pl_module.process, sampler, (b, *shape), generator, progress=False,
                             prediction_type=pl_module.objective.target,
                             device=pl_module.device)
                chunks.append(self.extractor.extract(to_uint8(x), batch_size=self.batch_size))
        if not chunks:
            return np.empty((0, self.extractor.feature_dim), dtype=np.float64)
        return np.concatenate(chunks, axis=0)

    def _gather(self, trainer: L.Trainer, feats: np.ndarray, device: torch.device) -> tuple[np.ndarray, list[int]]:
        """All ranks' features in rank order, and how many each rank contributed (a collective)."""
        world = trainer.world_size
        if world == 1:
            return feats, [int(feats.shape[0])]
        width = math.ceil(self.n / world)
        padded = torch.zeros(width, feats.shape[1], dtype=torch.float64, device=device)
        padded[: feats.shape[0]] = torch.from_numpy(feats).to(device)
        count = torch.tensor([feats.shape[0]], dtype=torch.long, device=device)
        all_feats = trainer.strategy.all_gather(padded).reshape(world, width, feats.shape[1]).cpu()
        all_counts = trainer.strategy.all_gather(count).reshape(world).cpu().tolist()
        out = torch.cat([all_feats[r, : all_counts[r]] for r in range(world)]).numpy()
        return out, [int(c) for c in all_counts]

    def _score_rank_zero(self, trainer: L.Trainer, pl_module: L.LightningModule, feats: np.ndarray,
                         counts: list[int]) -> dict[str, Any]:
        dm = trainer.datamodule
        if self._real is None:
            self._real = real_stats(dm, self.real_split, self.n, self.extractor, self.cache, self.real_seed,
                                    batch_size=self.batch_size)
        kid_size = min(self.kid_subset_size, feats.shape[0], self._real.n)
        result = score(feats, self._real, self.extractor, self.metrics, batch_size=self.batch_size,
                       kid_num_subsets=self.kid_num_subsets, kid_subset_size=kid_size, seed=self.seed)
        keys = self.protocol_keys(pl_module)
        scores = {keys[m]: float(result[m]) for m in self.metrics}
        sampler = self._sampler(pl_module)
        protocol = {
            **result["protocol"],
            "sampler": sampler_name(sampler),
            "num_steps": sampler.num_steps if sampler.num_steps is not None else pl_module.process.num_timesteps,
            "eta": float(getattr(sampler, "eta", 0.0)),
            "n": self.n,
            "world_size": trainer.world_size,
            "per_rank_counts": counts,
            "seed": self.seed,
        }
        out: dict[str, Any] = {"scores": scores, "protocol": protocol, "floor": {}}
        if "kid" in self.metrics:
            out["kid_std"] = float(result["kid_std"])
        if self.log_floor and self._floor is None:
            out["floor"], protocol["floor"] = self._data_floor(dm)
        return out

    def _data_floor(self, dm: Any) -> tuple[dict[str, float], dict[str, Any]]:
        n = self.n
        try:
            held_out = int(dm.real_images(self.floor_split, None, self.real_seed).shape[0])
        except (TypeError, ValueError):
            held_out = n
        if held_out < n:
            log.warning(
                "FID data floor: %s/%s holds %d images, fewer than n=%d; the floor is computed at n=%d "
                "(logged under that n), so read it as a lower bound of a different protocol",
                dm.name, self.floor_split, held_out, n, held_out,
            )
            n = held_out
        floor = data_floor(dm, n, self.extractor, self.cache, seed=self.real_seed, metrics=self.metrics,
                           reference_split=self.real_split, heldout_split=self.floor_split,
                           batch_size=self.batch_size, kid_num_subsets=self.kid_num_subsets,
                           kid_subset_size=min(self.kid_subset_size, n))
        values = {floor_key(m, self.feature, n): float(floor[m]) for m in self.metrics}
        return values, {"split": self.floor_split, "reference_split": self.real_split, "n": n}

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any] | None:
        """Sample, gather, score on rank 0, broadcast, log. Call it on every rank together."""
        step = trainer.global_step
        if step == self._last_step:
            return self.last_result
        self._last_step = step
        rank, world = trainer.global_rank, trainer.world_size
        count = split_counts(self.n, world)[rank]
        feats = self._local_features(pl_module, count, rank)
        all_feats, counts = self._gather(trainer, feats, pl_module.device)

        payload: dict[str, Any] | None = None
        if trainer.is_global_zero:
            try:
                payload = self._score_rank_zero(trainer, pl_module, all_feats, counts)
            except Exception as e:  # tell the other ranks, who wait at the broadcast below
                payload = {"error": f"{type(e).__name__}: {e}"}
                if world == 1:
                    raise
        if world > 1:
            payload = trainer.strategy.broadcast(payload, src=0)
        if "error" in payload:
            raise RuntimeError(f"FID scoring failed on rank 0: {payload['error']}")

        if payload["floor"]:
            self._floor = payload["floor"]
        values = {**payload["scores"], **payload["floor"]}
        # every rank: the sweepers (and ModelCheckpoint) read callback_metrics
        for key, value in values.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        self.last_result = {"step": step, **payload}
        if trainer.is_global_zero:
            self._log(trainer, step, values, payload)
        return self.last_result

    def _log(self, trainer: L.Trainer, step: int, values: dict[str, float], payload: dict[str, Any]) -> None:
        protocol = payload["protocol"]
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)
            if not self._protocol_logged:
                logger.log_hyperparams({"fid_protocol": protocol})
            if isinstance(logger, WandbLogger):
                logger.experiment.summary["fid_protocol"] = protocol
        self._protocol_logged = True
        root = Path(trainer.default_root_dir) / self.dirname
        root.mkdir(parents=True, exist_ok=True)
        record = {"step": step, **payload}
        (root / f"step_{step:07d}.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        shown = ", ".join(f"{k} = {v:.4g}" for k, v in values.items())
        log.info("step %d: %s (samples per rank %s)", step, shown, protocol["per_rank_counts"])
