"""The first stage: padding to the latent size, posterior moments, decoding, fingerprints, builders."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from difflab.errors import CheckpointError, ConfigError
from difflab.first_stage import FirstStage, build_autoencoder_kl, from_autoencoder_checkpoint, from_pretrained, padded_size

TINY = dict(block_out_channels=(8, 8, 8), layers_per_block=1, latent_channels=2, norm_num_groups=4, sample_size=32)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return build_autoencoder_kl(1, **TINY).eval()


def test_padding_gives_a_latent_side_divisible_by_latent_multiple():
    assert padded_size(28, 4, 4) == 32  # mnist5k: 28 -> 32 -> 8x8, what channel_mult [1, 2, 4] takes
    assert padded_size(28, 4, 1) == 28  # 7x7
    assert padded_size(32, 8, 4) == 32 and padded_size(64, 8, 4) == 64 and padded_size(65, 8, 1) == 72
    with pytest.raises(ValueError, match="latent_multiple"):
        padded_size(28, 4, 0)


def test_latent_shape_and_round_trip_shapes(vae):
    fs = FirstStage(vae, (1, 28, 28), latent_multiple=4)
    assert fs.latent_shape == (2, 8, 8) and fs.padded == (32, 32)
    assert FirstStage(vae, (1, 28, 28)).latent_shape == (2, 7, 7)
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    mean, logvar = fs.encode(x)
    assert mean.shape == logvar.shape == (3, 2, 8, 8)
    out = fs.decode(mean)
    assert out.shape == (3, 1, 28, 28) and out.min() >= -1 and out.max() <= 1


def test_encode_pads_with_background_and_decode_crops_the_centre(vae):
    fs = FirstStage(vae, (1, 28, 28), latent_multiple=4)
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(F.pad(x, (2, 2, 2, 2), value=-1.0)).latent_dist
        mean, logvar = fs.encode(x)
        torch.testing.assert_close(mean, expected.mean)
        torch.testing.assert_close(logvar, expected.logvar)
        full = vae.decode(mean).sample
    torch.testing.assert_close(fs.decode(mean), full[..., 2:30, 2:30].clamp(-1, 1))


def test_the_first_stage_is_frozen(vae):
    fs = FirstStage(vae, (1, 28, 28))
    assert not any(p.requires_grad for p in fs.parameters()) and not fs.vae.training


def test_fingerprint_follows_weights_and_padding():
    torch.manual_seed(0)
    a = build_autoencoder_kl(1, **TINY)
    torch.manual_seed(0)
    b = build_autoencoder_kl(1, **TINY)
    assert FirstStage(a, (1, 28, 28)).fingerprint == FirstStage(b, (1, 28, 28)).fingerprint
    assert FirstStage(a, (1, 28, 28)).fingerprint != FirstStage(a, (1, 28, 28), latent_multiple=4).fingerprint
    with torch.no_grad():
        next(b.parameters()).add_(1e-3)
    assert FirstStage(a, (1, 28, 28)).fingerprint != FirstStage(b, (1, 28, 28)).fingerprint


def test_channels_must_match_the_data(vae):
    with pytest.raises(ValueError, match="1-channel images but the data have 3"):
        FirstStage(vae, (3, 32, 32))


def test_pretrained_vae_honours_its_scaling_and_shift_factor(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                        norm_num_groups=4, sample_size=16, scaling_factor=0.3, shift_factor=0.1)
    vae.save_pretrained(tmp_path / "vae")
    fs = from_pretrained(str(tmp_path / "vae"), (3, 16, 16), latent_multiple=4)
    assert fs.scaling_factor == pytest.approx(0.3) and fs.shift_factor == pytest.approx(0.1)
    assert fs.latent_shape == (4, 8, 8) and fs.padded == (16, 16)  # one downsampling (x2)
    assert from_pretrained(str(tmp_path / "vae"), (3, 14, 14), latent_multiple=4).latent_shape == (4, 8, 8)
    assert from_pretrained(str(tmp_path / "vae"), (3, 16, 16), scaling_factor=2.0).scaling_factor == 2.0
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(fs.encode(x)[0], vae.encode(x).latent_dist.mean)


def test_a_missing_vae_folder_fails_in_one_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        from_pretrained(str(tmp_path / "nowhere"), (3, 16, 16))
    assert "first_stage.path=" in str(e.value) and "\n" not in str(e.value)


def test_an_autoencoder_checkpoint_is_required(tmp_path):
    with pytest.raises(ConfigError, match="first_stage.ckpt="):
        from_autoencoder_checkpoint(None, (1, 28, 28))
    with pytest.raises(CheckpointError, match="no such file"):
        from_autoencoder_checkpoint(str(tmp_path / "x.ckpt"), (1, 28, 28))
    torch.save({"state_dict": {}, "hyper_parameters": {"config": {"model": {"name": "diffusion"}}}}, tmp_path / "d.ckpt")
    with pytest.raises(CheckpointError, match="not an autoencoder checkpoint"):
        from_autoencoder_checkpoint(str(tmp_path / "d.ckpt"), (1, 28, 28))
