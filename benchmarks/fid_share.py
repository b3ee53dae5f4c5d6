"""What share of the default run's wall time its end-of-run FID takes.

    python benchmarks/fid_share.py            # the default config: 3 rounds of 20 steps + one FID at n=1000
    python benchmarks/fid_share.py --quick    # 5 steps, n=100 (checks the script; < 1 min)

The default run (`make train`) ends with FID at n=1000 (`callbacks.fid`, the run's sampler). In
one process, on the default model and data, this times optimizer steps (forward, backward,
AdamW, EMA update: what `trainer.max_steps` multiplies) and one FID evaluation on the
evaluation path (`difflab.evaluation.evaluate`: drawing n samples with the run's sampler plus
the feature pass and scoring; the weights do not change the cost), interleaved so that a load
on the machine hits both alike, and prints

    share = FID / (max_steps x step + FID)

Validation, grids and checkpoints are left out of the denominator, so the share is an upper
bound. The real statistics are computed before the timing (they are cached on disk after a run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import compose_train, loadavg, machine  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="optimizer steps timed per round")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. trainer.max_steps=2400")
    args = p.parse_args()
    steps, rounds = (5, 1) if args.quick else (args.steps, args.rounds)

    import lightning as L
    import torch

    from difflab.build import build_datamodule, build_module, build_sampler
    from difflab.callbacks.ema import EMA
    from difflab.evaluation import Evaluator, eval_mode, evaluate

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_train(list(args.overrides), output_dir=tmp)
        n = 100 if args.quick else int(cfg.callbacks.fid.n)
        L.seed_everything(0, verbose=False)
        dm = build_datamodule(cfg)
        module = build_module(cfg, tuple(dm.image_shape))
        sampler = build_sampler(cfg.callbacks.fid.sampler or cfg.sampler, module.process.num_timesteps)
        trainer = L.Trainer(accelerator="cpu", devices=1, precision=cfg.trainer.precision, logger=False,
                            enable_progress_bar=False, enable_checkpointing=False, max_steps=1)
        precision = trainer.strategy.precision_plugin
        opt = module.optimizer_factory([p for p in module.backbone.parameters() if p.requires_grad])
        ema = EMA(decay=0.999)
        ema.ema_model = __import__("copy").deepcopy(module.backbone).eval().requires_grad_(False)
        def batches():
            while True:  # epochs back to back
                yield from dm.train_dataloader()

        loader = batches()
        evaluator = Evaluator(dm, "digits", ("fid", "kid"), n, Path(tmp) / "real_stats")
        evaluator.floor(), evaluator._real("train", 0, evaluator.n_real)  # cached before the timing

        def train_steps(k: int) -> float:
            module.train()
            start = time.perf_counter()
            for i in range(k):
                x, y = next(loader)
                with precision.forward_context():
                    out = module.objective(module.backbone, module.process, x, module._generator(i), y=None)
                    loss = out.loss_per_sample.mean()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(module.backbone.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                ema.update(module.backbone)
            return (time.perf_counter() - start) / k

        def fid() -> float:
            start = time.perf_counter()
            with eval_mode(ema.ema_model):  # as the callback samples: outside the training autocast
                evaluate(ema.ema_model, module.process, sampler, module.objective.target, evaluator, 0,
                         int(cfg.callbacks.fid.batch_size), "cpu")
            return time.perf_counter() - start

        train_steps(2)  # warm-up
        step_s, fid_s, loads = [], [], [loadavg()]
        for _ in range(rounds):
            step_s.append(train_steps(steps))
            fid_s.append(fid())
            loads.append(loadavg())
        step, f = statistics.median(step_s), statistics.median(fid_s)
        max_steps = int(cfg.trainer.max_steps)
        share = f / (max_steps * step + f)

    print(f"Machine: {machine()}")
    print(f"Load average at the start and after each round: {' -> '.join(loads)}")
    print(f"Command: `python benchmarks/fid_share.py{' --quick' if args.quick else ''}"
          f"{''.join(' ' + o for o in args.overrides)}`; precision {cfg.trainer.precision}, batch {cfg.data.batch_size}\n")
    print("| max_steps | step (s, median) | FID n={} with {} (s, median) | training (min) | FID share |".format(
        n, sampler.key_part(module.process.num_timesteps)))
    print("|---:|---:|---:|---:|---:|")
    print(f"| {max_steps} | {step:.3f} | {f:.1f} | {max_steps * step / 60:.1f} | {100 * share:.1f}% |")
    print(f"\nrounds: steps {[round(s, 3) for s in step_s]} s, FID {[round(s, 1) for s in fid_s]} s")


if __name__ == "__main__":
    main()
