import numpy as np
import pytest
import torch

from difflab.data import MNIST5kDataModule
from difflab.data.mnist5k import load_mnist5k


def test_attributes(mnist5k, mnist5k_pad32):
    assert (mnist5k.name, mnist5k.image_shape, mnist5k.num_classes) == ("mnist5k", (1, 28, 28), 10)
    assert (mnist5k_pad32.name, mnist5k_pad32.image_shape) == ("mnist5k_pad32", (1, 32, 32))


def test_split_sizes_and_class_balance(mnist5k):
    assert len(mnist5k.train_set) == 4500 and len(mnist5k.val_set) == 500
    assert np.bincount(mnist5k.val_set.labels.numpy(), minlength=10).tolist() == [50] * 10
    assert np.bincount(mnist5k.train_set.labels.numpy(), minlength=10).tolist() == [450] * 10


def test_items_dtype_shape_range(mnist5k):
    x, y = mnist5k.train_set[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and 0 <= int(y) < 10
    xb, yb = next(iter(mnist5k.train_dataloader()))
    assert xb.shape == (128, 1, 28, 28) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert xb.min() == -1.0 and xb.max() == 1.0  # 0 and 255 pixels map exactly to -1 and 1
    assert xb.ge(-1).all() and xb.le(1).all()


def test_scaling_matches_stored_digits(mnist5k):
    x_np, y_np = load_mnist5k("val")
    x, y = mnist5k.val_set[7]
    assert torch.equal(x[0], torch.from_numpy(x_np[7]).float() / 127.5 - 1)
    assert int(y) == y_np[7]
    # the batched path gives the same as item by item
    batch = mnist5k.val_set.__getitems__([3, 7, 11])
    assert torch.equal(batch[1][0], x) and int(batch[1][1]) == y_np[7]


def test_pad_to_32(mnist5k, mnist5k_pad32):
    x, _ = mnist5k_pad32.val_set[0]
    assert x.shape == (1, 32, 32)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (x[0][border] == -1).all()
    assert torch.equal(x[:, 2:30, 2:30], mnist5k.val_set[0][0])
    imgs = mnist5k_pad32.real_images("val", n=5)
    assert imgs.shape == (5, 1, 32, 32) and imgs.dtype == torch.uint8 and (imgs[..., :2] == 0).all()


def test_real_images_identical_to_stored(mnist5k):
    x_np, _ = load_mnist5k("train")
    imgs = mnist5k.real_images("train")
    assert imgs.dtype == torch.uint8 and imgs.shape == (4500, 1, 28, 28)
    assert np.array_equal(imgs[:, 0].numpy(), x_np)
    sub = mnist5k.real_images("val", n=100, seed=3)
    assert sub.shape == (100, 1, 28, 28)
    assert torch.equal(sub, mnist5k.real_images("val", n=100, seed=3))
    assert not torch.equal(sub, mnist5k.real_images("val", n=100, seed=4))
    with pytest.raises(ValueError, match="only 500"):
        mnist5k.real_images("val", n=501)
    with pytest.raises(ValueError, match="split"):
        mnist5k.real_images("test")


def test_seeded_shuffle_is_reproducible(mnist5k):
    def first_labels(dm):
        return torch.cat([y for _, (_, y) in zip(range(3), dm.train_dataloader())]).tolist()

    a = first_labels(mnist5k)
    assert a == first_labels(mnist5k)
    other = MNIST5kDataModule(batch_size=128, seed=1)
    other.setup()
    assert a != first_labels(other)
    val = next(iter(mnist5k.val_dataloader()))[1]
    assert torch.equal(val, mnist5k.val_set.labels[:128])  # validation is not shuffled


def test_drop_last_and_val_batch_size():
    dm = MNIST5kDataModule(batch_size=1000, val_batch_size=300)
    dm.setup()
    assert len(dm.train_dataloader()) == 4  # 4500 // 1000, last partial batch dropped
    assert len(dm.val_dataloader()) == 2  # 500 in 300 + 200, nothing dropped


def test_random_flip_train_only_and_reproducible():
    dm = MNIST5kDataModule(batch_size=64, random_flip=True, seed=5)
    dm.setup()
    xb, _ = next(iter(dm.train_dataloader()))
    dm2 = MNIST5kDataModule(batch_size=64, random_flip=True, seed=5)
    dm2.setup()
    assert torch.equal(xb, next(iter(dm2.train_dataloader()))[0])
    plain = MNIST5kDataModule(batch_size=64, seed=5)
    plain.setup()
    xp, _ = next(iter(plain.train_dataloader()))
    flipped = [torch.equal(a, b.flip(-1)) and not torch.equal(a, b) for a, b in zip(xb, xp)]
    same = [torch.equal(a, b) for a, b in zip(xb, xp)]
    assert all(f or s for f, s in zip(flipped, same)) and 10 < sum(flipped) < 54
    assert torch.equal(dm.val_set[0][0], plain.val_set[0][0])
