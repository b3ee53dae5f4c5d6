"""DiffusionModule: the LightningModule that wires process + objective + backbone.

It owns the training and validation steps and the optimizer; EMA, sample grids and FID
are callbacks (``difflab.callbacks``). Everything random draws from an explicit
``torch.Generator`` seeded by (seed, rank, step), so DDP ranks never share noise and a
resumed run draws exactly the noise the uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import lightning as L
import torch
from torch import nn

from difflab.diffusion.objectives import DiffusionObjective
from difflab.diffusion.process import GaussianDiffusion
from difflab.errors import DifflabError
from difflab.samplers.base import Sampler
from difflab.utils.lr import LRSchedule

NUM_LOSS_BUCKETS = 4
#: the key the learning rate is logged under (by LearningRateMonitor, conf/callbacks/lr_monitor.yaml)
LR_LOG_KEY = "train/lr"


class NonFiniteLossError(DifflabError, RuntimeError):
    """Raised after too many consecutive steps with a NaN/inf loss or gradient."""


def _mix_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (Python's int-tuple hash is not randomized)."""
    return hash(tuple(int(p) for p in parts)) & 0x7FFF_FFFF_FFFF_FFFF


class DiffusionModule(L.LightningModule):
    """Denoising diffusion training (Ho et al. 2020, arXiv:2006.11239, Algorithm 1).

    Args:
        backbone: maps (x_t, t[, y]) to a tensor of x_t's shape.
        process: the forward process (owner of the noise schedule).
        objective: prediction target and loss weighting.
        sampler: the sampler that sample grids and FID use.
        optimizer: a partial optimizer, called with the parameters (e.g. AdamW).
        lr_warmup_steps: linear warm-up of the learning rate over this many steps, then constant;
            used when ``lr_scheduler`` is None.
        lr_scheduler: the learning-rate schedule (warm-up + constant, cosine or linear decay);
            stepped once per optimizer step.
        seed: training noise and timesteps are drawn from seed + global_rank (+ step).
        val_seed: validation noise and timesteps are fixed by this seed, for comparable val/loss.
        max_consecutive_nonfinite: stop the run after this many consecutive skipped steps.
        channels_last: use channels-last memory format for 4-D inputs and the backbone.
        image_shape: shape of one sample, (C, H, W) or (D,); what sampling callbacks draw.
        config: the resolved run config as a plain dict, stored as hyperparameters.
        conditioning: a :class:`~difflab.conditioning.ClassConditioning` for class-conditional
            training with label dropout (classifier-free guidance, arXiv:2207.12598); None:
            unconditional (labels are dropped, unless the backbone itself has ``num_classes``);
            a :class:`~difflab.conditioning.LowResConditioning` for super-resolution (SR3: each
            batch is conditioned on its own upsampled low-res images, kept in ``low_res``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        process: GaussianDiffusion,
        objective: DiffusionObjective,
        sampler: Sampler,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        lr_warmup_steps: int = 0,
        lr_scheduler: LRSchedule | None = None,
        seed: int = 0,
        val_seed: int = 1234,
        max_consecutive_nonfinite: int = 20,
        channels_last: bool = False,
        image_shape: tuple[int, ...] | list[int] | None = None,
        config: dict[str, Any] | None = None,
        conditioning: Any = None,
    ) -> None:
        super().__init__()
        if lr_warmup_steps < 0:
            raise ValueError(f"lr_warmup_steps must be >= 0, got {lr_warmup_steps}")
        if max_consecutive_nonfinite < 1:
            raise ValueError(f"max_consecutive_nonfinite must be >= 1, got {max_consecutive_nonfinite}")
        self.backbone = backbone
        self.process = process
        self.objective = objective
        self.sampler = sampler
        self.optimizer_factory = optimizer
        self.lr_warmup_steps = int(lr_warmup_steps)
        self.lr_scheduler = lr_scheduler
        self.seed = int(seed)
        self.val_seed = int(val_seed)
        self.max_consecutive_nonfinite = int(max_consecutive_nonfinite)
        self.channels_last = bool(channels_last)
        self.image_shape = tuple(int(s) for s in image_shape) if image_shape is not None else None
        from difflab.conditioning import LowResConditioning

        # class labels (label dropout, guidance) or a low-res image (super-resolution)
        self.low_res = conditioning if isinstance(conditioning, LowResConditioning) else None
        self.conditioning = None if self.low_res is not None else conditioning
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        # Plain dicts only: checkpoints then load with torch.load(weights_only=True).
        self.save_hyperparameters({"config": config or {}}, logger=False)
        self.skipped_steps = 0
        self.consecutive_nonfinite = 0
        self.last_step_skipped = False
        self._generators: dict[torch.device, torch.Generator] = {}

    # ------------------------------------------------------------------ helpers
    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.backbone(x, t) if y is None else self.backbone(x, t, y)

    def _generator(self, seed: int) -> torch.Generator:
        g = self._generators.get(self.device)
        if g is None:
            g = self._generators[self.device] = torch.Generator(device=self.device)
        g.manual_seed(seed)
        return g

    def _prepare(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        x0, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
        if self.channels_last and x0.ndim == 4:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        conditional = getattr(self.backbone, "num_classes", None)
        if self.low_res is not None:  # SR3: the condition is the image's own upsampled low-res version
            return x0, self.low_res.condition(x0)
        if self.conditioning is not None:
            if y is None or bool((y < 0).any()) or bool((y >= self.conditioning.num_classes).any()):
                raise DifflabError(
                    f"conditioning=class needs a label in [0, {self.conditioning.num_classes - 1}] for every image, "
                    "but a batch has unlabelled (-1) or out-of-range labels; use conditioning=none for this data"
                )
            return x0, y.long()
        if not conditional or y is None or bool((y < 0).any()):
            y = None
        return x0, y

    def eval_condition(self, n: int, datamodule: Any = None) -> tuple[torch.Tensor | None, Any, str | None]:
        """``(y, guidance, scheme)`` that the sampling callbacks draw n samples with.

        Class-conditional: balanced labels (sample i of class i mod K) under the run's guidance,
        scheme ``uniform``. Super-resolution: sample i upscales val image i mod N (average-pooled
        and upsampled as in training), guidance ``sr<factor>x_val`` (a str: it names the key's
        protocol, scores of SR outputs are not comparable with unconditional ones).
        Unconditional: (None, None, None).
        """
        if self.low_res is not None:
            from difflab.utils.images import from_uint8

            y = self.low_res.condition(from_uint8(self.low_res_originals(n, datamodule)))
            return y, f"sr{self.low_res.factor}x_val", "val"
        if self.conditioning is not None:
            from difflab.conditioning import balanced_labels

            return balanced_labels(n, self.conditioning.num_classes), self.conditioning.guidance, "uniform"
        return None, None, None

    def low_res_originals(self, n: int, datamodule: Any = None) -> torch.Tensor:
        """The full-size val images (uint8 (n, C, H, W)) whose low-res versions the callbacks of a
        super-resolution model upscale: sample i takes image i mod N of the val split in a fixed
        random order (splits may be stored by class), so any n works."""
        dm = datamodule if datamodule is not None else getattr(getattr(self, "_trainer", None), "datamodule", None)
        if dm is None or not hasattr(dm, "real_images"):
            raise DifflabError("a super-resolution model samples from low-res val images: it needs an image data module")
        val = dm.real_images("val")
        order = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))
        return val[order[torch.arange(int(n)) % len(val)]]

    def set_eval_backbone(self, model: nn.Module | None) -> None:
        """The weights to evaluate and sample with (the EMA callback hands over its copy).
        Kept out of the module's children, so it is neither trained nor saved twice."""
        self.__dict__["_eval_backbone"] = model

    def eval_backbone(self) -> nn.Module:
        """The weights to evaluate and sample with: the EMA copy when an EMA callback runs."""
        return self.__dict__.get("_eval_backbone") or self.backbone

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x0, y = self._prepare(batch)
        seed = _mix_seed(self.seed, self.global_rank, self.global_step, batch_idx)
        generator = self._generator(seed)
        if self.conditioning is not None and y is not None:  # label dropout: the null label's share of the batch
            y = self.conditioning.drop_labels(y, generator)
        out = self.objective(self.backbone, self.process, x0, generator, y=y)
        loss = out.loss_per_sample.mean()
        # Loss per timestep quarter: where in the chain the model still has to learn. A quarter
        # that no sample of this batch fell into logs nothing (a 0 would read as a perfect fit).
        bucket = (out.t * NUM_LOSS_BUCKETS) // self.process.num_timesteps
        per = out.loss_per_sample.detach()
        sums = torch.zeros(NUM_LOSS_BUCKETS, device=per.device, dtype=per.dtype).index_add_(0, bucket, per)
        counts = torch.bincount(bucket, minlength=NUM_LOSS_BUCKETS)
        means = sums / counts.clamp_min(1).to(per.dtype)
        present = counts.cpu().tolist()
        logs = {f"train/loss_q{q}": means[q] for q in range(NUM_LOSS_BUCKETS) if present[q] > 0}
        if logs:
            self.log_dict(logs, on_step=True, on_epoch=False, prog_bar=False, batch_size=x0.shape[0])
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True, batch_size=x0.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x0, y = self._prepare(batch)
        seed = _mix_seed(self.val_seed, self.global_rank, batch_idx)
        raw = self.objective(self.backbone, self.process, x0, self._generator(seed), y=y)
        self.log("val/loss_raw", raw.loss_per_sample.mean(), on_epoch=True, sync_dist=True, batch_size=x0.shape[0])
        model = self.eval_backbone()
        if model is not self.backbone:  # same noise and timesteps for the EMA weights
            ema = self.objective(model, self.process, x0, self._generator(seed), y=y)
            loss = ema.loss_per_sample.mean()
        else:
            loss = raw.loss_per_sample.mean()
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=x0.shape[0])

    # ------------------------------------------------------------------ optimizer
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError("DiffusionModule needs an optimizer (a partial, e.g. torch.optim.AdamW)")
        params = [p for p in self.backbone.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        schedule = self.lr_scheduler or LRSchedule("constant", warmup_steps=self.lr_warmup_steps)
        total = None
        if schedule.total_steps is None and schedule.name != "constant":
            estimated = self.trainer.estimated_stepping_batches  # trainer.max_steps, or from the epochs
            if not math.isfinite(estimated):
                raise DifflabError(
                    f"lr_scheduler={schedule.name} decays over the run's length, which this trainer does not fix "
                    "(trainer.max_steps=-1 with a time budget?); set lr_scheduler.total_steps=N or lr_scheduler=constant")
            total = int(estimated)
        scheduler = schedule.build(optimizer, total_steps=total)
        # "name" is the key LearningRateMonitor logs the lr under (its default would be lr-AdamW)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": LR_LOG_KEY}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip by global norm, log the norm, and skip the step if it is not finite.

        A skipped step sets every gradient to None, so the optimizer leaves weights and
        moments untouched; the EMA callback sees ``last_step_skipped`` and does not update.
        """
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm not in (None, "norm"):
            raise ValueError("trainer.gradient_clip_algorithm must be 'norm' for difflab")
        max_norm = float(gradient_clip_val) if gradient_clip_val else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm, foreach=True)
        finite = bool(torch.isfinite(norm))
        self.last_step_skipped = not finite
        if finite:
            self.consecutive_nonfinite = 0
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        else:
            for p in params:
                p.grad = None
            self.skipped_steps += 1
            self.consecutive_nonfinite += 1
            self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
            if self.consecutive_nonfinite >= self.max_consecutive_nonfinite:
                raise NonFiniteLossError(
                    f"{self.consecutive_nonfinite} consecutive steps had a non-finite loss or gradient "
                    f"(at global step {self.global_step}); stopping. The last good checkpoint is kept. "
                    "Try a lower optimizer.lr, trainer.gradient_clip_val=1.0, or trainer.precision=32-true."
                )

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["difflab"] = {
            "skipped_steps": self.skipped_steps,
            "image_shape": list(self.image_shape or []),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_steps = int(checkpoint.get("difflab", {}).get("skipped_steps", 0))
