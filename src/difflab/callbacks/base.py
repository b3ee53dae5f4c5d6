"""What the sampling callbacks share: the evaluation weights in eval mode, and a periodic
image callback (every N steps and at the end, rank 0 only, PNG in the run dir + every logger).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from difflab.evaluation import eval_mode
from difflab.utils.images import save_png
from difflab.utils.logging import get_logger
from difflab.utils.loggers import log_image

log = get_logger(__name__)


@contextmanager
def evaluation_backbone(pl_module: L.LightningModule) -> Iterator[torch.nn.Module]:
    """The weights to sample with (``pl_module.eval_backbone()``: the EMA copy when an EMA
    callback runs) in eval mode for the block; the previous train/eval mode is restored after."""
    with eval_mode(pl_module.eval_backbone()) as model:
        yield model


def image_shape_of(pl_module: L.LightningModule, who: str) -> tuple[int, ...]:
    """The module's (C, H, W) sample shape, or a ValueError naming ``who`` for non-image data."""
    shape = getattr(pl_module, "image_shape", None)
    if shape is None or len(shape) != 3:
        raise ValueError(f"{who} needs an image data set (image_shape (C, H, W)), got image_shape {shape}")
    return tuple(shape)


class PeriodicImageCallback(Callback):
    """Render one image from fixed seeds every ``every_n_steps`` optimizer steps and at the end.

    Subclasses implement :meth:`render`. Only rank 0 renders; a step is rendered at most once
    (the last batch of training and ``on_train_end`` share a step). The image is written to
    ``<output_dir or trainer.default_root_dir>/<dirname>/step_XXXXXXX.png`` and logged under
    ``log_key`` to every logger that takes images.

    Args:
        every_n_steps: render every this many optimizer steps (0: only at the end).
        at_end: also render when training ends.
        seed: the seed of the initial noise: the same seed shows the same x_T in every run.
        dirname: sub-folder of the run dir for the PNG files.
        sampler: an optional sampler to use instead of the module's.
        output_dir: the run dir (default: ``trainer.default_root_dir``).
    """

    #: the config key, for error messages (``callbacks.<config_key>.every_n_steps``)
    config_key = "periodic_image"
    #: the logger key of the image
    log_key = "samples/image"
    #: what the log line calls the image
    what = "image"

    def __init__(
        self,
        every_n_steps: int,
        at_end: bool,
        seed: int,
        dirname: str,
        sampler=None,
        output_dir: str | None = None,
    ) -> None:
        if every_n_steps < 0:
            raise ValueError(f"callbacks.{self.config_key}.every_n_steps must be >= 0, got {every_n_steps}")
        self.every_n_steps = int(every_n_steps)
        self.at_end = bool(at_end)
        self.seed = int(seed)
        self.dirname = dirname
        self.sampler = sampler
        self.output_dir = output_dir
        self._last_step = -1
        self.last_path: Path | None = None

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[np.ndarray, str]:
        """The H x W x C uint8 image for this step and its caption."""
        raise NotImplementedError

    def _out_dir(self, trainer: L.Trainer) -> Path:
        root = Path(self.output_dir) if self.output_dir else Path(trainer.default_root_dir)
        return root / self.dirname

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step == self._last_step or not trainer.is_global_zero:
            return
        self._last_step = step
        image, caption = self.render(trainer, pl_module)
        path = save_png(image, self._out_dir(trainer) / f"step_{step:07d}.png")
        self.last_path = path
        for logger in trainer.loggers:
            log_image(logger, self.log_key, image, step=step, caption=caption)
        log.info("%s written to %s", self.what, path)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self._run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_end:
            self._run(trainer, pl_module)


def eval_condition(pl_module: L.LightningModule, n: int, datamodule=None) -> tuple:
    """``(y, guidance, scheme)`` of n samples of the module (``DiffusionModule.eval_condition``):
    balanced labels under the run's guidance, low-res val images for super-resolution, or
    ``(None, None, None)`` for an unconditional model (or a module without the method)."""
    fn = getattr(pl_module, "eval_condition", None)
    return fn(n, datamodule) if callable(fn) else (None, None, None)
