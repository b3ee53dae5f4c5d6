"""AutoencoderModule: trains the first stage of latent diffusion (``python train.py model=autoencoder``).

A KL-regularised autoencoder (diffusers' ``AutoencoderKL``; Rombach et al. 2022,
arXiv:2112.10752, sec. 3.1 and app. G), trained with

    L = rec(x, D(z)) + kl_weight * KL(q(z | x) || N(0, I)) [+ gan_weight * L_G after gan_start_step]

where rec is L1 or L2 per pixel (mean), the KL is summed over the latent elements and
averaged over the batch (LDM's ``LPIPSWithDiscriminator`` without the perceptual term: no
network for it can be downloaded here), z ~ q(z | x) during training (the posterior mean
in validation).

The optional adversarial term is a patch-GAN (Isola et al. 2017, arXiv:1611.07004) with the
hinge loss (LDM's ``hinge_d_loss``), switched on after ``gan_start_step`` optimizer steps as
LDM's ``disc_start``; the generator weight is fixed (LDM adapts it by the ratio of gradient
norms at the last decoder layer; a fixed weight keeps one backward pass). Both the
autoencoder and the discriminator are trained in one optimizer step: the generator term sees
a discriminator whose parameters do not take gradients, the discriminator term sees
reconstructions cut from the graph, so each loss only reaches its own parameters.

Logged: ``train/loss``, ``train/rec``, ``train/kl`` (and ``train/g_loss``, ``train/d_loss``),
``val/loss`` (the reconstruction loss of the posterior means), ``val/psnr`` (torchmetrics,
over the whole val split), ``val/kl``; the reconstruction grid and rFID come from callbacks
(:mod:`difflab.callbacks.reconstruction`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from difflab.module import DiffusionModule
from difflab.utils.lr import LRSchedule

__all__ = ["AutoencoderModule", "PatchDiscriminator"]

LOSSES = ("l1", "l2")


class PatchDiscriminator(nn.Module):
    """pix2pix's N-layer patch discriminator (arXiv:1611.07004, sec. 3.2.2): strided 4x4
    convolutions, one real/fake logit per patch. GroupNorm in place of BatchNorm, so the
    logits of a sample do not depend on its batch."""

    def __init__(self, in_channels: int = 1, channels: int = 32, num_layers: int = 2) -> None:
        super().__init__()
        if num_layers < 1 or channels < 1:
            raise ValueError(f"the discriminator needs channels >= 1 and num_layers >= 1, got {channels}, {num_layers}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, num_layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(c, out, 4, stride, 1), nn.GroupNorm(min(32, out // 4) or 1, out), nn.LeakyReLU(0.2)]
            c = out
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AutoencoderModule(L.LightningModule):
    """Trains a diffusers ``AutoencoderKL`` on images in [-1, 1].

    Args:
        vae: the ``AutoencoderKL`` (:func:`difflab.first_stage.build_autoencoder_kl`).
        optimizer: a partial optimizer, called with the parameters.
        image_shape: (C, H, W) of the data.
        latent_multiple: images are padded with -1 so that the latent side is a multiple of
            this (:class:`difflab.first_stage.FirstStage`), and the reconstructions cropped back.
        loss: ``l1`` or ``l2`` reconstruction loss.
        kl_weight: weight of the KL term.
        gan_weight: weight of the patch-GAN generator loss (0: no discriminator).
        gan_start_step: optimizer steps before the adversarial terms start.
        discriminator: the patch discriminator (built when ``gan_weight > 0``).
        lr_warmup_steps: linear warm-up when ``lr_scheduler`` is None.
        lr_scheduler: the learning-rate schedule.
        seed: the posterior noise is seeded by (seed, rank, step, batch).
        config: the resolved run config, stored as hyperparameters.
        max_consecutive_nonfinite: stop after this many consecutive steps with a non-finite
            gradient (each is skipped), as a diffusion run does.
    """

    def __init__(
        self,
        vae: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        image_shape: tuple[int, ...] | list[int] = (1, 28, 28),
        latent_multiple: int = 1,
        loss: str = "l1",
        kl_weight: float = 1e-6,
        gan_weight: float = 0.0,
        gan_start_step: int = 0,
        discriminator: nn.Module | None = None,
        lr_warmup_steps: int = 0,
        lr_scheduler: LRSchedule | None = None,
        seed: int = 0,
        config: dict[str, Any] | None = None,
        max_consecutive_nonfinite: int = 20,
    ) -> None:
        super().__init__()
        from difflab.first_stage import FirstStage

        if loss not in LOSSES:
            raise ValueError(f"model.loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        for name, value in (("kl_weight", kl_weight), ("gan_weight", gan_weight)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"model.{name} must be a number >= 0, got {value!r}")
        if int(gan_start_step) < 0:
            raise ValueError(f"model.gan_start_step must be >= 0, got {gan_start_step}")
        self.vae = vae
        self.image_shape = tuple(int(s) for s in image_shape)
        # the padding / cropping / latent shape of the first stage this becomes (not a child:
        # the weights are saved once, under vae.*)
        self.__dict__["_shape"] = FirstStage(vae, self.image_shape, latent_multiple=latent_multiple)
        vae.train().requires_grad_(True)  # FirstStage freezes what it wraps; here it trains
        self.loss_type, self.kl_weight = loss, float(kl_weight)
        self.gan_weight, self.gan_start_step = float(gan_weight), int(gan_start_step)
        if self.gan_weight > 0 and discriminator is None:
            discriminator = PatchDiscriminator(self.image_shape[0])
        self.discriminator = discriminator if self.gan_weight > 0 else None
        self.optimizer_factory = optimizer
        self.lr_warmup_steps, self.lr_scheduler = int(lr_warmup_steps), lr_scheduler
        self.seed = int(seed)
        if max_consecutive_nonfinite < 1:
            raise ValueError(f"max_consecutive_nonfinite must be >= 1, got {max_consecutive_nonfinite}")
        self.max_consecutive_nonfinite = int(max_consecutive_nonfinite)
        self.skipped_steps, self.consecutive_nonfinite, self.last_step_skipped = 0, 0, False
        self.save_hyperparameters({"config": config or {}}, logger=False)
        from torchmetrics.image import PeakSignalNoiseRatio

        self.val_psnr = PeakSignalNoiseRatio(data_range=2.0)  # images in [-1, 1]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self._shape.latent_shape

    # ------------------------------------------------------------------ the autoencoder
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self._shape._pads(), value=-1.0)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = self._shape._pads()
        return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, Any]:
        """(reconstruction of x, the posterior); z ~ q(z | x) with ``generator``, else its mean."""
        posterior = self.vae.encode(self._pad(x)).latent_dist
        z = posterior.sample(generator) if generator is not None else posterior.mode()
        return self._crop(self.vae.decode(z).sample), posterior

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstructions of images x in [-1, 1] from the posterior means (clamped to [-1, 1])."""
        was = self.vae.training
        self.vae.eval()
        try:
            return self(x.to(self.device).float())[0].clamp(-1.0, 1.0)
        finally:
            self.vae.train(was)

    def _rec(self, rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (rec - x).abs().mean() if self.loss_type == "l1" else F.mse_loss(rec, x)

    @staticmethod
    def _kl(posterior: Any) -> torch.Tensor:
        """KL(N(mean, var) || N(0, I)), summed over the latent elements, averaged over the batch."""
        return posterior.kl().mean()

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        from difflab.module import _mix_seed

        x = (batch[0] if isinstance(batch, (tuple, list)) else batch).float()
        g = torch.Generator(device=self.device).manual_seed(_mix_seed(self.seed, self.global_rank, self.global_step, batch_idx))
        rec, posterior = self(x, g)
        rec_loss, kl = self._rec(rec, x), self._kl(posterior)
        loss = rec_loss + self.kl_weight * kl
        logs = {"train/rec": rec_loss.detach(), "train/kl": kl.detach()}
        if self.discriminator is not None and self.global_step >= self.gan_start_step:
            d = self.discriminator
            d.requires_grad_(False)  # the generator term trains the autoencoder only
            g_loss = -d(rec).mean()
            d.requires_grad_(True)
            logits_real, logits_fake = d(x), d(rec.detach())  # the discriminator term trains d only
            d_loss = 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())  # hinge
            loss = loss + self.gan_weight * g_loss + d_loss
            logs.update({"train/g_loss": g_loss.detach(), "train/d_loss": d_loss.detach()})
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=x.shape[0])
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x = (batch[0] if isinstance(batch, (tuple, list)) else batch).float()
        rec, posterior = self(x)
        self.log("val/loss", self._rec(rec, x), on_epoch=True, prog_bar=True, sync_dist=True, batch_size=x.shape[0])
        self.log("val/kl", self._kl(posterior), on_epoch=True, sync_dist=True, batch_size=x.shape[0])
        self.val_psnr.update(rec.clamp(-1.0, 1.0), x)
        self.log("val/psnr", self.val_psnr, on_epoch=True, prog_bar=True, batch_size=x.shape[0])

    # ------------------------------------------------------------------ optimizer
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError("AutoencoderModule needs an optimizer (a partial, e.g. torch.optim.AdamW)")
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        schedule = self.lr_scheduler or LRSchedule("constant", warmup_steps=self.lr_warmup_steps)
        total = None
        if schedule.total_steps is None and schedule.name != "constant":
            total = int(self.trainer.estimated_stepping_batches)
        scheduler = schedule.build(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"}}

    # clip by global norm, log it, skip a step whose gradient is not finite (the diffusion run's)
    configure_gradient_clipping = DiffusionModule.configure_gradient_clipping

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["difflab"] = {"skipped_steps": self.skipped_steps, "image_shape": list(self.image_shape),
                                 "latent_shape": list(self.latent_shape), "model": "autoencoder"}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_steps = int(checkpoint.get("difflab", {}).get("skipped_steps", 0))
