"""Adapter that gives ``diffusers.UNet2DModel`` the difflab backbone signature.

``DiffusersUNet(...)(x, t, y)`` returns ``unet(x, t, class_labels=y).sample``; the wrapped
model is ``.unet``, so its weights can be handed to diffusers pipelines unchanged.
``DiffusersUNet(pretrained=DIR)`` starts from the weights of a local ``UNet2DModel`` folder,
or of a pipeline folder with ``unet/`` and ``scheduler/`` (the layout of e.g.
google/ddpm-cifar10-32): see :func:`resolve_pretrained`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel
from torch import Tensor, nn

from difflab.backbones.unet import expand_timesteps

__all__ = ["DiffusersUNet", "load_pretrained_unet", "pretrained_backbone_kwargs", "resolve_pretrained"]

_LAYOUT = (
    "give a UNet2DModel folder (config.json + diffusion_pytorch_model.safetensors) or a pipeline "
    "folder with unet/ and scheduler/ (e.g. google/ddpm-cifar10-32 downloaded elsewhere with "
    "`huggingface-cli download google/ddpm-cifar10-32 --local-dir DIR`)"
)


def resolve_pretrained(folder: str | Path) -> tuple[Path, Path | None]:
    """(the UNet2DModel folder, the scheduler config file or None) of a local folder.

    ``folder`` is a model folder (``config.json`` + weights; its scheduler config is looked for
    in ``folder/scheduler_config.json``, then in ``../scheduler/`` when ``folder`` is the
    ``unet/`` of a pipeline) or a pipeline folder (``unet/config.json``, ``scheduler/
    scheduler_config.json``). Raises ValueError with one line for anything else; nothing is
    downloaded.
    """
    path = Path(str(folder)).expanduser()
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise ValueError(f"pretrained={folder}: {what}; {_LAYOUT}")
    if (path / "config.json").is_file():
        unet_dir = path
        candidates = [path / "scheduler_config.json", path.parent / "scheduler" / "scheduler_config.json"]
    elif (path / "unet" / "config.json").is_file():
        unet_dir = path / "unet"
        candidates = [path / "scheduler" / "scheduler_config.json"]
    else:
        raise ValueError(f"pretrained={folder} has no config.json and no unet/config.json; {_LAYOUT}")
    scheduler = next((c for c in candidates if c.is_file()), None)
    return unet_dir, scheduler


def load_pretrained_unet(folder: str | Path) -> UNet2DModel:
    """``UNet2DModel.from_pretrained`` of a local folder (:func:`resolve_pretrained`), with one-line errors."""
    unet_dir, _ = resolve_pretrained(folder)
    try:
        class_name = json.loads((unet_dir / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError) as e:
        raise ValueError(f"pretrained={folder}: {unet_dir / 'config.json'} cannot be read ({e})") from None
    if class_name not in (None, "UNet2DModel"):
        raise ValueError(
            f"pretrained={folder} holds a {class_name}, not a UNet2DModel; backbone=diffusers_unet loads "
            "UNet2DModel weights only (a DifflabUNet2DModel export of backbone=unet is not one)"
        )
    try:
        return UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        message = " ".join(str(e).split())[:300]
        raise ValueError(f"pretrained={folder}: the UNet2DModel in {unet_dir} cannot be loaded ({message})") from None


def pretrained_backbone_kwargs(folder: str | Path, num_classes: int | None = None) -> dict[str, Any]:
    """``DiffusersUNet`` arguments that build the architecture of a pretrained folder without it.

    Every ``UNet2DModel`` argument, from the folder's ``config.json`` or diffusers' default
    (the weights are not read): ``DiffusersUNet(**kwargs)`` has the state-dict keys and shapes of
    ``DiffusersUNet(pretrained=folder)``. A run that stores these in its backbone config (and
    drops ``pretrained``) can be rebuilt from its checkpoint once the folder is gone. With
    ``num_classes`` the class embedding follows the difflab convention (``num_classes + 1`` rows).
    """
    import inspect

    unet_dir, _ = resolve_pretrained(folder)
    try:
        config = UNet2DModel.load_config(str(unet_dir), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"pretrained={folder}: {unet_dir / 'config.json'} cannot be read ({e})") from None
    kwargs: dict[str, Any] = {}
    for name, param in inspect.signature(UNet2DModel.__init__).parameters.items():
        if name == "self":
            continue
        value = config.get(name, param.default)
        kwargs[name] = list(value) if isinstance(value, tuple) else value
    if num_classes is not None:
        kwargs.pop("num_class_embeds", None)
        kwargs["num_classes"] = num_classes
    return kwargs


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

    ``pretrained``: a local folder (model or pipeline, :func:`resolve_pretrained`) whose
    ``UNet2DModel`` is used as it is, weights included. Its own config then decides the
    architecture and every other argument but ``sample_size``, ``in_channels`` and
    ``num_classes`` is ignored; those three must agree with it (they follow the data set).
    The folder's scheduler config is compared with the run's schedule and objective by
    :func:`difflab.utils.diffusers_interop.check_pretrained_schedule`.
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
        pretrained: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if pretrained:
            self._init_pretrained(str(pretrained), sample_size, in_channels, num_classes)
            return
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
        self.pretrained = None
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

    def _init_pretrained(
        self, folder: str, sample_size: int | tuple[int, int], in_channels: int, num_classes: int | None
    ) -> None:
        unet = load_pretrained_unet(folder)
        config = unet.config
        size = config.sample_size
        sizes = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        want = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(int(s) for s in sample_size)
        if sizes != want or int(config.in_channels) != int(in_channels):
            raise ValueError(
                f"the UNet2DModel in pretrained={folder} takes {config.in_channels}x{sizes[0]}x{sizes[1]} images "
                f"(in_channels, sample_size) but the data gives {in_channels}x{want[0]}x{want[1]}; use data of the "
                "model's shape (e.g. data=cifar10 for a 3x32x32 model)"
            )
        embeds = config.num_class_embeds
        if num_classes is not None and embeds != num_classes + 1:
            raise ValueError(
                f"num_classes={num_classes} needs a class embedding of {num_classes + 1} rows (the last one the "
                f"null label) but the UNet2DModel in pretrained={folder} has num_class_embeds={embeds}"
            )
        if num_classes is None and (embeds is not None or config.class_embed_type is not None):
            raise ValueError(
                f"the UNet2DModel in pretrained={folder} is class-conditional (num_class_embeds={embeds}, "
                f"class_embed_type={config.class_embed_type}); difflab runs it unconditionally only without one"
            )
        self.sample_size = sizes
        self.in_channels = int(config.in_channels)
        self.num_classes = num_classes
        self.pretrained = folder
        self.unet = unet.train()

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
