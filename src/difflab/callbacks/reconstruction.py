"""What an autoencoder run (``model=autoencoder``) logs besides its losses and PSNR.

* :class:`Reconstructions`: a grid of fixed validation images (odd rows) over their
  reconstructions (even rows), every N steps and at the end, to ``<run dir>/reconstructions/``
  and every logger that takes images.
* :class:`ReconstructionFID`: rFID, the FID of the reconstructions of n validation images
  against the training reference, on the one evaluation path
  (:class:`difflab.evaluation.Evaluator`: the same features, cached real statistics and
  floor as the FID of samples), logged as ``rfid/<feature>/recon/n<n>`` next to the floor
  ``fid_floor/<feature>/n<n>`` (real held-out images against the same reference): an
  autoencoder whose rFID is near the floor loses nothing a feature network sees.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from difflab.callbacks.base import PeriodicImageCallback
from difflab.evaluation import Evaluator, protocol_key
from difflab.metrics import build_feature_extractor
from difflab.utils.images import from_uint8, make_grid_uint8, to_uint8
from difflab.utils.logging import get_logger

log = get_logger(__name__)

__all__ = ["ReconstructionFID", "Reconstructions", "reconstruct_uint8"]


def reconstruct_uint8(pl_module: L.LightningModule, images: torch.Tensor, batch_size: int = 250) -> Iterator[torch.Tensor]:
    """Reconstructions of uint8 images (N, C, H, W), quantised to uint8, batch by batch."""
    for chunk in images.split(batch_size):
        yield to_uint8(pl_module.reconstruct(from_uint8(chunk).to(pl_module.device))).cpu()


class Reconstructions(PeriodicImageCallback):
    """Validation images over their reconstructions.

    Args:
        every_n_steps: render every this many optimizer steps (0: only at the end).
        num_images: images shown (each with its reconstruction below it).
        nrow: images per row.
        seed: chooses the validation images (the same in every run).
        dirname: sub-folder of the run dir for the PNG files.
        at_end: also render when training ends.
    """

    config_key = "reconstructions"
    log_key = "reconstructions/grid"
    what = "reconstruction grid"

    def __init__(self, every_n_steps: int = 500, num_images: int = 32, nrow: int = 8, seed: int = 0,
                 dirname: str = "reconstructions", at_end: bool = True, output_dir: str | None = None) -> None:
        super().__init__(every_n_steps, at_end, seed, dirname, None, output_dir)
        if num_images < 1 or nrow < 1:
            raise ValueError(f"callbacks.reconstructions: num_images and nrow must be >= 1, got {num_images}, {nrow}")
        self.num_images, self.nrow = int(num_images), int(nrow)

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[np.ndarray, str]:
        dm = trainer.datamodule
        images = dm.real_images("val", min(self.num_images, len(dm.val_set)), self.seed)
        recon = torch.cat(list(reconstruct_uint8(pl_module, images)))
        rows = []
        for start in range(0, len(images), self.nrow):  # a row of originals, then their reconstructions
            rows += [images[start : start + self.nrow], recon[start : start + self.nrow]]
        tiles = torch.cat([torch.cat([r, torch.zeros(self.nrow - len(r), *r.shape[1:], dtype=r.dtype)]) for r in rows])
        return make_grid_uint8(tiles, nrow=self.nrow), f"step {trainer.global_step}: originals over reconstructions"


class ReconstructionFID(Callback):
    """rFID of the reconstructions of n validation images (at the end, or every N steps).

    Args:
        every_n_steps: score every this many optimizer steps (0: only at the end).
        at_end: score when training ends.
        n: validation images reconstructed (at most the val split); also the n of the real
            reference and of the floor.
        feature: the feature network (``digits`` | ``inception`` | ``pixels``).
        weights_path: a local weights file of the feature network.
        batch_size: images per reconstruction batch.
        real_seed: chooses the real reference images.
        cache_dir: real statistics are cached under ``<cache_dir>/real_stats`` (None: not cached).
    """

    def __init__(self, every_n_steps: int = 0, at_end: bool = True, n: int = 500, feature: str = "digits",
                 weights_path: str | None = None, batch_size: int = 250, real_seed: int = 0,
                 cache_dir: str | None = None) -> None:
        if isinstance(n, bool) or int(n) != n or n < 2:
            raise ValueError(f"callbacks.rfid.n must be an integer >= 2, got {n!r}")
        if every_n_steps < 0:
            raise ValueError(f"callbacks.rfid.every_n_steps must be >= 0, got {every_n_steps}")
        self.every_n_steps, self.at_end, self.n = int(every_n_steps), bool(at_end), int(n)
        self.feature, self.batch_size, self.real_seed = str(feature), int(batch_size), int(real_seed)
        self.cache_dir = str(Path(cache_dir) / "real_stats") if cache_dir else None
        self.extractor = build_feature_extractor(self.feature, weights_path=weights_path)  # missing weights: now
        self.evaluator: Evaluator | None = None
        self._last_step = -1
        self.last_result: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        if not hasattr(pl_module, "reconstruct"):
            raise ValueError("callbacks.rfid scores an autoencoder's reconstructions; use it with model=autoencoder")
        if self.evaluator is None:
            dm.setup("fit")
            n = min(self.n, len(dm.real_images("val")))
            self.evaluator = Evaluator(dm, self.feature, ("fid",), n, self.cache_dir, extractor=self.extractor,
                                       real_seed=self.real_seed)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.extractor.to(pl_module.device)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_end:
            self.evaluate(trainer, pl_module)

    def key(self) -> str:
        assert self.evaluator is not None
        return protocol_key("rfid", self.feature, "recon", self.evaluator.n)

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any] | None:
        """Reconstruct n val images and score them against the training reference (a collective)."""
        if trainer.global_step == self._last_step or self.evaluator is None:
            return self.last_result
        self._last_step = trainer.global_step
        # the held-out images of the evaluator's floor (the first n of its seeded permutation of
        # the val split): an autoencoder that reconstructs exactly scores the floor
        pool = trainer.datamodule.real_images("val")
        images = pool[torch.from_numpy(np.sort(np.random.default_rng(self.real_seed).permutation(len(pool))[: self.evaluator.n]))]
        rank, world = _rank_world()
        mine = images[rank::world]  # each rank reconstructs its share; the metric syncs the states
        value = self.evaluator.score(reconstruct_uint8(pl_module, mine, self.batch_size), self.evaluator.n)["fid"]
        values = {self.key(): value, **self.evaluator.floor()}
        for k, v in values.items():
            trainer.callback_metrics[k] = torch.tensor(v)
        self.last_result = {"step": trainer.global_step, "values": values}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(values, step=trainer.global_step)
            log.info("step %d: %s", trainer.global_step, ", ".join(f"{k} = {v:.4g}" for k, v in values.items()))
        return self.last_result


def _rank_world() -> Sequence[int]:
    from difflab.evaluation import dist_info

    return dist_info()
