"""The shared contract: argument checks, loader settings, registry."""

import logging

import pytest
import torch

import difflab.data as data
from difflab.data import DATAMODULES, BaseDataModule, MNIST5kDataModule
from difflab.data.base import TensorImageDataset


def test_registry_and_exports():
    assert set(DATAMODULES) == {"mnist5k", "torchvision", "image_folder", "toy2d"}
    assert all(issubclass(cls, BaseDataModule) for cls in DATAMODULES.values())
    assert issubclass(data.DataNotFoundError, RuntimeError)
    for name in data.__all__:
        assert hasattr(data, name)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"batch_size": 0}, r"batch_size must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, r"batch_size must be an integer, got 2.5"),
        ({"val_batch_size": 0}, "val_batch_size"),
        ({"num_workers": -1}, r"num_workers must be an integer >= 0, got -1"),
        ({"pin_memory": "yes"}, "pin_memory must be true or false"),
        ({"drop_last": None}, "drop_last"),
        ({"seed": "a"}, "seed"),
        ({"pad_to_32": 1}, "pad_to_32"),
    ],
)
def test_bad_args_name_the_arg(kw, match):
    with pytest.raises(ValueError, match=match):
        MNIST5kDataModule(**kw)


def test_loader_settings_and_persistent_workers_note(caplog):
    with caplog.at_level(logging.INFO, logger="difflab.data.base"):
        dm = MNIST5kDataModule(batch_size=32, val_batch_size=50, persistent_workers=True, pin_memory=True)
    assert "persistent_workers=true is ignored" in caplog.text and dm.persistent_workers is False
    dm.setup()
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert train.batch_size == 32 and train.drop_last and train.pin_memory and train.num_workers == 0
    assert val.batch_size == 50 and not val.drop_last
    assert isinstance(train.sampler, torch.utils.data.RandomSampler)
    assert isinstance(val.sampler, torch.utils.data.SequentialSampler)
    dm2 = MNIST5kDataModule(batch_size=8, num_workers=2, persistent_workers=True)
    assert dm2.persistent_workers is True


def test_dataloader_before_setup_sets_up():
    dm = MNIST5kDataModule(batch_size=16)
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28)


def test_works_under_a_distributed_sampler():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    ds = TensorImageDataset(images, torch.arange(10))
    sampler = torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=1, shuffle=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, sampler=sampler)
    (x, y), = list(loader)
    assert y.tolist() == [1, 3, 5, 7, 9]
    assert torch.equal(x[:, 0, 0, 0], y.float() / 127.5 - 1)


def test_tensor_dataset_checks_input():
    with pytest.raises(ValueError, match="uint8"):
        TensorImageDataset(torch.zeros(2, 1, 2, 2), torch.zeros(2))
