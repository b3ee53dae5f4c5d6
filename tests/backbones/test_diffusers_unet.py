from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DModel

from difflab.backbones import BACKBONES, DiffusersUNet, UNet, count_parameters

from .conftest import assert_grads_reach_all_parameters

TINY = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)


def test_defaults_and_registry():
    m = DiffusersUNet()
    assert BACKBONES["diffusers_unet"] is DiffusersUNet
    assert isinstance(m.unet, UNet2DModel)
    assert m.unet.config.sample_size == 28 and m.unet.config.in_channels == 1
    assert m.unet.config.out_channels == 1
    # Same layout as difflab's default UNet (no attention), so the same size.
    assert count_parameters(m) == count_parameters(UNet()) == 1_539_329
    assert m(torch.randn(2, 1, 28, 28), torch.tensor([0, 999])).shape == (2, 1, 28, 28)


@pytest.mark.parametrize(
    "kw, shape",
    [
        (dict(), (2, 1, 28, 28)),
        (dict(down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D")), (2, 1, 28, 28)),
        (dict(sample_size=32, in_channels=3, block_out_channels=(8, 16, 16, 16)), (2, 3, 32, 32)),
    ],
)
def test_shape_and_matches_wrapped_model(kw, shape):
    m = DiffusersUNet(**{**TINY, **kw}).eval()
    x, t = torch.randn(shape), torch.randint(0, 1000, (shape[0],))
    out = m(x, t)
    assert out.shape == shape
    torch.testing.assert_close(out, m.unet(x, t).sample, rtol=0, atol=0)


def test_depends_on_t_and_y():
    m = DiffusersUNet(**TINY, num_classes=10).eval()
    assert m.unet.class_embedding.num_embeddings == 11
    x = torch.randn(1, 1, 28, 28).expand(2, -1, -1, -1)
    out = m(x, torch.tensor([10, 900]), torch.tensor([1, 1]))
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    out = m(x, torch.tensor([300, 300]), torch.tensor([2, 8]))
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    torch.testing.assert_close(m(x, torch.tensor(300)), m(x, torch.tensor([300, 300]), torch.tensor([10, 10])))


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="sample_size 28 cannot be halved 3 times"):
        DiffusersUNet(block_out_channels=(32, 64, 64, 64))
    with pytest.raises(ValueError, match="norm_num_groups=8"):
        DiffusersUNet(block_out_channels=(12, 24, 24))
    with pytest.raises(ValueError, match="one entry per block_out_channels"):
        DiffusersUNet(down_block_types=("DownBlock2D",))
    m = DiffusersUNet(**TINY)
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 1, 28, 28\), got \(1, 1, 32, 32\)"):
        m(torch.randn(1, 1, 32, 32), torch.tensor([1]))


def test_gradients_reach_all_parameters():
    m = DiffusersUNet(**TINY, num_classes=2).train()
    assert_grads_reach_all_parameters(m, torch.randn(3, 1, 28, 28), torch.tensor([1, 500, 999]), torch.tensor([0, 1, 2]))
