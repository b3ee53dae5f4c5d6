"""Latents of a data set, encoded once per data set and autoencoder and cached on disk.

:class:`LatentDataModule` wraps any image data module and an encoder (a
:class:`difflab.first_stage.FirstStage`, or anything with ``encode``, ``latent_shape`` and
``fingerprint``). On setup it encodes every train and val image once (in order, without
random flips) and keeps the posterior q(z | x) = N(mean, exp(logvar)) of each, so that the
diffusion model can sample from the posterior at every step as LDM does
(arXiv:2112.10752, sec. 3.1) or take its mean. The cache file's key is a hash of the data
set's name, its pixels and the encoder's fingerprint: another data set or another
autoencoder (other weights, other padding) gets another file.

Items are ``(moments, y)`` with ``moments`` = cat(mean, logvar) along the channels, shape
(2 C', H', W'). ``name``, ``image_shape``, ``num_classes`` and ``real_images`` are the
wrapped module's (the evaluation path scores decoded samples against the real pixels);
``latent_shape`` is (C', H', W').
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from difflab.data.base import BaseDataModule, info

__all__ = ["LatentDataModule", "LatentDataset"]


class LatentDataset(Dataset):
    """Posterior moments (N, 2 C', H', W') float32 and int64 labels (N,)."""

    def __init__(self, moments: torch.Tensor, labels: torch.Tensor) -> None:
        self.moments = moments.float().contiguous()
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return self.moments.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.moments[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return list(zip(self.moments[idx].unbind(0), self.labels[idx].unbind(0)))


class LatentDataModule(BaseDataModule):
    """The latents of ``inner``'s images under ``encoder``, with the inner module's loader settings.

    Args:
        inner: an image data module (``image_shape`` (C, H, W), ``train_set`` / ``val_set``
            of ``(x, y)`` with x in [-1, 1]).
        encoder: ``encode(x) -> (mean, logvar)``, ``latent_shape``, ``fingerprint``.
        cache_dir: the cache files go to ``<cache_dir>/latents/`` (None: not cached).
        batch_size: images per encoder call while filling the cache.
        device: where the encoder runs while filling the cache.
    """

    def __init__(self, inner: Any, encoder: Any, cache_dir: str | Path | None = None, batch_size: int = 256,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(
            batch_size=inner.batch_size, val_batch_size=inner.val_batch_size, num_workers=inner.num_workers,
            pin_memory=inner.pin_memory, persistent_workers=inner.persistent_workers, drop_last=inner.drop_last,
            seed=inner.seed,
        )
        self.inner, self.encoder = inner, encoder
        self.name = inner.name
        self.image_shape = tuple(inner.image_shape)
        self.num_classes = inner.num_classes
        self.latent_shape = tuple(int(s) for s in encoder.latent_shape)
        self.cache_dir = Path(cache_dir) / "latents" if cache_dir else None
        self.encode_batch_size, self.device = int(batch_size), device
        self.cache_path: Path | None = None
        self.cache_hit = False
        self._moments: dict[str, torch.Tensor] = {}

    def prepare_data(self) -> None:
        self.inner.prepare_data()

    # -- the cache ------------------------------------------------------------------------
    def _images(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """All float images and labels of ``split`` in order, without random flips."""
        ds = self.inner.train_set if split == "train" else self.inner.val_set
        base = getattr(ds, "dataset", ds)  # a Subset (exclude_classes) keeps its dataset's flips
        flip = getattr(base, "random_flip", None)
        if flip:
            base.random_flip = False
        try:
            xs, ys = [], []
            for x, y in DataLoader(ds, batch_size=self.encode_batch_size, shuffle=False):
                xs.append(x.float())
                ys.append(torch.as_tensor(y).long())
        finally:
            if flip:
                base.random_flip = flip
        return torch.cat(xs), torch.cat(ys)

    def cache_key(self, images: dict[str, torch.Tensor]) -> dict[str, Any]:
        """What the cache file is keyed on: data set, its pixels, encoder."""
        pixels = hashlib.sha256()
        for split in sorted(images):
            pixels.update(split.encode())
            pixels.update(images[split].numpy().tobytes())
        return {"dataset": str(self.name), "image_shape": list(self.image_shape), "pixels": pixels.hexdigest()[:16],
                "sizes": {s: int(len(v)) for s, v in images.items()}, "encoder": str(self.encoder.fingerprint),
                "latent_shape": list(self.latent_shape)}

    def _build(self) -> None:
        self.inner.setup("fit")
        data = {split: self._images(split) for split in ("train", "val")}
        key = self.cache_key({split: x for split, (x, _) in data.items()})
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        path = self.cache_dir / f"{self.name}_{digest}.pt" if self.cache_dir else None
        self.cache_path = path
        stored = None
        if path is not None and path.is_file():
            try:
                stored = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # a damaged cache file is encoded again
                stored = None
            if not isinstance(stored, dict) or stored.get("key") != key:
                stored = None
        self.cache_hit = stored is not None
        if stored is None:
            stored = {"key": key}
            for split, (x, y) in data.items():
                means, logvars = [], []
                for chunk in x.split(self.encode_batch_size):
                    mean, logvar = self.encoder.encode(chunk.to(self.device))
                    means.append(mean.float().cpu())
                    logvars.append(logvar.float().cpu())
                stored[split] = {"mean": torch.cat(means), "logvar": torch.cat(logvars), "labels": y}
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                torch.save(stored, tmp)
                tmp.replace(path)  # atomic: a concurrent reader never sees half a file
            info("%s: encoded %d train / %d val images to latents %s%s", self.name, len(data["train"][0]),
                 len(data["val"][0]), self.latent_shape, f" (cached in {path})" if path else "")
        else:
            info("%s: latents %s read from the cache %s", self.name, self.latent_shape, path)
        for split in ("train", "val"):
            s = stored[split]
            self._moments[split] = torch.cat([s["mean"], s["logvar"]], dim=1)
            setattr(self, f"{split}_set", LatentDataset(self._moments[split], s["labels"]))

    def posterior(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of every image of ``split``, (N, C', H', W') each."""
        self.setup()
        return self._moments[split].chunk(2, dim=1)

    def latent_std(self, sample_posterior: bool = True) -> float:
        """The standard deviation of the training latents over all elements, as LDM's
        ``scale_by_std`` (1 / std is the scale factor). With ``sample_posterior`` it is the
        std of z ~ q(z | x) in closed form (law of total variance: Var z = Var mean + E exp(logvar)),
        else the std of the means."""
        mean, logvar = (t.double() for t in self.posterior("train"))
        var = mean.var(unbiased=True)
        if sample_posterior:
            var = var + logvar.exp().mean()
        return float(var.sqrt())

    # -- the wrapped module ---------------------------------------------------------------
    def real_images(self, split: str = "train", n: int | None = None, seed: int = 0) -> torch.Tensor:
        return self.inner.real_images(split, n, seed)

    def _real_uint8(self, split: str, indices: torch.Tensor | None) -> torch.Tensor:
        return self.inner._real_uint8(split, indices)

    def __repr__(self) -> str:
        return f"LatentDataModule({self.inner!r}, latent_shape={self.latent_shape}, cache={self.cache_path})"
