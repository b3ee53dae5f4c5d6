"""FID / KID of the evaluation (EMA) weights during or at the end of training.

A thin user of :mod:`difflab.evaluation`: at each trigger (every N steps, every N epochs, at
the end of training) every rank draws its share of the n samples (sample i seeded by
(seed, i)), the torchmetrics states are synced across ranks, and every rank gets the same
scores, which go into ``trainer.callback_metrics`` (what sweepers read and ``ModelCheckpoint``
may monitor). Rank 0 logs them under protocol keys (``fid/digits/ddim50_eta1/n1000``), the
data floor once per run (``fid_floor/digits/n1000``), the protocol into the logger's config
(``fid_protocol``) and ``<run dir>/fid/step_XXXXXXX.json``.

A class-conditional model (``conditioning=class``) is scored over a balanced label set
(sample i of class i mod K) with the run's guidance (``conditioning.guidance_scale``); the
key then carries the guidance (``fid/digits/ddim50_eta1_cfg2_nfe100_uniform/n1000``) and, on
digits, the class accuracy of the samples is logged too (``acc/digits/...``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from difflab.callbacks.base import eval_condition, evaluation_backbone, image_shape_of
from difflab.evaluation import Evaluator, check_metrics, evaluate
from difflab.evaluation.points import PointEvaluator
from difflab.metrics import build_feature_extractor
from difflab.samplers import Sampler
from difflab.utils.logging import get_logger

log = get_logger(__name__)

__all__ = ["FID"]

#: Real statistics are cached in this sub-folder of ``cache_dir``.
STATS_SUBDIR = "real_stats"


def _check_count(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class FID(Callback):
    """FID and KID of samples from the evaluation (EMA) weights, logged under protocol keys.

    Args:
        every_n_steps: score every this many optimizer steps (0: never by steps).
        every_n_epochs: score at the end of every this many training epochs (0: never by epochs).
        at_end: score when training ends.
        n: number of generated samples, over all ranks together; also the n of the real
            reference statistics and of the data floor.
        feature: the feature network (``digits`` | ``inception`` | ``pixels``).
        weights_path: a local weights file of the feature network (default: the shipped
            digits weights / the torch hub cache for inception; nothing is downloaded then).
        metrics: any of ``fid``, ``kid``.
        sampler: a sampler to use instead of the run's.
        seed: sample i is drawn from a generator seeded by (seed, i); every trigger draws the
            same initial noise, so scores across steps share their noise.
        batch_size: samples generated per batch on each rank.
        real_seed: chooses the real reference images.
        cache_dir: real statistics are cached under ``<cache_dir>/real_stats`` (None: not cached).
        log_floor: log the data floor once per run.
        dirname: sub-folder of the run dir for the per-trigger JSON files.
    """

    def __init__(
        self,
        every_n_steps: int = 0,
        every_n_epochs: int = 0,
        at_end: bool = True,
        n: int = 1000,
        feature: str = "digits",
        weights_path: str | None = None,
        metrics: Sequence[str] = ("fid", "kid"),
        sampler: Sampler | None = None,
        seed: int = 0,
        batch_size: int = 250,
        real_seed: int = 0,
        cache_dir: str | None = None,
        log_floor: bool = True,
        dirname: str = "fid",
    ) -> None:
        self.every_n_steps = _check_count("callbacks.fid.every_n_steps", every_n_steps, 0)
        self.every_n_epochs = _check_count("callbacks.fid.every_n_epochs", every_n_epochs, 0)
        self.n = _check_count("callbacks.fid.n", n, 2)
        self.batch_size = _check_count("callbacks.fid.batch_size", batch_size, 1)
        self.metrics = check_metrics(metrics, "callbacks.fid.metrics")
        if not self.metrics:
            raise ValueError("callbacks.fid.metrics is empty; accepted: fid, kid")
        if sampler is not None and not isinstance(sampler, Sampler):
            raise ValueError(f"callbacks.fid.sampler must be a difflab sampler config, got {type(sampler).__name__}")
        self.at_end, self.feature, self.sampler, self.seed = bool(at_end), str(feature), sampler, int(seed)
        self.real_seed, self.log_floor, self.dirname = int(real_seed), bool(log_floor), dirname
        self.cache_dir = str(Path(cache_dir) / STATS_SUBDIR) if cache_dir else None
        # the feature network now: missing weights stop the run before anything is logged
        self.extractor = build_feature_extractor(self.feature, weights_path=weights_path)
        self.evaluator: Evaluator | PointEvaluator | None = None
        self._floor_logged = False
        self._last_step = -1
        self.last_result: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        if len(tuple(getattr(pl_module, "image_shape", None) or ())) == 1 and hasattr(dm, "real_points"):
            # point data (toy2d): sliced Wasserstein and MMD on the same path, so toy sweeps compare
            if self.evaluator is None:
                self.evaluator = PointEvaluator(dm, n=self.n, real_seed=self.real_seed, floor=self.log_floor)
            return
        image_shape_of(pl_module, "callbacks.fid")
        if dm is None or not hasattr(dm, "real_images") or not hasattr(dm, "name"):
            raise ValueError("callbacks.fid needs a data module with `name` and `real_images(split, n, seed)`")
        if self.sampler is not None:
            self.sampler.steps(pl_module.process.num_timesteps)  # a bad num_steps fails now
        if self.evaluator is None:
            self.evaluator = Evaluator(dm, self.feature, self.metrics, self.n, self.cache_dir,
                                       extractor=self.extractor, real_seed=self.real_seed, floor=self.log_floor)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.extractor.to(pl_module.device)
        if isinstance(self.evaluator, Evaluator):
            self.evaluator.extractor.to(pl_module.device)

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

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any] | None:
        """Sample, score (a collective: call it on every rank together), log on rank 0."""
        step = trainer.global_step
        if step == self._last_step:
            return self.last_result
        self._last_step = step
        sampler = self.sampler or pl_module.sampler
        # a balanced label set with the run's guidance; SR: low-res val images
        labels, guidance, scheme = eval_condition(pl_module, self.n, self.evaluator.data)
        with evaluation_backbone(pl_module) as model:
            result = evaluate(model, pl_module.process, sampler, pl_module.objective.target, self.evaluator,
                              self.seed, self.batch_size, pl_module.device,
                              progress=f"FID n={self.n}" if trainer.is_global_zero else False,
                              labels=labels, guidance=guidance, label_scheme=scheme,
                              shape=pl_module.image_shape, decode=getattr(pl_module, "decode", None))
        values = dict(result.scores)
        if not self._floor_logged:
            values.update(result.floor)
        for key, value in {**result.scores, **result.floor}.items():  # every rank: sweepers read these
            trainer.callback_metrics[key] = torch.tensor(value)
        self.last_result = {"step": step, "scores": result.scores, "floor": result.floor, "protocol": result.protocol}
        if trainer.is_global_zero:
            self._log(trainer, step, values, result.protocol)
        self._floor_logged = True
        return self.last_result

    def _log(self, trainer: L.Trainer, step: int, values: dict[str, float], protocol: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)
            if not self._floor_logged:
                logger.log_hyperparams({"fid_protocol": protocol})
            if isinstance(logger, WandbLogger):
                logger.experiment.summary["fid_protocol"] = protocol
        root = Path(trainer.default_root_dir) / self.dirname
        root.mkdir(parents=True, exist_ok=True)
        record = {**self.last_result, "logged": values}
        (root / f"step_{step:07d}.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        log.info("step %d: %s", step, ", ".join(f"{k} = {v:.4g}" for k, v in values.items()))
