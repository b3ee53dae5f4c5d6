"""Denoising networks: ``forward(x_t, t, y=None) -> tensor of x_t's shape``.

A backbone knows nothing about diffusion; the prediction target (eps, x0 or v) is decided by
the objective. ``t`` is a LongTensor (B,) (a float tensor or a 0-d tensor also works).
"""

from __future__ import annotations

from torch import nn

from difflab.backbones.diffusers_unet import DiffusersUNet
from difflab.backbones.mlp import MLP
from difflab.backbones.unet import UNet

__all__ = ["BACKBONES", "DiffusersUNet", "MLP", "UNet", "count_parameters"]

BACKBONES: dict[str, type[nn.Module]] = {
    "unet": UNet,
    "diffusers_unet": DiffusersUNet,
    "mlp": MLP,
}


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
