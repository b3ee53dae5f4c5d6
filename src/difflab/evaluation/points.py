"""Scores for point data (toy2d): sliced Wasserstein distance and MMD to real points.

The counterpart of :class:`~difflab.evaluation.score.Evaluator` for data of shape (D,): the same
interface (``score(batches, n, seed)``, ``floor()``, ``n_real``), so :func:`evaluate`, the FID
callback and sample.py score toy runs on the same path, and toy sweeps can be compared:
``swd/points/ddim50_eta1/n1000`` and ``mmd/points/...``, beside the floor at the same n (two
disjoint sets of real points). The reference is the first n of a seeded permutation of the
training points; the metrics are :func:`difflab.metrics.toy.sliced_wasserstein` (512 fixed
projections) and :func:`difflab.metrics.toy.gaussian_mmd2` (unbiased, median-heuristic bandwidth
on the reference). Under DDP the ranks' samples are gathered with ``torch.distributed``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from difflab.evaluation.protocol import dist_info, floor_key
from difflab.metrics.toy import gaussian_mmd2, sliced_wasserstein

__all__ = ["POINT_METRICS", "PointEvaluator"]

POINT_METRICS = ("swd", "mmd")


class PointEvaluator:
    """Scores samples of point data against real points under one protocol (metrics, n).

    Args:
        data: a data module with ``name``, ``image_shape`` (D,) and ``real_points(split, n, seed)``.
        metrics: any of ``swd``, ``mmd``.
        n: samples per score (and the size of the reference, capped by the training split).
        real_seed: chooses the reference (and held-out) points.
        floor: compute the floor too (once, on first use).
    """

    feature = "points"
    extractor = None

    def __init__(self, data: Any, metrics: Sequence[str] = POINT_METRICS, n: int = 1000, real_seed: int = 0,
                 floor: bool = True) -> None:
        metrics = tuple(dict.fromkeys(str(m).lower() for m in (metrics or POINT_METRICS)))
        bad = [m for m in metrics if m not in POINT_METRICS]
        if bad:
            raise ValueError(f"point data are scored with {', '.join(POINT_METRICS)}; unknown: {', '.join(bad)}")
        if isinstance(n, bool) or int(n) != n or n < 2:
            raise ValueError(f"n must be an integer >= 2, got {n!r}")
        if len(tuple(getattr(data, "image_shape", ()) or ())) != 1 or not hasattr(data, "real_points"):
            raise ValueError(f"PointEvaluator needs point data (shape (D,) and real_points); got {getattr(data, 'name', '?')!r}")
        self.data, self.metrics, self.n, self.real_seed = data, metrics, int(n), int(real_seed)
        self.with_floor = bool(floor)
        self._floor: dict[str, float] | None = None

    def _points(self, split: str) -> torch.Tensor:
        pts = torch.as_tensor(np.asarray(self.data.real_points(split)), dtype=torch.float64)
        return pts[torch.from_numpy(np.random.default_rng(self.real_seed).permutation(len(pts)))]

    @property
    def n_real(self) -> int:
        return min(self.n, len(self._points("train")))

    def _values(self, fake: torch.Tensor, real: torch.Tensor, seed: int) -> dict[str, float]:
        out = {}
        if "swd" in self.metrics:
            out["swd"] = sliced_wasserstein(fake, real, seed=seed)
        if "mmd" in self.metrics:
            out["mmd"] = gaussian_mmd2(fake, real)
        return out

    def floor(self) -> dict[str, float]:
        """``{floor key: value}``: held-out real points against the reference at the same n."""
        if self._floor is not None or not self.with_floor:
            return self._floor or {}
        train, val = self._points("train"), self._points("val")
        n = min(self.n, len(train))
        if len(val) >= n:
            heldout = val[:n]
        else:
            n = min(n, len(train) // 2)
            heldout = train[n : 2 * n]
        values = self._values(heldout, train[:n], self.real_seed)
        self._floor = {floor_key(m, self.feature, n): v for m, v in values.items()}
        return self._floor

    def score(self, batches: Iterator[torch.Tensor], n: int, seed: int = 0) -> dict[str, float]:
        """SWD/MMD of this rank's sample batches, gathered over the ranks (a collective)."""
        local = torch.cat([b.double().cpu() for b in batches]) if batches is not None else torch.zeros(0, 2)
        _, world = dist_info()
        if world > 1:
            parts: list[Any] = [None] * world
            torch.distributed.all_gather_object(parts, local)
            local = torch.cat(parts)
        return self._values(local, self._points("train")[: self.n_real], seed)
