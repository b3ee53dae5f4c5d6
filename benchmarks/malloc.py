"""What ``malloc_tuning`` (difflab.utils.runtime.tune_malloc) buys on the CPU.

    python benchmarks/malloc.py            # 3 rounds: a training step and a sampling step, malloc as is vs tuned
    python benchmarks/malloc.py --quick    # 1 round, 2 timed steps each

Each measurement runs in a fresh process (mallopt cannot be undone within one), on the default
config (``backbone=unet``, min-SNR eps objective, channels-last as train.py sets it):

- train: ``objective`` loss, backward and an AdamW step of the ``DiffusionModule`` that
  ``train.py`` builds, at batch 128 (the default) on real mnist5k digits;
- sample: one DDIM step (``generate`` with ``num_steps=1``, inference mode) at batch 250,
  the evaluation path's batch.

A process runs ``--warmup`` steps, then ``--window`` timed ones, and reports per step: the
wall time, user and system CPU seconds (all threads) and minor page faults. Rounds alternate
(as is, tuned, as is, tuned, ...); the speed-up is the median over rounds of the ratio of the
two processes of a round, so machine load that drifts between rounds cancels.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import compose_train, loadavg, machine, median, table  # noqa: E402


def worker(kind: str, tuned: bool, warmup: int, window: int) -> dict:
    import torch

    from difflab.utils.runtime import tune_malloc

    applied = tune_malloc(tuned)
    from difflab.build import build_datamodule, build_module, build_sampler
    from difflab.samplers import generate

    cfg = compose_train(["logger=csv", "trainer.accelerator=cpu"])
    torch.manual_seed(0)
    dm = build_datamodule(cfg)
    module = build_module(cfg, tuple(dm.image_shape))
    if kind == "train":
        dm.setup("fit")
        x0 = next(iter(dm.train_dataloader()))
        x0 = (x0[0] if isinstance(x0, (list, tuple)) else x0).contiguous()
        if module.channels_last:
            x0 = x0.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(module.backbone.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(0)

        def step() -> None:
            loss = module.objective(module.backbone, module.process, x0, gen).loss_per_sample.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        sampler = build_sampler({"_target_": "difflab.samplers.DDIMSampler", "num_steps": 1, "eta": 0.0},
                                module.process.num_timesteps)
        module.backbone.eval()

        def step() -> None:
            with torch.inference_mode():
                generate(module.backbone, module.process, sampler, (250, *dm.image_shape),
                         torch.Generator().manual_seed(0), progress=False, prediction_type=module.objective.target)
    for _ in range(warmup):
        step()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(window):
        step()
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    return {"kind": kind, "tuned": applied, "wall": (t1 - t0) / window, "user": (r1.ru_utime - r0.ru_utime) / window,
            "sys": (r1.ru_stime - r0.ru_stime) / window, "faults": (r1.ru_minflt - r0.ru_minflt) / window,
            "threads": torch.get_num_threads()}


def measure(kind: str, tuned: bool, warmup: int, window: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--tuned", str(int(tuned)), "--warmup", str(warmup),
           "--window", str(window)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    if out.returncode != 0:
        raise SystemExit(f"worker {kind} tuned={tuned} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--worker", choices=["train", "sample"], help=argparse.SUPPRESS)
    p.add_argument("--tuned", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, bool(a.tuned), a.warmup, a.window)))
        return
    rounds, warmup, window = (1, 1, 2) if a.quick else (a.rounds, a.warmup, a.window)
    print(f"Machine: {machine()}; load average before: {loadavg()}")
    print(f"{rounds} rounds; per process {warmup} warm-up + {window} timed steps\n")
    rows = []
    for kind in ("train", "sample"):
        pairs = []
        for _ in range(rounds):
            pairs.append((measure(kind, False, warmup, window), measure(kind, True, warmup, window)))
        for i, name in ((0, "as is"), (1, "tuned")):
            ms = [pr[i] for pr in pairs]
            rows.append([kind, name, ms[0]["threads"], f"{median([m['wall'] for m in ms]):.3f}",
                         f"{median([m['user'] for m in ms]):.3f}", f"{median([m['sys'] for m in ms]):.3f}",
                         f"{median([m['faults'] for m in ms]):,.0f}",
                         "1.00" if i == 0 else f"{median([pr[0]['wall'] / pr[1]['wall'] for pr in pairs]):.2f}"])
    print(table(["step", "malloc", "threads", "wall (s)", "user CPU (s)", "system CPU (s)", "page faults",
                 "speed-up"], rows))
    print(f"\nload average after: {loadavg()}")


if __name__ == "__main__":
    main()
