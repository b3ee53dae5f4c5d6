"""2-D toy distributions (moons, swiss roll, eight Gaussians) for quick diffusion sanity checks.

Points are drawn in numpy from ``seed`` (train and val from independent streams), then
standardised to roughly unit scale with constants that depend only on the distribution
(name and noise), never on the sample: a per-axis mean and one overall standard deviation
(a scalar, so shapes are not stretched). For gaussians8 these are exact (mean 0, per-axis
std sqrt(2 + noise^2)); for moons and swiss_roll they come from a fixed 200,000-point
reference sample.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from difflab.data.base import (
    BaseDataModule,
    TensorPointDataset,
    check_choice,
    check_int,
    check_split,
    info,
    subset_indices,
)

TOY_NAMES = ("moons", "swiss_roll", "gaussians8")
DEFAULT_NOISE = {"moons": 0.05, "swiss_roll": 0.5, "gaussians8": 0.1}
NUM_CLASSES = {"moons": 2, "swiss_roll": None, "gaussians8": 8}


def moons(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles (as sklearn's make_moons, with random angles); label = moon."""
    y = rng.integers(0, 2, size=n)
    t = rng.uniform(0.0, np.pi, size=n)
    x = np.where(y[:, None] == 0, np.stack([np.cos(t), np.sin(t)], 1), np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1))
    return x + noise * rng.standard_normal((n, 2)), y


def swiss_roll(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The 2-D swiss roll (x, z of sklearn's make_swiss_roll): t = 1.5 pi (1 + 2u); no labels."""
    t = 1.5 * np.pi * (1 + 2 * rng.uniform(size=n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], 1)
    return x + noise * rng.standard_normal((n, 2)), np.full(n, -1)


def gaussians8(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Eight Gaussians of std ``noise`` centred on a circle of radius 2; label = mode."""
    y = rng.integers(0, 8, size=n)
    angle = 2 * np.pi * y / 8
    centres = 2.0 * np.stack([np.cos(angle), np.sin(angle)], 1)
    return centres + noise * rng.standard_normal((n, 2)), y


_GENERATORS = {"moons": moons, "swiss_roll": swiss_roll, "gaussians8": gaussians8}


@functools.lru_cache(maxsize=16)
def standardisation(name: str, noise: float) -> tuple[tuple[float, float], float]:
    """(per-axis mean, overall std) of the distribution ``name`` with ``noise``."""
    if name == "gaussians8":  # centres on a circle of radius 2: E|x|^2 = 4 + 2 noise^2
        return (0.0, 0.0), float(np.sqrt(2.0 + noise**2))
    x, _ = _GENERATORS[name](200_000, noise, np.random.default_rng(12345))
    mean = x.mean(0)
    return (float(mean[0]), float(mean[1])), float(np.sqrt(((x - mean) ** 2).mean()))


class Toy2DDataModule(BaseDataModule):
    """2-D points (N, 2) as a data module; ``image_shape == (2,)``.

    Args:
        name: ``"moons"``, ``"swiss_roll"`` or ``"gaussians8"``.
        n_train, n_val: number of points per split.
        noise: Gaussian noise std before standardising; None = the data set's default
            (moons 0.05, swiss_roll 0.5, gaussians8 0.1).
        seed: draws the points and seeds the training shuffle.
        **loader_args: see :class:`BaseDataModule`.

    Labels: moons 0/1, gaussians8 0..7 (the mode), swiss_roll -1 (``num_classes=None``).
    """

    def __init__(
        self,
        name: str = "moons",
        n_train: int = 20000,
        n_val: int = 2000,
        noise: float | None = None,
        seed: int = 0,
        batch_size: int = 256,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        drop_last: bool = True,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            drop_last=drop_last,
            seed=seed,
        )
        self.name = check_choice("name", name, TOY_NAMES)
        self.n_train = check_int("n_train", n_train, minimum=1)
        self.n_val = check_int("n_val", n_val, minimum=1)
        if noise is None:
            noise = DEFAULT_NOISE[name]
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
            raise ValueError(f"noise must be a number >= 0 (or null for the default), got {noise!r}")
        self.noise = float(noise)
        self.image_shape = (2,)
        self.num_classes = NUM_CLASSES[name]
        self._points: dict[str, torch.Tensor] = {}
        self.mean: np.ndarray | None = None
        self.std: float | None = None

    def _build(self) -> None:
        train_ss, val_ss = np.random.SeedSequence(self.seed).spawn(2)
        gen = _GENERATORS[self.name]
        xt, yt = gen(self.n_train, self.noise, np.random.default_rng(train_ss))
        xv, yv = gen(self.n_val, self.noise, np.random.default_rng(val_ss))
        mean, std = standardisation(self.name, self.noise)
        self.mean, self.std = np.asarray(mean), std
        for split, x, y in (("train", xt, yt), ("val", xv, yv)):
            pts = torch.from_numpy(((x - self.mean) / self.std).astype(np.float32))
            self._points[split] = pts
            setattr(self, f"{split}_set", TensorPointDataset(pts, torch.from_numpy(y.astype(np.int64))))
        info("toy2d %s: %d train / %d val points (noise %g)", self.name, self.n_train, self.n_val, self.noise)

    def real_points(self, split: str = "train", n: int | None = None, seed: int = 0) -> torch.Tensor:
        """Standardised float32 points (N, 2) of ``split`` (a fixed random subset when n is given)."""
        check_split(split)
        self.setup()
        pts = self._points[split]
        return pts[subset_indices(len(pts), n, seed, what=f"{split} points of {self.name!r}")].clone()

    def real_images(self, split: str = "train", n: int | None = None, seed: int = 0) -> torch.Tensor:
        raise NotImplementedError(
            f"data={self.name} is 2-D toy data and has no images (no FID); use real_points(split, n) instead"
        )
