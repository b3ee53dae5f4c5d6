"""LatentDataModule: posterior moments cached once per data set and encoder; the LDM scale."""

from __future__ import annotations

import pytest
import torch

from difflab.data.base import BaseDataModule, TensorImageDataset
from difflab.data.latent import LatentDataModule


class Images(BaseDataModule):
    """Random uint8 digits-like images, 1x8x8, with labels."""

    def __init__(self, seed: int = 0, n: int = 40, random_flip: bool = False) -> None:
        super().__init__(batch_size=8, val_batch_size=16, seed=0)
        self.name, self.image_shape, self.num_classes = f"fake{seed}", (1, 8, 8), 10
        g = torch.Generator().manual_seed(seed)
        self._images = {s: torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8) for s in ("train", "val")}
        self._labels = {s: torch.randint(0, 10, (n,), generator=g) for s in ("train", "val")}
        self.random_flip = random_flip

    def _build(self) -> None:
        for s in ("train", "val"):
            setattr(self, f"{s}_set", TensorImageDataset(self._images[s], self._labels[s], random_flip=self.random_flip and s == "train"))

    def _real_uint8(self, split, indices):
        return self._images[split] if indices is None else self._images[split][indices]


class Encoder:
    """A linear 'encoder' with a known posterior: mean = a * avgpool(x), logvar = b."""

    def __init__(self, a: float = 2.0, b: float = -1.0) -> None:
        self.a, self.b, self.calls = a, b, 0
        self.latent_shape = (1, 4, 4)
        self.fingerprint = f"enc{a}_{b}"

    def encode(self, x):
        self.calls += 1
        mean = self.a * torch.nn.functional.avg_pool2d(x, 2)
        return mean, torch.full_like(mean, self.b)


def test_items_are_the_posterior_moments_of_the_images_in_order(tmp_path):
    dm = LatentDataModule(Images(), Encoder(), cache_dir=tmp_path)
    dm.setup("fit")
    moments, y = dm.train_set[3]
    x = dm.inner.train_set[3][0]
    assert moments.shape == (2, 4, 4) and int(y) == int(dm.inner.train_set[3][1])
    torch.testing.assert_close(moments[:1], 2.0 * torch.nn.functional.avg_pool2d(x[None], 2)[0])
    assert torch.all(moments[1:] == -1.0)
    assert dm.image_shape == (1, 8, 8) and dm.latent_shape == (1, 4, 4) and dm.name == "fake0"
    assert torch.equal(dm.real_images("val"), dm.inner.real_images("val"))  # FID scores pixels
    batch = next(iter(dm.train_dataloader()))
    assert batch[0].shape == (8, 2, 4, 4)


def test_the_cache_is_read_back_and_keyed_on_data_and_encoder(tmp_path):
    enc = Encoder()
    first = LatentDataModule(Images(), enc, cache_dir=tmp_path)
    first.setup("fit")
    assert not first.cache_hit and first.cache_path.is_file() and enc.calls > 0
    again_enc = Encoder()
    again = LatentDataModule(Images(), again_enc, cache_dir=tmp_path)
    again.setup("fit")
    assert again.cache_hit and again_enc.calls == 0 and again.cache_path == first.cache_path
    torch.testing.assert_close(again.train_set.moments, first.train_set.moments)
    other_encoder = LatentDataModule(Images(), Encoder(a=3.0), cache_dir=tmp_path)
    other_data = LatentDataModule(Images(seed=1), Encoder(), cache_dir=tmp_path)
    for dm in (other_encoder, other_data):
        dm.setup("fit")
        assert not dm.cache_hit and dm.cache_path != first.cache_path


def test_random_flips_are_not_baked_into_the_cache(tmp_path):
    plain = LatentDataModule(Images(), Encoder(), cache_dir=None)
    flipped = LatentDataModule(Images(random_flip=True), Encoder(), cache_dir=None)
    plain.setup("fit")
    flipped.setup("fit")
    torch.testing.assert_close(plain.train_set.moments, flipped.train_set.moments)
    assert flipped.inner.train_set.random_flip  # switched back on for pixel training


def test_latent_std_is_ldms_std_of_the_posterior_samples(tmp_path):
    dm = LatentDataModule(Images(n=400), Encoder(a=2.0, b=-1.0), cache_dir=None)
    mean, logvar = dm.posterior("train")
    # closed form Var z = Var mean + E exp(logvar) against a Monte-Carlo draw of z ~ q(z | x)
    g = torch.Generator().manual_seed(0)
    z = torch.cat([mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=g) for _ in range(50)])
    assert dm.latent_std(True) == pytest.approx(float(z.double().std()), rel=1e-2)
    assert dm.latent_std(False) == pytest.approx(float(mean.double().std()), rel=1e-6)
