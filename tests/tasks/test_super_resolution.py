"""conditioning=low_res and task=super_resolution (SR3, arXiv:2104.07636): the condition's closed
form, that it reaches the network, training and loading through the one build path, the task's
files and metrics against closed forms, and one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from difflab.backbones.concat import ConcatConditioned
from difflab.conditioning import LowResConditioning
from difflab.errors import ConfigError
from tests.tasks.conftest import run_task, task_fails
from tests.utils.test_checkpoint import TINY_RUN


@pytest.fixture(scope="module")
def sr_ckpt(tmp_path_factory):
    from difflab.train import run
    from tests.conftest import compose_train

    root = tmp_path_factory.mktemp("sr-run")
    run(compose_train([*TINY_RUN, "conditioning=low_res", "conditioning.factor=2"], output_dir=str(root)))
    return root / "checkpoints" / "last.ckpt"


# --------------------------------------------------------------------------- the condition
def test_downsample_is_the_block_mean_and_condition_is_bicubic_of_it():
    lr = LowResConditioning(factor=2)
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4) / 8 - 1
    small = lr.downsample(x)
    want = torch.tensor([[x[0, 0, :2, :2].mean(), x[0, 0, :2, 2:].mean()], [x[0, 0, 2:, :2].mean(), x[0, 0, 2:, 2:].mean()]])
    torch.testing.assert_close(small[0, 0], want)
    bicubic = F.interpolate(small, size=(4, 4), mode="bicubic", align_corners=False).clamp(-1, 1)
    torch.testing.assert_close(lr.condition(x), bicubic)
    assert lr.low_res_shape((1, 28, 28)) == (1, 14, 14)
    assert LowResConditioning(factor=4).low_res_shape((3, 28, 28)) == (3, 7, 7)


def test_a_constant_image_is_its_own_condition():
    x = torch.full((2, 3, 8, 8), 0.25)
    torch.testing.assert_close(LowResConditioning(factor=4).condition(x), x)


@pytest.mark.parametrize("kwargs,match", [
    ({"factor": 3}, "factor must be one of"), ({"factor": True}, "factor must be one of"),
    ({"upsample": "lanczos"}, "upsample must be one of"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LowResConditioning(**kwargs)


def test_sizes_not_divisible_by_the_factor():
    with pytest.raises(ValueError, match="not divisible by factor 4"):
        LowResConditioning(factor=4).check_shape((1, 30, 30))
    with pytest.raises(ValueError, match="needs image data"):
        LowResConditioning(factor=2).check_shape((2,))


# --------------------------------------------------------------------------- the network
class _Inner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = None

    def forward(self, x, t):
        self.seen = x
        return x[:, :1] + 2 * x[:, 1:]


def test_concat_puts_the_condition_after_x_t():
    inner = _Inner()
    net = ConcatConditioned(inner, channels=1)
    x, y = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    out = net(x, torch.zeros(2, dtype=torch.long), y)
    assert inner.seen.shape == (2, 2, 4, 4) and torch.equal(inner.seen[:, 1:], y)
    torch.testing.assert_close(out, 2 * y)


def test_concat_refuses_a_missing_or_misshapen_condition():
    net = ConcatConditioned(_Inner(), channels=1)
    with pytest.raises(ValueError, match="needs its low-res input"):
        net(torch.zeros(1, 1, 4, 4), torch.zeros(1))
    with pytest.raises(ValueError, match="upsampled to x_t's shape"):
        net(torch.zeros(1, 1, 4, 4), torch.zeros(1), torch.zeros(1, 1, 2, 2))


def test_build_module_gives_the_unet_twice_the_channels(tmp_path):
    from difflab.build import build_module
    from tests.conftest import compose_train

    cfg = compose_train(["conditioning=low_res", "conditioning.factor=4", "backbone.base_channels=8",
                         "backbone.channel_mult=[1,2]"], output_dir=str(tmp_path))
    module = build_module(cfg, (1, 28, 28))
    assert isinstance(module.backbone, ConcatConditioned)
    assert module.backbone.inner.in_channels == 2 and module.backbone.inner.out_channels == 1
    assert module.low_res is not None and module.conditioning is None


def test_the_training_batch_is_conditioned_on_its_own_low_res_version(tmp_path):
    """_prepare hands the objective y = upsample(downsample(x0)); the condition changes the loss."""
    from difflab.build import build_module
    from tests.conftest import compose_train

    cfg = compose_train(["conditioning=low_res", "conditioning.factor=2", "backbone.base_channels=8",
                         "backbone.channel_mult=[1,2]"], output_dir=str(tmp_path))
    module = build_module(cfg, (1, 28, 28))
    x0 = torch.rand(3, 1, 28, 28) * 2 - 1
    x, y = module._prepare((x0, torch.full((3,), -1)))
    torch.testing.assert_close(y, LowResConditioning(factor=2).condition(x0))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.backbone.parameters():  # the output layer starts at zero: give every layer weights
            p.normal_(0, 0.1)
        a = module.objective(module.backbone, module.process, x0, g(), y=y).loss_per_sample
        b = module.objective(module.backbone, module.process, x0, g(), y=torch.zeros_like(y)).loss_per_sample
    assert not torch.allclose(a, b)


def test_low_res_on_latents_or_points_is_refused(tmp_path):
    from difflab.build import build_module
    from tests.conftest import compose_train

    cfg = compose_train(["conditioning=low_res", "conditioning.factor=4"], output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="not divisible by factor 4"):
        build_module(cfg, (1, 30, 30))


# --------------------------------------------------------------------------- the task
def test_task_super_resolution_files_and_metrics(sr_ckpt, tmp_path):
    from difflab.tasks.super_resolution import psnr_ssim

    out = tmp_path / "out"
    r = run_task(sr_ckpt, out, "super_resolution", "n=6", "batch_size=4", "sampler=ddim", "sampler.num_steps=3",
                 "metrics=[fid]", "grid_size=4")
    with np.load(out / "results.npz", allow_pickle=False) as f:
        assert f["low_res"].shape == (6, 14, 14, 1) and f["results"].shape == (6, 28, 28, 1)
        assert f["originals"].shape == (6, 28, 28, 1) and f["bicubic"].shape == (6, 28, 28, 1)
        originals, bicubic = torch.from_numpy(f["originals"]), torch.from_numpy(f["bicubic"])
        protocol = json.loads(str(f["protocol"]))
    assert protocol["task"] == "super_resolution" and protocol["factor"] == 2
    report = json.loads((out / "metrics.json").read_text())
    psnr, ssim = psnr_ssim(bicubic.permute(0, 3, 1, 2), originals.permute(0, 3, 1, 2))
    assert report["results"]["bicubic"]["psnr"] == pytest.approx(psnr) and report["results"]["bicubic"]["ssim"] == pytest.approx(ssim)
    # PSNR closed form: 10 log10(1 / mse) per image, averaged
    mse = ((bicubic.double() - originals.double()) / 255).pow(2).flatten(1).mean(1)
    assert psnr == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-6)  # torchmetrics: float32 inside
    assert "fid/digits/sr2x_ddim3/n6" in report["results"]["sr3"]
    assert "fid/digits/sr2x_bicubic/n6" in report["results"]["bicubic"]
    assert (out / "grid.png").is_file()
    # the same seed gives the same results; sample i does not depend on the batch
    r2 = run_task(sr_ckpt, tmp_path / "again", "super_resolution", "n=6", "batch_size=6", "sampler=ddim",
                  "sampler.num_steps=3", "grid_size=0")
    assert torch.equal(r["results"], r2["results"])


def test_low_res_inputs_from_an_npz(sr_ckpt, tmp_path):
    small = (np.random.default_rng(0).random((3, 14, 14, 1)) * 255).astype(np.uint8)
    np.savez(tmp_path / "lr.npz", images=small)
    out = tmp_path / "out"
    r = run_task(sr_ckpt, out, "super_resolution", "n=3", "sampler=ddim", "sampler.num_steps=2",
                 f"task.input={tmp_path / 'lr.npz'}")
    assert r["originals"] is None and r["results"].shape == (3, 1, 28, 28)
    report = json.loads((out / "metrics.json").read_text())
    assert "psnr" not in report["results"]["sr3"] and report["protocol"]["originals"] is False


def test_sr_errors_in_one_line(sr_ckpt, tiny_ckpt, tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 10, 10, 1), np.uint8))
    err = task_fails(sr_ckpt, tmp_path / "a", capsys, "super_resolution", f"task.input={tmp_path / 'bad.npz'}")
    assert "takes images of 28x28" in err and "14x14" in err
    err = task_fails(tiny_ckpt, tmp_path / "b", capsys, "super_resolution")
    assert "needs a super-resolution checkpoint" in err
    err = task_fails(sr_ckpt, tmp_path / "c", capsys, "inpaint")
    assert "use task=super_resolution" in err


def test_a_loaded_sr_checkpoint_carries_its_low_res_conditioning(sr_ckpt, tiny_ckpt):
    from difflab.tasks.super_resolution import low_res_of
    from difflab.utils.checkpoint import load_model

    sr = load_model(str(sr_ckpt))
    assert isinstance(sr.low_res, LowResConditioning) and sr.low_res.factor == 2
    assert low_res_of(sr) is sr.low_res  # the one built at load, not a second one
    plain = load_model(str(tiny_ckpt))
    assert plain.low_res is None
    with pytest.raises(ConfigError, match="needs a super-resolution checkpoint"):
        low_res_of(plain)


def test_sample_py_refuses_to_generate_from_an_sr_checkpoint(sr_ckpt, tmp_path, capsys):
    err = task_fails(sr_ckpt, tmp_path / "g", capsys, "generate", "n=2")
    assert "use sample.py task=super_resolution" in err


def test_callbacks_upscale_val_digits_in_a_fixed_order(tmp_path):
    """eval_condition of an SR module: sample i upscales val digit order[i mod N]; the FID key
    names the protocol (sr2x_val), so SR scores are never compared with unconditional ones."""
    from difflab.build import build_datamodule, build_module
    from difflab.utils.images import from_uint8
    from tests.conftest import compose_train

    cfg = compose_train(["conditioning=low_res", "conditioning.factor=2", "backbone.base_channels=8",
                         "backbone.channel_mult=[1,2]"], output_dir=str(tmp_path))
    dm = build_datamodule(cfg)
    module = build_module(cfg, (1, 28, 28))
    y, guidance, scheme = module.eval_condition(7, dm)
    originals = module.low_res_originals(7, dm)
    assert y.shape == (7, 1, 28, 28) and guidance == "sr2x_val" and scheme == "val"
    torch.testing.assert_close(y, LowResConditioning(factor=2).condition(from_uint8(originals)))
    assert torch.equal(module.low_res_originals(3, dm), originals[:3])
    # the grid's first digits are not all of one class (mnist5k's val split is stored by class)
    first = module.low_res_originals(16, dm)
    val = dm.real_images("val")
    matches = [int((val == img).flatten(1).all(1).nonzero()[0]) for img in first]
    assert len({int(dm.val_set.labels[i]) for i in matches}) > 1
