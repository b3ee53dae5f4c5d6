"""Peak resident memory (VmHWM) of a default training run and of a 10k-sample FID evaluation.

    python benchmarks/memory.py             # train.py with trainer.max_steps=50; FID/KID of n = 10000
    python benchmarks/memory.py --steps 10  # fewer steps (the peak is reached in the first steps)
    python benchmarks/memory.py --quick     # 2 steps at batch 32, no sample grid; n = 1000 (< 1 min idle)

Each row is a fresh subprocess; its ``/proc/<pid>/status`` VmHWM (peak resident set size) is
polled every 0.1 s until it exits, and the last value read is reported (the peak is
monotone, so at most the final 0.1 s can be missed).

- training: ``python train.py`` with the default config (``backbone=unet``, batch 128,
  EMA, checkpointing, the sample grid at the end: 64 samples with DDIM 50) and
  ``trainer.max_steps=N``, the CSV logger instead of W&B, no progress bar, ``num_workers=0``;
- FID: ``benchmarks/fid.py``'s worker for n samples (digits features in batches of 256, FID
  and KID with 100 subsets of 1000, the mnist5k/train reference computed in the same process).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, loadavg, machine, note, status_kib, table  # noqa: E402


def peak_rss(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(peak RSS in MiB, wall seconds, stderr tail) of ``cmd`` run from the repo root."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, env=env, text=True)
        peak = 0
        while proc.poll() is None:
            try:
                peak = max(peak, status_kib("VmHWM", proc.pid))
            except (OSError, RuntimeError):  # exited between poll() and the read
                pass
            time.sleep(0.1)
        err.seek(0)
        tail = err.read()[-3000:]
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return peak / 1024, time.perf_counter() - t0, tail


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 training steps at batch 32 without the sample grid; FID n=1000")
    p.add_argument("--steps", type=int, default=None, help="trainer.max_steps of the training run (default 50)")
    p.add_argument("--n", type=int, default=None, help="samples scored in the FID row (default 10000)")
    args = p.parse_args()
    steps = args.steps or (2 if args.quick else 50)
    n = args.n or (1000 if args.quick else 10000)
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    rows = []
    loads = [loadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        train = [
            sys.executable, "train.py", f"trainer.max_steps={steps}", "logger=csv", f"hydra.run.dir={tmp}/run",
            "print_config=false", "trainer.enable_progress_bar=false", "resume=false", f"paths.cache_dir={tmp}/cache",
        ]
        if args.quick:
            train += ["data.batch_size=32", "callbacks.sample_grid.at_end=false"]
        note(f"  {' '.join(train[1:])}")
        mib, secs, _ = peak_rss(train, env)
        loads.append(loadavg())
        what = "default run" + (", batch 32, no sample grid" if args.quick else ", batch 128, + 64-sample grid at the end")
        rows.append([f"`train.py trainer.max_steps={steps}` ({what})", f"{mib:.0f}", f"{secs:.0f}"])

        kid_subsets = 20 if args.quick else 100
        fid = [sys.executable, "benchmarks/fid.py", "--worker", str(n), "--batch-size", "256", "--cache-dir", f"{tmp}/fid",
               "--kid-subsets", str(kid_subsets)]
        note(f"  {' '.join(fid[1:])}")
        mib, secs, _ = peak_rss(fid, env)
        loads.append(loadavg())
        rows.append([f"FID + KID of n = {n} samples (digits features, batch 256, KID {kid_subsets} x 1000; incl. the real reference)",
                     f"{mib:.0f}", f"{secs:.0f}"])

    cmd = "python benchmarks/memory.py" + "".join(f" {a}" for a in sys.argv[1:])
    print(f"Command: `{cmd}`\n")
    print(f"Machine: {machine()}")
    print(f"Load average (1/5/15 min) before and after each row: {' -> '.join(loads)}\n")
    print(table(["process", "peak RSS, VmHWM (MiB)", "wall (s)"], rows))


if __name__ == "__main__":
    main()
