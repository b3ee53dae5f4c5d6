"""data.exclude_classes: classes left out of the training split (BaseDataModule, any labelled data)."""

from __future__ import annotations

import pytest
import torch

from difflab.data import MNIST5kDataModule
from difflab.data.base import BaseDataModule, TensorImageDataset
from tests.conftest import compose_train


def test_mnist5k_without_a_digit():
    full, no7 = MNIST5kDataModule(batch_size=500), MNIST5kDataModule(batch_size=500, exclude_classes=[7])
    full.setup()
    no7.setup()
    n7 = int((full.train_set.labels == 7).sum())
    assert n7 > 0 and len(no7.train_set) == len(full.train_set) - n7
    seen = torch.cat([y for _, y in no7.train_dataloader()])
    assert len(seen) == len(no7.train_set) - len(no7.train_set) % 500 and not (seen == 7).any()
    assert len(no7.val_set) == len(full.val_set) and (no7.val_set.labels == 7).any()  # val keeps every class
    # real_images("train") is the training split the model saw, in split order, without the 7s
    keep = full.train_set.labels != 7
    assert torch.equal(no7.real_images("train"), full.real_images("train")[keep])
    sub = no7.real_images("train", n=50, seed=1)
    assert sub.shape == (50, 1, 28, 28)
    assert no7.name == "mnist5k_no7" and full.name == "mnist5k"  # cached real statistics are not shared


def test_composed_from_the_config():
    import hydra

    cfg = compose_train(["data.exclude_classes=[3,1]"])
    dm = hydra.utils.instantiate(cfg.data)
    assert dm.exclude_classes == (1, 3) and dm.name == "mnist5k_no1_no3"


class _Unlabelled(BaseDataModule):
    def __init__(self, **kw):
        super().__init__(batch_size=2, **kw)
        self.name, self.image_shape, self.num_classes = "unlabelled", (1, 2, 2), None

    def _build(self):
        x = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
        self.train_set = self.val_set = TensorImageDataset(x, torch.full((4,), -1))


@pytest.mark.parametrize("make,match", [
    (lambda: MNIST5kDataModule(exclude_classes=[10]), r"\[10\] not among the 10 classes"),
    (lambda: MNIST5kDataModule(exclude_classes=list(range(10))), "leaves no training items"),
    (lambda: _Unlabelled(exclude_classes=[0]), "has no class labels"),
])
def test_bad_exclusions(make, match):
    with pytest.raises(ValueError, match=match):
        make().setup()


@pytest.mark.parametrize("value", ["7", [1.5], [-1], [True]])
def test_bad_values(value):
    with pytest.raises(ValueError, match="exclude_classes must"):
        MNIST5kDataModule(exclude_classes=value)
