"""Helpers for the fault-injection tests: tiny runs of train.py, in this process or in a child.

Starting ``python train.py`` costs ~10-25 s on a busy 2-core machine (importing torch and
Lightning), so most tests drive ``difflab.train.main`` in this process with a config composed
exactly as train.py composes it; the tests that need a real process (exit codes, signals,
SIGKILL, the files Hydra writes) start one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, compose_train

# a model of ~20k parameters, 8-image batches, one validation batch, no grids, no logger
TINY = [
    "backbone.base_channels=8",
    "backbone.channel_mult=[1,2]",
    "backbone.num_res_blocks=1",
    "sampler.num_steps=3",
    "callbacks.sample_grid.num_samples=4",
    "callbacks.sample_grid.every_n_steps=0",
    "callbacks.sample_grid.at_end=false",
    "~callbacks.fid",  # FID at n=1000 ends every default run; tests that score turn it back on
    "~callbacks.progress_bar",
    "data.batch_size=8",
    "data.val_batch_size=8",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "lr_warmup_steps=0",
    "logger=none",
    "print_config=false",
]


def compose(run_dir: Path, overrides: list[str]):
    return compose_train([*TINY, *overrides], output_dir=str(run_dir))


def run_main(run_dir: Path, overrides: list[str]):
    """``difflab.train.main`` on a tiny config (SystemExit(2) on a user error)."""
    from difflab.train import main

    return main(compose(run_dir, overrides))


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    e.pop("HYDRA_FULL_ERROR", None)
    return e


def train_cmd(run_dir: Path, overrides: list[str], tiny: bool = True) -> list[str]:
    return [sys.executable, "train.py", *(TINY if tiny else []), *overrides, f"hydra.run.dir={run_dir}"]


def run_train(run_dir: Path, overrides: list[str], timeout: float = 240, extra_env: dict | None = None, tiny=True):
    """``python train.py`` in a child process; returns the CompletedProcess."""
    return subprocess.run(
        train_cmd(run_dir, overrides, tiny),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**env(), **(extra_env or {})},
    )


def start_train(run_dir: Path, overrides: list[str], log: Path) -> subprocess.Popen:
    f = open(log, "w")
    return subprocess.Popen(train_cmd(run_dir, overrides), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env())


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, what: str = "", log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            pytest.fail(f"the run exited ({proc.returncode}) before {what}:\n{tail}")
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log else ""
    pytest.fail(f"timed out waiting for {what}:\n{tail}")


def load_ckpt(path: Path) -> dict:
    """Checkpoints hold only tensors and plain containers: they load with weights_only=True."""
    return torch.load(path, map_location="cpu", weights_only=True)


def one_error_line(stderr: str) -> str:
    """The single ``error: ...`` line of a run that stopped on a user error (no traceback)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]
