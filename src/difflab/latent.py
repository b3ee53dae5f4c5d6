"""LatentDiffusionModule: diffusion on the latents of a frozen first stage.

Latent diffusion (Rombach et al. 2022, arXiv:2112.10752): the batches are the cached
posterior moments of the images (:class:`difflab.data.latent.LatentDataModule`); each step
draws z ~ q(z | x) (or takes its mean), scales it to unit variance, z' = (z - shift) * scale,
and trains the unchanged diffusion objective on z'. Samplers, guidance, EMA and resume see
nothing but a (C', H', W') data shape; the sampling callbacks, sample.py and the evaluation
path decode through :meth:`decode` before images are quantised.

The scale is LDM's ``scale_by_std``: 1 / std of the training latents (computed once, from the
whole cache rather than LDM's first batch), unless the first stage brings its own (a pretrained
VAE's ``scaling_factor``). It is a buffer (``latent_scale``), so it is in every checkpoint and
a resumed or sampled model uses the scale it was trained with. The autoencoder's weights are
not copied into the diffusion checkpoint (``first_stage.ckpt`` / ``first_stage.path`` in the
stored config name them); its fingerprint is stored and checked on resume.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from difflab.errors import CheckpointError
from difflab.module import DiffusionModule, _mix_seed
from difflab.utils.logging import get_logger

log = get_logger(__name__)

__all__ = ["LatentDiffusionModule", "unclip_for_latents"]

#: a seed part that keeps the posterior noise apart from the diffusion noise of the same step
_POSTERIOR_STREAM = 0x1A7E


def unclip_for_latents(sampler: Any) -> Any:
    """Turn off the sampler's clipping of x_0 to [-1, 1]: latents scaled to unit variance reach
    beyond it (LDM samples its latents unclipped). Dynamic thresholding stays as configured."""
    if getattr(sampler, "clip_sample", False):
        sampler.clip_sample = False
    return sampler


class LatentDiffusionModule(DiffusionModule):
    """A :class:`DiffusionModule` on latents.

    Args:
        first_stage: a :class:`difflab.first_stage.FirstStage` (frozen; kept out of the
            module's children, so it is neither trained nor saved).
        sample_posterior: draw z ~ N(mean, exp(logvar)) at every step (LDM); false: z = mean.
        **kwargs: :class:`DiffusionModule`'s; ``image_shape`` is the latent shape.
    """

    def __init__(self, first_stage: Any, sample_posterior: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("image_shape", first_stage.latent_shape)
        super().__init__(**kwargs)
        self.__dict__["first_stage"] = first_stage
        self.sample_posterior = bool(sample_posterior)
        self.data_shape = tuple(first_stage.image_shape)
        scale = first_stage.scaling_factor
        self.register_buffer("latent_scale", torch.tensor(math.nan if scale is None else float(scale), dtype=torch.float64))
        self.register_buffer("latent_shift", torch.tensor(float(first_stage.shift_factor), dtype=torch.float64))
        self._posterior_generators: dict[torch.device, torch.Generator] = {}

    # ------------------------------------------------------------------ latents
    def _posterior_generator(self, seed: int) -> torch.Generator:
        g = self._posterior_generators.get(self.device)
        if g is None:
            g = self._posterior_generators[self.device] = torch.Generator(device=self.device)
        return g.manual_seed(seed)

    def to_latents(self, moments: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Scaled latents (z - shift) * scale of a batch of posterior moments cat(mean, logvar)."""
        if not bool(torch.isfinite(self.latent_scale)):
            raise RuntimeError("the latent scale is not set: fit with a LatentDataModule, or load a checkpoint")
        mean, logvar = moments.float().chunk(2, dim=1)
        z = mean
        if self.sample_posterior and generator is not None:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise  # diffusers' DiagonalGaussianDistribution
        return ((z - self.latent_shift.float()) * self.latent_scale.float()).to(moments.dtype)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (the data's shape) of scaled latents z' (the sampler's output)."""
        return self.first_stage.decode(z.float() / self.latent_scale.float() + self.latent_shift.float())

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latents (posterior means) of images x in [-1, 1] (img2img-style uses)."""
        mean, _ = self.first_stage.encode(x)
        return (mean - self.latent_shift.float()) * self.latent_scale.float()

    def _latent_batch(self, batch: Any, parts: tuple[int, ...]) -> Any:
        moments, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
        z = self.to_latents(moments, self._posterior_generator(_mix_seed(*parts, _POSTERIOR_STREAM)))
        return (z, y) if y is not None else z

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        parts = (self.seed, self.global_rank, self.global_step, batch_idx)
        return super().training_step(self._latent_batch(batch, parts), batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        return super().validation_step(self._latent_batch(batch, (self.val_seed, self.global_rank, batch_idx)), batch_idx)

    # ------------------------------------------------------------------ the scale and checkpoints
    def on_fit_start(self) -> None:
        """Set the scale from the data (once: a resumed run keeps its checkpoint's); the samplers
        of the callbacks (e.g. ``callbacks.fid.sampler``) sample latents unclipped too."""
        for callback in self.trainer.callbacks:
            if getattr(callback, "sampler", None) is not None:
                unclip_for_latents(callback.sampler)
        if bool(torch.isfinite(self.latent_scale)):
            return
        dm = self.trainer.datamodule
        if not hasattr(dm, "latent_std"):
            raise RuntimeError("a latent diffusion model trains on a LatentDataModule (build_datamodule with a first stage)")
        std = dm.latent_std(self.sample_posterior)
        self.latent_scale.fill_(1.0 / std)
        log.info("latent scale 1/std = %.5g (std %.5g of the training latents, arXiv:2112.10752)", 1.0 / std, std)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["difflab"]["first_stage"] = {**self.first_stage.describe(), "latent_scale": float(self.latent_scale),
                                                "latent_shift": float(self.latent_shift),
                                                "sample_posterior": self.sample_posterior}
        checkpoint["difflab"]["data_shape"] = list(self.data_shape)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        stored = ((checkpoint.get("difflab") or {}).get("first_stage") or {}).get("fingerprint")
        if stored is not None and stored != self.first_stage.fingerprint:
            raise CheckpointError(
                f"the checkpoint was trained on the latents of another autoencoder (fingerprint {stored}, this "
                f"run's {self.first_stage.source} has {self.first_stage.fingerprint}); resume with the same "
                "first_stage, or start a new run dir"
            )
