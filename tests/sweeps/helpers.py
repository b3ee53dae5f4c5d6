"""Run train.py in a subprocess with a tiny model, and read back what W&B logged offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

# a model and a run small enough for a CPU test: 2 steps, one validation, 4 samples of 2 steps
TINY = [
    "backbone.base_channels=8",
    "backbone.channel_mult=[1,2]",
    "backbone.num_res_blocks=1",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "sampler.num_steps=2",
    "~callbacks.fid",  # FID at n=1000 ends every default run; tests that score turn it back on
    "callbacks.sample_grid.num_samples=4",
    "data.batch_size=16",
    "data.val_batch_size=250",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "print_config=false",
]


def train(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def wandb_runs(run_dir: Path) -> list[dict]:
    """Every offline W&B run under run_dir: its summary (config, name, state) plus the run record's group."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    runs = []
    for path in sorted(Path(run_dir).glob("wandb/offline-run-*")):
        summary = json.loads(
            subprocess.run([str(wandb_cli), "leet", "inspect", "--summary", "--json", str(path)],
                           capture_output=True, text=True, check=True).stdout
        )
        records = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(path)],
                                 capture_output=True, text=True, check=True).stdout
        for line in records.splitlines():
            rec = json.loads(line)
            if rec.get("type") == "run":
                summary["group"] = rec["run"].get("run_group")
                summary["display_name"] = rec["run"].get("display_name")
                break
        runs.append(summary)
    return runs


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr
