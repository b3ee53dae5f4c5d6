"""Sample grids: a fixed set of seeds drawn with the EMA weights every N steps and at the end.

Each grid is written to ``<run dir>/samples/step_XXXXXXX.png`` and logged to every logger
that takes images (W&B, TensorBoard). Under DDP only rank 0 samples and logs, once.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from difflab.samplers import generate
from difflab.utils.images import make_grid_uint8, save_png, to_uint8
from difflab.utils.logging import get_logger
from difflab.utils.loggers import log_image

log = get_logger(__name__)


class SampleGrid(Callback):
    """Draw ``num_samples`` images from fixed seeds with the evaluation weights.

    Args:
        every_n_steps: sample every this many optimizer steps (0: only at the end).
        num_samples: images in the grid (64 gives an 8 x 8 grid).
        seed: the seed of the initial noise; the same seed gives the same x_T in every run,
            so grids are comparable across steps and across runs.
        dirname: sub-folder of the run dir for the PNG files.
        at_end: also sample when training ends.
        sampler: an optional sampler to use instead of the module's.
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        num_samples: int = 64,
        seed: int = 0,
        dirname: str = "samples",
        at_end: bool = True,
        sampler=None,
        output_dir: str | None = None,
    ) -> None:
        if every_n_steps < 0:
            raise ValueError(f"callbacks.sample_grid.every_n_steps must be >= 0, got {every_n_steps}")
        if num_samples < 1:
            raise ValueError(f"callbacks.sample_grid.num_samples must be >= 1, got {num_samples}")
        self.every_n_steps = int(every_n_steps)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.dirname = dirname
        self.at_end = at_end
        self.sampler = sampler
        self.output_dir = output_dir
        self._last_sampled_step = -1
        self.last_path: Path | None = None

    def _out_dir(self, trainer: L.Trainer) -> Path:
        root = Path(self.output_dir) if self.output_dir else Path(trainer.default_root_dir)
        return root / self.dirname

    @torch.no_grad()
    def sample(self, pl_module: L.LightningModule) -> torch.Tensor:
        """uint8 images (N, C, H, W) from the fixed seeds."""
        shape = pl_module.image_shape
        if shape is None or len(shape) != 3:
            raise ValueError("SampleGrid needs an image data set (image_shape (C, H, W))")
        generator = torch.Generator().manual_seed(self.seed)
        model = pl_module.eval_backbone()
        was_training = model.training
        model.eval()
        try:
            x = generate(
                model,
                pl_module.process,
                self.sampler or pl_module.sampler,
                (self.num_samples, *shape),
                generator,
                progress=False,
                device=pl_module.device,
            )
        finally:
            model.train(was_training)
        return to_uint8(x).cpu()

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step == self._last_sampled_step or not trainer.is_global_zero:
            return
        self._last_sampled_step = step
        images = self.sample(pl_module)
        grid = make_grid_uint8(images)
        path = save_png(grid, self._out_dir(trainer) / f"step_{step:07d}.png")
        self.last_path = path
        for logger in trainer.loggers:
            log_image(logger, "samples/grid", grid, step=step, caption=f"step {step}")
        log.info("sample grid written to %s", path)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self._run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_end:
            self._run(trainer, pl_module)
