"""Adapter that gives ``diffusers.UNet2DModel`` the difflab backbone signature.

``DiffusersUNet(...)(x, t, y)`` returns ``unet(x, t, class_labels=y).sample``; the wrapped
model is ``.unet``, so its weights can be handed to diffusers pipelines unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import UNet2DModel
from torch import Tensor, nn

from difflab.backbones.unet import expand_timesteps

__all__ = ["DiffusersUNet"]


class DiffusersUNet(nn.Module):
    """``diffusers.UNet2DModel`` behind ``forward(x, t, y=None) -> Tensor``.

    The defaults are a small model for 28x28 greyscale images (28 -> 14 -> 7, no attention),
    close to difflab's default :class:`~difflab.backbones.UNet`. ``down_block_types`` and
    ``up_block_types`` default to plain ``DownBlock2D`` / ``UpBlock2D`` blocks, one per entry
    of ``block_out_channels``. Any other ``UNet2DModel`` argument passes through ``**kwargs``.

    Class conditioning follows the difflab convention with ``num_classes``: the embedding
    gets ``num_classes + 1`` rows and the last one (index ``num_classes``) is the "null"
    label used when ``y`` is None. Passing diffusers' own ``num_class_embeds`` instead builds
    exactly that many rows and then requires ``y``.
    """

    def __init__(
        self,
        sample_size: int | tuple[int, int] = 28,
        in_channels: int = 1,
        out_channels: int | None = None,
        block_out_channels: Sequence[int] = (32, 64, 64),
        layers_per_block: int = 2,
        down_block_types: Sequence[str] | None = None,
        up_block_types: Sequence[str] | None = None,
        dropout: float = 0.0,
        norm_num_groups: int = 8,
        attention_head_dim: int | None = 8,
        num_classes: int | None = None,
        num_class_embeds: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        block_out_channels = tuple(int(c) for c in block_out_channels)
        n = len(block_out_channels)
        if n == 0 or any(c < 1 for c in block_out_channels):
            raise ValueError(f"block_out_channels must be a non-empty list of integers >= 1, got {list(block_out_channels)}")
        for name, value in (("in_channels", in_channels), ("layers_per_block", layers_per_block),
                            ("norm_num_groups", norm_num_groups)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        down_block_types = tuple(down_block_types or ("DownBlock2D",) * n)
        up_block_types = tuple(up_block_types or ("UpBlock2D",) * n)
        if len(down_block_types) != n or len(up_block_types) != n:
            raise ValueError(
                f"down_block_types ({len(down_block_types)}) and up_block_types "
                f"({len(up_block_types)}) need one entry per block_out_channels ({n})"
            )
        if num_classes is not None and num_class_embeds is not None:
            raise ValueError("give num_classes (adds a null label) or num_class_embeds, not both")
        if not isinstance(sample_size, int):
            sample_size = tuple(int(s) for s in sample_size)  # e.g. a Hydra ListConfig
        sizes = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
        factor = 2 ** (n - 1)
        for side in sizes:
            if side % factor:
                raise ValueError(
                    f"sample_size {side} cannot be halved {n - 1} times as {n} blocks need: use a "
                    f"size divisible by {factor}, or fewer entries in block_out_channels"
                )
        bad = [c for c in block_out_channels if c % norm_num_groups]
        if bad:
            raise ValueError(
                f"block_out_channels {bad} are not divisible by norm_num_groups={norm_num_groups}"
            )
        self.sample_size = sizes
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=in_channels if out_channels is None else out_channels,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            dropout=dropout,
            norm_num_groups=norm_num_groups,
            attention_head_dim=attention_head_dim,
            num_class_embeds=num_classes + 1 if num_classes is not None else num_class_embeds,
            **kwargs,
        )

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != self.sample_size:
            raise ValueError(
                f"DiffusersUNet expects input of shape (B, {self.in_channels}, "
                f"{self.sample_size[0]}, {self.sample_size[1]}), got {tuple(x.shape)}"
            )
        t = expand_timesteps(t, x.shape[0], x.device)
        if y is None and self.num_classes is not None:
            y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        return self.unet(x, t, class_labels=y).sample
