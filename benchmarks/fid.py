"""Time and peak memory of scoring n samples with the digits features (FID + KID).

    python benchmarks/fid.py            # n = 1k, 5k, 10k (+ one unstreamed row); a few minutes on 2 CPU cores
    python benchmarks/fid.py --quick    # n = 1k, 2k, KID on 20 subsets; under a minute

Fake samples are real mnist5k/train digits resampled with replacement (uint8 (n, 1, 28, 28)):
the cost measured is the feature network and the metrics, not a generator. The real side is
the full train split (4500 digits), computed once and read from a temporary cache.

Each row runs in a fresh subprocess. "peak RSS delta" is the process's peak resident memory
while scoring minus its resident memory just before (the fake images already in memory;
Linux: VmHWM reset through /proc/self/clear_refs). With streaming (batches of 256) it stays
flat in n apart from the (n, 128) float64 feature matrix and KID's subset kernels; the
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


def worker(n: int, batch_size: int, cache_dir: str, kid_subsets: int) -> dict:
    import numpy as np
    import torch

    from difflab.data.mnist5k import load_mnist5k
    from difflab.metrics import ArrayImages, RealStatsCache, build_feature_extractor, real_stats, score

    x_train, _ = load_mnist5k("train")
    extractor = build_feature_extractor("digits")
    real = real_stats(ArrayImages("mnist5k", {"train": x_train}), "train", len(x_train), extractor, RealStatsCache(cache_dir))
    idx = np.random.default_rng(n).integers(0, len(x_train), n)
    fake = torch.from_numpy(x_train[idx][:, None])  # uint8 (n, 1, 28, 28)
    extractor(fake[:8])  # warm up (one-time kernel setup), not part of the measurement

    reset = _reset_peak_rss()
    rss0 = _status_kib("VmRSS")
    t0 = time.perf_counter()
    feats = extractor.extract(fake, batch_size=batch_size)
    t1 = time.perf_counter()
    peak_features = _status_kib("VmHWM")
    fid = score(feats, real, extractor, metrics=("fid",))["fid"]
    t2 = time.perf_counter()
    kid = score(feats, real, extractor, metrics=("kid",), kid_num_subsets=kid_subsets, kid_subset_size=KID_SUBSET_SIZE)
    t3 = time.perf_counter()
    peak = _status_kib("VmHWM")
    nan = float("nan")
    return {
        "features_peak_mib": (peak_features - rss0) / 1024 if reset else nan,
        "n": n,
        "batch_size": batch_size,
        "features_s": t1 - t0,
        "fid_s": t2 - t1,
        "kid_s": t3 - t2,
        "total_s": t3 - t0,
        "peak_delta_mib": (peak - rss0) / 1024 if reset else nan,
        "feature_mib": feats.nbytes / 2**20,
        "fid": fid,
        "kid": kid["kid"],
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
          f"KID: {kid_subsets} subsets of {KID_SUBSET_SIZE}; real side: mnist5k/train (4500), cached\n")
    print("| n | batch | features (s) | images/s | FID (s) | KID (s) | total (s) | peak RSS delta: features (MiB) | peak RSS delta: all (MiB) | feature matrix (MiB) | FID | KID |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        batch = "n" if r["batch_size"] >= r["n"] else str(r["batch_size"])
        print(
            f"| {r['n']} | {batch} | {r['features_s']:.2f} | {r['n'] / r['features_s']:.0f} | {r['fid_s']:.2f} | "
            f"{r['kid_s']:.2f} | {r['total_s']:.2f} | {r['features_peak_mib']:.1f} | {r['peak_delta_mib']:.1f} | {r['feature_mib']:.1f} | "
            f"{r['fid']:.3f} | {r['kid']:.4f} |"
        )


if __name__ == "__main__":
    main()
