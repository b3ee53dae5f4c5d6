"""SampleGrid: image grids for images, scatter plots over the data for 2-D points."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from difflab.backbones import MLP
from difflab.callbacks.sample_grid import SampleGrid
from difflab.data.toy2d import Toy2DDataModule
from difflab.diffusion.objectives import DiffusionObjective
from difflab.diffusion.process import GaussianDiffusion
from difflab.samplers import DDIMSampler


class _PointModule:
    def __init__(self) -> None:
        torch.manual_seed(0)
        self.backbone = MLP(dim=2, hidden=8, depth=1, time_embed_dim=8)
        self.process = GaussianDiffusion.from_schedule("cosine", num_timesteps=50)
        self.sampler = DDIMSampler(num_steps=2)
        self.objective = DiffusionObjective("eps")
        self.image_shape = (2,)
        self.device = torch.device("cpu")

    def eval_backbone(self):
        return self.backbone


def test_points_get_a_scatter_plot_over_the_data(tmp_path):
    cb = SampleGrid(every_n_steps=0, num_points=50, output_dir=str(tmp_path))
    dm = Toy2DDataModule(n_train=10, n_val=30, batch_size=4)
    trainer = SimpleNamespace(global_step=3, is_global_zero=True, loggers=[], datamodule=dm, default_root_dir=str(tmp_path))
    module = _PointModule()
    pts = cb.sample_points(module)
    assert pts.shape == (50, 2) and torch.isfinite(pts).all()
    assert torch.equal(pts, cb.sample_points(module))  # fixed seed
    cb._run(trainer, module)
    png = tmp_path / "samples" / "step_0000003.png"
    img = np.asarray(Image.open(png))
    assert img.ndim == 3 and img.shape[2] == 3 and img.shape[0] > 100
    # grey data points and blue samples are both drawn
    assert ((img[..., 0] < 100) & (img[..., 2] > 150)).any()
    assert ((abs(img[..., 0].astype(int) - 178) < 8) & (abs(img[..., 2].astype(int) - 178) < 8)).any()
