"""High-level FID / KID helpers: real statistics, scoring, the data floor, protocol keys.

A score is only comparable with another score under the same protocol: the same feature
network (and weights), the same number of samples n, the same real reference (dataset,
split, n, seed) and the same sampler settings. Every function here carries the protocol
along with the numbers:

    extractor = build_feature_extractor("digits")
    cache = RealStatsCache("~/.cache/difflab/real_stats")
    real = real_stats(datamodule, "train", n=2000, extractor=extractor, cache=cache, seed=0)
    result = score(to_uint8(samples), real, extractor)          # {"fid": ..., "kid": ..., "protocol": {...}}
    floor = data_floor(datamodule, n=500, extractor=extractor, cache=cache)
    log({protocol_key("fid", "digits", "ddim", 50, 0.0, 2000): result["fid"]})   # "fid/digits/ddim50/n2000"

``datamodule_like`` is any object with ``.name`` (the data set) and
``.real_images(split, n, seed) -> uint8 (n, C, H, W)``; :class:`ArrayImages` wraps arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from difflab.metrics.cache import RealStats, RealStatsCache
from difflab.metrics.features import FeatureExtractor
from difflab.metrics.fid import FeatureStats, frechet_distance, kernel_inception_distance

__all__ = [
    "METRICS",
    "ArrayImages",
    "RealImageSource",
    "data_floor",
    "floor_key",
    "protocol_key",
    "real_stats",
    "score",
]

#: The metrics :func:`score` computes.
METRICS = ("fid", "kid")


class RealImageSource(Protocol):
    name: str

    def real_images(self, split: str, n: int, seed: int) -> torch.Tensor | np.ndarray: ...


class ArrayImages:
    """A :class:`RealImageSource` over in-memory uint8 arrays, one per split.

    ``real_images(split, n, seed)`` returns n images drawn without replacement with
    ``numpy.random.default_rng(seed)`` (kept in data set order); all of them when n equals
    the split size.
    """

    def __init__(self, name: str, splits: Mapping[str, np.ndarray]) -> None:
        self.name = name
        self.splits = {}
        for split, images in splits.items():
            images = np.asarray(images)
            if images.ndim == 3:
                images = images[:, None]
            if images.dtype != np.uint8 or images.ndim != 4:
                raise ValueError(f"split {split!r}: expected uint8 (N, C, H, W), got {images.dtype} {images.shape}")
            self.splits[split] = images

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(next(iter(self.splits.values())).shape[1:])

    def real_images(self, split: str, n: int, seed: int) -> np.ndarray:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; available: {', '.join(self.splits)}")
        images = self.splits[split]
        if n > len(images):
            raise ValueError(f"{self.name}/{split} has {len(images)} images; asked for n={n}")
        if n == len(images):
            return images
        idx = np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))
        return images[idx]


def _check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise ValueError(f"unknown metric(s) {bad or list(metrics)}; accepted: {', '.join(METRICS)}")
    return tuple(metrics)


def _check_n(n: int) -> int:
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2 (a covariance needs 2 samples), got {n}")
    return int(n)


def protocol_key(
    metric: str, feature_name: str, sampler_name: str, num_steps: int, eta: float = 0.0, n: int = 0
) -> str:
    """A log key naming the protocol, e.g. ``fid/digits/ddim50/n2000``.

    ``eta`` is appended only for DDIM with eta != 0 (``ddim50_eta1``); DDPM reads
    ``ddpm1000``. Scores under different keys are not comparable.
    """
    (metric,) = _check_metrics((metric,))
    n = _check_n(n)
    sampler = str(sampler_name).lower()
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
    part = f"{sampler}{int(num_steps)}"
    if sampler == "ddim" and eta != 0:
        part += f"_eta{float(eta):g}"
    return f"{metric}/{feature_name}/{part}/n{n}"


def floor_key(metric: str, feature_name: str, n: int) -> str:
    """The log key of a data floor (:func:`data_floor`), e.g. ``fid_floor/digits/n2000``.

    No sampler in the key: the floor scores real held-out images, so it is the same for
    every sampler; it is comparable with the scores ``{metric}/{feature_name}/*/n{n}``.
    """
    (metric,) = _check_metrics((metric,))
    return f"{metric}_floor/{feature_name}/n{_check_n(n)}"


def _as_uint8_nchw(images: Any, where: str) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        desc = f"{images.dtype} {tuple(images.shape)}" if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"{where} must return uint8 images (N, C, H, W), got {desc}")
    return images


def real_stats(
    datamodule_like: RealImageSource,
    split: str,
    n: int,
    extractor: FeatureExtractor,
    cache: RealStatsCache | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> RealStats:
    """Feature statistics of n real images of ``split``, from ``cache`` when present.

    The cache key is (dataset, split, feature network + weights hash, n, image shape, seed);
    ``datamodule_like.image_shape`` is used for it when defined, else the images are loaded
    first (the feature pass, the expensive part, is still skipped on a hit).
    """
    n = _check_n(n)
    images = None
    shape = getattr(datamodule_like, "image_shape", None)
    if shape is None:
        images = _as_uint8_nchw(datamodule_like.real_images(split, n, seed), "real_images")
        shape = tuple(images.shape[1:])
    key = {
        "dataset": str(datamodule_like.name),
        "split": split,
        "feature": extractor.name,
        "feature_hash": extractor.weights_hash,
        "n": n,
        "image_shape": [int(s) for s in shape],
        "seed": int(seed),
    }

    def compute() -> RealStats:
        imgs = images
        if imgs is None:
            imgs = _as_uint8_nchw(datamodule_like.real_images(split, n, seed), "real_images")
        if imgs.shape[0] != n:
            raise ValueError(
                f"{datamodule_like.name}/{split}: real_images returned {imgs.shape[0]} images, asked for n={n}"
            )
        if list(imgs.shape[1:]) != key["image_shape"]:
            raise ValueError(f"real_images returned shape {tuple(imgs.shape[1:])}, expected {shape}")
        return RealStats.from_features(extractor.extract(imgs, batch_size=batch_size), key)

    if cache is None:
        return compute()
    return cache.get_or_compute(key, compute)


def _fake_features(fake: Any, extractor: FeatureExtractor | None, batch_size: int) -> np.ndarray:
    """uint8 images (N, C, H, W) / iterable of such batches / float features (N, D) -> features."""
    if isinstance(fake, (np.ndarray, torch.Tensor)):
        is_uint8 = fake.dtype == (torch.uint8 if isinstance(fake, torch.Tensor) else np.uint8)
        if not is_uint8 and fake.ndim == 2:
            feats = fake.detach().cpu().numpy() if isinstance(fake, torch.Tensor) else fake
            return np.asarray(feats, dtype=np.float64)
        if not is_uint8:
            raise ValueError(
                f"score takes uint8 images (N, C, H, W) or float features (N, D); got {fake.dtype} "
                f"{tuple(fake.shape)}. Quantize samples in [-1, 1] with difflab.utils.images.to_uint8"
            )
    elif not isinstance(fake, Iterable):
        raise TypeError(f"score takes images or features, got {type(fake).__name__}")
    if extractor is None:
        raise ValueError("scoring images needs a feature extractor")
    return extractor.extract(fake, batch_size=batch_size)


def score(
    fake: Any,
    real: RealStats,
    extractor: FeatureExtractor | None,
    metrics: Sequence[str] = METRICS,
    *,
    batch_size: int = 256,
    kid_num_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """FID and/or KID of ``fake`` against ``real``, with the protocol.

    ``fake``: uint8 images (N, C, H, W) (tensor, array or an iterable of batches) or
    precomputed float features (N, D). Returns ``{"fid": float, "kid": float,
    "kid_std": float, "protocol": {...}}`` for the metrics asked; the protocol names the
    feature network and its weights hash, n of both sides and the real reference.
    """
    metrics = _check_metrics(metrics)
    if extractor is not None and real.key.get("feature_hash") not in (None, extractor.weights_hash):
        raise ValueError(
            f"real statistics were computed with feature network {real.key.get('feature')!r} "
            f"(weights {real.key.get('feature_hash')}), not {extractor.name!r} ({extractor.weights_hash})"
        )
    feats = _fake_features(fake, extractor, batch_size)
    if feats.ndim != 2 or feats.shape[1] != real.mu.shape[0]:
        raise ValueError(f"fake features have shape {feats.shape}; the real ones have dim {real.mu.shape[0]}")
    n_fake = _check_n(feats.shape[0])

    out: dict[str, Any] = {}
    if "fid" in metrics:
        stats = FeatureStats.from_features(feats)
        out["fid"] = frechet_distance(stats.mean(), stats.cov(), real.mu, real.sigma)
    if "kid" in metrics:
        out["kid"], out["kid_std"] = kernel_inception_distance(
            feats, real.features, num_subsets=kid_num_subsets, subset_size=kid_subset_size, seed=seed
        )
    protocol: dict[str, Any] = {
        "feature": extractor.name if extractor is not None else real.key.get("feature"),
        "feature_hash": extractor.weights_hash if extractor is not None else real.key.get("feature_hash"),
        "n_fake": n_fake,
        "n_real": real.n,
        "real": {k: v for k, v in real.key.items() if k not in ("feature", "feature_hash")},
    }
    if "kid" in metrics:
        protocol["kid"] = {
            "num_subsets": kid_num_subsets,
            "subset_size": min(kid_subset_size, n_fake, real.n),
            "seed": seed,
        }
    out["protocol"] = protocol
    return out


def data_floor(
    datamodule_like: RealImageSource,
    n: int,
    extractor: FeatureExtractor,
    cache: RealStatsCache | None = None,
    seed: int = 0,
    metrics: Sequence[str] = METRICS,
    reference_split: str = "train",
    heldout_split: str = "val",
    **score_kwargs: Any,
) -> dict[str, Any]:
    """The score of real held-out images against the real reference, both at the same n.

    This is the best a perfect generator can reach under the protocol (FID is biased
    upwards at finite n); read a model's score against it, never against 0.
    """
    metrics = _check_metrics(metrics)
    n = _check_n(n)
    reference = real_stats(datamodule_like, reference_split, n, extractor, cache, seed)
    heldout = real_stats(datamodule_like, heldout_split, n, extractor, cache, seed)
    result = score(heldout.features, reference, extractor, metrics, seed=seed, **score_kwargs)
    result["protocol"]["fake"] = f"real {datamodule_like.name}/{heldout_split} (data floor)"
    return result
