"""The difflab UNet: the DDPM / ADM denoising network in plain PyTorch.

Architecture after Ho et al. 2020 ("Denoising Diffusion Probabilistic Models",
arXiv:2006.11239, Appendix B) and Nichol & Dhariwal 2021 ("Improved Denoising Diffusion
Probabilistic Models", arXiv:2102.09672):

- a sinusoidal timestep embedding (the Transformer's positional encoding) followed by a
  two-layer MLP of width ``4 * base_channels``;
- per resolution level, ``num_res_blocks`` residual blocks (GroupNorm, SiLU, 3x3 conv, the
  time embedding added -- or applied as a scale-shift of the second norm, as in ADM -- then
  GroupNorm, SiLU, dropout, 3x3 conv), self-attention after each block at the chosen
  resolutions, and a strided 3x3 conv to halve the size (all levels but the last);
- a middle of residual block, attention, residual block;
- the mirrored decoder with ``num_res_blocks + 1`` blocks per level, each taking the
  concatenation of the running features and one stored skip activation, and a
  nearest-neighbour x2 upsample followed by a 3x3 conv;
- GroupNorm, SiLU and a 3x3 conv to ``out_channels``.

With ``base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
attention_resolutions=(16,), image_size=32, in_channels=3`` this is the paper's CIFAR-10
model, 35.7M parameters.

As in both papers, the last conv of every residual branch, the attention output projection
and the output conv start at zero, so each block starts as the identity and a fresh
network outputs zeros.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNet", "timestep_embedding", "expand_timesteps"]


def expand_timesteps(t: Tensor | int | float, batch_size: int, device: torch.device) -> Tensor:
    """Return timesteps as a 1-D tensor of length ``batch_size`` on ``device``.

    Accepts a tensor of shape (B,), a 0-d tensor or a length-1 tensor (broadcast to the
    batch), or a Python number. Integer and floating dtypes are both kept as they are.
    """
    if not isinstance(t, Tensor):
        t = torch.tensor(t, device=device)
    t = t.to(device)
    if t.ndim == 0 or (t.ndim == 1 and t.shape[0] == 1):
        return t.reshape(1).expand(batch_size)
    if t.ndim != 1 or t.shape[0] != batch_size:
        raise ValueError(
            f"timesteps must have shape ({batch_size},) (one per sample), () or (1,); "
            f"got {tuple(t.shape)}"
        )
    return t


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, shape (B,) -> (B, dim).

    Section 3.5 of Vaswani et al. 2017 as used by DDPM (``get_timestep_embedding`` in the
    paper's code): ``[sin(t * w_i), cos(t * w_i)]`` with ``w_i = max_period**(-i / (half - 1))``.
    Always computed in float32; an odd ``dim`` is zero-padded.
    """
    half = dim // 2
    exponent = -math.log(max_period) / max(half - 1, 1)
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * exponent)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with a time embedding: added after the first conv, or scale-shift."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        dropout: float,
        norm_groups: int,
        use_scale_shift_norm: bool,
    ) -> None:
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.norm1 = nn.GroupNorm(norm_groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        self.norm2 = nn.GroupNorm(norm_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb_proj(F.silu(emb))[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the spatial positions, with a residual connection."""

    def __init__(self, channels: int, num_heads: int, norm_groups: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """Residual blocks, each optionally followed by attention, at one resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"image_size must be an int or (height, width), got {size}")
    return size  # type: ignore[return-value]


class UNet(nn.Module):
    """DDPM/ADM-style UNet: ``forward(x, t, y=None)`` -> tensor of ``x``'s shape.

    Args:
        in_channels: channels of the input images.
        out_channels: channels of the output; ``None`` means ``in_channels``.
        base_channels: width of the first level; level ``i`` has ``base_channels * channel_mult[i]``.
        channel_mult: one multiplier per resolution level; the image is halved between levels,
            so ``len(channel_mult) - 1`` halvings must divide the image size exactly.
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        attention_resolutions: feature-map sizes (absolute, e.g. ``(16,)`` for 16x16 at a
            32x32 input; the height for non-square images) after whose residual blocks
            self-attention is applied. The middle block always has attention.
        image_size: input size, an int (square) or ``(height, width)``.
        dropout: dropout before the second conv of every residual block.
        num_heads: attention heads (the channels at each attention level must divide evenly).
        norm_groups: GroupNorm groups (every channel count must be divisible by it).
        num_classes: if set, a class embedding with ``num_classes + 1`` rows is added to the
            time embedding; the last row (index ``num_classes``) is the "null" label used when
            ``y`` is None, for classifier-free guidance.
        use_scale_shift_norm: apply the time embedding as ``norm(h) * (1 + scale) + shift``
            (ADM) instead of adding it.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        base_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (),
        image_size: int | Sequence[int] = 28,
        dropout: float = 0.0,
        num_heads: int = 4,
        norm_groups: int = 8,
        num_classes: int | None = None,
        use_scale_shift_norm: bool = False,
    ) -> None:
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        attention_resolutions = tuple(int(r) for r in attention_resolutions)
        self.image_size = _pair(image_size)
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.num_classes = num_classes
        for name, value in (("in_channels", in_channels), ("out_channels", self.out_channels)):
            _check_positive_int(name, value)
        _validate(
            self.image_size,
            base_channels,
            channel_mult,
            num_res_blocks,
            attention_resolutions,
            num_heads,
            norm_groups,
            num_classes,
        )

        emb_dim = 4 * base_channels
        self.base_channels = base_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, dropout, norm_groups, use_scale_shift_norm)

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(c, num_heads, norm_groups)

        self.input_conv = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        # Encoder: remember the channel count of every activation pushed onto the skip stack.
        skip_channels = [base_channels]
        ch = base_channels
        res_h = self.image_size[0]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            block = _Level()
            for _ in range(num_res_blocks):
                block.res.append(res(ch, base_channels * mult))
                ch = base_channels * mult
                block.attn.append(attn(ch) if res_h in attention_resolutions else nn.Identity())
                skip_channels.append(ch)
            self.down.append(block)
            if level != len(channel_mult) - 1:
                self.downsample.append(Downsample(ch))
                skip_channels.append(ch)
                res_h //= 2
            else:
                self.downsample.append(nn.Identity())

        self.mid_res1 = res(ch, ch)
        self.mid_attn = attn(ch)
        self.mid_res2 = res(ch, ch)

        # Decoder: num_res_blocks + 1 blocks per level, each consuming one skip activation.
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            block = _Level()
            for _ in range(num_res_blocks + 1):
                block.res.append(res(ch + skip_channels.pop(), base_channels * mult))
                ch = base_channels * mult
                block.attn.append(attn(ch) if res_h in attention_resolutions else nn.Identity())
            self.up.append(block)
            if level != 0:
                self.upsample.append(Upsample(ch))
                res_h *= 2
            else:
                self.upsample.append(nn.Identity())
        assert not skip_channels

        self.out_norm = nn.GroupNorm(norm_groups, ch)
        self.out_conv = _zero(nn.Conv2d(ch, self.out_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != self.image_size:
            raise ValueError(
                f"UNet expects input of shape (B, {self.in_channels}, {self.image_size[0]}, "
                f"{self.image_size[1]}), got {tuple(x.shape)}; build it with matching "
                f"in_channels and image_size"
            )
        t = expand_timesteps(t, x.shape[0], x.device)
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))
        if self.class_emb is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            elif y.shape != (x.shape[0],):
                raise ValueError(f"class labels y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
            emb = emb + self.class_emb(y)
        elif y is not None:
            raise ValueError("class labels y were given but this UNet was built with num_classes=None")

        h = self.input_conv(x)
        skips = [h]
        for block, down in zip(self.down, self.downsample):
            for res, attn in zip(block.res, block.attn):
                h = attn(res(h, emb))
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)

        h = self.mid_res2(self.mid_attn(self.mid_res1(h, emb)), emb)

        for block, up in zip(self.up, self.upsample):
            for res, attn in zip(block.res, block.attn):
                h = attn(res(torch.cat([h, skips.pop()], dim=1), emb))
            h = up(h)

        return self.out_conv(F.silu(self.out_norm(h)))


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _validate(
    image_size: tuple[int, int],
    base_channels: int,
    channel_mult: tuple[int, ...],
    num_res_blocks: int,
    attention_resolutions: tuple[int, ...],
    num_heads: int,
    norm_groups: int,
    num_classes: int | None,
) -> None:
    # sizes of 0 or less would reach torch as "expected weight to be at least 1" or an empty layer
    for name, value in (("base_channels", base_channels), ("num_heads", num_heads), ("norm_groups", norm_groups)):
        _check_positive_int(name, value)
    if not channel_mult:
        raise ValueError("channel_mult must have at least one level, e.g. (1, 2, 2)")
    if any(m < 1 for m in channel_mult):
        raise ValueError(f"channel_mult must hold integers >= 1 (level widths are base_channels x each), got {channel_mult}")
    if any(side < 1 for side in image_size):
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if num_res_blocks < 1:
        raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be None or >= 1, got {num_classes}")
    halvings = len(channel_mult) - 1
    factor = 2**halvings
    for side in image_size:
        if side < 1 or side % factor:
            sizes = [side]
            while sizes[-1] % 2 == 0 and len(sizes) <= halvings:
                sizes.append(sizes[-1] // 2)
            raise ValueError(
                f"image_size {side} cannot be halved {halvings} times "
                f"({' -> '.join(map(str, sizes))}, then odd), which channel_mult {channel_mult} "
                f"({len(channel_mult)} levels) needs: use an image_size divisible by {factor} "
                f"(e.g. {factor * max(1, round(side / factor))}), or at most {len(sizes)} levels "
                f"in channel_mult for size {side}"
            )
    widths = sorted({base_channels * m for m in channel_mult} | {base_channels})
    bad = [w for w in widths if w % norm_groups]
    if bad:
        raise ValueError(
            f"channel counts {bad} (base_channels={base_channels} x channel_mult={channel_mult}) "
            f"are not divisible by norm_groups={norm_groups}; choose norm_groups dividing all of "
            f"{widths} (e.g. {math.gcd(*widths)} or a divisor of it)"
        )
    resolutions = [image_size[0] // 2**i for i in range(len(channel_mult))]
    unknown = [r for r in attention_resolutions if r not in resolutions]
    if unknown:
        raise ValueError(
            f"attention_resolutions {unknown} are not feature-map sizes of this UNet; with "
            f"image_size {image_size[0]} and {len(channel_mult)} levels the sizes are {resolutions}"
        )
    for i, r in enumerate(resolutions):
        width = base_channels * channel_mult[i]
        if r in attention_resolutions and width % num_heads:
            raise ValueError(
                f"attention at resolution {r} has {width} channels, not divisible by "
                f"num_heads={num_heads}"
            )
    # The middle attention always runs at the last level.
    last = base_channels * channel_mult[-1]
    if last % num_heads:
        raise ValueError(
            f"the middle attention has {last} channels, not divisible by num_heads={num_heads}"
        )
