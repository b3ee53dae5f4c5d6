"""Denoising trajectories: how x_t and the model's x_0 estimate evolve along the sampling chain.

For a few fixed seeds the evaluation (EMA) weights sample with the module's sampler and the
trajectory is kept (``generate(..., return_trajectory=True)``). One image shows, per seed, two
rows across ``num_frames`` evenly spaced steps: the sampler's input x_t (top) and the
predicted x_0 at that step (bottom). The last column is the last step, whose x_0 estimate is
the final sample. Written to ``<run dir>/trajectories/step_XXXXXXX.png`` and logged to every
logger that takes images; under DDP only rank 0 samples and logs.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from difflab.samplers import Trajectory, generate
from difflab.utils.images import make_grid_uint8, save_png, to_uint8
from difflab.utils.logging import get_logger
from difflab.utils.loggers import log_image

log = get_logger(__name__)


def frame_indices(num_steps: int, num_frames: int) -> list[int]:
    """``num_frames`` step indices evenly spread over ``[0, num_steps - 1]``, first and last included
    (all steps when there are fewer than ``num_frames``)."""
    if num_steps <= num_frames:
        return list(range(num_steps))
    return sorted({int(round(i)) for i in np.linspace(0, num_steps - 1, num_frames)})


def trajectory_image(trajectory: Trajectory, num_frames: int, padding: int = 2) -> np.ndarray:
    """One H x W x C uint8 image: per sample two rows (x_t, predicted x_0), one column per frame."""
    steps = len(trajectory.pred_x0)
    if steps == 0:
        raise ValueError("the trajectory holds no steps; sample with return_trajectory=True")
    frames = frame_indices(steps, num_frames)
    x_t = torch.stack([to_uint8(trajectory.x_t[i]).cpu() for i in frames], dim=1)  # (B, F, C, H, W)
    x0 = torch.stack([to_uint8(trajectory.pred_x0[i]).cpu() for i in frames], dim=1)
    rows = torch.stack([x_t, x0], dim=1)  # (B, 2, F, C, H, W): row pairs per sample
    tiles = rows.reshape(-1, *rows.shape[3:])
    return make_grid_uint8(tiles, nrow=len(frames), padding=padding)


class DenoisingTrajectory(Callback):
    """Trajectory images from fixed seeds with the evaluation weights.

    Args:
        every_n_steps: draw every this many optimizer steps (0: only at the end).
        at_end: also draw when training ends.
        num_seeds: samples shown (two rows each); the first ``num_seeds`` of one batch drawn
            from ``seed``, so the same seed shows the same x_T in every run.
        num_frames: columns: steps evenly chosen along the chain, first and last included.
        seed: the seed of the initial noise.
        dirname: sub-folder of the run dir for the PNG files.
        sampler: an optional sampler to use instead of the module's.
        output_dir: the run dir (default: ``trainer.default_root_dir``).
    """

    def __init__(
        self,
        every_n_steps: int = 0,
        at_end: bool = True,
        num_seeds: int = 4,
        num_frames: int = 10,
        seed: int = 0,
        dirname: str = "trajectories",
        sampler=None,
        output_dir: str | None = None,
    ) -> None:
        if every_n_steps < 0:
            raise ValueError(f"callbacks.trajectory.every_n_steps must be >= 0, got {every_n_steps}")
        if num_seeds < 1:
            raise ValueError(f"callbacks.trajectory.num_seeds must be >= 1, got {num_seeds}")
        if num_frames < 2:
            raise ValueError(f"callbacks.trajectory.num_frames must be >= 2 (first and last step), got {num_frames}")
        self.every_n_steps = int(every_n_steps)
        self.at_end = bool(at_end)
        self.num_seeds = int(num_seeds)
        self.num_frames = int(num_frames)
        self.seed = int(seed)
        self.dirname = dirname
        self.sampler = sampler
        self.output_dir = output_dir
        self._last_step = -1
        self.last_path: Path | None = None

    def _out_dir(self, trainer: L.Trainer) -> Path:
        root = Path(self.output_dir) if self.output_dir else Path(trainer.default_root_dir)
        return root / self.dirname

    @torch.no_grad()
    def trajectory(self, pl_module: L.LightningModule) -> Trajectory:
        """Sample ``num_seeds`` images from ``seed`` and return their trajectory."""
        shape = pl_module.image_shape
        if shape is None or len(shape) != 3:
            raise ValueError("DenoisingTrajectory needs an image data set (image_shape (C, H, W))")
        model = pl_module.eval_backbone()
        was_training = model.training
        model.eval()
        try:
            _, trajectory = generate(
                model,
                pl_module.process,
                self.sampler or pl_module.sampler,
                (self.num_seeds, *shape),
                torch.Generator().manual_seed(self.seed),
                return_trajectory=True,
                progress=False,
                device=pl_module.device,
            )
        finally:
            model.train(was_training)
        return trajectory

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step == self._last_step or not trainer.is_global_zero:
            return
        self._last_step = step
        image = trajectory_image(self.trajectory(pl_module), self.num_frames)
        path = save_png(image, self._out_dir(trainer) / f"step_{step:07d}.png")
        self.last_path = path
        caption = f"step {step}: per seed x_t (top) and predicted x_0 (bottom)"
        for logger in trainer.loggers:
            log_image(logger, "samples/trajectory", image, step=step, caption=caption)
        log.info("denoising trajectory written to %s", path)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self._run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_end:
            self._run(trainer, pl_module)
