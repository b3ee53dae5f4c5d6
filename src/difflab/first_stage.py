"""The first stage of latent diffusion: an autoencoder between images and latents.

Latent diffusion (Rombach et al. 2022, arXiv:2112.10752) trains the diffusion model on the
latents z of a KL-regularised autoencoder (sec. 3.1) and decodes its samples. A
:class:`FirstStage` wraps diffusers' ``AutoencoderKL`` (frozen, eval mode) with what difflab
needs around it:

* ``encode(x)`` -> the posterior's ``(mean, logvar)`` of images x in [-1, 1], so that a cache
  keeps the whole posterior (sampling from it stays possible);
* ``decode(z)`` -> images in [-1, 1] of the data's shape;
* padding: images are padded with background (-1) so that the latent side is a multiple of
  ``latent_multiple`` before encoding, and cropped after decoding. With the default 4 (what
  a UNet with channel_mult [1, 2, 4] needs), mnist5k's 28x28 digits go to 32x32 and two
  downsamplings give an 8x8 latent that the default UNet (8 -> 4 -> 2) takes as it is; an
  unpadded 7x7 latent would need a UNet sized for it (7 -> 3 breaks the skip connections);
* ``fingerprint``: a hash of the weights and the configuration, the latent cache's key and
  what a resumed diffusion run checks its autoencoder against.

Built from a difflab autoencoder checkpoint (``python train.py model=autoencoder``,
:func:`from_autoencoder_checkpoint`) or a local diffusers folder such as Stable Diffusion's
``vae/`` (:func:`from_pretrained`), whose ``scaling_factor`` (and ``shift_factor``) is used
as given instead of one computed from the data.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from difflab.errors import CheckpointError, ConfigError

__all__ = ["FirstStage", "build_autoencoder_kl", "from_autoencoder_checkpoint", "from_pretrained", "VAE_PREFIX"]

#: the state-dict prefix of the AutoencoderKL inside an autoencoder run's checkpoint
VAE_PREFIX = "vae."


def build_autoencoder_kl(
    in_channels: int,
    block_out_channels: Sequence[int] = (32, 64, 64),
    layers_per_block: int = 1,
    latent_channels: int = 4,
    norm_num_groups: int = 16,
    sample_size: int = 32,
    mid_block_add_attention: bool = False,
) -> nn.Module:
    """A diffusers ``AutoencoderKL`` with ``len(block_out_channels) - 1`` downsamplings."""
    from diffusers import AutoencoderKL

    blocks = [int(c) for c in block_out_channels]
    if not blocks or any(c % int(norm_num_groups) for c in blocks):
        raise ValueError(
            f"block_out_channels={blocks} must be a non-empty list of multiples of norm_num_groups={norm_num_groups}"
        )
    if int(latent_channels) < 1:
        raise ValueError(f"latent_channels must be >= 1, got {latent_channels}")
    return AutoencoderKL(
        in_channels=int(in_channels),
        out_channels=int(in_channels),
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        block_out_channels=tuple(blocks),
        layers_per_block=int(layers_per_block),
        latent_channels=int(latent_channels),
        norm_num_groups=int(norm_num_groups),
        sample_size=int(sample_size),
        mid_block_add_attention=bool(mid_block_add_attention),
    )


def downsampling_factor(vae: nn.Module) -> int:
    """2 ** (number of encoder blocks - 1): AutoencoderKL halves the size in every block but the last."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def padded_size(size: int, factor: int, latent_multiple: int = 1) -> int:
    """The side an image of ``size`` is padded to: the next multiple of ``factor * latent_multiple``,
    so that its latent side (``padded / factor``) is a multiple of ``latent_multiple``."""
    if isinstance(latent_multiple, bool) or int(latent_multiple) != latent_multiple or latent_multiple < 1:
        raise ValueError(f"latent_multiple must be an integer >= 1, got {latent_multiple!r}")
    step = int(factor) * int(latent_multiple)
    return int(math.ceil(size / step) * step)


def fingerprint_of(vae: nn.Module, extra: dict[str, Any] | None = None) -> str:
    """sha256 (16 hex digits) of the autoencoder's configuration, weights and ``extra``."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in dict(vae.config).items() if not k.startswith("_")}, sort_keys=True,
                        default=str).encode())
    h.update(json.dumps(extra or {}, sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class FirstStage(nn.Module):
    """A frozen AutoencoderKL that maps images (C, H, W) in [-1, 1] to latents and back.

    Args:
        vae: a diffusers ``AutoencoderKL``.
        image_shape: the data's (C, H, W).
        latent_multiple: pad images (with -1: black, MNIST's background) so that the latent
            side is a multiple of this (4: what channel_mult [1, 2, 4] needs).
        scaling_factor: the latent scale to use as given (a pretrained VAE's); None: computed
            from the data (1 / std of the latents, :meth:`LatentDataModule.latent_std`).
        shift_factor: subtracted before scaling (SD3 / FLUX VAEs); 0 otherwise.
        source: where the autoencoder came from (for messages).
    """

    def __init__(
        self,
        vae: nn.Module,
        image_shape: Sequence[int],
        latent_multiple: int = 1,
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        source: str = "",
    ) -> None:
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.image_shape = tuple(int(s) for s in image_shape)
        if len(self.image_shape) != 3:
            raise ValueError(f"a first stage needs image data (C, H, W), got shape {self.image_shape}")
        channels = int(vae.config.in_channels)
        if channels != self.image_shape[0]:
            raise ValueError(f"the autoencoder takes {channels}-channel images but the data have {self.image_shape[0]} channels")
        self.factor = downsampling_factor(vae)
        c, h, w = self.image_shape
        self.padded = (padded_size(h, self.factor, latent_multiple), padded_size(w, self.factor, latent_multiple))
        self.scaling_factor = None if scaling_factor is None else float(scaling_factor)
        self.shift_factor = float(shift_factor or 0.0)
        self.source = source
        self._fingerprint: str | None = None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(latent channels, H', W') of one image."""
        return (int(self.vae.config.latent_channels), self.padded[0] // self.factor, self.padded[1] // self.factor)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint_of(self.vae, {"image_shape": self.image_shape, "padded": self.padded})
        return self._fingerprint

    def _pads(self) -> tuple[int, int, int, int]:
        (_, h, w), (ph, pw) = self.image_shape, self.padded
        top, left = (ph - h) // 2, (pw - w) // 2
        return left, pw - w - left, top, ph - h - top

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior q(z | x) = N(mean, exp(logvar)) of images x (B, C, H, W) in [-1, 1]."""
        self.vae.to(x.device)
        x = F.pad(x.float(), self._pads(), value=-1.0)
        dist = self.vae.encode(x).latent_dist
        return dist.mean, dist.logvar

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] (clamped) of unscaled latents z."""
        self.vae.to(z.device)
        x = self.vae.decode(z.float()).sample
        left, right, top, bottom = self._pads()
        x = x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]
        return x.clamp(-1.0, 1.0)

    def describe(self) -> dict[str, Any]:
        """What a diffusion checkpoint stores about its first stage."""
        return {"source": self.source, "fingerprint": self.fingerprint, "latent_shape": list(self.latent_shape),
                "image_shape": list(self.image_shape), "padded": list(self.padded)}


# --------------------------------------------------------------------------- builders
def from_autoencoder_checkpoint(ckpt: str, image_shape: Sequence[int]) -> FirstStage:
    """The autoencoder of a ``python train.py model=autoencoder`` run (its .ckpt)."""
    from difflab.utils.checkpoint import load_checkpoint

    if not ckpt:
        raise ConfigError("first_stage=autoencoder needs first_stage.ckpt=<autoencoder run dir>/checkpoints/last.ckpt")
    checkpoint = load_checkpoint(ckpt)
    config = (checkpoint.get("hyper_parameters") or {}).get("config") or {}
    model = config.get("model") or {}
    if model.get("name") != "autoencoder":
        raise CheckpointError(
            f"first_stage.ckpt={ckpt} is not an autoencoder checkpoint (model={model.get('name', 'diffusion')}); "
            "train one with python train.py model=autoencoder"
        )
    sizes = dict(model.get("autoencoder") or {})
    stored = tuple((checkpoint.get("difflab") or {}).get("image_shape") or ())
    if stored and tuple(stored) != tuple(image_shape):
        raise ConfigError(f"first_stage.ckpt={ckpt} was trained on images of shape {stored}, the data have {tuple(image_shape)}")
    vae = build_autoencoder_kl(in_channels=int(image_shape[0]), **sizes)
    state = {k[len(VAE_PREFIX):]: v for k, v in (checkpoint.get("state_dict") or {}).items() if k.startswith(VAE_PREFIX)}
    missing, unexpected = vae.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"first_stage.ckpt={ckpt}: the weights do not fit its config ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected keys)")
    return FirstStage(vae, image_shape, latent_multiple=model.get("latent_multiple", 1), source=f"autoencoder {ckpt}")


def from_pretrained(path: str, image_shape: Sequence[int], latent_multiple: int = 1,
                    scaling_factor: float | None = None) -> FirstStage:
    """A local diffusers ``AutoencoderKL`` folder (``config.json`` + weights), e.g. a Stable
    Diffusion ``vae/``. Its ``scaling_factor`` and ``shift_factor`` are used unless
    ``scaling_factor`` is given here; nothing is downloaded."""
    from diffusers import AutoencoderKL

    folder = Path(str(path or "")).expanduser()
    if not path or not (folder / "config.json").is_file():
        raise ConfigError(
            f"first_stage.path={path}: no diffusers AutoencoderKL folder there (config.json missing); give a local "
            "folder such as <stable diffusion>/vae saved by save_pretrained"
        )
    try:
        vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as e:
        raise ConfigError(f"first_stage.path={path}: cannot load an AutoencoderKL ({' '.join(str(e).split())[:200]})") from None
    given = vae.config.scaling_factor if scaling_factor is None else scaling_factor
    return FirstStage(vae, image_shape, latent_multiple=latent_multiple, scaling_factor=given,
                      shift_factor=getattr(vae.config, "shift_factor", None), source=f"pretrained_vae {folder}")
