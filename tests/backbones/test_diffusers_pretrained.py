"""backbone=diffusers_unet backbone.pretrained=DIR: a UNet2DModel from a local model or pipeline
folder (the layout of google/ddpm-cifar10-32, built here with save_pretrained), and difflab's
UNet as a diffusers model (DifflabUNet2DModel) for exported pipelines."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from difflab.backbones import DiffusersUNet, UNet
from difflab.backbones.diffusers_unet import resolve_pretrained

from .conftest import randomize_

TINY = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
            down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))


def tiny_unet(sample_size: int = 28, in_channels: int = 1, **kw) -> UNet2DModel:
    unet = UNet2DModel(sample_size=sample_size, in_channels=in_channels, out_channels=in_channels, **{**TINY, **kw})
    return randomize_(unet).eval()


def pipeline_folder(root: Path, unet: UNet2DModel, safe: bool = True, **scheduler_kw) -> Path:
    """model_index.json + unet/ + scheduler/, as `DDPMPipeline.save_pretrained` writes google/ddpm-cifar10-32."""
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**scheduler_kw)).save_pretrained(str(root), safe_serialization=safe)
    return root


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("layout", ["pipeline", "pipeline-bin", "model", "pipeline-unet-subfolder"])
def test_loads_the_weights_of_a_local_folder(tmp_path, layout):
    unet = tiny_unet()
    if layout == "model":
        unet.save_pretrained(str(tmp_path / "m"))
        folder = tmp_path / "m"
    else:
        pipeline_folder(tmp_path / "p", unet, safe=layout != "pipeline-bin")
        folder = tmp_path / "p" / "unet" if layout == "pipeline-unet-subfolder" else tmp_path / "p"
    m = DiffusersUNet(sample_size=28, in_channels=1, pretrained=str(folder)).eval()
    assert same_weights(m.unet, unet) and m.pretrained == str(folder)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([5, 900])
    torch.testing.assert_close(m(x, t), unet(x, t).sample, rtol=0, atol=0)
    # the state-dict keys are those of a DiffusersUNet built from sizes: checkpoints stay interchangeable
    assert m.state_dict().keys() == DiffusersUNet(sample_size=28, in_channels=1, **TINY).state_dict().keys()
    unet_dir, scheduler = resolve_pretrained(folder)
    assert (unet_dir / "config.json").is_file()
    assert (scheduler is None) == (layout == "model")


def test_through_the_config_group(tmp_path):
    from tests.conftest import compose_train

    unet = tiny_unet()
    pipeline_folder(tmp_path / "p", unet)
    cfg = compose_train(["backbone=diffusers_unet", f"backbone.pretrained={tmp_path / 'p'}"], output_dir=str(tmp_path))
    m = hydra.utils.instantiate(cfg.backbone)
    assert same_weights(m.unet, unet)  # the folder's architecture wins over block_out_channels=[32,64,64]
    assert DiffusersUNet(sample_size=28, in_channels=1).unet.config.block_out_channels != m.unet.config.block_out_channels


def test_bad_folders_fail_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "missing"): "does not exist",
        str(tmp_path / "empty"): "has no config.json and no unet/config.json",
    }
    for folder, message in cases.items():
        with pytest.raises(ValueError, match=message) as e:
            DiffusersUNet(pretrained=folder)
        assert "\n" not in str(e.value) and "huggingface-cli download" in str(e.value)

    tiny_unet(sample_size=32, in_channels=3).save_pretrained(str(tmp_path / "rgb"))
    with pytest.raises(ValueError, match=r"takes 3x32x32 images .* the data gives 1x28x28"):
        DiffusersUNet(sample_size=28, in_channels=1, pretrained=str(tmp_path / "rgb"))

    tiny_unet(num_class_embeds=4).save_pretrained(str(tmp_path / "cond"))
    with pytest.raises(ValueError, match="class-conditional"):
        DiffusersUNet(pretrained=str(tmp_path / "cond"))
    assert DiffusersUNet(pretrained=str(tmp_path / "cond"), num_classes=3).num_classes == 3
    with pytest.raises(ValueError, match="num_classes=5 needs a class embedding of 6 rows"):
        DiffusersUNet(pretrained=str(tmp_path / "cond"), num_classes=5)

    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps(dict(tiny_unet().config)))
    with pytest.raises(ValueError, match="cannot be loaded") as e:
        DiffusersUNet(pretrained=str(tmp_path / "noweights"))
    assert "\n" not in str(e.value)


def test_a_difflab_unet_export_is_not_a_unet2dmodel(tmp_path):
    from difflab.backbones.diffusers_export import from_unet

    from_unet(UNet(base_channels=8, channel_mult=(1, 2), num_res_blocks=1),
              dict(base_channels=8, channel_mult=[1, 2], num_res_blocks=1, image_size=28)).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="holds a DifflabUNet2DModel, not a UNet2DModel"):
        DiffusersUNet(pretrained=str(tmp_path))


# ----------------------------------------------------------------------------- DifflabUNet2DModel
def test_difflab_unet_as_a_diffusers_model_round_trips(tmp_path):
    from difflab.backbones.diffusers_export import DifflabUNet2DModel, from_unet

    kw = dict(base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[14], image_size=28,
              use_scale_shift_norm=True)
    unet = randomize_(UNet(**kw)).eval()
    model = from_unet(unet, {"_target_": "difflab.backbones.UNet", **kw})
    assert isinstance(model, UNet)  # difflab code can keep calling it as a backbone
    assert model.state_dict().keys() == unet.state_dict().keys()
    assert model.config.sample_size == 28 and model.config.in_channels == 1
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([1, 77])
    torch.testing.assert_close(model(x, t).sample, unet(x, t), rtol=0, atol=0)
    assert model(x, t, return_dict=False)[0].shape == x.shape
    torch.testing.assert_close(model(x, torch.tensor(5)).sample, unet(x, torch.tensor([5, 5])), rtol=0, atol=0)

    model.save_pretrained(str(tmp_path))
    loaded = DifflabUNet2DModel.from_pretrained(str(tmp_path))
    assert same_weights(loaded, unet) and not loaded.training
    torch.testing.assert_close(loaded(x, t).sample, unet(x, t), rtol=0, atol=0)


def test_import_difflab_exposes_the_names_diffusers_looks_up():
    import difflab
    from diffusers import ModelMixin

    from difflab.backbones.diffusers_export import DifflabUNet2DModel

    assert difflab.DifflabUNet2DModel is DifflabUNet2DModel and difflab.ModelMixin is ModelMixin
    assert getattr(difflab, "PreTrainedModel", None) is None
    with pytest.raises(AttributeError):
        difflab.nothing_here  # noqa: B018


@pytest.mark.parametrize("kw", [dict(), dict(block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=8,
                                          down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))])
def test_pretrained_backbone_kwargs_rebuild_the_architecture_without_the_folder(tmp_path, kw):
    from difflab.backbones.diffusers_unet import pretrained_backbone_kwargs

    unet = tiny_unet(**kw)
    pipeline_folder(tmp_path / "p", unet)
    loaded = DiffusersUNet(pretrained=str(tmp_path / "p")).eval()
    kwargs = pretrained_backbone_kwargs(tmp_path / "p")
    assert all(not isinstance(v, tuple) for v in kwargs.values())  # plain lists: fit a stored config
    rebuilt = DiffusersUNet(**kwargs).eval()
    shapes = {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert shapes == {k: v.shape for k, v in loaded.state_dict().items()}
    rebuilt.load_state_dict(loaded.state_dict())
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([5, 500])
    torch.testing.assert_close(rebuilt(x, t), loaded(x, t), rtol=0, atol=0)

    tiny_unet(num_class_embeds=4).save_pretrained(str(tmp_path / "cond"))
    cond = pretrained_backbone_kwargs(tmp_path / "cond", num_classes=3)
    assert cond["num_classes"] == 3 and "num_class_embeds" not in cond
    assert DiffusersUNet(**cond).unet.config.num_class_embeds == 4


def test_build_module_refuses_a_folder_whose_schedule_is_not_the_runs(tmp_path):
    """backbone.pretrained with the run's schedule and objective builds; another schedule stops
    the run in one line before anything is trained (difflab.build.build_module)."""
    from difflab.build import build_module
    from difflab.errors import ConfigError
    from tests.conftest import compose_train

    pipeline_folder(tmp_path / "linear", tiny_unet(), beta_schedule="linear")  # google/ddpm-cifar10-32's schedule
    base = ["backbone=diffusers_unet", f"backbone.pretrained={tmp_path / 'linear'}"]
    module = build_module(compose_train([*base, "schedule=linear"], output_dir=str(tmp_path)), (1, 28, 28))
    assert module.process.num_timesteps == 1000
    with pytest.raises(ConfigError, match="schedule") as e:
        build_module(compose_train(base, output_dir=str(tmp_path)), (1, 28, 28))  # the default: cosine
    assert "\n" not in str(e.value)
