"""Image conversions shared by grids, sample files and metrics; scatter plots of 2-D points.

Every place that turns model output into pixels goes through :func:`to_uint8`, so a
FID computed in the training loop sees exactly the bytes a saved PNG holds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Quantize images in [-1, 1] to uint8 in [0, 255], as a saved PNG holds them.

    ``(x + 1) / 2`` maps to [0, 1]; then ``floor(255 * v + 0.5)`` (round half up), the
    same arithmetic as ``torchvision.utils.save_image``. Values outside [-1, 1] are clipped.
    """
    v = (x.detach().float() + 1.0) / 2.0
    return (v * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] -> float32 in [-1, 1] (the model's data range)."""
    return x.float().div(127.5).sub(1.0)


def make_grid_uint8(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile uint8 images (N, C, H, W) into one H' x W' x C array (C is 1 or 3).

    The padding is white-ish grey (128) so that black and white digits stay visible.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"make_grid_uint8 expects uint8 images, got {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"make_grid_uint8 expects (N, C, H, W), got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = int(math.ceil(n / nrow))
    grid = np.full((ncol * (h + padding) + padding, nrow * (w + padding) + padding, c), 128, np.uint8)
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    for i in range(n):
        r, col = divmod(i, nrow)
        y0, x0 = padding + r * (h + padding), padding + col * (w + padding)
        grid[y0 : y0 + h, x0 : x0 + w] = arr[i]
    return grid


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Save an H x W x C uint8 array (C in {1, 3}) as PNG, creating parent folders."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    img.save(path)
    return path


def scatter_plot(
    samples: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray | None = None,
    title: str | None = None,
    size: float = 4.5,
    dpi: int = 100,
) -> np.ndarray:
    """A scatter plot of 2-D points (N, 2) over the data (``reference``, grey) as an H x W x 3 uint8 array.

    What 2-D toy data get in place of an image grid (SampleGrid, sample.py). Both sets share
    the axes, which cover both (so samples that miss the data show it); drawn with matplotlib's
    Agg canvas (no display needed).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts = _points_2d(samples, "samples")
    fig = Figure(figsize=(size, size), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if reference is not None:
        ref = _points_2d(reference, "reference")
        ax.scatter(ref[:, 0], ref[:, 1], s=4, c="0.7", alpha=0.6, linewidths=0, label=f"data (n={len(ref)})")
    ax.scatter(pts[:, 0], pts[:, 1], s=4, c="tab:blue", alpha=0.8, linewidths=0, label=f"samples (n={len(pts)})")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=7, markerscale=3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_scatter_png(
    samples: torch.Tensor | np.ndarray,
    path: str | Path,
    reference: torch.Tensor | np.ndarray | None = None,
    title: str | None = None,
) -> Path:
    """:func:`scatter_plot` written to ``path`` as PNG (parent folders created)."""
    return save_png(scatter_plot(samples, reference, title), path)


def _points_2d(x: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    arr = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be 2-D points of shape (N, 2), got shape {tuple(arr.shape)}")
    return arr
