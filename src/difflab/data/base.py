"""The contract every difflab data module follows.

A data module is a :class:`lightning.LightningDataModule` with three attributes and one
extra method:

* ``name`` (str): identifies the pixels, used as a cache key by metrics (FID statistics);
  two modules whose real images differ never share a name (``mnist5k`` vs ``mnist5k_pad32``).
* ``image_shape``: ``(C, H, W)`` for images, ``(dim,)`` for toy point clouds.
* ``num_classes``: int, or None when the data has no labels (then every label is -1).
* ``real_images(split, n, seed)``: uint8 ``(N, C, H, W)`` exactly as stored, for FID.

``setup()`` builds ``train_set`` and ``val_set``; their items are ``(x, y)`` with ``x``
float32 in [-1, 1] of shape ``image_shape`` and ``y`` an int64 label. The train loader
shuffles with a permutation that is a pure function of ``(seed, epoch)``
(:class:`EpochShuffleSampler`) and is a :class:`ResumableDataLoader`, whose position in the
epoch is saved in Lightning checkpoints: a run resumed from any checkpoint, mid-epoch
included, sees the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset, get_worker_info

from difflab.errors import DifflabError

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


class DataNotFoundError(DifflabError, RuntimeError):
    """The data set is not where it should be; the message says what to put where."""


class CorruptDataError(DifflabError, RuntimeError):
    """Data files exist but cannot be read; the message names them and what to do."""


def info(msg: str, *args: Any) -> None:
    """Log on global rank 0 only, so DDP runs print each data line once."""
    if getattr(rank_zero_only, "rank", 0) == 0:
        log.info(msg, *args)


def warn(msg: str, *args: Any) -> None:
    if getattr(rank_zero_only, "rank", 0) == 0:
        log.warning(msg, *args)


# ----------------------------------------------------------------------------------------
# argument checks: ValueError naming the argument, the value and what is allowed


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}")
    return value


def check_split(split: Any) -> str:
    return check_choice("split", split, SPLITS)


def check_classes(name: str, value: Any) -> tuple[int, ...]:
    """A list of class labels (integers >= 0, no repeats) as a sorted tuple; None or [] is ()."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a list of class labels, e.g. [7], got {value!r}")
    items = list(value)
    if any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0 for c in items):
        raise ValueError(f"{name} must hold class labels (integers >= 0), got {items!r}")
    return tuple(sorted({int(c) for c in items}))


def subset_indices(total: int, n: int | None, seed: int, what: str = "images") -> torch.Tensor:
    """Indices of a fixed random subset of size ``n`` (sorted), or all when n is None/total."""
    if n is None or n == total:
        return torch.arange(total)
    check_int("n", n, minimum=1)
    if n > total:
        raise ValueError(f"n={n} {what} requested, but this split holds only {total}")
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(total, generator=g)[:n].sort().values


# ----------------------------------------------------------------------------------------
# datasets


class FlipRNG:
    """Random horizontal flips that are reproducible from the data seed.

    In the main process (``num_workers=0``) the generator is seeded with ``seed``; in a
    worker it is reseeded from the worker's seed, which the DataLoader derives from its own
    seeded generator. Either way the same configuration flips the same images.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._key: tuple[int, int] | None = None
        self._gen: torch.Generator | None = None

    def generator(self) -> torch.Generator:
        w = get_worker_info()
        key = (-1, self.seed) if w is None else (w.id, w.seed)
        if self._gen is None or key != self._key:
            self._gen = torch.Generator().manual_seed((self.seed if w is None else w.seed) % 2**63)
            self._key = key
        return self._gen

    def mask(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator()) < 0.5

    def __getstate__(self) -> dict[str, Any]:  # workers start from a clean generator
        return {"seed": self.seed, "_key": None, "_gen": None}


def uint8_to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 array -> float32 tensor in [-1, 1]; bit-identical to ``utils.images.from_uint8``.

    Done in numpy on purpose: torch runs a ~100k-element cast on its intra-op thread pool,
    which costs tens of milliseconds per batch when the CPU cores are busy (training on
    CPU, or a shared machine); numpy stays on the calling thread (< 1 ms per batch).
    """
    x = images.astype(np.float32)
    x /= np.float32(127.5)
    x -= np.float32(1.0)
    return torch.from_numpy(x)


class TensorImageDataset(Dataset):
    """Images held in memory as one uint8 array (N, C, H, W) plus int64 labels (N,).

    ``__getitem__`` is a slice and one scale; ``__getitems__`` (which the DataLoader calls
    with a whole batch of indices, also under a DistributedSampler) does a single gather
    and scale for the batch, so loading never starves a training step.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, random_flip: bool = False, seed: int = 0):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = np.ascontiguousarray(images.numpy())
        self.labels = labels.to(torch.int64).contiguous()
        self.random_flip = random_flip
        self._flip = FlipRNG(seed)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index]
        if self.random_flip and bool(self._flip.mask(1)[0]):
            x = x[..., ::-1]
        return uint8_to_unit(x), self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        idx = np.asarray(indices, dtype=np.int64)
        x = self.images.take(idx, axis=0)
        if self.random_flip:
            m = self._flip.mask(len(idx)).numpy()
            x[m] = x[m][..., ::-1]
        labels = self.labels[torch.from_numpy(idx)]
        return list(zip(uint8_to_unit(x).unbind(0), labels.unbind(0)))


class TensorPointDataset(Dataset):
    """Float32 points (N, D) and int64 labels (N,), for toy data."""

    def __init__(self, points: torch.Tensor, labels: torch.Tensor):
        self.points = points.to(torch.float32).contiguous()
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return self.points.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.points[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return list(zip(self.points[idx].unbind(0), self.labels[idx].unbind(0)))


# ----------------------------------------------------------------------------------------
# shuffling and resumable loading


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed from (seed, epoch); Python's hash of an int tuple is not randomized."""
    return hash((int(seed), int(epoch), 0x5EED)) & 0x7FFF_FFFF_FFFF_FFFF


class EpochShuffleSampler(RandomSampler):
    """A random permutation that is a pure function of ``(seed, epoch)``.

    Lightning calls ``set_epoch`` at the start of every epoch, also after a resume, so
    epoch ``e`` has the same order whether or not the run was interrupted before it. (A
    ``RandomSampler`` with a seeded generator would instead restart its stream on resume.)
    """

    def __init__(self, data_source: Sequence[Any], seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        yield from torch.randperm(len(self.data_source), generator=g).tolist()

    def __len__(self) -> int:
        return len(self.data_source)


def _sampler_epoch(loader: DataLoader) -> int | None:
    for s in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if s is not None and hasattr(s, "epoch"):
            return int(s.epoch)
    return None


class _SkipBatches:
    """A batch sampler that leaves out its first ``skip`` batches once (indices only, no loading)."""

    def __init__(self, batch_sampler: Any, skip: int) -> None:
        self.batch_sampler = batch_sampler
        self.skip = skip

    def __iter__(self):
        skip, self.skip = self.skip, 0
        for i, batch in enumerate(self.batch_sampler):
            if i >= skip:
                yield batch

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)


class _CountingIterator:
    """Creates the DataLoader's iterator at the first ``next()`` and counts the batches it yields.

    Lazy on purpose: Lightning creates the epoch's iterator before it calls ``set_epoch``
    on a resumed run, and worker processes fetch indices as soon as an iterator exists.
    """

    def __init__(self, loader: ResumableDataLoader) -> None:
        self.loader = loader
        self.it: Any = None
        loader._yielded = 0

    def __iter__(self) -> _CountingIterator:
        return self

    def __next__(self) -> Any:
        if self.it is None:
            self.it = self.loader._start_iterator()
        batch = next(self.it)
        self.loader._yielded += 1
        return batch


class ResumableDataLoader(DataLoader):
    """A DataLoader that Lightning saves in checkpoints (``state_dict`` / ``load_state_dict``).

    The state is ``{"epoch", "batches"}``: the sampler's epoch and how many batches of it
    were handed out. Lightning's loader fetches no batch ahead when the length is known, so
    at a checkpoint this equals the number of training steps done in the epoch. After
    ``load_state_dict`` the next iterator of that same epoch skips those batches (by index,
    nothing is loaded); an iterator of another epoch starts at its beginning.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._resume: tuple[int | None, int] | None = None
        self._skip_now = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": _sampler_epoch(self), "batches": int(self._yielded)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = (state_dict.get("epoch"), int(state_dict.get("batches", 0)))

    @property
    def _index_sampler(self) -> Any:
        base = super()._index_sampler
        return _SkipBatches(base, self._skip_now) if self._skip_now else base

    def _start_iterator(self) -> Any:
        skip = 0
        if self._resume is not None:
            epoch, batches = self._resume
            self._resume = None
            if epoch == _sampler_epoch(self) and 0 < batches < len(self):
                skip = batches
                info("resuming epoch %s after its first %d batches", epoch, batches)
        self._skip_now = skip
        try:
            it = DataLoader.__iter__(self)
        finally:
            self._skip_now = 0
        self._yielded = skip
        return it

    def __iter__(self) -> _CountingIterator:  # type: ignore[override]
        return _CountingIterator(self)


# ----------------------------------------------------------------------------------------
# the base module


class BaseDataModule(L.LightningDataModule):
    """Loader settings, argument checks, seeded shuffling and ``real_images``.

    Subclasses set ``name``, ``image_shape`` and ``num_classes`` in ``__init__``, build
    ``train_set`` / ``val_set`` in ``_build()`` and return uint8 images in ``_real_uint8``.

    Args:
        batch_size: training batch size (per process under DDP).
        val_batch_size: validation batch size; defaults to ``batch_size``.
        num_workers: DataLoader worker processes (0 = load in the training process).
        pin_memory: page-locked batches for faster host-to-GPU copies.
        persistent_workers: keep workers alive between epochs; only meaningful with
            ``num_workers > 0`` and ignored (with a log line) otherwise.
        drop_last: drop the last incomplete training batch (validation keeps all).
        seed: seeds the training shuffle (and random flips), so the order is reproducible.
        exclude_classes: class labels left out of the training split (and of
            ``real_images("train")``), e.g. ``[7]`` to train without the digit 7 and score it as
            an anomaly (``task=anomaly``); the val split keeps every class. The name gains
            ``_no<c>`` per class (``mnist5k_no7``), so cached real statistics are not mixed up.
            Needs labelled data (``num_classes`` set).
    """

    _name: str = "base"
    image_shape: tuple[int, ...] = ()
    num_classes: int | None = None

    def __init__(
        self,
        batch_size: int = 128,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        drop_last: bool = True,
        seed: int = 0,
        exclude_classes: Sequence[int] | None = (),
    ) -> None:
        super().__init__()
        self.exclude_classes = check_classes("exclude_classes", exclude_classes)
        self._train_keep: torch.Tensor | None = None  # indices into the full training split
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.val_batch_size = (
            self.batch_size if val_batch_size is None else check_int("val_batch_size", val_batch_size, minimum=1)
        )
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.pin_memory = check_bool("pin_memory", pin_memory)
        self.persistent_workers = check_bool("persistent_workers", persistent_workers)
        if self.persistent_workers and self.num_workers == 0:
            info("persistent_workers=true is ignored: it only applies with num_workers > 0")
            self.persistent_workers = False
        self.drop_last = check_bool("drop_last", drop_last)
        self.seed = check_int("seed", seed)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @property
    def name(self) -> str:  # type: ignore[override]
        """The subclass's name, plus ``_no<c>`` for each excluded class (the pixels differ)."""
        return self._name + "".join(f"_no{c}" for c in getattr(self, "exclude_classes", ()))

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    # -- subclass hooks -------------------------------------------------------------------
    def _build(self) -> None:
        """Create ``self.train_set`` and ``self.val_set``."""
        raise NotImplementedError

    def _real_uint8(self, split: str, indices: torch.Tensor | None) -> torch.Tensor:
        """uint8 (N, C, H, W) of ``split``, all when ``indices`` is None."""
        raise NotImplementedError

    def _split_len(self, split: str) -> int:
        ds = self.train_set if split == "train" else self.val_set
        assert ds is not None
        return len(ds)  # type: ignore[arg-type]

    # -- lightning ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None and self.val_set is not None:
            return
        self._build()
        if self.exclude_classes:
            self._exclude_classes()
        n_train = len(self.train_set)  # type: ignore[arg-type]
        if self.drop_last and n_train < self.batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the {n_train} training items of "
                f"{self.name!r}: with drop_last=true no batch would be left. Use a smaller "
                f"data.batch_size or data.drop_last=false"
            )

    def _exclude_classes(self) -> None:
        """Keep the training items whose label is not in ``exclude_classes`` (a Subset)."""
        excluded = list(self.exclude_classes)
        if self.num_classes is None:
            raise ValueError(f"exclude_classes={excluded}: data {self._name!r} has no class labels to exclude")
        bad = [c for c in excluded if c >= self.num_classes]
        if bad:
            raise ValueError(
                f"exclude_classes={excluded}: {bad} not among the {self.num_classes} classes of {self._name!r} "
                f"(labels 0..{self.num_classes - 1})"
            )
        labels = getattr(self.train_set, "labels", None)
        if labels is None:
            raise ValueError(f"exclude_classes={excluded}: the training set of {self._name!r} holds no labels tensor")
        keep = torch.nonzero(~torch.isin(torch.as_tensor(labels), torch.tensor(excluded))).flatten()
        if keep.numel() == 0:
            raise ValueError(f"exclude_classes={excluded} leaves no training items in {self._name!r}")
        self._train_keep = keep
        self.train_set = Subset(self.train_set, keep.tolist())
        info("%s: %d training items without the classes %s", self.name, keep.numel(), excluded)

    def _loader(self, dataset: Dataset | None, batch_size: int, train: bool) -> DataLoader:
        if dataset is None:
            self.setup()
            dataset = self.train_set if train else self.val_set
        cls = ResumableDataLoader if train else DataLoader
        return cls(
            dataset,
            batch_size=batch_size,
            sampler=EpochShuffleSampler(dataset, self.seed) if train else None,
            drop_last=self.drop_last if train else False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_batch_size, train=False)

    # -- metrics --------------------------------------------------------------------------
    def real_images(self, split: str = "train", n: int | None = None, seed: int = 0) -> torch.Tensor:
        """Real images of ``split`` as uint8 (N, C, H, W), exactly as stored (no flips).

        ``n=None`` gives all; a smaller ``n`` gives a fixed random subset chosen by
        ``seed``; a larger ``n`` raises ValueError saying how many there are.
        """
        check_split(split)
        self.setup()
        total = self._split_len(split)
        idx = subset_indices(total, n, seed, what=f"{split} images of {self.name!r}")
        every = n is None or n == total
        if split == "train" and self._train_keep is not None:  # indices of the kept items in the full split
            return self._real_uint8(split, self._train_keep if every else self._train_keep[idx])
        return self._real_uint8(split, None if every else idx)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes}, batch_size={self.batch_size})"
        )
