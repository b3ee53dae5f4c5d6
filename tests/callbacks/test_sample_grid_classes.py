"""Sample grids of a class-conditional model: one class per row, guided, named in the caption."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import torch

from difflab.backbones import UNet
from difflab.callbacks.sample_grid import SampleGrid
from difflab.conditioning import ClassConditioning
from difflab.diffusion.objectives import DiffusionObjective
from difflab.diffusion.process import GaussianDiffusion
from difflab.module import DiffusionModule
from difflab.samplers import DDIMSampler


def _module(conditioning):
    torch.manual_seed(0)
    backbone = UNet(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                    num_classes=None if conditioning is None else conditioning.num_classes)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights, so that labels change the samples
        for p in backbone.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return DiffusionModule(backbone=backbone, process=GaussianDiffusion.from_schedule("cosine", 50),
                           objective=DiffusionObjective("eps"), sampler=DDIMSampler(num_steps=3),
                           optimizer=partial(torch.optim.AdamW, lr=1e-3), image_shape=(1, 8, 8),
                           conditioning=conditioning)


def test_one_class_per_row_with_guidance_in_the_caption():
    module = _module(ClassConditioning(3, guidance_scale=2.0))
    cb = SampleGrid(num_samples=7)
    labels, cols = cb.class_rows(module)
    assert cols == 2 and labels.tolist() == [0, 0, 1, 1, 2, 2]
    image, caption = cb.render(SimpleNamespace(global_step=5), module)
    assert image.shape[:2] == (3 * 8 + 4 * 2, 2 * 8 + 3 * 2)  # 3 rows of 2, 2 px padding
    assert "one class per row" in caption and "w=2" in caption
    # each row is its class: the same seeds drawn with other labels give other rows
    x = cb._draw(module, 6, (1, 8, 8), labels)
    other = cb._draw(module, 6, (1, 8, 8), labels.flip(0))
    assert not torch.equal(x[:2], other[:2])


def test_unconditional_grid_is_unchanged():
    module = _module(None)
    cb = SampleGrid(num_samples=4)
    assert cb.class_rows(module) is None
    image, caption = cb.render(SimpleNamespace(global_step=1), module)
    assert caption == "step 1" and image.shape[:2] == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)


def test_trajectories_of_a_conditional_model_are_guided():
    from difflab.callbacks.trajectory import DenoisingTrajectory

    trajectory = DenoisingTrajectory(num_seeds=4).trajectory(_module(ClassConditioning(3, guidance_scale=2.0)))
    assert trajectory.nfe == 2 * 3  # 3 DDIM steps, each a guided evaluation
