"""``task=anomaly``: anomaly scores by partial noising and reconstruction (AnoDDPM, Wyatt et al. 2022).

A model trained on normal data only reconstructs normal images well: the input x_0 is noised to
timestep ``t`` (``task.t``, of the T training steps) and denoised with the sampler over the steps
of its grid at or below ``t`` (the SDEdit machinery of :mod:`difflab.tasks.img2img`); the
score of an image is the mean squared error between input and reconstruction, in [0, 1] pixel
units, averaged over ``task.repeats`` independent noise draws (AnoDDPM, "Partial diffusion
strategy", with Gaussian noise in place of simplex noise). A higher score is more anomalous; the
threshold is left to the user.

Evaluation: train on a data set without some classes (``data.exclude_classes=[7]``), then
score its val split; the excluded classes (``task.anomalous_classes``, by default the
checkpoint's ``data.exclude_classes``) are the anomalies, and the AUROC of the scores
(torchmetrics' ``binary_auroc``) says how well they are told apart.

    python train.py data.exclude_classes=[7] ...
    python sample.py task=anomaly ckpt=... task.t=250 sampler=ddim sampler.num_steps=100
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from difflab.errors import ConfigError
from difflab.evaluation import eval_mode, sample_generators
from difflab.tasks.common import batches, load_inputs, save_rows_grid, setup_task, write_metrics, write_results
from difflab.tasks.img2img import partial_denoise
from difflab.utils.images import from_uint8, to_uint8
from difflab.utils.logging import get_logger

log = get_logger(__name__)

__all__ = ["auroc", "reconstruction_scores", "run", "steps_up_to"]


def steps_up_to(sampler: Any, process: Any, t: int) -> int:
    """The number of steps of the sampler's grid at timesteps <= ``t``."""
    timesteps, _ = sampler.grid(process)
    return int((timesteps.double() <= float(t) + 1e-9).sum())


def reconstruction_scores(
    model: Any, process: Any, sampler: Any, prediction_type: str, images: Tensor, t: int, seed: int,
    batch_size: int, device: torch.device | str = "cpu", repeats: int = 1,
) -> tuple[Tensor, Tensor]:
    """(scores (N,) float64, the first reconstruction uint8 (N, C, H, W)) of uint8 ``images``.

    Repeat r of input i draws its noise from the generator seeded by (seed + r, i).
    """
    keep = steps_up_to(sampler, process, t)
    if keep < 1:
        raise ConfigError(f"task.t={t} lies below the sampler's first step; raise task.t or sampler.num_steps")
    scores = torch.zeros(len(images), dtype=torch.float64)
    first = []
    for r in range(repeats):
        for idx in batches(len(images), batch_size):
            x0_u8 = images[idx.start : idx.stop]
            x, _ = partial_denoise(model, process, sampler, prediction_type, from_uint8(x0_u8).to(device), keep,
                                   sample_generators(seed + r, idx))
            rec = to_uint8(x).cpu()
            err = (rec.double() - x0_u8.double()).div(255.0).pow(2).flatten(1).mean(1)
            scores[idx.start : idx.stop] += err / repeats
            if r == 0:
                first.append(rec)
    return scores, torch.cat(first)


def auroc(scores: Tensor, anomalous: Tensor) -> float:
    """Area under the ROC curve of ``scores`` for the boolean targets ``anomalous`` (torchmetrics)."""
    from torchmetrics.functional.classification import binary_auroc

    return float(binary_auroc(scores.double(), anomalous.long()))


def _classes(value: Any) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"task.anomalous_classes must be a list of class labels, e.g. [7], got {value!r}")
    items = list(value)
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in items):
        raise ConfigError(f"task.anomalous_classes must hold class labels (integers >= 0), got {items!r}")
    return sorted(set(items))


def _validate(task: Any) -> None:
    t, repeats = task.get("t"), task.get("repeats", 1)
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise ConfigError(f"task.t must be a timestep (an integer >= 0) to noise the inputs to, got {t!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"task.repeats must be an integer >= 1, got {repeats!r}")
    _classes(task.get("anomalous_classes"))


def run(cfg: Any) -> dict[str, Any]:
    """Anomaly scores of the inputs; with labels and anomalous classes, their AUROC."""
    s = setup_task(cfg, _validate)
    model, task = s.model, cfg.task
    T = model.process.num_timesteps
    t = int(task.t)
    if t >= T:
        raise ConfigError(f"task.t={t}: the model has T={T} timesteps (0..{T - 1})")
    classes = _classes(task.get("anomalous_classes"))
    if classes is None:
        classes = list((model.config.get("data") or {}).get("exclude_classes") or [])
    inputs = load_inputs(task.get("input"), model, s.n, None)
    N = len(inputs.images)
    keep = steps_up_to(s.sampler, model.process, t)
    start = time.perf_counter()
    with eval_mode(model.backbone):
        scores, recs = reconstruction_scores(model.backbone, model.process, s.sampler, s.prediction_type, inputs.images,
                                             t, s.seed, s.batch_size, s.device, int(task.get("repeats", 1)))
    seconds = time.perf_counter() - start

    metrics: dict[str, Any] = {"t": t, "steps": keep, "repeats": int(task.get("repeats", 1)),
                               "score_mean": float(scores.mean()), "seconds": seconds, "anomalous_classes": classes}
    anomalous = None
    if inputs.labels is not None and classes:
        anomalous = torch.isin(inputs.labels, torch.tensor(classes))
        n_anom = int(anomalous.sum())
        metrics.update({"n_anomalous": n_anom, "n_normal": N - n_anom,
                        "score_mean_anomalous": float(scores[anomalous].mean()) if n_anom else None,
                        "score_mean_normal": float(scores[~anomalous].mean()) if n_anom < N else None})
        if 0 < n_anom < N:
            metrics["auroc"] = auroc(scores, anomalous)
        else:
            log.warning("the inputs hold %s: no AUROC", "no anomalies" if n_anom == 0 else "anomalies only")
        metrics["score_mean_by_class"] = {int(c): float(scores[inputs.labels == c].mean())
                                          for c in inputs.labels.unique().tolist()}
    elif not classes:
        log.info("no anomalous classes (task.anomalous_classes, or the checkpoint's data.exclude_classes): scores only")

    protocol = {**s.protocol(), "task": "anomaly", "n": N, "input": inputs.source, "t": t,
                "score": "mean squared error in [0, 1] pixel units between input and reconstruction"}
    arrays: dict[str, Any] = {"inputs": inputs.images, "results": recs, "scores": scores.numpy()}
    if inputs.labels is not None:
        arrays["labels"] = inputs.labels.numpy()
    if anomalous is not None:
        arrays["anomalous"] = anomalous.numpy()
    npz = write_results(s.out_dir, arrays, protocol)
    order = torch.argsort(scores, descending=True)  # the grid shows the most anomalous inputs first
    err = (recs.int() - inputs.images.int()).abs().to(torch.uint8)
    grid = save_rows_grid([inputs.images[order], recs[order], err[order]], s.out_dir / "grid.png", s.grid_n) \
        if s.grid_n else None
    path = write_metrics(s.out_dir, {"protocol": protocol, "metrics": metrics})
    shown = {k: v for k, v in metrics.items() if k != "score_mean_by_class"}
    print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
    print(f"{N} inputs scored at t={t} ({keep} steps, {seconds:.1f} s) -> {npz}; metrics -> {path}")
    return {"npz": npz, "grid": grid, "metrics": metrics, "output_dir": s.out_dir, "scores": scores, "inputs": inputs}
