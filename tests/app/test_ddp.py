"""DDP on the CPU (trainer=ddp_sim: 2 processes, gloo), through `python train.py` as a user runs it.

Lightning re-launches train.py for rank 1, so the run is a subprocess. One run checks:
(a) the FID callback scores n samples made by both ranks together (n/2 each), and one process
    (sample.py on the run's checkpoint) draws the identical samples and the same FID;
(b) the EMA weights are bit for bit equal on both ranks;
(c) each sample grid is written and logged once, by rank 0, into a single W&B run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.app.test_train import TINY
from tests.conftest import ROOT

N = 32
STEPS = 2


def _wandb_records(run: Path) -> list[dict]:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(run)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_ddp_sim_fid_ema_and_grids(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "train.py", "trainer=ddp_sim", *[o for o in TINY if o != "~callbacks.fid"],
        f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={STEPS}",
        "callbacks.sample_grid.every_n_steps=1",  # a grid at step 1 and at step 2 (= the end)
        f"callbacks.fid.n={N}", "callbacks.fid.batch_size=16",
        f"callbacks.fid.cache_dir={tmp_path / 'cache'}",
        "+callbacks.dump_ema._target_=tests.app.helpers.DumpEMA",
        "+callbacks.dump_samples._target_=tests.app.helpers.DumpSamples", f"+callbacks.dump_samples.n={N}",
        "logger=wandb", f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (run_dir / "train_ddp_process_1.log").is_file()  # rank 1 ran in the same run dir

    # (a) both ranks made n/2 of the n scored samples
    records = sorted((run_dir / "fid").glob("step_*.json"))
    assert [r.name for r in records] == [f"step_{STEPS:07d}.json"]
    fid = json.loads(records[0].read_text())
    protocol = fid["protocol"]
    assert protocol["world_size"] == 2 and protocol["n"] == N
    key = f"fid/digits/dpmpp2m_sde_nfe2/n{N}"
    assert set(fid["scores"]) == {key, f"kid/digits/dpmpp2m_sde_nfe2/n{N}"}
    shares = [torch.load(run_dir / f"samples_rank{r}.pt") for r in (0, 1)]
    assert [len(s) for s in shares] == [N // 2, N // 2]

    # one process, the same checkpoint and protocol: identical samples, FID equal within 1e-6
    import numpy as np

    from difflab.sample import run as sample_run
    from tests.app.test_sample import compose_sample

    out = sample_run(compose_sample([f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", f"n={N}", "seed=0",
                                     "batch_size=16", "metrics=[fid,kid]", f"cache_dir={tmp_path / 'cache1'}",
                                     "device=cpu", "progress=false"], tmp_path / "one"))
    one = torch.from_numpy(np.load(out["npz"])["images"]).permute(0, 3, 1, 2)
    assert torch.equal(one, torch.cat(shares))
    single = {r["key"]: r["value"] for r in out["metrics"]}
    assert abs(single[key] - fid["scores"][key]) <= 1e-6 * abs(single[key])

    # (b) EMA weights: bit for bit equal on both ranks
    paths = [run_dir / f"ema_rank{r}.safetensors" for r in (0, 1)]
    ema0, ema1 = (load_file(str(p)) for p in paths)
    assert ema0.keys() == ema1.keys() and len(ema0) > 0
    for k in ema0:
        assert torch.equal(ema0[k], ema1[k]), k
    updates = []
    for p in paths:
        with safe_open(str(p), framework="pt") as f:
            updates.append(int(f.metadata()["num_updates"]))
    assert updates == [STEPS, STEPS]

    # (c) grids: one file and one W&B entry per trigger, in a single W&B run
    grids = sorted(p.name for p in (run_dir / "samples").iterdir())
    assert grids == ["step_0000001.png", "step_0000002.png"]
    runs = list((run_dir / "wandb").glob("*run-*"))
    assert len(runs) == 1, runs
    history = [r["history"]["item"] for r in _wandb_records(runs[0]) if r.get("type") == "history"]
    grid_steps = [h["trainer/global_step"] for h in history if "samples/grid.path" in h]
    assert grid_steps == [1, 2]
    fid_rows = [h for h in history if key in h]
    assert len(fid_rows) == 1 and fid_rows[0][key] == fid["scores"][key]
    assert (proc.stdout + proc.stderr).count("W&B ran offline") == 1
