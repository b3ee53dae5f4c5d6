"""Denoising trajectories: how x_t and the model's x_0 estimate evolve along the sampling chain.

For a few fixed seeds the evaluation (EMA) weights sample with the module's sampler and the
trajectory is kept (``generate(..., return_trajectory=True)``). One image shows, per seed, two
rows across ``num_frames`` evenly spaced steps: the sampler's input x_t (top) and the
predicted x_0 at that step (bottom). The last column is the last step, whose x_0 estimate is
the final sample. Written to ``<run dir>/trajectories/step_XXXXXXX.png`` and logged to every
logger that takes images; under DDP only rank 0 samples and logs. A latent model's frames are
decoded by its first stage.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from difflab.callbacks.base import PeriodicImageCallback, eval_condition, evaluation_backbone, image_shape_of
from difflab.samplers import Trajectory, generate
from difflab.samplers.guidance import Guidance
from difflab.utils.images import make_grid_uint8, to_uint8


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


class DenoisingTrajectory(PeriodicImageCallback):
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

    config_key = "trajectory"
    log_key = "samples/trajectory"
    what = "denoising trajectory"

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
        super().__init__(every_n_steps, at_end, seed, dirname, sampler, output_dir)
        if num_seeds < 1:
            raise ValueError(f"callbacks.trajectory.num_seeds must be >= 1, got {num_seeds}")
        if num_frames < 2:
            raise ValueError(f"callbacks.trajectory.num_frames must be >= 2 (first and last step), got {num_frames}")
        self.num_seeds = int(num_seeds)
        self.num_frames = int(num_frames)

    @torch.no_grad()
    def trajectory(self, pl_module: L.LightningModule) -> Trajectory:
        """Sample ``num_seeds`` images from ``seed`` and return their trajectory."""
        shape = image_shape_of(pl_module, "DenoisingTrajectory")
        # seed i draws class i mod K under the run's guidance; SR: upscales val image i
        y, g, _ = eval_condition(pl_module, self.num_seeds)
        guided = {}
        if y is not None:
            guided = dict(y=y)
        if isinstance(g, Guidance):
            guided.update(guidance_scale=g.scale, guidance_rescale=g.rescale, guidance_interval=g.interval)
        with evaluation_backbone(pl_module) as model:
            _, trajectory = generate(
                model,
                pl_module.process,
                self.sampler or pl_module.sampler,
                (self.num_seeds, *shape),
                torch.Generator().manual_seed(self.seed),
                return_trajectory=True,
                progress=getattr(getattr(pl_module, "_trainer", None), "is_global_zero", True),
                prediction_type=pl_module.objective.target,
                device=pl_module.device,
                **guided,
            )
        decode = getattr(pl_module, "decode", None)
        if decode is not None:  # a latent model: show the decoded latents (arXiv:2112.10752)
            trajectory = Trajectory(trajectory.timesteps, [decode(x) for x in trajectory.x_t],
                                    [decode(x) for x in trajectory.pred_x0], trajectory.nfe)
        return trajectory

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[np.ndarray, str]:
        image = trajectory_image(self.trajectory(pl_module), self.num_frames)
        return image, f"step {trainer.global_step}: per seed x_t (top) and predicted x_0 (bottom)"
