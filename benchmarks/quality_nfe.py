"""Sample quality against the number of network evaluations (NFE) for one checkpoint.

    python benchmarks/quality_nfe.py --ckpt <run dir>/checkpoints/last.ckpt            # n = 1000, the default table
    python benchmarks/quality_nfe.py --ckpt PATH --n 200 --samplers ddim10,dpmpp2m10,heun_karras10
    python benchmarks/quality_nfe.py --quick                                            # tiny model, n = 50, < 1 min

Digits-feature FID and KID of n samples from the checkpoint's EMA weights, drawn and scored on
the one evaluation path (``difflab.evaluation.evaluate``: sample i from its own seed, so every
sampler starts from the same x_T; torchmetrics FID/KID; the floor at the same n), for every
entry of :data:`SAMPLERS` (``--samplers`` picks some): DDPM over all T steps, DDIM eta 0 and
1, DPM-Solver++ (2M, 3M, SDE), UniPC, Euler, Euler ancestral and Heun (Karras sigmas) at 5, 10,
20 and 50 NFE where the order allows. Heun costs 2 NFE per step but the last: ``heun_karras10``
is 10 NFE (6 steps). ``--quick`` trains a tiny UNet for a few steps in-process and scores 50
samples of three short samplers: it checks the pipeline, not the quality. A latent model
(``first_stage``) is scored on its decoded samples, with x_0 clipped to its latents' range.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import loadavg, machine, note, table, train_tiny  # noqa: E402

def _table() -> dict[str, dict]:
    """name -> sampler entry ``{name, num_steps, **options}`` (an option of the sampler group)."""
    out: dict[str, dict] = {
        "ddpm_small": {"name": "ddpm", "num_steps": None, "variance_type": "fixed_small"},
        "ddpm_large": {"name": "ddpm", "num_steps": None, "variance_type": "fixed_large"},
    }
    for nfe in (5, 10, 20, 50):
        out[f"ddim{nfe}"] = {"name": "ddim", "num_steps": nfe, "eta": 0.0}
        out[f"ddim{nfe}_eta1"] = {"name": "ddim", "num_steps": nfe, "eta": 1.0}
        out[f"dpmpp2m{nfe}"] = {"name": "dpm_solver", "num_steps": nfe, "order": 2}
        out[f"dpmpp3m{nfe}"] = {"name": "dpm_solver", "num_steps": nfe, "order": 3}
        out[f"sde_dpmpp2m{nfe}"] = {"name": "dpm_solver", "num_steps": nfe, "order": 2, "algorithm": "sde-dpmsolver++"}
        out[f"sde_dpmpp3m{nfe}"] = {"name": "dpm_solver", "num_steps": nfe, "order": 3, "algorithm": "sde-dpmsolver++"}
        out[f"sde_dpmpp2m_heun{nfe}"] = {"name": "dpm_solver", "num_steps": nfe, "order": 2,
                                          "algorithm": "sde-dpmsolver++", "solver_type": "heun"}
        out[f"sde_dpmpp2m_karras{nfe}"] = {"name": "dpm_solver", "num_steps": nfe, "order": 2,
                                            "algorithm": "sde-dpmsolver++", "use_karras_sigmas": True}
        out[f"dpmpp2m_karras{nfe}"] = {"name": "dpm_solver", "num_steps": nfe, "order": 2, "use_karras_sigmas": True}
        out[f"euler_a_karras{nfe}"] = {"name": "euler_ancestral", "num_steps": nfe, "use_karras_sigmas": True}
        out[f"unipc{nfe}"] = {"name": "unipc", "num_steps": nfe}
        out[f"euler_karras{nfe}"] = {"name": "euler", "num_steps": nfe, "use_karras_sigmas": True}
        out[f"euler_a{nfe}"] = {"name": "euler_ancestral", "num_steps": nfe}
        if nfe > 5:  # Heun: 2 NFE a step but the last, so 2s - 1 NFE for s steps
            out[f"heun_karras{nfe - (nfe + 1) % 2}"] = {"name": "heun", "num_steps": (nfe + 1) // 2, "use_karras_sigmas": True}
            # EDM's stochastic sampler (Algorithm 2, arXiv:2206.00364) with its CIFAR-10 VP setting
            # (Table 5): churn 30 for sigma in [0.01, 1], s_noise 1.007
            out[f"heun_karras_churn{nfe - (nfe + 1) % 2}"] = {
                "name": "heun", "num_steps": (nfe + 1) // 2, "use_karras_sigmas": True,
                "s_churn": 30.0, "s_tmin": 0.01, "s_tmax": 1.0, "s_noise": 1.007}
    for nfe in (30, 40):  # between 20 and 50: candidates for a cheaper default than DDIM 50, eta 1
        out[f"ddim{nfe}_eta1"] = {"name": "ddim", "num_steps": nfe, "eta": 1.0}
        out[f"sde_dpmpp2m{nfe}"] = {"name": "dpm_solver", "num_steps": nfe, "order": 2, "algorithm": "sde-dpmsolver++"}
        out[f"euler_a{nfe}"] = {"name": "euler_ancestral", "num_steps": nfe}
    out["ddim100"] = {"name": "ddim", "num_steps": 100, "eta": 0.0}
    out["ddim100_eta1"] = {"name": "ddim", "num_steps": 100, "eta": 1.0}
    return out


SAMPLERS = _table()
QUICK_SAMPLERS = {
    "ddim10": {"name": "ddim", "num_steps": 10, "eta": 0.0},
    "dpmpp2m10": {"name": "dpm_solver", "num_steps": 10, "order": 2},
    "heun_karras9": {"name": "heun", "num_steps": 5, "use_karras_sigmas": True},
}


def build_sampler(entry: dict):
    from difflab.samplers import SAMPLERS as GROUP

    return GROUP[entry["name"]](**{k: v for k, v in entry.items() if k != "name"})


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
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    if not args.quick and not args.ckpt:
        p.error("--ckpt PATH is required (or --quick)")

    import hydra

    from difflab.evaluation import Evaluator, eval_mode, evaluate
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
        evaluator = Evaluator(datamodule, "digits", ("fid", "kid"), n, args.cache_dir or str(Path(tmp) / "real_stats"))
        T = model.process.num_timesteps
        decode = model.extra.get("decode")  # a latent model: score its decoded samples
        from difflab.latent import clip_for_latents
        rows, results = [], []
        loads = [loadavg()]
        for name, entry in table_of.items():
            sampler = build_sampler(entry)
            if decode is not None:  # x_0 clipped to the training latents' range, as the run sampled
                clip_for_latents(sampler, model.extra.get("clip_bound"))
            t0 = time.perf_counter()
            with eval_mode(model.backbone):
                res = evaluate(model.backbone, model.process, sampler, model.objective.target, evaluator, args.seed,
                               args.batch_size, "cpu", shape=model.image_shape, decode=decode)
            secs = time.perf_counter() - t0
            loads.append(loadavg())
            fid_key = next(k for k in res.scores if k.startswith("fid/"))
            kid_key = next(k for k in res.scores if k.startswith("kid/"))
            options = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in ("name", "num_steps"))
            rows.append([entry["name"], sampler.nfe(T), options, f"{res.scores[fid_key]:.3f}",
                         f"{res.scores[kid_key]:.4f} ± {res.values['kid_std']:.4f}", f"{secs:.1f}", fid_key])
            results.append({"name": name, "entry": entry, "nfe": sampler.nfe(T), "scores": res.scores, "seconds": secs})
            note(f"  {name}: FID {res.scores[fid_key]:.3f} ({sampler.nfe(T)} NFE), {secs:.1f}s")
        floor = evaluator.floor()
        if args.json:
            import json

            Path(args.json).write_text(json.dumps({"command": cmd, "n": n, "seed": args.seed, "rows": results,
                                                   "floor": floor, "global_step": model.global_step}, indent=2) + "\n")

    print(f"Command: `{cmd}`\n")
    print(f"Machine: {machine()}")
    print(f"Load average (1/5/15 min) at the start and after each sampler: {' -> '.join(loads)}")
    src = "tiny UNet trained 4 steps in-process (--quick)" if args.quick else f"{ckpt}"
    print(f"Checkpoint: {src}, global step {model.global_step}, {'EMA' if model.used_ema else 'raw'} weights; "
          f"n = {n} samples per sampler (seed {args.seed}, batch {args.batch_size}), digits features, "
          f"real reference: {evaluator.n_real} mnist5k/train digits\n")
    print(table(["sampler", "NFE", "setting", "FID", "KID ± std", "sampling time (s)", "protocol key"], rows,
                ["l", "r", "l", "r", "r", "r", "l"]))
    if floor:
        print("\nData floor (real held-out digits against the same reference): "
              + ", ".join(f"{k} = {v:.4f}" for k, v in floor.items()))


if __name__ == "__main__":
    main()
