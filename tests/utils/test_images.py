"""Scatter plots of 2-D points (what toy data get in place of image grids)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.utils.images import save_scatter_png, scatter_plot


def test_scatter_plot_is_an_rgb_image_with_the_points():
    pts = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    img = scatter_plot(pts, size=2, dpi=50)
    assert img.dtype == np.uint8 and img.shape == (100, 100, 3)
    assert (img < 250).any() and (img == 255).any()
    with_ref = scatter_plot(pts, reference=np.random.default_rng(0).normal(size=(100, 2)), size=2, dpi=50)
    assert not np.array_equal(img, with_ref)


def test_save_scatter_png(tmp_path):
    path = save_scatter_png(np.zeros((5, 2)), tmp_path / "a" / "b.png", title="step 1")
    assert np.asarray(Image.open(path)).shape[2] == 3


def test_scatter_plot_refuses_non_2d_points():
    with pytest.raises(ValueError, match=r"samples must be 2-D points of shape \(N, 2\)"):
        scatter_plot(torch.zeros(4, 1, 28, 28))
