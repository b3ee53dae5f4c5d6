"""End-to-end runs of difflab.train.run on the CPU with a tiny backbone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_train

TINY = [
    "backbone.base_channels=8",
    "backbone.channel_mult=[1,2]",
    "backbone.num_res_blocks=1",
    "data.batch_size=16",
    "data.val_batch_size=64",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "~callbacks.fid",  # FID at n=1000 ends every default run; tests that score turn it back on
    "callbacks.sample_grid.num_samples=4",
    "sampler.num_steps=2",
    "print_config=false",
]


def run_tiny(tmp_path: Path, overrides: list[str], steps: int = 2, base: list[str] = TINY):
    from difflab.train import run

    cfg = compose_train(
        [*base, f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", *overrides],
        output_dir=str(tmp_path),
    )
    return run(cfg), cfg


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_short_fit_every_combination(tmp_path, schedule, objective, sampler):
    metric, _ = run_tiny(
        tmp_path,
        [f"schedule={schedule}", f"objective={objective}", f"sampler={sampler}", "logger=none",
         "objective.weighting=min_snr"] + (["sampler.num_steps=2"] if sampler == "ddpm" else []),
    )
    assert metric is not None and torch.isfinite(torch.tensor(metric))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    grids = sorted((tmp_path / "samples").glob("step_*.png"))
    assert [g.name for g in grids] == ["step_0000002.png"]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    assert ckpt["hyper_parameters"]["config"]["objective"]["target"] == objective


def test_toy2d_with_mlp(tmp_path):
    """2-D points train with the default callbacks; the sample grid becomes a scatter plot."""
    metric, _ = run_tiny(
        tmp_path,
        ["data=toy2d", "backbone=mlp", "logger=none", "data.batch_size=64", "backbone.hidden=32",
         "callbacks.sample_grid.num_points=200", "callbacks.sample_grid.every_n_steps=1"],
        base=[o for o in TINY if not o.startswith(("backbone.", "callbacks.sample_grid"))],
    )
    assert metric is not None
    assert [p.name for p in sorted((tmp_path / "samples").glob("*.png"))] == ["step_0000001.png", "step_0000002.png"]


def _state(trainer, module):
    from difflab.callbacks.ema import find_ema

    ema = find_ema(trainer)
    opt = trainer.optimizers[0].state_dict()
    return {
        "step": trainer.global_step,
        "raw": {k: v.clone() for k, v in module.backbone.state_dict().items()},
        "ema": {k: v.clone() for k, v in ema.ema_model.state_dict().items()},
        "ema_updates": ema.num_updates,
        "opt": {i: {k: v.clone() for k, v in s.items()} for i, s in opt["state"].items()},
    }


def test_resume_continues_exactly(tmp_path):
    """Train 3 steps, stop; resume from last.ckpt: step, optimizer, raw and EMA weights are the saved ones."""
    import lightning as L

    from difflab.train import run

    captured = {}

    class Recorder(L.Callback):
        def __init__(self, key):
            self.key = key

        def on_train_end(self, trainer, module):
            captured[self.key + "_end"] = _state(trainer, module)

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if self.key + "_start" not in captured:
                captured[self.key + "_start"] = _state(trainer, module)

    import difflab.train as train_mod

    original = train_mod.build_callbacks

    def with_recorder(key):
        def patched(cfg):
            return original(cfg) + [Recorder(key)]

        return patched

    train_mod.build_callbacks = with_recorder("first")
    try:
        run_tiny(tmp_path, ["logger=none"], steps=3)
        train_mod.build_callbacks = with_recorder("second")
        cfg = compose_train(
            [*TINY, "trainer.max_steps=5", "trainer.val_check_interval=5", "logger=none"],
            output_dir=str(tmp_path),
        )
        run(cfg)  # resume=auto picks up checkpoints/last.ckpt
    finally:
        train_mod.build_callbacks = original

    first, second = captured["first_end"], captured["second_start"]
    assert first["step"] == second["step"] == 3
    assert first["ema_updates"] == second["ema_updates"] == 3
    for part in ("raw", "ema"):
        for k in first[part]:
            assert torch.equal(first[part][k], second[part][k]), (part, k)
    for i in first["opt"]:
        for k in first["opt"][i]:
            assert torch.equal(first["opt"][i][k], second["opt"][i][k]), ("opt", i, k)
    assert captured["second_end"]["step"] == 5
    assert captured["second_end"]["ema_updates"] == 5


def test_ckpt_path_missing_is_a_clear_error(tmp_path):
    from difflab.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no such file"):
        run_tiny(tmp_path, ["logger=none", f"ckpt_path={tmp_path}/nope.ckpt"])


def test_wandb_offline_run_holds_losses_and_a_grid(tmp_path):
    run_tiny(tmp_path, ["logger=wandb"], steps=2)
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    out = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--summary", "--json", str(runs[0])],
        capture_output=True, text=True, timeout=120, check=True,
    )
    summary = json.loads(out.stdout)
    assert summary["state"] == "finished"
    keys = set(summary["summary"])
    assert {"train/loss", "val/loss", "samples/grid", "train/loss_q0", "train/grad_norm", "train/lr"} <= keys
    assert summary["config"]["schedule"]["name"] == "cosine"


def test_last_ckpt_holds_the_final_step_off_the_validation_grid(tmp_path):
    """max_steps=3 with validation every 2 steps: last.ckpt still holds step 3."""
    from difflab.train import run

    cfg = compose_train([*TINY, "trainer.max_steps=3", "trainer.val_check_interval=2", "logger=none"], output_dir=str(tmp_path))
    run(cfg)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    assert ckpt["callbacks"]["EMA"]["num_updates"] == 3
