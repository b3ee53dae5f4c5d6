"""Sample grids: a fixed set of seeds drawn with the EMA weights every N steps and at the end.

Each grid is written to ``<run dir>/samples/step_XXXXXXX.png`` and logged to every logger
that takes images (W&B, TensorBoard). Under DDP only rank 0 samples and logs, once.
2-D points (data=toy2d) get a scatter plot of ``num_points`` samples over held-out data
points in place of the grid, under the same file names and logger key.

A class-conditional model (``conditioning=class``) draws one class per row, with the
guidance of ``conditioning.guidance_scale`` (the caption names the rows and w).
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from difflab.callbacks.base import PeriodicImageCallback, evaluation_backbone, image_shape_of
from difflab.evaluation import draw
from difflab.utils.images import make_grid_uint8, scatter_plot


class SampleGrid(PeriodicImageCallback):
    """Draw ``num_samples`` images from fixed seeds with the evaluation weights.

    Args:
        every_n_steps: sample every this many optimizer steps (0: only at the end).
        num_samples: images in the grid (64 gives an 8 x 8 grid).
        seed: the seed of the initial noise; the same seed gives the same x_T in every run,
            so grids are comparable across steps and across runs.
        dirname: sub-folder of the run dir for the PNG files.
        at_end: also sample when training ends.
        sampler: an optional sampler to use instead of the module's.
        output_dir: the run dir (default: ``trainer.default_root_dir``).
        num_points: for 2-D point data: the samples in the scatter plot (and at most as many
            validation points drawn under them).
    """

    config_key = "sample_grid"
    log_key = "samples/grid"
    what = "sample grid"

    def __init__(
        self,
        every_n_steps: int = 500,
        num_samples: int = 64,
        seed: int = 0,
        dirname: str = "samples",
        at_end: bool = True,
        sampler=None,
        output_dir: str | None = None,
        num_points: int = 1000,
    ) -> None:
        super().__init__(every_n_steps, at_end, seed, dirname, sampler, output_dir)
        if num_samples < 1:
            raise ValueError(f"callbacks.sample_grid.num_samples must be >= 1, got {num_samples}")
        if num_points < 1:
            raise ValueError(f"callbacks.sample_grid.num_points must be >= 1, got {num_points}")
        self.num_samples = int(num_samples)
        self.num_points = int(num_points)

    @torch.no_grad()
    def sample(self, pl_module: L.LightningModule) -> torch.Tensor:
        """uint8 images (N, C, H, W) from the fixed seeds."""
        return self._draw(pl_module, self.num_samples, image_shape_of(pl_module, "SampleGrid"))

    @torch.no_grad()
    def sample_points(self, pl_module: L.LightningModule) -> torch.Tensor:
        """``num_points`` samples (N, D) of point data, from the fixed seed, on the CPU."""
        return self._draw(pl_module, self.num_points, tuple(pl_module.image_shape))

    def class_rows(self, pl_module: L.LightningModule) -> tuple[torch.Tensor, int] | None:
        """(labels, columns) of a conditional model's grid: class k fills row k, with
        ``num_samples // num_classes`` columns (at least 1); None for unconditional models."""
        conditioning = getattr(pl_module, "conditioning", None)
        if conditioning is None:
            return None
        k = int(conditioning.num_classes)
        cols = max(1, self.num_samples // k)
        return torch.arange(k).repeat_interleave(cols), cols

    def _draw(self, pl_module: L.LightningModule, n: int, shape: tuple[int, ...],
              labels: torch.Tensor | None = None) -> torch.Tensor:
        """The first n samples of the evaluation protocol at ``seed`` (what sample.py draws at
        that seed): uint8 images, float points; a bar of denoising steps on rank 0.
        ``labels``: class labels (drawn under the run's guidance) or, for super-resolution,
        the upsampled low-res conditions."""
        trainer = getattr(pl_module, "_trainer", None)
        show = "sample grid" if trainer is None or trainer.is_global_zero else False
        conditioning = getattr(pl_module, "conditioning", None)
        guidance = None if labels is None or conditioning is None else conditioning.guidance
        with evaluation_backbone(pl_module) as model:
            ((_, x),) = draw(model, pl_module.process, self.sampler or pl_module.sampler, pl_module.objective.target,
                             shape, n, self.seed, n, pl_module.device, batches=[0], progress=show,
                             labels=labels, guidance=guidance, decode=getattr(pl_module, "decode", None))
        return x

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[np.ndarray, str]:
        shape = getattr(pl_module, "image_shape", None)
        if shape is not None and tuple(shape) == (2,):
            return self.render_points(trainer, pl_module)
        if getattr(pl_module, "low_res", None) is not None:
            return self.render_super_resolution(trainer, pl_module)
        rows = self.class_rows(pl_module)
        if rows is not None:
            labels, cols = rows
            x = self._draw(pl_module, len(labels), image_shape_of(pl_module, "SampleGrid"), labels)
            g = pl_module.conditioning.guidance
            caption = (f"step {trainer.global_step}: one class per row, classes 0-{int(labels[-1])} top to bottom, "
                       f"guidance w={g.scale:g}")
            return make_grid_uint8(x, nrow=cols), caption
        return make_grid_uint8(self.sample(pl_module)), f"step {trainer.global_step}"

    def render_super_resolution(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[np.ndarray, str]:
        """A super-resolution model's grid: (bicubic input, SR3 result, original) of the first
        val images, side by side, four triples per row."""
        from difflab.utils.images import to_uint8

        k = max(1, min(self.num_samples // 3, 16))
        y, _, _ = pl_module.eval_condition(k, getattr(trainer, "datamodule", None))
        x = self._draw(pl_module, k, image_shape_of(pl_module, "SampleGrid"), y)
        originals = pl_module.low_res_originals(k, getattr(trainer, "datamodule", None))
        tiles = torch.stack([to_uint8(y).cpu(), x.cpu(), originals.cpu()], dim=1).flatten(0, 1)
        caption = (f"step {trainer.global_step}: super-resolution x{pl_module.low_res.factor}, in threes: "
                   "low-res input (upsampled), result, original")
        return make_grid_uint8(tiles, nrow=3 * min(4, k)), caption

    def render_points(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[np.ndarray, str]:
        """A scatter plot of the samples over validation points of the data module (when it has them)."""
        real = None
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "real_points"):
            real = dm.real_points("val", n=min(self.num_points, int(getattr(dm, "n_val", self.num_points))), seed=self.seed)
        caption = f"step {trainer.global_step}"
        return scatter_plot(self.sample_points(pl_module), real, title=caption), caption
