"""The shared parts of the sampling callbacks: eval mode around sampling, and the periodic
image callback's schedule (every N steps, at the end, once per step, rank 0 only)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from torch import nn

from difflab.callbacks.base import PeriodicImageCallback, evaluation_backbone, image_shape_of


class _Module:
    def __init__(self) -> None:
        self.net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
        self.image_shape = (1, 4, 4)

    def eval_backbone(self) -> nn.Module:
        return self.net


@pytest.mark.parametrize("start_training", [True, False])
def test_evaluation_backbone_is_in_eval_mode_and_restores_the_mode(start_training):
    pl = _Module()
    pl.net.train(start_training)
    with evaluation_backbone(pl) as model:
        assert model is pl.net and not model.training and not model[1].training
    assert pl.net.training is start_training and pl.net[1].training is start_training


def test_evaluation_backbone_restores_the_mode_when_sampling_fails():
    pl = _Module()
    pl.net.train()
    with pytest.raises(RuntimeError, match="boom"):
        with evaluation_backbone(pl):
            raise RuntimeError("boom")
    assert pl.net.training


def test_image_shape_of_names_the_callback_for_non_image_data():
    assert image_shape_of(_Module(), "X") == (1, 4, 4)
    pl = _Module()
    pl.image_shape = (2,)
    with pytest.raises(ValueError, match="Grid needs an image data set"):
        image_shape_of(pl, "Grid")


class _Counter(PeriodicImageCallback):
    config_key = "counter"
    log_key = "samples/counter"

    def __init__(self, **kw) -> None:
        super().__init__(seed=0, dirname="counter", **kw)
        self.rendered: list[int] = []

    def render(self, trainer, pl_module):
        self.rendered.append(trainer.global_step)
        return np.full((4, 6, 3), trainer.global_step, dtype=np.uint8), f"step {trainer.global_step}"


def _trainer(tmp_path, step, rank0=True):
    return SimpleNamespace(global_step=step, is_global_zero=rank0, default_root_dir=str(tmp_path), loggers=[])


def test_periodic_schedule_every_n_at_end_once_per_step(tmp_path):
    cb = _Counter(every_n_steps=3, at_end=True)
    for step in range(1, 8):
        cb.on_train_batch_end(_trainer(tmp_path, step), None, None, None, 0)
    cb.on_train_end(_trainer(tmp_path, 7), None)
    assert cb.rendered == [3, 6, 7]
    cb.on_train_end(_trainer(tmp_path, 7), None)  # the same step twice: drawn once
    assert cb.rendered == [3, 6, 7]
    png = tmp_path / "counter" / "step_0000006.png"
    assert cb.last_path == tmp_path / "counter" / "step_0000007.png"
    img = np.asarray(Image.open(png))
    assert img.shape[:2] == (4, 6) and int(img.max()) == 6


def test_periodic_schedule_at_end_only_and_never(tmp_path):
    only_end = _Counter(every_n_steps=0, at_end=True)
    never = _Counter(every_n_steps=0, at_end=False)
    for cb in (only_end, never):
        for step in range(1, 5):
            cb.on_train_batch_end(_trainer(tmp_path, step), None, None, None, 0)
        cb.on_train_end(_trainer(tmp_path, 4), None)
    assert only_end.rendered == [4] and never.rendered == []


def test_periodic_only_rank_zero_renders(tmp_path):
    cb = _Counter(every_n_steps=1, at_end=True)
    cb.on_train_batch_end(_trainer(tmp_path, 1, rank0=False), None, None, None, 0)
    cb.on_train_end(_trainer(tmp_path, 1, rank0=False), None)
    assert cb.rendered == [] and not (tmp_path / "counter").exists()


def test_negative_period_names_the_config_key():
    with pytest.raises(ValueError, match=r"callbacks\.counter\.every_n_steps must be >= 0"):
        _Counter(every_n_steps=-1, at_end=True)


def test_sample_grid_and_trajectory_share_the_base():
    from difflab.callbacks.sample_grid import SampleGrid
    from difflab.callbacks.trajectory import DenoisingTrajectory

    assert issubclass(SampleGrid, PeriodicImageCallback) and issubclass(DenoisingTrajectory, PeriodicImageCallback)
    with pytest.raises(ValueError, match=r"callbacks\.sample_grid\.every_n_steps"):
        SampleGrid(every_n_steps=-1)
    with pytest.raises(ValueError, match=r"callbacks\.trajectory\.every_n_steps"):
        DenoisingTrajectory(every_n_steps=-1)
