"""A guidance sweep from one checkpoint: FID, KID and class accuracy against the guidance scale w.

Classifier-free guidance trades diversity for fidelity (Ho & Salimans 2022, arXiv:2207.12598,
sec. 4.1, Fig. 4): as w grows the samples match their class better (accuracy rises) while
they cover less of the data (FID first falls, then rises). Every w draws the same n
samples' noise and the same balanced labels (sample i of class i mod K) on the one
evaluation path, so the rows differ only by w. ``benchmarks/guidance.py`` is the command
line; this module holds the sweep, the table and the plot.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from difflab.conditioning import balanced_labels
from difflab.evaluation.score import Evaluator, evaluate
from difflab.samplers.guidance import Guidance

__all__ = ["COLUMNS", "DEFAULT_SCALES", "guidance_sweep", "plot_sweep", "write_sweep"]

#: The w of the issue's table: unconditional, conditional, then guided.
DEFAULT_SCALES: tuple[float, ...] = (0.0, 1.0, 1.5, 2.0, 3.0, 5.0)
COLUMNS = ["w", "fid", "kid", "kid_std", "acc", "nfe", "n", "seconds", "fid_key", "clamped", "overshoot"]


def guidance_sweep(
    model: Callable[..., torch.Tensor],
    process: Any,
    sampler: Any,
    prediction_type: str,
    evaluator: Evaluator,
    scales: Sequence[float] = DEFAULT_SCALES,
    *,
    num_classes: int,
    seed: int = 0,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
    rescale: float = 0.0,
    interval: Sequence[float] | None = None,
    progress: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per w: ``{w, fid, kid, kid_std, acc, nfe, n, seconds, fid_key, clamped, overshoot, scores}``.

    ``acc`` is None when the feature network is not a classifier of the data's classes;
    ``clamped`` is the share of sample pixel values quantisation clamped to [-1, 1] and
    ``overshoot`` their mean excess over all values (guidance at large w pushes samples out of
    range, arXiv:2305.08891 sec. 3.4).
    """
    if not scales:
        raise ValueError("scales is empty; give the guidance scales to sweep, e.g. 0,1,1.5,2,3,5")
    labels = balanced_labels(evaluator.n, num_classes)
    rows = []
    for w in scales:
        guidance = Guidance(float(w), rescale, None if interval is None else tuple(interval))
        start = time.perf_counter()
        result = evaluate(model, process, sampler, prediction_type, evaluator, seed, batch_size, device,
                          progress=f"w={w:g}" if progress else False, labels=labels, guidance=guidance,
                          label_scheme="uniform")
        by_metric = {key.split("/", 1)[0]: (key, value) for key, value in result.scores.items()}
        row = {
            "w": float(w),
            "fid": by_metric.get("fid", (None, None))[1],
            "kid": by_metric.get("kid", (None, None))[1],
            "kid_std": result.values.get("kid_std"),
            "acc": by_metric.get("acc", (None, None))[1],
            "nfe": result.protocol["nfe"],
            "n": evaluator.n,
            "seconds": time.perf_counter() - start,
            "fid_key": by_metric.get("fid", (None, None))[0],
            "clamped": result.values.get("clamped"),
            "overshoot": result.values.get("overshoot"),
            "scores": result.scores,
        }
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def plot_sweep(rows: list[dict[str, Any]], title: str = "") -> np.ndarray:
    """FID (left axis) and class accuracy (right axis) against w, as an H x W x 3 uint8 image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ws = [r["w"] for r in rows]
    ax.plot(ws, [r["fid"] for r in rows], "o-", color="tab:blue", label="FID (digits)")
    ax.set_xlabel("guidance scale w (0: unconditional, 1: conditional)")
    ax.set_ylabel("FID", color="tab:blue")
    if any(r["acc"] is not None for r in rows):
        right = ax.twinx()
        right.plot(ws, [100 * r["acc"] if r["acc"] is not None else np.nan for r in rows], "s--", color="tab:red")
        right.set_ylabel("class accuracy of the samples (%)", color="tab:red")
    ax.set_title(title or "classifier-free guidance: fidelity against diversity", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def write_sweep(rows: list[dict[str, Any]], out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """``guidance.csv``, ``guidance.md`` (a markdown table) and ``guidance.png`` in ``out_dir``."""
    from difflab.utils.images import save_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "guidance.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows([[r[c] for c in COLUMNS] for r in rows])
    lines = ["| w | FID | KID | class accuracy | NFE | n | protocol key |", "|---:|---:|---:|---:|---:|---:|:---|"]
    for r in rows:
        acc = "-" if r["acc"] is None else f"{100 * r['acc']:.1f}%"
        kid = "-" if r["kid"] is None else f"{r['kid']:.4f}"
        lines.append(f"| {r['w']:g} | {r['fid']:.3f} | {kid} | {acc} | {r['nfe']} | {r['n']} | `{r['fid_key']}` |")
    (out / "guidance.md").write_text("\n".join(lines) + "\n")
    png = save_png(plot_sweep(rows, title), out / "guidance.png")
    return {"csv": out / "guidance.csv", "md": out / "guidance.md", "png": png}
