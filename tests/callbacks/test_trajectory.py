"""DenoisingTrajectory: frame choice, image layout, and the PNG a short run writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.callbacks.trajectory import DenoisingTrajectory, frame_indices, trajectory_image
from difflab.samplers import Trajectory
from tests.conftest import compose_train
from tests.utils.test_checkpoint import TINY_RUN


def test_frame_indices_spread_first_to_last():
    assert frame_indices(1000, 10)[0] == 0 and frame_indices(1000, 10)[-1] == 999
    assert len(frame_indices(1000, 10)) == 10
    assert frame_indices(3, 10) == [0, 1, 2]
    assert frame_indices(4, 3) == [0, 2, 3]


def test_image_layout_two_rows_per_seed():
    steps, b = 5, 3
    x_t = [torch.full((b, 1, 4, 4), -1.0 + 0.1 * i) for i in range(steps + 1)]
    pred = [torch.full((b, 1, 4, 4), 1.0) for _ in range(steps)]
    image = trajectory_image(Trajectory(torch.arange(steps).flip(0), x_t, pred), num_frames=3)
    assert image.shape == (2 * b * 6 + 2, 3 * 6 + 2, 1)  # 4 px tiles + 2 px padding
    assert image[2, 2, 0] == 0 and image[8, 2, 0] == 255  # row 1: x_T (black), row 2: x_0 (white)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="num_frames"):
        DenoisingTrajectory(num_frames=1)
    with pytest.raises(ValueError, match="num_seeds"):
        DenoisingTrajectory(num_seeds=0)


def test_short_run_writes_and_logs_the_trajectory(tmp_path, monkeypatch):
    from difflab.callbacks import base as module  # the periodic image callback logs
    from difflab.train import run

    logged = []
    monkeypatch.setattr(module, "log_image", lambda logger, key, image, step, caption=None: logged.append((key, image.shape)))
    overrides = [o for o in TINY_RUN if not o.startswith(("callbacks", "trainer.max_steps", "sampler.num_steps", "logger"))]
    overrides += [
        "trainer.max_steps=1",
        "sampler.num_steps=4",
        "logger=csv",
        "callbacks=[ema,trajectory]",
        "callbacks.trajectory.num_seeds=2",
        "callbacks.trajectory.num_frames=3",
    ]
    run(compose_train(overrides, output_dir=str(tmp_path)))
    image = np.asarray(Image.open(tmp_path / "trajectories" / "step_0000001.png"))
    assert image.shape == (2 * 2 * 30 + 2, 3 * 30 + 2)  # 2 seeds x 2 rows, 3 frames of 28 px
    assert logged == [("samples/trajectory", (122, 92, 1))]  # asked of every logger (the CSV one declines)
