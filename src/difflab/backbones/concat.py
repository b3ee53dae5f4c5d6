"""A backbone that takes an image condition concatenated to its input (SR3's conditioning).

SR3 (Saharia et al. 2021, arXiv:2104.07636, sec. 2.4): "we simply concatenate the
low-resolution image, upsampled to the target resolution using bicubic interpolation, with
x_t along the channel dimension". :class:`ConcatConditioned` does that in front of any difflab
backbone built with twice the data's channels in and the data's channels out, so the same
``backbone`` group (``unet``, ``diffusers_unet``) serves unconditional and super-resolution
models.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ConcatConditioned"]


class ConcatConditioned(nn.Module):
    """``inner(cat([x_t, y], dim=1), t)``: x_t (B, C, H, W) and the condition y of the same shape.

    ``inner`` maps 2C channels to C. The network cannot run without its condition: a call
    without y raises (a super-resolution model sampled like an unconditional one would
    otherwise denoise against zeros and produce garbage without a word).
    """

    #: the condition is an image of x_t's shape, not a class label
    takes_image_condition = True
    num_classes = None

    def __init__(self, inner: nn.Module, channels: int) -> None:
        super().__init__()
        self.inner = inner
        self.channels = int(channels)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if y is None:
            raise ValueError("this super-resolution model (conditioning=low_res) needs its low-res input y: "
                             "sample it with sample.py task=super_resolution")
        if y.shape != x.shape:
            raise ValueError(f"the low-res condition y must be upsampled to x_t's shape {tuple(x.shape)}, got {tuple(y.shape)}")
        if y.device != x.device or y.dtype != x.dtype:
            y = y.to(device=x.device, dtype=x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            y = y.contiguous(memory_format=torch.channels_last)
        return self.inner(torch.cat([x, y], dim=1), t)
