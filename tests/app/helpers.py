"""Test-only callbacks, passed to `python train.py` as overrides, e.g.
``+callbacks.dump_ema._target_=tests.app.helpers.DumpEMA`` (run from the repo root, where the
``tests`` package is importable)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback


class DumpEMA(Callback):
    """At the end of training every rank saves its EMA weights to
    ``<run dir>/ema_rank{global_rank}.safetensors``, so a test can compare the ranks."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from safetensors.torch import save_file

        from difflab.callbacks.ema import find_ema

        ema = find_ema(trainer)
        if ema is None or ema.ema_model is None:
            raise RuntimeError("DumpEMA needs the EMA callback")
        state = {k: v.detach().cpu().contiguous() for k, v in ema.ema_model.state_dict().items()}
        path = Path(trainer.default_root_dir) / f"ema_rank{trainer.global_rank}.safetensors"
        save_file(state, str(path), metadata={"num_updates": str(ema.num_updates), "rank": str(trainer.global_rank)})


class DumpSamples(Callback):
    """At the end of training every rank draws its share of the FID callback's samples (the
    evaluation path's default split) and saves them to ``<run dir>/samples_rank{rank}.pt``."""

    def __init__(self, n: int = 32, seed: int = 0, batch_size: int = 16) -> None:
        self.n, self.seed, self.batch_size = n, seed, batch_size

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import torch

        from difflab.callbacks.base import evaluation_backbone
        from difflab.evaluation import draw

        with evaluation_backbone(pl_module) as model:
            parts = [x for _, x in draw(model, pl_module.process, pl_module.sampler, pl_module.objective.target,
                                        pl_module.image_shape, self.n, self.seed, self.batch_size, pl_module.device)]
        torch.save(torch.cat(parts), Path(trainer.default_root_dir) / f"samples_rank{trainer.global_rank}.pt")
