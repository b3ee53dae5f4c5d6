"""conditioning=class: labels reach the network, label dropout, the null label, label checks,
and the config path (num_classes from the data set, stored in the checkpoint's config)."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch import nn

from difflab.backbones import UNet
from difflab.backbones.diffusers_unet import DiffusersUNet
from difflab.conditioning import (
    ClassConditioning,
    balanced_labels,
    check_labels,
    class_grid,
    sampling_guidance,
    sampling_labels,
)
from difflab.diffusion.objectives import DiffusionObjective
from difflab.diffusion.process import GaussianDiffusion
from difflab.module import DiffusionModule
from difflab.samplers import DDIMSampler
from tests.conftest import compose_train

K = 3


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere (a fresh UNet outputs zeros: its last conv starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def assert_labels_reach_the_network(backbone: nn.Module, shape=(1, 8, 8)) -> None:
    """Each class (and the null label, = y None) gives another output for the same x and t."""
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 60])
    with torch.no_grad():
        outs = [backbone(x, t, torch.full((2,), k)) for k in range(backbone.num_classes + 1)]
        null = backbone(x, t)
    torch.testing.assert_close(outs[-1], null, rtol=0, atol=0)
    for i in range(len(outs)):
        for j in range(i):
            assert (outs[i] - outs[j]).abs().max() > 1e-4, f"labels {i} and {j} give the same output"


class LabelBlind(nn.Module):
    """A backbone that takes y and ignores it: the check above must catch it."""

    def __init__(self) -> None:
        super().__init__()
        self.num_classes = K
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t, y=None):
        return self.conv(x)


BACKBONES = {
    "unet": lambda: UNet(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_classes=K),
    "diffusers_unet": lambda: DiffusersUNet(sample_size=8, in_channels=1, block_out_channels=(8, 16),
                                            down_block_types=("DownBlock2D", "DownBlock2D"),
                                            up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1,
                                            norm_num_groups=4, num_classes=K),
}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_labels_reach_the_network_and_the_null_row_is_learned(name):
    backbone = _randomize(BACKBONES[name]())
    assert_labels_reach_the_network(backbone)
    emb = backbone.class_emb if name == "unet" else backbone.unet.class_embedding
    assert emb.weight.shape[0] == K + 1 and emb.weight.requires_grad  # the null row is a learned embedding


def test_a_backbone_that_ignores_labels_fails_the_check():
    with pytest.raises(AssertionError, match="same output"):
        assert_labels_reach_the_network(_randomize(LabelBlind()))


# ----------------------------------------------------------------------------- label dropout
def test_p_uncond_drops_the_right_share_reproducibly():
    cond = ClassConditioning(10, p_uncond=0.2)
    y = torch.arange(20000) % 10
    dropped = cond.drop_labels(y, torch.Generator().manual_seed(0))
    share = float((dropped == 10).float().mean())
    assert abs(share - 0.2) < 4 * (0.2 * 0.8 / 20000) ** 0.5  # 4 standard deviations of a binomial share
    kept = dropped != 10
    assert torch.equal(dropped[kept], y[kept])  # the others keep their label
    assert torch.equal(dropped, cond.drop_labels(y, torch.Generator().manual_seed(0)))
    assert not torch.equal(dropped, cond.drop_labels(y, torch.Generator().manual_seed(1)))
    assert torch.equal(ClassConditioning(10, p_uncond=0.0).drop_labels(y, torch.Generator()), y)
    assert bool((ClassConditioning(10, p_uncond=1.0).drop_labels(y, torch.Generator()) == 10).all())


class Spy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.num_classes = 10
        self.inner = UNet(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_classes=10)
        self.seen: list[torch.Tensor | None] = []

    def forward(self, x, t, y=None):
        self.seen.append(None if y is None else y.clone())
        return self.inner(x, t, y)


def test_training_step_feeds_labels_with_dropout_to_the_backbone():
    torch.manual_seed(0)
    cond = ClassConditioning(10, p_uncond=0.5)
    module = DiffusionModule(backbone=Spy(), process=GaussianDiffusion.from_schedule("cosine", num_timesteps=50),
                             objective=DiffusionObjective("eps"), sampler=DDIMSampler(num_steps=5),
                             optimizer=partial(torch.optim.AdamW, lr=1e-3), image_shape=(1, 8, 8), conditioning=cond)
    y = torch.arange(64) % 10
    module.training_step((torch.zeros(64, 1, 8, 8), y), 0)
    seen = module.backbone.seen[-1]
    assert seen is not None and seen.shape == y.shape
    null = seen == 10
    assert 10 < int(null.sum()) < 54 and torch.equal(seen[~null], y[~null])
    with pytest.raises(Exception, match="needs a label"):
        module.training_step((torch.zeros(4, 1, 8, 8), torch.full((4,), -1)), 0)


# ----------------------------------------------------------------------------- labels for sampling
def test_sampling_labels_schemes_and_one_line_errors():
    assert torch.equal(balanced_labels(7, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0]))
    y, scheme = sampling_labels(None, None, 5, 10)
    assert scheme == "uniform" and torch.equal(y, torch.arange(5))
    y, scheme = sampling_labels(None, 3, 4, 10)
    assert scheme == "class3" and y.tolist() == [3, 3, 3, 3]
    y, scheme = sampling_labels([3, 3, 7], None, 3, 10)
    assert scheme == "list" and y.tolist() == [3, 3, 7]
    assert sampling_labels(None, None, 5, None) == (None, None)
    for args, match in [
        (([3, 3], None, 3, 10), "2 labels for n=3"),
        (([1, 12, 2], None, 3, 10), "label 12 is out of range"),
        ((None, 10, 3, 10), "class=10 is out of range"),
        (("uniform", None, 3, None), "unconditional"),
        ((None, 3, 3, None), "unconditional"),
        (("balanced", None, 3, 10), "accepted are uniform"),
        (([1], 1, 1, 10), "not both"),
    ]:
        with pytest.raises(ValueError, match=match) as e:
            sampling_labels(*args)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unconditional"):
        check_labels([0], 1, None)


def test_sampling_guidance_defaults_to_the_trained_one():
    g = sampling_guidance(None, None, None, 10, {"guidance_scale": 2.0, "guidance_rescale": 0.0, "guidance_interval": None})
    assert g.scale == 2.0 and g.rescale == 0.0 and g.interval is None
    assert sampling_guidance(3, 0.7, [0.3, 5], 10, {}).interval == (0.3, 5.0)
    assert sampling_guidance(None, None, None, None) is None
    with pytest.raises(ValueError, match="unconditional"):
        sampling_guidance(2.0, None, None, None)


def test_class_grid_puts_one_class_per_row():
    labels = balanced_labels(40, 4)
    samples = labels.reshape(-1, 1, 1, 1).to(torch.uint8).expand(40, 1, 2, 2)
    tiles, cols = class_grid(samples, labels, 4, 12)
    assert cols == 3 and tiles[:, 0, 0, 0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert class_grid(samples[:8], torch.full((8,), 2), 4, 12) is None  # one class only: a plain grid


# ----------------------------------------------------------------------------- the config path
def test_conditioning_class_takes_num_classes_from_the_data_and_stores_it(tmp_path):
    from difflab.build import build_conditioning, build_module, settle_num_classes
    from difflab.errors import ConfigError
    from difflab.utils.hydra import to_plain_dict

    cfg = compose_train(["conditioning=class", "conditioning.p_uncond=0.25", "backbone.base_channels=8",
                         "backbone.channel_mult=[1,2]", "backbone.num_res_blocks=1"], output_dir=str(tmp_path))
    assert cfg.conditioning.num_classes == 10  # mnist5k
    config = to_plain_dict(cfg)
    module = build_module(cfg, (1, 28, 28), config_dict=config)
    assert module.backbone.num_classes == 10 and module.conditioning.p_uncond == 0.25
    assert config["backbone"]["num_classes"] == 10  # a checkpoint rebuilds the class embedding
    assert cfg.backbone.num_classes == 10  # and a resume compares the backbone with it
    plain = build_module(compose_train(["backbone.base_channels=8", "backbone.channel_mult=[1,2]",
                                        "backbone.num_res_blocks=1"], output_dir=str(tmp_path)), (1, 28, 28))
    assert plain.conditioning is None and plain.backbone.num_classes is None
    wrong = compose_train(["conditioning=class", "backbone.num_classes=7"], output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="backbone.num_classes=7 but conditioning=class takes num_classes=10"):
        settle_num_classes(wrong, build_conditioning(wrong))


def test_conditioning_class_on_unlabelled_data_fails_in_one_line(tmp_path):
    from difflab.build import build_conditioning
    from difflab.errors import ConfigError

    cfg = compose_train(["conditioning=class", "data=toy2d", "data.name=swiss_roll", "backbone=mlp"], output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="needs labelled data") as e:
        build_conditioning(cfg)
    assert "\n" not in str(e.value)


def test_metric_key_of_a_conditional_run_carries_the_guidance(tmp_path):
    cfg = compose_train(["experiment=mnist5k_cfg", "optimized_metric=${dl.metric_key:fid}"], output_dir=str(tmp_path))
    assert cfg.optimized_metric == "fid/digits/ddim50_eta1_cfg1.5_nfe100_uniform/n1000"  # 50 guided steps: 100 NFE


@pytest.mark.parametrize("conditioning", ["none", "class", "low_res"])
@pytest.mark.parametrize("backbone", ["unet", "diffusers_unet"])
def test_every_conditioning_option_builds_with_every_image_backbone(conditioning, backbone, tmp_path):
    from difflab.build import build_module

    cfg = compose_train([f"conditioning={conditioning}", f"backbone={backbone}"], output_dir=str(tmp_path))
    module = build_module(cfg, (1, 28, 28))
    assert module.backbone.num_classes == (10 if conditioning == "class" else None)
