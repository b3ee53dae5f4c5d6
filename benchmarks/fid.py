"""Time and peak memory of scoring n samples with the digits features (FID + KID), on the
evaluation path (torchmetrics states, difflab.evaluation.Evaluator).

    python benchmarks/fid.py            # n = 1k, 5k, 10k (+ one unstreamed row); a few minutes on 2 CPU cores
    python benchmarks/fid.py --quick    # n = 1k, 2k, KID on 20 subsets; under a minute

Fake samples are real mnist5k/train digits resampled with replacement (uint8 (n, 1, 28, 28)):
the cost measured is the feature network and the metrics, not a generator. The real side is
min(n, 4500) train digits, computed once per n and read from a temporary cache.

Each row runs in a fresh subprocess. "peak RSS delta" is the process's peak resident memory
while scoring minus its resident memory just before (the fake images already in memory;
Linux: VmHWM reset through /proc/self/clear_refs). With streaming (batches of 256) it stays
flat in n apart from KID's (n, 128) feature rows and its subset kernels; the
``batch=n`` row shows what a single unbatched pass would take instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KID_SUBSETS, KID_SUBSETS_QUICK, KID_SUBSET_SIZE = 100, 20, 1000


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class _Train:
    """mnist5k/train as the data module the evaluator reads the real reference from."""

    name, image_shape = "mnist5k", (1, 28, 28)

    def __init__(self, images):
        self.images = images

    def real_images(self, split, n=None, seed=0):
        if split != "train":
            raise ValueError("train only")
        return self.images


def worker(n: int, batch_size: int, cache_dir: str, kid_subsets: int) -> dict:
    import numpy as np
    import torch

    import difflab.evaluation.score as score_mod
    from difflab.data.mnist5k import load_mnist5k
    from difflab.evaluation import Evaluator

    x_train, _ = load_mnist5k("train")
    score_mod.KID_SUBSETS = kid_subsets
    ev = Evaluator(_Train(x_train[:, None]), n=n, cache_dir=cache_dir, floor=False, batch_size=batch_size)
    reference = ev._real("train", 0, ev.n_real)  # cached by the parent's first row
    idx = np.random.default_rng(n).integers(0, len(x_train), n)
    fake = torch.from_numpy(x_train[idx][:, None])  # uint8 (n, 1, 28, 28)
    ev.extractor(fake[:8])  # warm up (one-time kernel setup), not part of the measurement

    reset = _reset_peak_rss()
    rss0 = _status_kib("VmRSS")
    t0 = time.perf_counter()
    metrics = ev._metrics(reference, n, sync=False)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            batch = fake[start : start + batch_size]
            for m in metrics.values():
                m.update(batch, real=False)
    t1 = time.perf_counter()
    peak_features = _status_kib("VmHWM")
    values = ev._compute(metrics, n, reference.n, seed=0)
    t2 = time.perf_counter()
    peak = _status_kib("VmHWM")
    nan = float("nan")
    return {
        "features_peak_mib": (peak_features - rss0) / 1024 if reset else nan,
        "n": n,
        "n_real": reference.n,
        "batch_size": batch_size,
        "features_s": t1 - t0,
        "compute_s": t2 - t1,
        "total_s": t2 - t0,
        "peak_delta_mib": (peak - rss0) / 1024 if reset else nan,
        "fid": values["fid"],
        "kid": values["kid"],
    }


def machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="n = 1k, 2k, KID on 20 subsets (under a minute)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", help=argparse.SUPPRESS)
    p.add_argument("--kid-subsets", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.batch_size, args.cache_dir, args.kid_subsets)))
        return

    runs = [(1000, args.batch_size), (2000, args.batch_size)] if args.quick else [
        (1000, args.batch_size),
        (5000, args.batch_size),
        (10000, args.batch_size),
        (2000, 2000),
    ]
    kid_subsets = KID_SUBSETS_QUICK if args.quick else KID_SUBSETS
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
        for n, bs in runs:
            cmd = [sys.executable, __file__, "--worker", str(n), "--batch-size", str(bs), "--cache-dir", cache_dir,
                   "--kid-subsets", str(kid_subsets)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(f"  n={n} batch={bs}: {rows[-1]['total_s']:.1f}s", file=sys.stderr, flush=True)

    print(f"Machine: {machine()}\n")
    print(f"Command: `python benchmarks/fid.py{' --quick' if args.quick else ''}`; "
          f"KID: {kid_subsets} subsets of min(n, {KID_SUBSET_SIZE}); real side: min(n, 4500) mnist5k/train digits, cached\n")
    print("| n | n real | batch | features + states (s) | images/s | FID + KID compute (s) | total (s) | peak RSS delta: features (MiB) | peak RSS delta: all (MiB) | FID | KID |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        batch = "n" if r["batch_size"] >= r["n"] else str(r["batch_size"])
        print(
            f"| {r['n']} | {r['n_real']} | {batch} | {r['features_s']:.2f} | {r['n'] / r['features_s']:.0f} | "
            f"{r['compute_s']:.2f} | {r['total_s']:.2f} | {r['features_peak_mib']:.1f} | {r['peak_delta_mib']:.1f} | "
            f"{r['fid']:.3f} | {r['kid']:.4f} |"
        )


if __name__ == "__main__":
    main()
