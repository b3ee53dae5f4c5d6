"""End to end on the CPU: an autoencoder run, a latent diffusion run on its checkpoint, resume,
sampling through load_model, and the refusals (export, a pixel run resuming a latent checkpoint)."""

from __future__ import annotations

import copy

import pytest
import torch

from difflab.errors import CheckpointError, ConfigError
from tests.app.test_train import TINY
from tests.conftest import compose_train

pytestmark = pytest.mark.slow

AE = [
    "model=autoencoder", "trainer=cpu", "logger=csv", "data.batch_size=16", "data.val_batch_size=64",
    "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "model.autoencoder.block_out_channels=[8,8,8]", "model.autoencoder.norm_num_groups=4",
    "model.autoencoder.latent_channels=2", "callbacks.rfid.n=50", "callbacks.reconstructions.num_images=4",
    "print_config=false",
]


def _run(overrides, out, steps):
    from difflab.train import run

    cfg = compose_train([*overrides, f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}"], output_dir=str(out))
    return run(cfg), cfg


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    _run([*AE, f"paths.cache_dir={out / 'cache'}"], out, 2)
    return out


def test_the_autoencoder_run_logs_psnr_rfid_and_grids(autoencoder):
    import csv

    rows = list(csv.DictReader(open(autoencoder / "csv" / "metrics.csv")))
    keys = {k for r in rows for k, v in r.items() if v}
    assert {"val/psnr", "val/loss", "val/kl", "rfid/digits/recon/n50", "fid_floor/digits/n50"} <= keys
    assert (autoencoder / "reconstructions" / "step_0000002.png").is_file()
    ckpt = torch.load(autoencoder / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["difflab"]["latent_shape"] == [2, 8, 8] and any(k.startswith("vae.") for k in ckpt["state_dict"])
    # resume=auto continues the autoencoder run
    _run([*AE, f"paths.cache_dir={autoencoder / 'cache'}"], autoencoder, 3)
    assert torch.load(autoencoder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_latent_run_samples_decoded_images_resumes_and_refuses_export(autoencoder, tmp_path):
    from difflab.evaluation import draw
    from difflab.tasks.export import _check_exportable
    from difflab.utils.checkpoint import load_model

    cache = tmp_path / "cache"
    latent = [*TINY, "trainer=cpu", "logger=none", f"paths.cache_dir={cache}", "first_stage=autoencoder",
              f"first_stage.ckpt={autoencoder / 'checkpoints' / 'last.ckpt'}", "callbacks.sample_grid.num_samples=4"]
    _run(latent, tmp_path, 2)
    assert len(list((cache / "latents").glob("mnist5k_*.pt"))) == 1
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    scale = float(ckpt["state_dict"]["latent_scale"])
    assert 0 < scale < float("inf") and ckpt["difflab"]["image_shape"] == [2, 8, 8]
    assert ckpt["difflab"]["data_shape"] == [1, 28, 28] and ckpt["hyper_parameters"]["config"]["backbone"]["in_channels"] == 2
    from PIL import Image

    grid = Image.open(tmp_path / "samples" / "step_0000002.png")
    assert grid.size == (2 + 2 * 30, 2 + 2 * 30)  # 2 x 2 decoded 28 x 28 digits, not 8 x 8 latents

    # resume=auto continues with the stored scale (the cache is read back, not re-encoded)
    _run(latent, tmp_path, 4)
    again = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert again["global_step"] == 4 and float(again["state_dict"]["latent_scale"]) == scale
    bound = float(again["state_dict"]["latent_bound"])
    assert bound == float(ckpt["state_dict"]["latent_bound"]) and 1.0 < bound < 50.0

    # sample.py's path: load_model decodes
    model = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert model.image_shape == (2, 8, 8) and model.extra["data_shape"] == (1, 28, 28)
    assert model.sampler.clip_sample and model.sampler.clip_range == bound == model.extra["clip_bound"]
    # first_stage.clip_latents=false, and a checkpoint from before the bound was stored: unclipped
    unclipped = {**again, "hyper_parameters": copy.deepcopy(again["hyper_parameters"])}
    unclipped["hyper_parameters"]["config"]["first_stage"]["clip_latents"] = False
    legacy = {**again, "state_dict": {k: v for k, v in again["state_dict"].items() if k != "latent_bound"}}
    for name, ck in (("unclipped", unclipped), ("legacy", legacy)):
        torch.save(ck, tmp_path / f"{name}.ckpt")
        other = load_model(tmp_path / f"{name}.ckpt")
        assert other.extra["clip_bound"] is None and other.sampler.clip_sample is False, name
    # sample.py clips to the stored range, unless the command line asks for sampler.clip_sample=false
    from tests.app.test_sample import sample

    last = tmp_path / "checkpoints" / "last.ckpt"
    clipped = sample(last, tmp_path / "s1", "n=2", "grid_size=0")["sampler"]
    assert "clip_sample=True" in clipped["config"] and f"clip_range={bound!r}" in clipped["config"]
    assert "clip" not in clipped["sampler"]  # the model's own clipping is not named in the key
    unclipped = sample(last, tmp_path / "s2", "n=2", "grid_size=0", "+sampler.clip_sample=false")["sampler"]
    assert "clip_sample=False" in unclipped["config"] and unclipped["sampler"].endswith("_noclip")
    ((_, x),) = draw(model.backbone, model.process, model.sampler, model.objective.target, model.image_shape, 3,
                     batches=[0], decode=model.extra["decode"])
    assert x.dtype == torch.uint8 and x.shape == (3, 1, 28, 28)

    with pytest.raises(ConfigError, match="latent model") as e:
        _check_exportable(model)
    assert "\n" not in str(e.value)

    # a pixel run does not resume the latent checkpoint
    pixel = [o for o in latent if not o.startswith("first_stage")]
    with pytest.raises(CheckpointError, match="first_stage._target_"):
        _run(pixel, tmp_path, 6)

    # the autoencoder file changed under the latent model: sampling refuses in one line
    ae_path = autoencoder / "checkpoints" / "last.ckpt"
    ae = torch.load(ae_path, weights_only=True)
    key = next(k for k in ae["state_dict"] if k.startswith("vae.encoder"))
    ae["state_dict"][key] = ae["state_dict"][key] + 0.01
    torch.save(ae, ae_path)
    with pytest.raises(CheckpointError, match="another autoencoder") as e:
        load_model(tmp_path / "checkpoints" / "last.ckpt").extra["first_stage"]()
    assert "\n" not in str(e.value)


def test_a_missing_autoencoder_checkpoint_fails_before_anything_runs(tmp_path):
    with pytest.raises(Exception, match="first_stage.ckpt"):
        _run([*TINY, "trainer=cpu", "logger=none", "first_stage=autoencoder"], tmp_path, 1)
    with pytest.raises(ConfigError, match="first_stage.path="):
        _run([*TINY, "trainer=cpu", "logger=none", "first_stage=pretrained_vae", f"first_stage.path={tmp_path / 'no'}"], tmp_path, 1)
