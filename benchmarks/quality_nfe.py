"""Sample quality against the number of network evaluations (NFE) for one checkpoint.

    python benchmarks/quality_nfe.py --ckpt <run dir>/checkpoints/last.ckpt            # n = 1000, every sampler
    python benchmarks/quality_nfe.py --ckpt PATH --n 200 --samplers ddim10,ddim50_eta1
    python benchmarks/quality_nfe.py --quick                                            # tiny model, n = 50, < 1 min

Digits-feature FID and KID (``difflab.metrics``, through ``difflab.sample.Scorer``) of n
samples from the checkpoint's EMA weights (``difflab.utils.checkpoint.load_model``) for:

- DDPM, all 1000 steps, ``variance_type`` fixed_small (beta-tilde) and fixed_large (beta);
- DDIM with 10, 20, 50, 100 steps (trailing spacing), eta 0 and eta 1;

next to the data floor (real held-out digits against the same real reference: the best score
reachable at that n). Sampling uses ``difflab.sample.sample_batches`` (batch b seeded by
(seed, b)), so every sampler starts from the same x_T. ``--quick`` trains a tiny UNet for a
few steps in-process (``difflab.train.run``) and scores 50 samples of three short samplers:
it checks the pipeline, not the quality.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import compose_train, loadavg, machine, note, table  # noqa: E402

#: name -> (sampler, num_steps, eta or variance_type)
SAMPLERS = {
    "ddpm_small": ("ddpm", None, "fixed_small"),
    "ddpm_large": ("ddpm", None, "fixed_large"),
    **{f"ddim{s}": ("ddim", s, 0.0) for s in (10, 20, 50, 100)},
    **{f"ddim{s}_eta1": ("ddim", s, 1.0) for s in (10, 20, 50, 100)},
}
QUICK_SAMPLERS = {
    "ddim10": ("ddim", 10, 0.0),
    "ddim10_eta1": ("ddim", 10, 1.0),
    "ddpm10_small": ("ddpm", 10, "fixed_small"),
}

TINY = [
    "backbone.base_channels=8",
    "backbone.channel_mult=[1,2]",
    "backbone.num_res_blocks=1",
    "data.batch_size=16",
    "data.val_batch_size=16",
    "trainer.max_steps=4",
    "trainer.val_check_interval=4",
    "trainer.limit_val_batches=1",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "~callbacks.sample_grid",
    "~callbacks.progress_bar",
    "lr_warmup_steps=0",
    "logger=none",
    "print_config=false",
    "resume=false",
]


def train_tiny(out_dir: str) -> Path:
    from difflab.train import run

    run(compose_train(TINY, output_dir=out_dir))
    return Path(out_dir) / "checkpoints" / "last.ckpt"


def build_sampler(kind: str, steps: int | None, opt):
    from difflab.samplers import DDIMSampler, DDPMSampler

    if kind == "ddpm":
        return DDPMSampler(num_steps=steps, variance_type=opt)
    return DDIMSampler(num_steps=steps, eta=opt)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="a checkpoint written by train.py (e.g. <run dir>/checkpoints/last.ckpt)")
    p.add_argument("--quick", action="store_true", help="tiny model trained in-process, n=50, 3 samplers")
    p.add_argument("--n", type=int, default=None, help="samples per sampler (default 1000; --quick 50)")
    p.add_argument("--samplers", default=None, help=f"comma-separated subset of {','.join(SAMPLERS)} (default: all)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="real-statistics cache (default: a temporary folder)")
    p.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA weights")
    args = p.parse_args()
    if not args.quick and not args.ckpt:
        p.error("--ckpt PATH is required (or --quick)")

    import hydra
    import torch

    from difflab.sample import Scorer, sample_batches, sampler_info
    from difflab.utils.checkpoint import load_model

    n = args.n or (50 if args.quick else 1000)
    table_of = QUICK_SAMPLERS if args.quick else SAMPLERS
    if args.samplers:
        names = [s.strip() for s in args.samplers.split(",") if s.strip()]
        bad = [s for s in names if s not in {**SAMPLERS, **QUICK_SAMPLERS}]
        if bad:
            p.error(f"--samplers: unknown {bad}; accepted: {', '.join(SAMPLERS)}")
        table_of = {s: {**SAMPLERS, **QUICK_SAMPLERS}[s] for s in names}
    cmd = "python benchmarks/quality_nfe.py" + "".join(f" {a}" for a in sys.argv[1:])

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = train_tiny(str(Path(tmp) / "tiny")) if args.quick else Path(args.ckpt)
        model = load_model(ckpt, use_ema=not args.raw)
        datamodule = hydra.utils.instantiate(model.config["data"])
        scorer = Scorer(datamodule, "digits", ["fid", "kid"], n, args.cache_dir or str(Path(tmp) / "real_stats"),
                        batch_size=args.batch_size)
        T = model.process.num_timesteps
        floor = scorer.floor
        rows = []
        loads = [loadavg()]
        for name, (kind, steps, opt) in table_of.items():
            sampler = build_sampler(kind, steps, opt)
            info = sampler_info(sampler, T)
            t0 = time.perf_counter()
            with torch.inference_mode():
                images = torch.cat([x for _, x in sample_batches(
                    model.backbone, model.process, sampler, model.image_shape, n, args.seed, args.batch_size, "cpu", progress=False,
                    prediction_type=model.objective.target)])
            secs = time.perf_counter() - t0
            res = {r["metric"]: r for r in scorer.score(images, info)}
            loads.append(loadavg())
            setting = f"eta={opt:g}" if kind == "ddim" else str(opt)
            rows.append([
                kind.upper(), info["num_steps"], setting, f"{res['fid']['value']:.3f}",
                f"{res['kid']['value']:.4f} ± {res['kid']['std']:.4f}", f"{secs:.1f}", res["fid"]["key"],
            ])
            note(f"  {name}: FID {res['fid']['value']:.3f}, KID {res['kid']['value']:.4f}, {secs:.1f}s")

    print(f"Command: `{cmd}`\n")
    print(f"Machine: {machine()}")
    print(f"Load average (1/5/15 min) at the start and after each sampler: {' -> '.join(loads)}")
    src = "tiny UNet trained 4 steps in-process (--quick)" if args.quick else f"{ckpt}"
    print(f"Checkpoint: {src}, global step {model.global_step}, {'EMA' if model.used_ema else 'raw'} weights; "
          f"n = {n} samples per sampler (seed {args.seed}, batch {args.batch_size}), digits features, "
          f"real reference: {scorer.real.n} mnist5k/train digits\n")
    print(table(["sampler", "NFE", "setting", "FID", "KID ± std", "sampling time (s)", "protocol key"], rows,
                ["l", "r", "l", "r", "r", "r", "l"]))
    if floor:
        print(f"\nData floor (mnist5k/val vs the train reference, n = {floor['n']}): FID {floor['fid']:.3f}, "
              f"KID {floor['kid']:.4f}")


if __name__ == "__main__":
    main()
