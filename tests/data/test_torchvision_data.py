"""Torchvision data sets from fake files in torchvision's layout; no network is used."""

import gzip
import pickle
import struct
import tarfile
from urllib.error import URLError

import numpy as np
import pytest
import torch

import difflab.data.torchvision_data as tvdata
from difflab.data import DataNotFoundError, TorchvisionDataModule


def _write_idx(path, array, compress=True):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _fake_mnist(root, folder="MNIST", n_train=40, n_val=20, compress=True):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[0, 0, 0], x[0, 0, 1] = 0, 255
        y = np.arange(n) % 10
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x, compress)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y, compress)
        out[prefix] = (x, y)
    return out


def _fake_cifar_batches(folder, n_per_batch=8):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = list(rng.integers(0, 10, size=n_per_batch))
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)
        batches[name] = (data, labels)
    return batches


def _no_network(*args, **kwargs):
    raise URLError("[Errno -2] Name or service not known")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_offline_mnist_message_says_what_to_fetch_where(tmp_path, monkeypatch, name):
    monkeypatch.setattr(tvdata, "download_and_extract_archive", _no_network)
    dm = TorchvisionDataModule(name=name, data_dir=str(tmp_path), download=True, batch_size=4)
    with pytest.raises(DataNotFoundError) as err:
        dm.setup()
    msg = str(err.value)
    folder = "MNIST" if name == "mnist" else "FashionMNIST"
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
              "t10k-labels-idx1-ubyte.gz"):
        assert str(tmp_path / folder / "raw" / f) in msg
    mirror = "https://ossci-datasets.s3.amazonaws.com/mnist/" if name == "mnist" else "fashion-mnist"
    assert mirror in msg and "Name or service not known" in msg


@pytest.mark.timeout(60)
def test_offline_cifar10_message(tmp_path, monkeypatch):
    monkeypatch.setattr(tvdata, "download_and_extract_archive", _no_network)
    dm = TorchvisionDataModule(name="cifar10", data_dir=str(tmp_path), batch_size=4)
    with pytest.raises(DataNotFoundError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert str(tmp_path / "cifar-10-python.tar.gz") in msg
    assert isinstance(err.value.__cause__, URLError)


def test_download_false_missing_files_never_touches_network(tmp_path, monkeypatch):
    def fail(*a, **k):
        raise AssertionError("must not download with download=false")

    monkeypatch.setattr(tvdata, "download_and_extract_archive", fail)
    dm = TorchvisionDataModule(name="cifar10", data_dir=str(tmp_path), download=False, batch_size=4)
    with pytest.raises(DataNotFoundError, match="download=false") as err:
        dm.setup()
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in str(err.value)
    assert "data.download=true" in str(err.value)


def test_socket_timeout_is_set_during_download_and_restored(tmp_path, monkeypatch):
    import socket

    seen = []

    def record(*a, **k):
        seen.append(socket.getdefaulttimeout())
        raise URLError("timed out")

    monkeypatch.setattr(tvdata, "download_and_extract_archive", record)
    before = socket.getdefaulttimeout()
    dm = TorchvisionDataModule(name="mnist", data_dir=str(tmp_path), download_timeout=7, batch_size=4)
    with pytest.raises(DataNotFoundError):
        dm.setup()
    assert seen and all(t == 7 for t in seen)
    assert socket.getdefaulttimeout() == before


@pytest.mark.parametrize("compress", [True, False])
def test_fake_mnist_loads_and_scales(tmp_path, compress):
    data = _fake_mnist(tmp_path, compress=compress)
    dm = TorchvisionDataModule(name="mnist", data_dir=str(tmp_path), download=False, batch_size=8)
    dm.setup()
    assert (dm.name, dm.image_shape, dm.num_classes) == ("mnist", (1, 28, 28), 10)
    assert len(dm.train_set) == 40 and len(dm.val_set) == 20
    x, y = dm.train_set[0]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28) and y.dtype == torch.int64
    assert x[0, 0, 0] == -1.0 and x[0, 0, 1] == 1.0
    assert torch.equal(x[0], torch.from_numpy(data["train"][0][0]).float() / 127.5 - 1)
    assert torch.equal(dm.real_images("val")[:, 0], torch.from_numpy(data["t10k"][0]))
    xb, yb = next(iter(dm.val_dataloader()))
    assert yb.tolist() == list(range(8))


def test_fake_fashion_mnist_pad_to_32(tmp_path):
    _fake_mnist(tmp_path, folder="FashionMNIST")
    dm = TorchvisionDataModule(name="fashion_mnist", data_dir=str(tmp_path), download=False, pad_to_32=True,
                               batch_size=8)
    dm.setup()
    assert dm.name == "fashion_mnist_pad32" and dm.image_shape == (1, 32, 32)
    x, _ = dm.val_set[1]
    assert x.shape == (1, 32, 32) and (x[:, :2] == -1).all() and (x[:, :, -2:] == -1).all()


def test_fake_cifar10_loads_from_batches(tmp_path):
    batches = _fake_cifar_batches(tmp_path / "cifar-10-batches-py")
    dm = TorchvisionDataModule(name="cifar10", data_dir=str(tmp_path), download=False, random_flip=True,
                               batch_size=8)
    dm.setup()
    assert (dm.name, dm.image_shape, dm.num_classes) == ("cifar10", (3, 32, 32), 10)
    assert len(dm.train_set) == 40 and len(dm.val_set) == 8
    data, labels = batches["test_batch"]
    x, y = dm.val_set[2]  # val: never flipped
    assert torch.equal(x, torch.from_numpy(data[2].reshape(3, 32, 32)).float() / 127.5 - 1)
    assert int(y) == labels[2]
    real = dm.real_images("train")
    assert real.dtype == torch.uint8 and real.shape == (40, 3, 32, 32)
    assert torch.equal(real[8], torch.from_numpy(batches["data_batch_2"][0][0].reshape(3, 32, 32)))


def test_fake_cifar10_tarball_is_extracted(tmp_path):
    src = tmp_path / "src"
    _fake_cifar_batches(src / "cifar-10-batches-py")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with tarfile.open(data_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    dm = TorchvisionDataModule(name="cifar10", data_dir=str(data_dir), download=False, batch_size=8)
    dm.setup()
    assert len(dm.train_set) == 40


def test_truncated_idx_file_is_named(tmp_path):
    _fake_mnist(tmp_path, compress=False)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:500])
    dm = TorchvisionDataModule(name="mnist", data_dir=str(tmp_path), download=False, batch_size=8)
    with pytest.raises(DataNotFoundError, match="t10k-images-idx3-ubyte is truncated"):
        dm.setup()


def test_bad_args():
    with pytest.raises(ValueError, match="name must be one of"):
        TorchvisionDataModule(name="imagenet")
    with pytest.raises(ValueError, match="pad_to_32"):
        TorchvisionDataModule(name="cifar10", pad_to_32=True)
    with pytest.raises(ValueError, match="download_timeout"):
        TorchvisionDataModule(name="mnist", download_timeout=0)
