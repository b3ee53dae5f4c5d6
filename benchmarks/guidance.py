"""Guidance sweep: FID, KID and class accuracy against the guidance scale w, from one checkpoint.

    python benchmarks/guidance.py --ckpt <run dir>/checkpoints/last.ckpt          # w = 0,1,1.5,2,3,5, n = 1000
    python benchmarks/guidance.py --ckpt PATH --scales 1,2,4 --n 500 --num-steps 20 --rescale 0.7
    python benchmarks/guidance.py --quick                                         # tiny model, n = 40: checks the pipeline

A class-conditional checkpoint (``experiment=mnist5k_cfg``, or any ``conditioning=class``
run) draws n samples per w over a balanced label set (sample i of class i mod 10) with the
same per-sample noise, on the one evaluation path (``difflab.evaluation.guidance_sweep``);
digits-feature FID and KID against the training split, and the class accuracy of the samples
judged by the shipped digits classifier. Writes ``guidance.csv``, ``guidance.md``,
``guidance.png`` and ``guidance.json`` into ``--out`` (default: ``<run dir>/guidance``, the
checkpoint's run dir) and, with ``--wandb``, logs the table (``eval/guidance_table``) and the
plot (``eval/guidance_plot``) to a W&B run in that folder (offline without credentials).
``--quick`` trains a tiny conditional UNet for a few steps in-process: figures are noise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import loadavg, machine, note, table, train_tiny  # noqa: E402


def _floats(text: str, what: str, parser: argparse.ArgumentParser) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        parser.error(f"{what} must be comma-separated numbers, got {text!r}")
        raise


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="a class-conditional checkpoint written by train.py")
    p.add_argument("--quick", action="store_true", help="tiny conditional model trained in-process, n=40, 3 scales")
    p.add_argument("--scales", default=None, help="guidance scales w (default 0,1,1.5,2,3,5; --quick 0,1,3)")
    p.add_argument("--n", type=int, default=None, help="samples per w (default 1000; --quick 40)")
    p.add_argument("--sampler", default=None, help="a sampler option (ddim, ddpm, dpm_solver, ...; default: the checkpoint's)")
    p.add_argument("--num-steps", type=int, default=None, help="the sampler's steps (default: the checkpoint's)")
    p.add_argument("--rescale", type=float, default=0.0, help="guidance rescale phi (Lin et al. 2023), 0: off")
    p.add_argument("--interval", default=None, help="guidance interval sigma_lo,sigma_hi (Kynkaanniemi et al. 2024)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", default=None, help="real-statistics cache (default: a temporary folder)")
    p.add_argument("--out", default=None, help="output folder (default: <run dir>/guidance)")
    p.add_argument("--wandb", action="store_true", help="log the table and the plot to W&B (offline without a key)")
    args = p.parse_args(argv)
    if not args.quick and not args.ckpt:
        p.error("--ckpt PATH is required (or --quick)")
    scales = _floats(args.scales or ("0,1,3" if args.quick else "0,1,1.5,2,3,5"), "--scales", p)
    interval = _floats(args.interval, "--interval", p) if args.interval else None
    n = args.n or (40 if args.quick else 1000)

    import hydra
    from omegaconf import OmegaConf

    from difflab.build import build_sampler
    from difflab.evaluation import Evaluator, eval_mode
    from difflab.evaluation.guidance_sweep import guidance_sweep, write_sweep
    from difflab.sample import resolve_device
    from difflab.utils.checkpoint import load_model

    cmd = "python benchmarks/guidance.py" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = train_tiny(str(Path(tmp) / "tiny"), ['conditioning=class', 'sampler.num_steps=10']) if args.quick else Path(args.ckpt)
        model = load_model(ckpt, use_ema=True)
        num_classes = getattr(model.backbone, "num_classes", None)
        if num_classes is None:
            p.error(f"{ckpt} is unconditional; the sweep needs a checkpoint trained with conditioning=class")
        node = dict(model.config["sampler"])
        if args.sampler:
            from difflab.samplers import SAMPLERS

            if args.sampler not in SAMPLERS:
                p.error(f"--sampler: unknown {args.sampler!r}; accepted: {', '.join(SAMPLERS)}")
            cls = SAMPLERS[args.sampler]
            node = {"_target_": f"{cls.__module__}.{cls.__qualname__}"}
        if args.num_steps:
            node["num_steps"] = args.num_steps
        sampler = build_sampler(OmegaConf.create(node), model.process.num_timesteps)
        datamodule = hydra.utils.instantiate(model.config["data"])
        evaluator = Evaluator(datamodule, "digits", ("fid", "kid"), n, args.cache_dir or str(Path(tmp) / "real_stats"),
                              device=device)
        backbone, process = model.backbone.to(device), model.process.to(device)
        loads = [loadavg()]
        with eval_mode(backbone):
            rows = guidance_sweep(
                backbone, process, sampler, model.objective.target, evaluator, scales, num_classes=num_classes,
                seed=args.seed, batch_size=args.batch_size, device=device, rescale=args.rescale, interval=interval,
                on_row=lambda r: (loads.append(loadavg()), note(_row_line(r))),
            )
        floor = evaluator.floor()
        out = Path(args.out) if args.out else (Path(tmp) / "guidance" if args.quick else ckpt.resolve().parent.parent / "guidance")
        title = f"{'tiny --quick model' if args.quick else ckpt.name} (step {model.global_step}), {rows[0]['fid_key'].split('/')[2].split('_cfg')[0]}, n={n}"
        files = write_sweep(rows, out, title)
        record = {"command": cmd, "checkpoint": str(ckpt), "global_step": model.global_step, "n": n, "seed": args.seed,
                  "sampler": repr(sampler), "rescale": args.rescale, "interval": interval, "floor": floor,
                  "rows": [{k: v for k, v in r.items()} for r in rows]}
        (out / "guidance.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        if args.wandb:
            _log_wandb(out, rows, files["png"], record)
        if not args.quick or args.out:
            note(f"files: {', '.join(str(f) for f in [*files.values(), out / 'guidance.json'])}")

    print(f"Command: `{cmd}`\n")
    print(f"Machine: {machine()}")
    print(f"Load average (1/5/15 min) at the start and after each w: {' -> '.join(loads)}")
    src = "tiny conditional UNet trained 4 steps in-process (--quick)" if args.quick else f"{ckpt}"
    print(f"Checkpoint: {src}, global step {model.global_step}, {'EMA' if model.used_ema else 'raw'} weights; "
          f"n = {n} samples per w over balanced labels (seed {args.seed}), digits features and classifier, "
          f"real reference: {evaluator.n_real} training digits\n")
    body = [[f"{r['w']:g}", f"{r['fid']:.3f}", f"{r['kid']:.4f} ± {r['kid_std']:.4f}",
             "-" if r["acc"] is None else f"{100 * r['acc']:.1f}%", r["nfe"], f"{r['seconds']:.1f}", r["fid_key"]]
            for r in rows]
    print(table(["w", "FID", "KID ± std", "class accuracy", "NFE", "time (s)", "protocol key"], body,
                ["r", "r", "r", "r", "r", "r", "l"]))
    if floor:
        print("\nData floor (real held-out digits against the same reference): "
              + ", ".join(f"{k} = {v:.4f}" for k, v in floor.items()))
    best = max((r for r in rows if r["acc"] is not None), key=lambda r: r["acc"], default=None)
    if best is not None:
        print(f"\nBest class accuracy: {100 * best['acc']:.1f}% at w = {best['w']:g} (FID {best['fid']:.3f})")
    return rows


def _row_line(r: dict) -> str:
    acc = "-" if r["acc"] is None else f"{100 * r['acc']:.1f}%"
    return f"  w={r['w']:g}: FID {r['fid']:.3f}, class accuracy {acc}, {r['nfe']} NFE, {r['seconds']:.1f}s"


def _log_wandb(out: Path, rows: list[dict], png: Path, record: dict) -> None:
    import numpy as np
    from PIL import Image

    from difflab.evaluation.guidance_sweep import COLUMNS
    from difflab.utils.loggers import log_image, log_table, make_wandb_logger

    logger = make_wandb_logger("auto", save_dir=str(out), project="difflab", job_type="guidance_sweep",
                               config={k: v for k, v in record.items() if k != "rows"})
    log_table(logger, "eval/guidance_table", COLUMNS, [[r[c] for c in COLUMNS] for r in rows])
    log_image(logger, "eval/guidance_plot", np.asarray(Image.open(png).convert("RGB")), step=0,
              caption="FID and class accuracy against the guidance scale w")
    logger.experiment.finish()


if __name__ == "__main__":
    main()
