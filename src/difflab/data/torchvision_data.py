"""MNIST, Fashion-MNIST and CIFAR-10 in torchvision's on-disk layout, held in memory as uint8.

Files are fetched with torchvision's downloader (URLs and checksums are read from the
torchvision dataset classes, so they stay in sync) and then read directly: the idx files
(plain or ``.gz``) and the CIFAR pickles become one uint8 tensor per split, so batches
need no PIL and no per-item transforms. "val" is the official test split.

Layout under ``data_dir`` (what torchvision expects):

* mnist:          ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``
* fashion_mnist:  ``FashionMNIST/raw/`` with the same four file names
* cifar10:        ``cifar-10-batches-py/{data_batch_1..5,test_batch}``, extracted from
  ``cifar-10-python.tar.gz`` (a tarball placed in ``data_dir`` is extracted on setup)

Offline, or with ``download=False``, missing files raise :class:`DataNotFoundError` whose
message lists each URL and the exact path to put it at.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import pickle
import socket
import struct
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets as tvd
from torchvision.datasets.utils import download_and_extract_archive, extract_archive

from difflab.data.base import (
    BaseDataModule,
    DataNotFoundError,
    TensorImageDataset,
    check_bool,
    check_choice,
    info,
)
from difflab.data.mnist5k_datamodule import pad_to_32 as _pad_to_32


@dataclass(frozen=True)
class _Spec:
    folder: str  # torchvision's folder under data_dir
    shape: tuple[int, int, int]
    num_classes: int


SPECS: dict[str, _Spec] = {
    "mnist": _Spec("MNIST", (1, 28, 28), 10),
    "fashion_mnist": _Spec("FashionMNIST", (1, 28, 28), 10),
    "cifar10": _Spec("cifar-10-batches-py", (3, 32, 32), 10),
}
_TV_CLASS = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "val": ["test_batch"]}


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torchvision's urlopen calls have no timeout; a firewall that drops packets would hang."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (LeCun's MNIST format), plain or gzip-compressed, of uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataNotFoundError(f"{path} is not an idx file (bad magic number); delete it and fetch it again")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise DataNotFoundError(f"{path}: expected uint8 idx data (type 0x08), got type {dtype_code:#04x}")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataNotFoundError(
            f"{path} is truncated: header says {dims} ({int(np.prod(dims))} bytes), found {body.size}; "
            "delete it and fetch it again"
        )
    return body.reshape(dims).copy()  # frombuffer is read-only


class TorchvisionDataModule(BaseDataModule):
    """MNIST / Fashion-MNIST / CIFAR-10 through torchvision's files, in memory as uint8.

    Args:
        name: ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
        data_dir: folder holding torchvision's layout (see the module docstring).
        download: fetch missing files (with ``download_timeout`` seconds per socket
            operation); offline this raises :class:`DataNotFoundError` saying what to fetch.
        pad_to_32: (mnist, fashion_mnist) pad with background to 32x32; the name gains
            ``_pad32``.
        random_flip: random horizontal flips of training images (used for CIFAR-10 in the
            DDPM paper, Ho et al. 2020, Appendix B).
        **loader_args: see :class:`BaseDataModule`.
    """

    def __init__(
        self,
        name: str = "cifar10",
        data_dir: str = "data",
        download: bool = True,
        pad_to_32: bool = False,
        random_flip: bool = False,
        batch_size: int = 128,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        drop_last: bool = True,
        seed: int = 0,
        download_timeout: float = 30.0,
        exclude_classes: list[int] | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            drop_last=drop_last,
            seed=seed,
            exclude_classes=exclude_classes,
        )
        check_choice("name", name, tuple(SPECS))
        self.dataset = name
        self.data_dir = Path(os.path.expanduser(str(data_dir))).resolve()
        self.download = check_bool("download", download)
        self.pad_to_32 = check_bool("pad_to_32", pad_to_32)
        self.random_flip = check_bool("random_flip", random_flip)
        if not isinstance(download_timeout, (int, float)) or download_timeout <= 0:
            raise ValueError(f"download_timeout must be a number of seconds > 0, got {download_timeout!r}")
        self.download_timeout = float(download_timeout)
        spec = SPECS[name]
        if self.pad_to_32 and spec.shape[-1] == 32:
            raise ValueError(f"pad_to_32 applies to 28x28 data sets (mnist, fashion_mnist); {name} is already 32x32")
        c, h, w = spec.shape
        self.name = f"{name}_pad32" if self.pad_to_32 else name
        self.image_shape = (c, 32, 32) if self.pad_to_32 else (c, h, w)
        self.num_classes = spec.num_classes
        self._images: dict[str, torch.Tensor] = {}

    # -- where the files are ----------------------------------------------------------------
    @property
    def folder(self) -> Path:
        """The folder the data files are read from."""
        if self.dataset == "cifar10":
            return self.data_dir / SPECS["cifar10"].folder
        return self.data_dir / SPECS[self.dataset].folder / "raw"

    def _idx_path(self, stem: str) -> Path | None:
        for p in (self.folder / stem, self.folder / f"{stem}.gz"):
            if p.is_file():
                return p
        return None

    def missing_files(self) -> list[str]:
        """Data files that are not on disk (empty when the data set is ready to load)."""
        if self.dataset == "cifar10":
            names = _CIFAR_FILES["train"] + _CIFAR_FILES["val"]
            return [str(self.folder / n) for n in names if not (self.folder / n).is_file()]
        stems = [s for pair in _IDX_FILES.values() for s in pair]
        return [str(self.folder / f"{s}.gz") for s in stems if self._idx_path(s) is None]

    def _what_to_fetch(self) -> str:
        """One line per file: URL -> destination path."""
        if self.dataset == "cifar10":
            url, fname = tvd.CIFAR10.url, tvd.CIFAR10.filename
            return (
                f"  {url}\n    -> {self.data_dir / fname}\n"
                f"(it is extracted to {self.folder}/ on the next run; extracting it yourself with "
                f"`tar -xzf {fname}` inside {self.data_dir} works too)"
            )
        cls = _TV_CLASS[self.dataset]
        mirrors = list(cls.mirrors)
        lines = [f"  {mirrors[0]}{fname}\n    -> {self.folder / fname}" for fname, _ in cls.resources]
        if len(mirrors) > 1:
            lines.append(f"(other mirrors: {', '.join(mirrors[1:])})")
        lines.append("(the .gz files are read as they are; no need to extract them)")
        return "\n".join(lines)

    # -- getting them -----------------------------------------------------------------------
    def _extract_local_archive(self) -> None:
        archive = self.data_dir / tvd.CIFAR10.filename
        if self.dataset == "cifar10" and archive.is_file() and self.missing_files():
            info("extracting %s", archive)
            try:
                extract_archive(str(archive), str(self.data_dir))
            except (tarfile.TarError, EOFError, OSError) as e:
                raise DataNotFoundError(
                    f"{archive} could not be extracted ({e}); it is probably incomplete: delete it and fetch it "
                    f"again:\n{self._what_to_fetch()}"
                ) from e

    def _download(self) -> None:
        with _socket_timeout(self.download_timeout):
            if self.dataset == "cifar10":
                cls = tvd.CIFAR10
                download_and_extract_archive(cls.url, str(self.data_dir), filename=cls.filename, md5=cls.tgz_md5)
                return
            cls = _TV_CLASS[self.dataset]
            self.folder.mkdir(parents=True, exist_ok=True)
            for fname, md5 in cls.resources:
                if self._idx_path(fname[: -len(".gz")]) is not None:
                    continue
                errors = []
                for mirror in cls.mirrors:
                    try:
                        download_and_extract_archive(
                            f"{mirror}{fname}", download_root=str(self.folder), filename=fname, md5=md5
                        )
                        break
                    except Exception as e:  # URLError, timeouts, md5 mismatch: try the next mirror
                        errors.append(f"{mirror}: {e}")
                else:
                    raise RuntimeError(f"could not download {fname}: " + "; ".join(errors))

    def ensure_files(self) -> None:
        """Make sure every data file is on disk: extract, download, or raise DataNotFoundError."""
        self._extract_local_archive()
        missing = self.missing_files()
        if not missing:
            return
        listed = "\n".join(f"  {m}" for m in missing)
        if not self.download:
            raise DataNotFoundError(
                f"data={self.dataset}: these files are missing and download=false:\n{listed}\n"
                f"Fetch them into {self.folder if self.dataset != 'cifar10' else self.data_dir}:\n"
                f"{self._what_to_fetch()}\nor set data.download=true (data_dir is {self.data_dir})"
            )
        info("downloading %s to %s", self.dataset, self.data_dir)
        try:
            self._download()
        except Exception as e:  # offline: URLError / socket errors wrapped by torchvision
            raise DataNotFoundError(
                f"data={self.dataset}: could not download the data set ({type(e).__name__}: {e}).\n"
                f"Without network access, fetch these files on another machine and copy them here:\n"
                f"{self._what_to_fetch()}\n(data_dir is {self.data_dir}; set it with data.data_dir or paths.data_dir)"
            ) from e
        self._extract_local_archive()
        still = self.missing_files()
        if still:
            raise DataNotFoundError(
                f"data={self.dataset}: after downloading, these files are still missing:\n"
                + "\n".join(f"  {m}" for m in still)
            )

    # -- loading ----------------------------------------------------------------------------
    def _load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dataset == "cifar10":
            xs, ys = [], []
            for fname in _CIFAR_FILES[split]:
                path = self.folder / fname
                try:
                    with open(path, "rb") as f:
                        entry = pickle.load(f, encoding="latin1")
                    xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                    ys.append(np.asarray(entry["labels"], dtype=np.int64))
                except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
                    raise DataNotFoundError(
                        f"{path} is not a valid CIFAR-10 batch ({type(e).__name__}: {e}); delete "
                        f"{self.folder} and fetch the data again:\n{self._what_to_fetch()}"
                    ) from e
            x, y = np.concatenate(xs), np.concatenate(ys)
        else:
            img_stem, lbl_stem = _IDX_FILES[split]
            x = read_idx(self._idx_path(img_stem))[:, None]  # type: ignore[arg-type]
            y = read_idx(self._idx_path(lbl_stem)).astype(np.int64)  # type: ignore[arg-type]
            if x.shape[0] != y.shape[0] or x.shape[1:] != (1, 28, 28):
                raise DataNotFoundError(
                    f"{self.folder}: {img_stem} holds {x.shape} images but {lbl_stem} {y.shape} labels"
                )
        images = torch.from_numpy(np.ascontiguousarray(x))
        if self.pad_to_32:
            images = _pad_to_32(images)
        return images, torch.from_numpy(y)

    def prepare_data(self) -> None:
        self.ensure_files()

    def _build(self) -> None:
        self.ensure_files()
        for split in ("train", "val"):
            images, labels = self._load_split(split)
            self._images[split] = images
            ds = TensorImageDataset(images, labels, random_flip=self.random_flip and split == "train", seed=self.seed)
            setattr(self, f"{split}_set", ds)
        info("%s: %d train / %d val images, %s", self.name, len(self.train_set), len(self.val_set), self.image_shape)

    def _real_uint8(self, split: str, indices: torch.Tensor | None) -> torch.Tensor:
        images = self._images[split]
        return images.clone() if indices is None else images[indices]
