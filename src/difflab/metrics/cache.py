"""On-disk cache of real-data feature statistics.

Real statistics are computed once per protocol -- (dataset, split, feature network and a
hash of its weights, n, image shape, seed) -- and stored as ``<readable>-<hash>.npz`` (mu,
sigma, features; loaded with ``allow_pickle=False``) next to a ``.json`` sidecar holding the
key. The file name is a hash of the key, so changing any part of the protocol gives a new
entry, never a silently reused stale one. Writes are atomic (tmp file + ``os.replace``), so
concurrent writers (e.g. DDP ranks) never leave a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


__all__ = ["REQUIRED_KEY_FIELDS", "RealStats", "RealStatsCache", "key_hash"]

#: Every cache key names these; together they define the real-statistics protocol.
REQUIRED_KEY_FIELDS = ("dataset", "split", "feature", "feature_hash", "n", "image_shape", "seed")

_FORMAT_VERSION = 1


@dataclass
class RealStats:
    """Feature statistics of n real images: mean (D,), covariance (D, D), features (n, D)."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    key: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @classmethod
    def from_features(cls, features: np.ndarray, key: Mapping[str, Any] | None = None) -> RealStats:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"real statistics need features (n >= 2, D), got shape {features.shape}")
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), features, dict(key or {}))


def _canonical(key: Mapping[str, Any]) -> dict[str, Any]:
    """JSON round trip (tuples -> lists), so the stored key compares equal to the asked one."""
    return json.loads(json.dumps(dict(key), sort_keys=True))


def key_hash(key: Mapping[str, Any]) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of ``key``."""
    blob = json.dumps({"format": _FORMAT_VERSION, **dict(key)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache must be readable by others
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class RealStatsCache:
    """``get_or_compute(key, compute_fn)``: load the statistics of ``key`` or compute and store them."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir).expanduser()

    def path(self, key: Mapping[str, Any]) -> Path:
        """The .npz file of ``key`` (its .json sidecar has the same stem)."""
        self._check_key(key)
        readable = f"{key['dataset']}-{key['split']}-{key['feature']}-n{key['n']}"
        readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", readable)
        return self.cache_dir / f"{readable}-{key_hash(key)}.npz"

    @staticmethod
    def _check_key(key: Mapping[str, Any]) -> None:
        missing = [k for k in REQUIRED_KEY_FIELDS if k not in key]
        if missing:
            raise ValueError(
                f"real-statistics cache key lacks {missing}; it must name {list(REQUIRED_KEY_FIELDS)}"
            )
        try:
            json.dumps(dict(key))
        except TypeError as e:
            raise ValueError(f"real-statistics cache key must be JSON-serializable: {e}") from e

    def load(self, key: Mapping[str, Any]) -> RealStats | None:
        """The cached statistics of ``key``, or None if absent (or stored under another key)."""
        path = self.path(key)
        sidecar = path.with_suffix(".json")
        if not (path.is_file() and sidecar.is_file()):
            return None
        stored = json.loads(sidecar.read_text())
        if stored.get("key") != _canonical(key):  # a hash collision or a hand-edited file
            return None
        with np.load(path, allow_pickle=False) as data:
            mu, sigma, features = data["mu"], data["sigma"], data["features"]
        if features.shape[0] != key["n"] or sigma.shape != (mu.size, mu.size):
            raise ValueError(
                f"corrupt real-statistics cache file {path}: n={features.shape[0]} (key says "
                f"{key['n']}), mu {mu.shape}, sigma {sigma.shape}; delete it to recompute"
            )
        return RealStats(mu, sigma, features, _canonical(key))

    def save(self, key: Mapping[str, Any], stats: RealStats) -> Path:
        path = self.path(key)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        arrays = {
            "mu": np.asarray(stats.mu, dtype=np.float64),
            "sigma": np.asarray(stats.sigma, dtype=np.float64),
            "features": np.asarray(stats.features, dtype=np.float64),
        }
        _atomic_write(path, lambda f: np.savez(f, **arrays))
        sidecar = {"format": _FORMAT_VERSION, "key": _canonical(key), "file": path.name}
        _atomic_write(
            path.with_suffix(".json"),
            lambda f: f.write(json.dumps(sidecar, indent=2, sort_keys=True) + "\n"),
            mode="w",
        )
        return path

    def get_or_compute(
        self, key: Mapping[str, Any], compute_fn: Callable[[], RealStats | np.ndarray]
    ) -> RealStats:
        """Cached statistics of ``key``; on a miss, ``compute_fn()`` (features (n, D) or a
        :class:`RealStats`) is called once and its result stored."""
        cached = self.load(key)
        if cached is not None:
            return cached
        result = compute_fn()
        stats = result if isinstance(result, RealStats) else RealStats.from_features(result)
        if stats.n != key["n"]:
            raise ValueError(f"compute_fn returned {stats.n} feature rows, the key says n={key['n']}")
        stats.key = _canonical(key)
        self.save(key, stats)
        return stats
