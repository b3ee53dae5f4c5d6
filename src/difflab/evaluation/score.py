"""Draw n samples under a protocol, quantise them as a PNG holds them, score them.

    evaluator = Evaluator(datamodule, feature="digits", metrics=("fid", "kid"), n=1000, cache_dir=...)
    result = evaluate(model, process, sampler, "eps", evaluator, seed=0, batch_size=250)
    result.scores   # {"fid/digits/ddim50_eta1/n1000": 1.1, "kid/...": 0.02}
    result.floor    # {"fid_floor/digits/n1000": 0.95, ...}

Scores come from torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance``
with our feature network as the custom extractor (``digits``, or torch-fidelity's InceptionV3
behind ``inception``, read from a local weights file). The real reference enters the metric
as its real-feature states (sum, covariance sum, count; KID: the feature rows), filled from
cached statistics on rank 0 only, so that torchmetrics' sum reduction across DDP ranks counts
it once; every rank adds the features of its own samples and ``compute()`` syncs the states
over ``torch.distributed``. Every rank gets the same numbers.

The floor is the score of real images against the reference at the same n: the reference is
the first n of a seeded permutation of the training split, the held-out set the val split
when it holds n images, else the next n of the same permutation (disjoint from the
reference). When the pool is too small for two disjoint sets of n, the floor is taken at the
largest n that fits, and that n is in its key.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from difflab.evaluation.protocol import (
    batch_indices,
    dist_info,
    floor_key,
    protocol_key,
    rank_batches,
    sample_generators,
    sampler_key,
)
from difflab.metrics.cache import RealStats, RealStatsCache
from difflab.metrics.features import FeatureExtractor, available_feature_extractors, build_feature_extractor
from difflab.samplers import Sampler, generate
from difflab.samplers.guidance import Guidance, guidance_key, guided_nfe
from difflab.utils.images import to_uint8

__all__ = ["METRICS", "EvalResult", "Evaluator", "check_metrics", "draw", "evaluate"]

#: Metrics on images (FID and KID in the feature space of ``feature``).
METRICS = ("fid", "kid")
KID_SUBSET_SIZE = 1000
KID_SUBSETS = 100


def check_metrics(metrics: Any, where: str = "metrics", accepted: Sequence[str] = METRICS) -> tuple[str, ...]:
    """The metric names as a tuple (a comma-separated string works too); unknown ones raise."""
    if metrics is None:
        return ()
    if isinstance(metrics, str):
        metrics = [m for m in metrics.replace(",", " ").split() if m]
    names = tuple(dict.fromkeys(str(m).lower() for m in metrics))
    bad = [m for m in names if m not in accepted]
    if bad:
        raise ValueError(f"{where}: unknown metric(s) {', '.join(bad)}; accepted: {', '.join(accepted)}")
    return names


# --------------------------------------------------------------------------- drawing
def draw(
    model: Callable[..., torch.Tensor],
    process,
    sampler: Sampler,
    prediction_type: str,
    shape: Sequence[int],
    n: int,
    seed: int = 0,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
    *,
    batches: Sequence[int] | None = None,
    progress: bool | str = False,
    labels: torch.Tensor | None = None,
    guidance: Guidance | None = None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_images: Callable[[torch.Tensor], None] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(batch index, samples)`` of the protocol's n samples, quantised to uint8 for
    image shapes (C, H, W) (the bytes a PNG holds), float for other shapes.

    ``batches`` picks which batches to draw (default: this rank's share, :func:`rank_batches`).
    ``progress`` shows a bar of denoising steps over all the batches drawn (a str names it).
    ``labels`` (n,) are the class labels of all n samples, for conditional models (or (n, C, H, W)
    conditioning images, for super-resolution);
    ``guidance`` the classifier-free guidance they are drawn with (:mod:`difflab.samplers.guidance`).
    ``decode`` maps the sampler's output to images in [-1, 1] before they are quantised: a latent
    model's first stage (``shape`` is then the latent shape, arXiv:2112.10752).
    ``on_images`` is called with each batch of float images (N, C, H, W) just before it is
    quantised (e.g. to count what :func:`clamped_count` counts); never for point data.
    """
    if guidance is not None and labels is None:
        raise ValueError("guidance needs labels: give the n class labels (e.g. difflab.conditioning.balanced_labels)")
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for n={n} samples; give one label per sample")
    g = guidance or Guidance()
    if batches is None:
        batches = rank_batches(n, batch_size, *dist_info())
    steps = sampler.nfe(process.num_timesteps) * len(batches)
    bar = tqdm(total=steps, desc=progress if isinstance(progress, str) else "sampling", unit="NFE",
               disable=not progress, dynamic_ncols=True, leave=False)
    steps_per_call = sampler.nfe(process.num_timesteps) / max(1, sampler.steps(process.num_timesteps))
    try:
        for b in batches:
            idx = batch_indices(n, batch_size, b)
            y = None if labels is None else labels[idx.start : idx.stop]
            x = generate(
                model, process, sampler, (len(idx), *shape), sample_generators(seed, idx), progress=False,
                prediction_type=prediction_type, device=device, y=y,
                on_step=lambda i, total: bar.update(steps_per_call),
                guidance_scale=g.scale, guidance_rescale=g.rescale, guidance_interval=g.interval,
            )
            if decode is not None:
                x = decode(x)
            if on_images is not None and x.ndim == 4:
                on_images(x)
            yield b, (to_uint8(x) if x.ndim == 4 else x.float()).cpu()
    finally:
        bar.close()


# --------------------------------------------------------------------------- the reference
class _SharedFeatures(nn.Module):
    """The feature network as torchmetrics' custom extractor, shared by FID and KID: the
    features of the last batch are kept, so the two metrics do not run the network twice."""

    def __init__(self, extractor: FeatureExtractor) -> None:
        super().__init__()
        self.extractor = extractor
        self.num_features = int(extractor.feature_dim)
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self._last is not None and self._last[0] is images:
            return self._last[1]
        features = self.extractor(images).double()
        self._last = (images, features)
        return features


@dataclass
class EvalResult:
    """Scores under their protocol keys, the floor under its keys, and the whole protocol."""

    scores: dict[str, float]
    floor: dict[str, float] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)  # metric -> value (also kid_std)
    samples: torch.Tensor | None = None


class Evaluator:
    """Scores samples of a data set's distribution under one protocol (feature, metrics, n).

    Args:
        data: a data module with ``name``, ``image_shape`` and ``real_images(split, n, seed)``.
        feature: the feature network, ``digits``, ``inception`` or ``pixels``.
        metrics: any of ``fid``, ``kid``.
        n: samples per score (and the size of the real reference, capped by the training split).
        cache_dir: real statistics are cached here (None: not cached).
        weights_path: a local weights file of the feature network (Inception: nothing is downloaded).
        device: where the feature network runs.
        real_seed: chooses the reference (and held-out) real images.
        floor: compute the data floor too (once, on first use).
        extractor: an already built feature network named ``feature`` (else one is built).
    """

    def __init__(
        self,
        data: Any,
        feature: str = "digits",
        metrics: Sequence[str] = METRICS,
        n: int = 1000,
        cache_dir: str | Path | None = None,
        weights_path: str | None = None,
        device: torch.device | str = "cpu",
        real_seed: int = 0,
        floor: bool = True,
        batch_size: int = 256,
        extractor: FeatureExtractor | None = None,
    ) -> None:
        self.metrics = check_metrics(metrics) or METRICS
        if feature not in available_feature_extractors():
            raise ValueError(f"feature={feature!r} is not a feature network; accepted: {', '.join(available_feature_extractors())}")
        if isinstance(n, bool) or int(n) != n or n < 2:
            raise ValueError(f"n must be an integer >= 2 to score FID/KID (a covariance needs 2 samples), got {n!r}")
        shape = tuple(getattr(data, "image_shape", ()) or ())
        if len(shape) != 3 or not hasattr(data, "real_images"):
            raise ValueError(f"FID/KID need images (C, H, W); the data {getattr(data, 'name', '?')!r} has shape {shape}")
        self.data, self.feature, self.n, self.real_seed = data, feature, int(n), int(real_seed)
        self.with_floor, self.batch_size = bool(floor), int(batch_size)
        self.cache = RealStatsCache(cache_dir) if cache_dir else None
        self.extractor = extractor or build_feature_extractor(feature, weights_path=weights_path, device=device)
        self._features = _SharedFeatures(self.extractor)
        self._split_sizes: tuple[int, int] | None = None
        self._stats: dict[tuple[str, int, int], RealStats] = {}
        self._floor: dict[str, float] | None = None

    # ------------------------------------------------------------------ real images
    def _split(self, split: str) -> np.ndarray | None:
        try:
            images = self.data.real_images(split, None, self.real_seed)
        except (ValueError, KeyError, AttributeError):
            return None
        images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        return images if len(images) else None

    def _real(self, split: str, start: int, n: int) -> RealStats:
        """Features of images [start, start + n) of the seeded permutation of ``split``."""
        if (split, start, n) in self._stats:
            return self._stats[(split, start, n)]
        key = {
            "dataset": str(self.data.name), "split": split, "feature": self.extractor.name,
            "feature_hash": self.extractor.weights_hash, "n": n, "start": start, "selection": "permutation",
            "image_shape": [int(s) for s in self.data.image_shape], "seed": self.real_seed,
        }

        def compute() -> RealStats:
            images = self._split(split)
            perm = np.random.default_rng(self.real_seed).permutation(len(images))[start : start + n]
            feats = self.extractor.extract(images[np.sort(perm)], batch_size=self.batch_size)
            return RealStats.from_features(feats, key)

        stats = self.cache.get_or_compute(key, compute) if self.cache else compute()
        self._stats[(split, start, n)] = stats
        return stats

    def _sizes(self) -> tuple[int, int]:
        """(train, val) split sizes, read once: every score and protocol asks for them."""
        if self._split_sizes is None:
            train, val = self._split("train"), self._split("val")
            if train is None:
                raise ValueError(f"data {self.data.name!r} has no training images to take the reference from")
            self._split_sizes = len(train), (0 if val is None else len(val))
        return self._split_sizes

    @property
    def n_real(self) -> int:
        """The size of the real reference: n, or all the training images when there are fewer."""
        return min(self.n, self._sizes()[0])

    # ------------------------------------------------------------------ class accuracy
    def scores_accuracy(self) -> bool:
        """Whether the feature network is a classifier of this data set's classes: the digits
        network (``logits``, 10 classes) on MNIST-like digits (not Fashion-MNIST, whose 10
        classes are not digits)."""
        name = str(getattr(self.data, "name", "")).lower()
        return (hasattr(self.extractor, "logits") and getattr(self.data, "num_classes", None) == 10
                and "mnist" in name and "fashion" not in name)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's class (argmax of ``logits``) of uint8 images (N, C, H, W)."""
        with torch.inference_mode():
            return self.extractor.logits(images.to(self.extractor.device)).argmax(dim=1)

    # ------------------------------------------------------------------ metrics
    def _metrics(self, reference: RealStats, n_fake: int | None, sync: bool) -> dict[str, Any]:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        rank, _ = dist_info() if sync else (0, 1)
        feats = torch.from_numpy(reference.features) if rank == 0 else torch.zeros(0, reference.features.shape[1])
        feats = feats.to(dtype=torch.float64, device=self.extractor.device)
        out: dict[str, Any] = {}
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
        if "fid" in self.metrics:
            fid = FrechetInceptionDistance(feature=self._features, reset_real_features=False, sync_on_compute=sync)
            fid.real_features_sum += feats.sum(0)
            fid.real_features_cov_sum += feats.T @ feats
            fid.real_features_num_samples += feats.shape[0]
            out["fid"] = fid
        if "kid" in self.metrics:
            kid = KernelInceptionDistance(feature=self._features, reset_real_features=False, sync_on_compute=sync,
                                          subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE)
            kid.real_features.append(feats)
            out["kid"] = kid
        for m in out.values():
            m.orig_dtype = torch.float64
            m.to(self.extractor.device)
        return out

    def _compute(self, metrics: dict[str, Any], n_fake: int, n_real: int, seed: int) -> dict[str, float]:
        values: dict[str, float] = {}
        if "fid" in metrics:
            values["fid"] = float(metrics["fid"].compute())
        if "kid" in metrics:
            kid = metrics["kid"]
            kid.subset_size = min(KID_SUBSET_SIZE, n_fake, n_real)
            with torch.random.fork_rng(devices=[]):  # KID draws its subsets with torch.randperm
                torch.manual_seed(seed)
                mean, std = kid.compute()
            values["kid"], values["kid_std"] = float(mean), float(std)
        return values

    def floor(self) -> dict[str, float]:
        """``{floor key: value}`` of real held-out images against the reference (computed once)."""
        if self._floor is not None or not self.with_floor:
            return self._floor or {}
        n_train, n_val = self._sizes()
        n = min(self.n, n_train)
        if n_val >= n:
            reference, heldout = self._real("train", 0, n), self._real("val", 0, n)
        else:
            n = min(n, n_train // 2)
            if n < 2:
                return {}
            reference, heldout = self._real("train", 0, n), self._real("train", n, n)
        metrics = self._metrics(reference, n, sync=False)
        fake = torch.from_numpy(heldout.features).to(self.extractor.device)
        for m in metrics.values():
            _add_fake_features(m, fake)
        values = self._compute(metrics, n, n, self.real_seed)
        self._floor = {floor_key(m, self.feature, n): values[m] for m in self.metrics}
        return self._floor

    def score(self, batches: Iterator[torch.Tensor], n: int, seed: int = 0) -> dict[str, float]:
        """FID/KID of this rank's uint8 sample batches against the reference, synced over the
        ranks (a collective: every rank calls it with its share of the n samples)."""
        reference = self._real("train", 0, self.n_real)
        metrics = self._metrics(reference, n, sync=True)
        with torch.inference_mode():
            for images in batches:
                images = images.to(self.extractor.device)
                for m in metrics.values():
                    m.update(images, real=False)
        return self._compute(metrics, n, reference.n, seed)


def _add_fake_features(metric: Any, features: torch.Tensor) -> None:
    """Add precomputed feature rows as fake samples (what ``update`` does after the network)."""
    if hasattr(metric, "fake_features_sum"):
        metric.fake_features_sum += features.sum(0)
        metric.fake_features_cov_sum += features.T @ features
        metric.fake_features_num_samples += features.shape[0]
    else:
        metric.fake_features.append(features)
    metric._update_count += 1


def clamped_count(x: torch.Tensor) -> torch.Tensor:
    """How many values of images ``x`` (scale [-1, 1]) quantisation clamps, and by how much in
    all: a float64 tensor [count, summed overshoot] on the CPU. Clamped are the values more than
    half a uint8 level outside [-1, 1], |x| > 1 + 1/255 (:func:`~difflab.utils.images.to_uint8`
    rounds the rest to 0 or 255 as it would anyway); the overshoot of a clamped value is |x| - 1."""
    a = x.detach().float().abs()
    out = a > 1.0 + 1.0 / 255.0
    return torch.stack([out.sum().double(), (a[out] - 1.0).sum().double()]).cpu()


# --------------------------------------------------------------------------- the one path
def evaluate(
    model: Callable[..., torch.Tensor],
    process,
    sampler: Sampler,
    prediction_type: str,
    evaluator: Evaluator | Any,
    seed: int = 0,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
    *,
    progress: bool | str = False,
    keep_samples: bool = False,
    labels: torch.Tensor | None = None,
    guidance: Guidance | str | None = None,
    label_scheme: str | None = None,
    shape: Sequence[int] | None = None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> EvalResult:
    """Draw ``evaluator.n`` samples (this rank's share), score them, name the result.

    A collective under DDP: every rank calls it. ``keep_samples`` returns this rank's uint8
    samples in sample order (sample.py writes them). ``evaluator``: an :class:`Evaluator` for
    images, a :class:`~difflab.evaluation.points.PointEvaluator` for point data.

    Conditional models: ``labels`` (n,) are the samples' classes (``balanced_labels`` for FID
    over a balanced set) and ``guidance`` a :class:`Guidance`; the key then carries the guidance
    part ``cfg<w>..._nfe<NFE>_<label_scheme>`` (:func:`guidance_key`: a guided evaluation counts
    2 NFE), and with a classifier feature network (``digits`` on MNIST-like data) the class
    accuracy of the samples is scored too (``acc/digits/...``): the share of samples the
    classifier assigns to the class they were drawn for. (A str ``guidance`` is appended to
    the key as it is.)

    Latent models: ``shape`` is the latent shape the sampler draws (default: the data's) and
    ``decode`` maps latents to images before they are quantised and scored (the protocol
    records the latent shape).
    """
    n = evaluator.n
    draw_shape = tuple(shape) if shape is not None else tuple(evaluator.data.image_shape)
    kept: list[torch.Tensor] = []
    # class accuracy for class labels (not for the image conditions of super-resolution)
    accuracy = labels is not None and labels.ndim == 1 and getattr(evaluator, "scores_accuracy", lambda: False)()
    correct = torch.zeros((), dtype=torch.float64)
    drawn = torch.zeros((), dtype=torch.float64)
    clamped = torch.zeros(2, dtype=torch.float64)  # image values quantisation clamps, their overshoot
    pixels = torch.zeros((), dtype=torch.float64)  # of how many values (0: point data, nothing quantised)

    def count_clamped(x: torch.Tensor) -> None:
        nonlocal clamped, pixels
        clamped = clamped + clamped_count(x)
        pixels = pixels + x.numel()
    draw_guidance = guidance if isinstance(guidance, Guidance) else None
    if labels is not None and draw_guidance is None:
        draw_guidance = Guidance()  # purely conditional

    def images() -> Iterator[torch.Tensor]:
        nonlocal correct, drawn
        for b, x in draw(model, process, sampler, prediction_type, draw_shape, n, seed,
                         batch_size, device, progress=progress, labels=labels, guidance=draw_guidance, decode=decode,
                         on_images=count_clamped):
            if keep_samples:
                kept.append(x)
            if accuracy:
                idx = batch_indices(n, batch_size, b)
                predicted = evaluator.classify(x).cpu()
                correct = correct + (predicted == labels[idx.start : idx.stop].cpu()).sum().double()
                drawn = drawn + len(idx)
            yield x

    values = evaluator.score(images(), n, seed)
    part = sampler_key(sampler, process.num_timesteps)
    nfe = sampler.nfe(process.num_timesteps)
    if not isinstance(guidance, str) and (isinstance(guidance, Guidance) or labels is not None):
        nfe = guided_nfe(process, sampler, prediction_type, draw_guidance)
        guidance = guidance_key(draw_guidance, nfe, label_scheme or "labels")
    metrics = list(evaluator.metrics)
    totals = torch.cat([torch.stack([correct, drawn]), clamped, pixels[None]])
    if dist_info()[1] > 1:  # every rank drew its share: the counts of all n samples
        on = evaluator.extractor.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
        totals = totals.to(on)
        torch.distributed.all_reduce(totals)
    totals = totals.cpu()
    if accuracy:
        values["acc"] = float(totals[0] / totals[1].clamp_min(1))
        metrics.append("acc")
    if totals[4] > 0:  # diagnostics, not metrics: no protocol key (e.g. unclipped x_0 blowing up)
        values["clamped"] = float(totals[2] / totals[4].clamp_min(1))  # the share of values clamped
        values["overshoot"] = float(totals[3] / totals[4].clamp_min(1))  # mean of max(|x| - 1, 0) over all values
    scores = {protocol_key(m, evaluator.feature, part, n, guidance): values[m] for m in metrics}
    floor = evaluator.floor()
    rank, world = dist_info()
    protocol = {
        "sampler": part, "sampler_config": repr(sampler), "nfe": nfe, "n": n,
        "seed": seed, "batch_size": batch_size, "world_size": world, "feature": evaluator.feature,
        "feature_hash": getattr(evaluator.extractor, "weights_hash", None), "n_real": evaluator.n_real,
        "real": {"dataset": evaluator.data.name, "split": "train", "seed": evaluator.real_seed},
        "kid": {"subsets": KID_SUBSETS, "subset_size": min(KID_SUBSET_SIZE, n, evaluator.n_real)},
        "guidance": guidance, "labels": label_scheme if labels is not None else None,
        "latent_shape": list(draw_shape) if decode is not None else None,
        "guidance_config": None if draw_guidance is None else {
            "scale": draw_guidance.scale, "rescale": draw_guidance.rescale,
            "interval": None if draw_guidance.interval is None else list(draw_guidance.interval)},
    }
    samples = torch.cat(kept) if kept else None
    return EvalResult(scores=scores, floor=floor, protocol=protocol, values=values, samples=samples)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block; its previous mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
