from __future__ import annotations

import pytest
import torch

from difflab.backbones import BACKBONES, UNet, count_parameters
from difflab.backbones.unet import expand_timesteps, timestep_embedding

from .conftest import assert_grads_reach_all_parameters, randomize_

# A tiny two-level config: 28 -> 14, attention at 14, for fast tests.
TINY = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(14,), num_heads=2, norm_groups=4)


def tiny(**kw) -> UNet:
    return randomize_(UNet(**{**TINY, **kw})).eval()


def test_registry_and_count():
    assert BACKBONES["unet"] is UNet
    m = UNet()
    assert count_parameters(m) == sum(p.numel() for p in m.parameters()) == 1_539_329


def test_fresh_unet_outputs_zeros():
    """Residual branches and output conv start at zero (DDPM / ADM initialisation)."""
    m = UNet(**TINY)
    out = m(torch.randn(2, 1, 28, 28), torch.tensor([1, 500]))
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize(
    "kw, shape",
    [
        (dict(), (3, 1, 28, 28)),
        (dict(channel_mult=(1, 2, 2), attention_resolutions=(7,)), (2, 1, 28, 28)),
        (dict(in_channels=3, image_size=32, channel_mult=(1, 2, 2, 2), attention_resolutions=(16, 8)), (2, 3, 32, 32)),
        (dict(in_channels=3, out_channels=6, image_size=32, attention_resolutions=(16,)), (2, 3, 32, 32)),
        (dict(image_size=(28, 32)), (2, 1, 28, 32)),
        (dict(use_scale_shift_norm=True, dropout=0.1), (2, 1, 28, 28)),
    ],
)
def test_output_shape(kw, shape):
    m = tiny(**kw)
    out = m(torch.randn(shape), torch.randint(0, 1000, (shape[0],)))
    expected = (shape[0], kw.get("out_channels", shape[1]), *shape[2:])
    assert out.shape == expected
    assert torch.isfinite(out).all()


def test_default_unet_shape():
    m = UNet()
    assert m(torch.randn(2, 1, 28, 28), torch.tensor([0, 999])).shape == (2, 1, 28, 28)


def test_depends_on_t():
    m = tiny()
    x = torch.randn(1, 1, 28, 28).expand(2, -1, -1, -1)
    out = m(x, torch.tensor([10, 900]))
    assert not torch.allclose(out[0], out[1], atol=1e-4)


def test_timestep_formats_agree():
    m = tiny()
    x = torch.randn(3, 1, 28, 28)
    ref = m(x, torch.full((3,), 42, dtype=torch.long))
    for t in (torch.tensor(42), torch.tensor([42]), torch.tensor(42.0), torch.full((3,), 42.0), 42):
        torch.testing.assert_close(m(x, t), ref)
    with pytest.raises(ValueError, match=r"timesteps must have shape \(3,\)"):
        m(x, torch.tensor([1, 2]))


def test_class_conditioning_and_null_label():
    m = tiny(num_classes=10)
    assert m.class_emb.num_embeddings == 11
    x = torch.randn(1, 1, 28, 28).expand(2, -1, -1, -1)
    t = torch.tensor([300, 300])
    out = m(x, t, torch.tensor([3, 7]))
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    torch.testing.assert_close(m(x, t), m(x, t, torch.tensor([10, 10])))  # y=None -> null label
    with pytest.raises(ValueError, match="num_classes=None"):
        tiny()(x, t, torch.tensor([1, 2]))


def test_ddpm_cifar10_parameter_count():
    """Ho et al. 2020, Appendix B: the CIFAR-10 model has 35.7M parameters."""
    m = UNet(
        in_channels=3, base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
        attention_resolutions=(16,), image_size=32, dropout=0.1,
    )
    n = count_parameters(m)
    assert n == 35_746_307
    assert abs(n - 35.7e6) / 35.7e6 < 0.01


def test_bad_image_size_raises():
    with pytest.raises(ValueError, match=r"image_size 28 cannot be halved 3 times \(28 -> 14 -> 7.*divisible by 8"):
        UNet(channel_mult=(1, 2, 2, 2), image_size=28)
    with pytest.raises(ValueError, match="image_size 30 cannot be halved 2 times"):
        UNet(image_size=30)
    UNet(channel_mult=(1, 2, 2, 2), image_size=32)  # 32 works


def test_bad_norm_groups_raises():
    with pytest.raises(ValueError, match=r"not divisible by norm_groups=24.*\[32, 64\]"):
        UNet(norm_groups=24)


def test_bad_attention_config_raises():
    with pytest.raises(ValueError, match=r"attention_resolutions \[16\].*sizes are \[28, 14, 7\]"):
        UNet(attention_resolutions=(16,))
    with pytest.raises(ValueError, match="num_heads=3"):
        UNet(num_heads=3)


def test_forward_shape_mismatch_raises():
    m = tiny()
    t = torch.tensor([1])
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 1, 28, 28\), got \(1, 3, 28, 28\)"):
        m(torch.randn(1, 3, 28, 28), t)
    with pytest.raises(ValueError, match=r"got \(1, 1, 32, 32\)"):
        m(torch.randn(1, 1, 32, 32), t)


def test_channels_last_matches():
    m = tiny(channel_mult=(1, 2, 2), attention_resolutions=(14, 7))
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 600])
    ref = m(x, t)
    m_cl = m.to(memory_format=torch.channels_last)
    out = m_cl(x.contiguous(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_runs():
    m = tiny()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 600])
    ref = m(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, t)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


@pytest.mark.parametrize("scale_shift", [False, True])
def test_gradients_reach_all_parameters(scale_shift):
    m = tiny(num_classes=3, use_scale_shift_norm=scale_shift).train()
    x = torch.randn(4, 1, 28, 28)
    # Only looked-up embedding rows get a gradient: use every label, the null one (3) included.
    assert_grads_reach_all_parameters(m, x, torch.tensor([1, 200, 400, 999]), torch.tensor([0, 1, 2, 3]))


def test_timestep_helpers():
    emb = timestep_embedding(torch.tensor([0, 1, 999]), 32)
    assert emb.shape == (3, 32) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(16), torch.ones(16)]))
    assert timestep_embedding(torch.tensor([3]), 7).shape == (1, 7)
    assert expand_timesteps(torch.tensor(5), 4, torch.device("cpu")).tolist() == [5, 5, 5, 5]
