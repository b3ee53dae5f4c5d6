"""Bits/dim of a checkpoint on the val split through the probability-flow ODE.

    python benchmarks/likelihood.py --ckpt <run dir>/checkpoints/last.ckpt      # all val digits (500)
    python benchmarks/likelihood.py --ckpt PATH --n 50 --batch-size 50            # a fixed subset
    python benchmarks/likelihood.py --quick                                       # tiny model, n = 4

``difflab.evaluation.likelihood.bits_per_dim`` on the checkpoint's EMA weights
(``difflab.utils.checkpoint.load_model``): dopri5 at rtol = atol = 1e-5 by default, Hutchinson's
estimator with a Rademacher probe for images (exact divergence for D <= 16, e.g. toy2d), uniform
dequantisation of the 8-bit digits (+7 bits of bin width). Images come from the data module's
``real_images("val")`` (uint8); toy2d points from ``real_points("val")``, scored as continuous
data (no dequantisation). A class-conditional backbone is scored with its null label.

Cost: each function evaluation is one forward and one backward pass over the batch; dopri5
takes a few hundred evaluations. All 500 digits are meant for an accelerator; on a shared CPU
use ``--quick`` or a small ``--n``. ``--quick`` trains a tiny UNet for a few steps in-process
(``difflab.train.run``) and scores 4 val digits: it checks the pipeline, not the figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import loadavg, machine, note, table, train_tiny  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="a checkpoint written by train.py (e.g. <run dir>/checkpoints/last.ckpt)")
    p.add_argument("--quick", action="store_true", help="tiny model trained in-process, n=4")
    p.add_argument("--n", type=int, default=None, help="val samples (default: all; --quick 4)")
    p.add_argument("--subset-seed", type=int, default=0, help="which val samples when --n is smaller than the split")
    p.add_argument("--batch-size", type=int, default=100, help="samples per ODE solve")
    p.add_argument("--method", default="dopri5")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--exact", action="store_true", help="exact divergence even for images (D backward passes)")
    p.add_argument("--probe", choices=["rademacher", "gaussian"], default="rademacher")
    p.add_argument("--hutchinson-seed", type=int, default=0)
    p.add_argument("--dequantize-seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA weights")
    args = p.parse_args()
    if not args.quick and not args.ckpt:
        p.error("--ckpt PATH is required (or --quick)")

    import hydra
    import torch

    from difflab.evaluation.likelihood import bits_per_dim
    from difflab.utils.checkpoint import load_model

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n = 4 if args.quick and args.n is None else args.n
    cmd = "python benchmarks/likelihood.py" + "".join(f" {a}" for a in sys.argv[1:])

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = train_tiny(str(Path(tmp) / "tiny")) if args.quick else Path(args.ckpt)
        model = load_model(ckpt, use_ema=not args.raw)
    datamodule = hydra.utils.instantiate(model.config["data"])
    points = len(model.image_shape) == 1
    if points:  # toy2d: continuous points, no 8-bit data
        x0 = datamodule.real_points("val", n, seed=args.subset_seed)
    else:
        x0 = datamodule.real_images("val", n, seed=args.subset_seed)
    backbone = model.backbone.to(device)
    load0 = loadavg()
    t0 = time.perf_counter()
    out = bits_per_dim(
        backbone, model.process, model.objective.target, x0,
        rtol=args.rtol, atol=args.atol, method=args.method,
        exact_divergence=True if args.exact else None, probe=args.probe,
        hutchinson_seed=args.hutchinson_seed, dequantize=not points, dequantize_seed=args.dequantize_seed,
        batch_size=args.batch_size,
        progress=lambda done, total: note(f"  {done}/{total} samples, {time.perf_counter() - t0:.1f}s"),
    )
    secs = time.perf_counter() - t0

    s = out["settings"]
    print(f"Command: `{cmd}`\n")
    print(f"Machine: {machine()}; device {device}")
    print(f"Load average (1/5/15 min) before and after: {load0} -> {loadavg()}")
    src = "tiny UNet trained 4 steps in-process (--quick)" if args.quick else f"{ckpt}"
    print(f"Checkpoint: {src}, global step {model.global_step}, {'EMA' if model.used_ema else 'raw'} weights, "
          f"prediction type {model.objective.target}, T = {model.process.num_timesteps}")
    print(f"Data: {datamodule.name}/val, n = {out['n']} of shape {tuple(model.image_shape)} "
          f"({'all' if n is None else f'subset seed {args.subset_seed}'}); "
          f"ODE from t = {s['t_start']:g} to {s['t_end']:g} ({s['time']}), prior {s['prior']}; "
          f"dequantisation {'uniform, seed ' + str(s['dequantize_seed']) if s['dequantize'] else 'off'}\n")
    print(table(
        ["metric key", "bits/dim", "± stderr", "std", "min", "max", "NFE (all batches)", "time (s)"],
        [[f"nll/bpd/{out['key']}", f"{out['mean']:.4f}", f"{out['stderr']:.4f}", f"{out['std']:.4f}",
          f"{float(out['bpd'].min()):.4f}", f"{float(out['bpd'].max()):.4f}",
          f"{out['nfe']} ({', '.join(map(str, out['nfe_per_batch']))})", f"{secs:.1f}"]],
        ["l", "r", "r", "r", "r", "r", "r", "r"],
    ))


if __name__ == "__main__":
    main()
