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
a resumed or sampled model uses the scale it was trained with. So is ``latent_bound``, the largest
|z'| of the training latents (their posterior means plus 3 posterior standard deviations): the
samplers clip their x_0 estimates to [-bound, bound], the latent counterpart of clipping pixels to
[-1, 1]. Without it, an eps-prediction model's x_0 = (z_t - sqrt(1 - abar) eps) / sqrt(abar) is
amplified 2e4 times at t = T of the cosine schedule (abar_T = 2.4e-9), and unclipped latent samples
diverge to |z| in the hundreds (decoded: noise-like blobs); LDM's scaled-linear schedule
(sqrt(abar_T) = 0.068) hides this, ours does not. ``first_stage.clip_latents=false`` samples
unclipped, as LDM does. The autoencoder's weights are
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

__all__ = ["LatentDiffusionModule", "clip_bound_of", "clip_for_latents", "latent_bound_of"]

#: a seed part that keeps the posterior noise apart from the diffusion noise of the same step
_POSTERIOR_STREAM = 0x1A7E


#: posterior standard deviations added to |mean| in the clip bound of the latents
BOUND_POSTERIOR_STDS = 3.0


def clip_bound_of(bound: float, clip_latents: bool = True) -> float | None:
    """What a latent model's samplers clip x_0 to: the stored ``latent_bound``, or None (unclipped)
    when ``first_stage.clip_latents=false`` or the bound is not known (NaN: not computed yet, or a
    checkpoint from before it was stored)."""
    bound = float(bound)
    return bound if clip_latents and math.isfinite(bound) else None


def clip_for_latents(sampler: Any, bound: float | None, clip: bool | None = None) -> Any:
    """Clip the sampler's x_0 estimates to the range of the training latents, [-bound, bound],
    instead of the pixel range [-1, 1] (latents scaled to unit variance reach beyond it). ``bound``
    None or NaN (not known yet, ``first_stage.clip_latents=false``, or a checkpoint from before the
    bound was stored): no clipping, as LDM samples. ``clip``: whether the user wants x_0 clipped;
    None reads the sampler's own ``clip_sample`` as configured (remembered at the first call, as
    the sampler stops clipping while the bound is not known). A user who turns clipping off for a
    model that clips gets an unclipped sampler whose metric keys say ``_noclip`` (the model's own
    setting stays the reference, :attr:`Sampler.x0_default`). Dynamic thresholding stays as configured."""
    if not hasattr(sampler, "clip_sample"):
        return sampler
    if clip is None:
        clip = sampler.__dict__.setdefault("_clip_requested", bool(sampler.clip_sample))
    known = bound is not None and math.isfinite(float(bound)) and float(bound) > 0
    if known and clip:
        if sampler.clip_range not in (1.0, float(bound)):
            log.warning("%s: clip_range=%g is replaced by the range of this latent model's training latents, %.4g",
                        type(sampler).__name__, sampler.clip_range, float(bound))
        sampler.clip_sample = True
        sampler.clip_range = float(bound)
    elif sampler.clip_sample:
        sampler.clip_sample = False
    # the model's own setting: not named in metric keys
    sampler.x0_default = (True, float(bound)) if known else (False, 1.0)
    return sampler


def latent_bound_of(mean: torch.Tensor, logvar: torch.Tensor, scale: float, shift: float = 0.0,
                    sample_posterior: bool = True) -> float:
    """max |z'| of scaled training latents z' = (z - shift) * scale: over the posterior means, plus
    :data:`BOUND_POSTERIOR_STDS` posterior standard deviations when z is drawn from the posterior."""
    z = (mean.double() - shift).abs()
    if sample_posterior:
        z = z + BOUND_POSTERIOR_STDS * torch.exp(0.5 * logvar.double().clamp(-30.0, 20.0))
    return float(z.max()) * abs(float(scale))


class LatentDiffusionModule(DiffusionModule):
    """A :class:`DiffusionModule` on latents.

    Args:
        first_stage: a :class:`difflab.first_stage.FirstStage` (frozen; kept out of the
            module's children, so it is neither trained nor saved).
        sample_posterior: draw z ~ N(mean, exp(logvar)) at every step (LDM); false: z = mean.
        **kwargs: :class:`DiffusionModule`'s; ``image_shape`` is the latent shape.
    """

    def __init__(self, first_stage: Any, sample_posterior: bool = True, clip_latents: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("image_shape", first_stage.latent_shape)
        super().__init__(**kwargs)
        self.__dict__["first_stage"] = first_stage
        self.sample_posterior = bool(sample_posterior)
        self.clip_latents = bool(clip_latents)
        self.data_shape = tuple(first_stage.image_shape)
        scale = first_stage.scaling_factor
        self.register_buffer("latent_scale", torch.tensor(math.nan if scale is None else float(scale), dtype=torch.float64))
        self.register_buffer("latent_shift", torch.tensor(float(first_stage.shift_factor), dtype=torch.float64))
        self.register_buffer("latent_bound", torch.tensor(math.nan, dtype=torch.float64))
        clip_for_latents(self.sampler, None)  # until the bound is known (fit start, or a loaded checkpoint)
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
    @property
    def clip_bound(self) -> float | None:
        """What the samplers clip x_0 to: ``latent_bound``, or None (unclipped)."""
        return clip_bound_of(float(self.latent_bound), self.clip_latents)

    def on_fit_start(self) -> None:
        """Set the scale and the clip bound from the data (once: a resumed run keeps its
        checkpoint's); the run's sampler and those of the callbacks (e.g. ``callbacks.fid.sampler``)
        clip x_0 to the bound."""
        dm = self.trainer.datamodule
        if not (bool(torch.isfinite(self.latent_scale)) and bool(torch.isfinite(self.latent_bound))):
            if not hasattr(dm, "latent_std"):
                raise RuntimeError("a latent diffusion model trains on a LatentDataModule (build_datamodule with a first stage)")
        if not bool(torch.isfinite(self.latent_scale)):
            std = dm.latent_std(self.sample_posterior)
            self.latent_scale.fill_(1.0 / std)
            log.info("latent scale 1/std = %.5g (std %.5g of the training latents, arXiv:2112.10752)", 1.0 / std, std)
        if not bool(torch.isfinite(self.latent_bound)):
            mean, logvar = dm.posterior("train")
            bound = latent_bound_of(mean, logvar, float(self.latent_scale), float(self.latent_shift), self.sample_posterior)
            self.latent_bound.fill_(bound)
            log.info("latent clip bound %.4g (max |z'| of the training latents)%s", bound,
                     "" if self.clip_latents else "; not used: first_stage.clip_latents=false")
        for sampler in [self.sampler, *(getattr(c, "sampler", None) for c in self.trainer.callbacks)]:
            if sampler is not None:
                clip_for_latents(sampler, self.clip_bound)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["difflab"]["first_stage"] = {**self.first_stage.describe(), "latent_scale": float(self.latent_scale),
                                                "latent_shift": float(self.latent_shift),
                                                "latent_bound": float(self.latent_bound),
                                                "sample_posterior": self.sample_posterior,
                                                "clip_latents": self.clip_latents}
        checkpoint["difflab"]["data_shape"] = list(self.data_shape)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict")
        if isinstance(state, dict) and "latent_scale" in state and "latent_bound" not in state:
            # a checkpoint from before the bound was stored: fit start computes it from the data
            state["latent_bound"] = torch.tensor(math.nan, dtype=torch.float64)
        stored = ((checkpoint.get("difflab") or {}).get("first_stage") or {}).get("fingerprint")
        if stored is not None and stored != self.first_stage.fingerprint:
            raise CheckpointError(
                f"the checkpoint was trained on the latents of another autoencoder (fingerprint {stored}, this "
                f"run's {self.first_stage.source} has {self.first_stage.fingerprint}); resume with the same "
                "first_stage, or start a new run dir"
            )
