"""Latent vs pixel diffusion on mnist5k: time per step, and digits-FID at n=1000 on an equal wall-clock budget.

    python benchmarks/latent.py --timing              # time per step only (a few dozen steps each)
    python benchmarks/latent.py                       # the whole comparison (hours on a CPU)
    python benchmarks/latent.py --quick               # a smoke run: tiny sizes, 2 steps each

The comparison (``benchmarks/README.md``, "Latent diffusion"):

1. the first stage: ``python train.py model=autoencoder`` (the default trainer.max_steps, 2,400); its
   training time, PSNR and rFID are reported separately, they are not in the budget;
2. the pixel default: ``python train.py`` (what ``make train`` runs, 2,400 steps); its
   training time (first to last training batch) is the budget, and its FID callback scores
   n=1000 samples at the end (``fid/digits/ddim50_eta1/n1000``);
3. the latent run: ``python train.py first_stage=autoencoder first_stage.ckpt=<1>``
   with ``trainer.max_steps=-1 +trainer.max_time=DD:HH:MM:SS`` (the budget) and the cosine LR decay
   planned over 5x the pixel run's steps (``lr_scheduler.total_steps``): as many steps as fit into the
   pixel run's time, then the same FID callback on decoded samples.

Time per step is the median of the differences between consecutive ``on_train_batch_end``
timestamps after ``--warmup`` steps, with validation, checkpoints, grids and FID off.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import compose_train, machine, median, note, table  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

#: timestamps of the running fit (the timer is built by Hydra from its config, by name)
STAMPS: list[float] = []


class StepTimer(Callback):
    """Timestamps every ``on_train_batch_end`` into :data:`STAMPS`."""

    def on_train_start(self, trainer, pl_module) -> None:
        STAMPS.clear()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        STAMPS.append(time.perf_counter())


#: latent steps per pixel step at equal wall-clock (the --timing table: 105 ms against 519 ms)
LATENT_STEP_RATIO = 5
TIMER = [f"+callbacks.step_timer._target_={__name__}.StepTimer"]
QUIET = ["logger=csv", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "print_config=false"]
TIMING = [*QUIET, "~callbacks.fid", "~callbacks.sample_grid", "trainer.val_check_interval=100000"]
QUICK_AE = ["model.autoencoder.block_out_channels=[8,8,8]", "model.autoencoder.norm_num_groups=4",
            "model.autoencoder.latent_channels=2", "data.batch_size=16"]
QUICK_DIFF = ["backbone.base_channels=8", "backbone.channel_mult=[1,2]", "backbone.num_res_blocks=1",
              "data.batch_size=16", "sampler.num_steps=2"]
QUICK_FID = ["callbacks.fid.n=50", "callbacks.fid.batch_size=50"]


def fit(overrides: list[str], out: Path) -> dict[str, Any]:
    """One train.py run; its metrics, step times and wall time."""
    from difflab.train import run

    cfg = compose_train([*overrides, *TIMER], output_dir=str(out))
    start = time.perf_counter()
    from difflab.build import build_trainer

    trainer_box: dict[str, Any] = {}
    import difflab.train as train_module

    def keep(cfg, callbacks, loggers):  # the trainer, for its callback_metrics and global_step
        trainer_box["trainer"] = build_trainer(cfg, callbacks, loggers)
        return trainer_box["trainer"]

    original, train_module.build_trainer = train_module.build_trainer, keep
    try:
        run(cfg)
    finally:
        train_module.build_trainer = original
    wall = time.perf_counter() - start
    trainer = trainer_box["trainer"]
    stamps = list(STAMPS)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    return {"wall": wall, "train_seconds": (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan"),
            "ms_per_step": 1000 * (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan"),
            "stamps": stamps, "steps": trainer.global_step, "metrics": metrics, "out": out}


def hms(seconds: int) -> str:
    """Lightning's ``max_time`` string DD:HH:MM:SS."""
    d, rest = divmod(int(seconds), 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{d:02d}:{h:02d}:{m:02d}:{s:02d}"


def per_step(stamps: list[float], warmup: int) -> float:
    gaps = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1 :])]
    return median(gaps)


def timing(steps: int, warmup: int, quick: bool, root: Path) -> None:
    ae_sizes, diff_sizes = (QUICK_AE, QUICK_DIFF) if quick else ([], [])
    cache = f"paths.cache_dir={root / 'cache'}"
    n = f"trainer.max_steps={steps}"
    note(f"autoencoder: {steps} steps")
    ae = fit(["model=autoencoder", *QUIET, "~callbacks.rfid", "~callbacks.reconstructions", "trainer.val_check_interval=100000",
              n, cache, *ae_sizes], root / "ae")
    ckpt = root / "ae" / "checkpoints" / "last.ckpt"
    note(f"pixel: {steps} steps")
    pixel = fit([*TIMING, n, cache, *diff_sizes], root / "pixel")
    note(f"latent: {steps} steps (the latents are encoded first, once)")
    latent = fit([*TIMING, n, cache, "first_stage=autoencoder", f"first_stage.ckpt={ckpt}", *diff_sizes], root / "latent")
    rows = []
    for name, r in (("autoencoder (model=autoencoder)", ae), ("pixel (the default)", pixel), ("latent (first_stage=autoencoder)", latent)):
        s = per_step(r["stamps"], warmup)
        rows.append([name, r["steps"], f"{s * 1000:.0f}", f"{1 / s:.2f}" if s == s and s > 0 else "n/a", f"{r['wall']:.1f}"])
    print(f"\nTime per training step, median over steps {warmup + 1}-{steps} ({machine()})\n")
    print(table(["run", "steps", "ms / step", "steps / s", "wall s (incl. setup)"], rows))


def comparison(root: Path, quick: bool) -> None:
    ae_sizes, diff_sizes = (QUICK_AE, [*QUICK_DIFF, *QUICK_FID]) if quick else ([], [])
    steps = ["trainer.max_steps=2", "trainer.val_check_interval=2"] if quick else []
    cache = f"paths.cache_dir={root / 'cache'}"
    note("1. autoencoder")
    ae = fit(["model=autoencoder", *QUIET, cache, *steps, *ae_sizes, *(["callbacks.rfid.n=50"] if quick else [])], root / "ae")
    ckpt = root / "ae" / "checkpoints" / "last.ckpt"
    note("2. pixel default")
    pixel = fit([*QUIET, cache, *steps, *diff_sizes], root / "pixel")
    budget = max(1, int(round(pixel["train_seconds"])))
    note(f"3. latent, +trainer.max_time={hms(budget)}")
    latent = fit([*QUIET, cache, *diff_sizes, "first_stage=autoencoder", f"first_stage.ckpt={ckpt}",
                  *(["trainer.val_check_interval=2"] if quick else []),
                  "trainer.max_steps=-1", f"+trainer.max_time={hms(budget)}",
                  # a time budget fixes no step count: the cosine LR decay is planned over the
                  # steps expected in it (a latent step costs about a fifth of a pixel step)
                  f"lr_scheduler.total_steps={LATENT_STEP_RATIO * max(1, int(pixel.get('steps') or 2400))}"],
                 root / "latent")

    def fid(r: dict[str, Any]) -> str:
        keys = [k for k in r["metrics"] if k.startswith("fid/digits/")]
        return ", ".join(f"{k} = {r['metrics'][k]:.2f}" for k in keys) or "n/a"

    floor = next((f"{v:.2f}" for k, v in {**pixel["metrics"], **latent["metrics"]}.items() if k.startswith("fid_floor/")), "n/a")
    rfid = next((f"{v:.2f}" for k, v in ae["metrics"].items() if k.startswith("rfid/")), "n/a")
    rows = [
        ["autoencoder (not in the budget)", ae["steps"], f"{ae['train_seconds']:.0f}",
         f"{ae['ms_per_step']:.0f}", f"rFID {rfid}, PSNR {ae['metrics'].get('val/psnr', float('nan')):.2f} dB"],
        ["pixel (make train)", pixel["steps"], f"{pixel['train_seconds']:.0f}",
         f"{pixel['ms_per_step']:.0f}", fid(pixel)],
        ["latent (same budget)", latent["steps"], f"{latent['train_seconds']:.0f}",
         f"{latent['ms_per_step']:.0f}", fid(latent)],
    ]
    print(f"\nLatent vs pixel diffusion on mnist5k at equal training time ({machine()}); floor {floor}\n")
    print(table(["run", "steps", "train s", "ms / step", "digits score"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 steps each (a smoke run)")
    parser.add_argument("--timing", action="store_true", help="time per step only")
    parser.add_argument("--steps", type=int, default=40, help="steps per run with --timing")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the median with --timing")
    parser.add_argument("--out", default=None, help="run dirs go here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="difflab-latent-") as tmp:
        root = Path(args.out or tmp)
        if args.timing or args.quick:
            timing(4 if args.quick else args.steps, 1 if args.quick else args.warmup, args.quick, root / "timing")
        if not args.timing:
            comparison(root / "comparison", args.quick)


if __name__ == "__main__":
    main()
