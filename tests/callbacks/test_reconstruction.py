"""rFID on the evaluation path: an autoencoder that reconstructs exactly scores the data floor."""

from __future__ import annotations

import pytest
import torch

from difflab.callbacks.reconstruction import ReconstructionFID, Reconstructions, reconstruct_uint8
from difflab.data.mnist5k_datamodule import MNIST5kDataModule


class Identity(torch.nn.Module):
    device = torch.device("cpu")

    def __init__(self, noise: float = 0.0):
        super().__init__()
        self.noise = noise

    def reconstruct(self, x):
        return (x + self.noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)


class Trainer:
    global_step, is_global_zero, loggers = 3, True, []

    def __init__(self, dm):
        self.datamodule, self.callback_metrics = dm, {}


@pytest.fixture(scope="module")
def dm():
    dm = MNIST5kDataModule(batch_size=16)
    dm.setup("fit")
    return dm


def test_identity_reconstructions_score_the_floor_and_noise_scores_worse(dm, digits, tmp_path):
    cb = ReconstructionFID(n=100, cache_dir=str(tmp_path))
    cb.extractor = digits
    trainer = Trainer(dm)
    cb.setup(trainer, Identity(), "fit")
    values = cb.evaluate(trainer, Identity())["values"]
    assert set(values) == {"rfid/digits/recon/n100", "fid_floor/digits/n100"}
    assert values["rfid/digits/recon/n100"] == pytest.approx(values["fid_floor/digits/n100"], rel=1e-6)
    cb._last_step = -1
    noisy = cb.evaluate(trainer, Identity(noise=0.5))["values"]
    assert noisy["rfid/digits/recon/n100"] > 1.3 * values["fid_floor/digits/n100"]
    assert float(trainer.callback_metrics["rfid/digits/recon/n100"]) == pytest.approx(noisy["rfid/digits/recon/n100"])


def test_n_is_capped_by_the_val_split(dm, digits):
    cb = ReconstructionFID(n=5000)
    cb.extractor = digits
    cb.setup(Trainer(dm), Identity(), "fit")
    assert cb.key() == "rfid/digits/recon/n500"


def test_uint8_round_trip_of_an_exact_reconstruction(dm):
    images = dm.real_images("val", 10, 0)
    assert torch.equal(torch.cat(list(reconstruct_uint8(Identity(), images, 4))), images)


def test_grid_has_originals_over_reconstructions(dm):
    cb = Reconstructions(num_images=6, nrow=4)
    image, caption = cb.render(Trainer(dm), Identity())
    # 2 row pairs of 4 tiles (28 px + 2 px padding)
    assert image.shape[:2] == (2 + 4 * 30, 2 + 4 * 30) and "originals over reconstructions" in caption


def test_rfid_needs_an_autoencoder(dm):
    with pytest.raises(ValueError, match="model=autoencoder"):
        ReconstructionFID(n=10).setup(Trainer(dm), torch.nn.Linear(1, 1), "fit")
