"""A residual MLP denoiser for 2-D toy data (swiss roll, moons, Gaussian mixtures)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from difflab.backbones.unet import expand_timesteps, timestep_embedding

__all__ = ["MLP"]


class MLP(nn.Module):
    """``forward(x, t, y=None)`` for points ``x`` of shape (B, dim) -> (B, dim).

    The sinusoidal timestep embedding (``time_embed_dim`` features) goes through a two-layer
    MLP to ``hidden`` features and is added, with the class embedding if any, before each of
    ``depth`` residual blocks ``h + Linear(SiLU(Linear(SiLU(h + emb))))``.

    With ``num_classes`` set the class embedding has ``num_classes + 1`` rows; the last one
    (index ``num_classes``) is the "null" label used when ``y`` is None.
    """

    #: the rank of one sample it takes: points (D,), not images (C, H, W)
    data_rank = 1

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 256,
        depth: int = 4,
        time_embed_dim: int = 64,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("depth", depth), ("time_embed_dim", time_embed_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.dim = dim
        self.time_embed_dim = time_embed_dim
        self.num_classes = num_classes
        self.time_mlp = nn.Sequential(
            nn.Linear(time_embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.class_emb = nn.Embedding(num_classes + 1, hidden) if num_classes is not None else None
        self.input = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth)
        )
        self.output = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP expects input of shape (B, {self.dim}), got {tuple(x.shape)}")
        t = expand_timesteps(t, x.shape[0], x.device)
        emb = self.time_mlp(timestep_embedding(t, self.time_embed_dim))
        if self.class_emb is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.class_emb(y)
        elif y is not None:
            raise ValueError("class labels y were given but this MLP was built with num_classes=None")
        h = self.input(x)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.output(h)
