"""Real signals sent to `python train.py`: SIGTERM / SIGUSR1 save last.ckpt and exit 0; after
SIGKILL the last checkpoint is whole; either way resume=auto continues from the saved step."""

from __future__ import annotations

import signal

import pytest

from tests.faults.conftest import load_ckpt, run_main, start_train, wait_for
from tests.faults.inject import read_step

LONG = ["trainer.max_steps=10000", "trainer.val_check_interval=2"]


def _start(tmp_path, extra=()):
    run_dir, beat, log = tmp_path / "run", tmp_path / "step", tmp_path / "train.log"
    overrides = [*LONG, "+callbacks.beat._target_=tests.faults.inject.Heartbeat", f"+callbacks.beat.path={beat}", *extra]
    return start_train(run_dir, overrides, log), run_dir, beat, log


def _resume_two_more_steps(run_dir, saved_step: int) -> None:
    """Resume in this process (resume=auto finds <run dir>/checkpoints/last.ckpt) for 2 more steps."""
    run_main(run_dir, ["trainer.val_check_interval=2", f"trainer.max_steps={saved_step + 2}"])
    resumed = load_ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == saved_step + 2  # continued, not restarted from 0
    assert resumed["callbacks"]["EMA"]["num_updates"] == saved_step + 2


@pytest.mark.parametrize(
    "sig",
    # SIGUSR1 takes the same path as SIGTERM (one more ~40-60 s child process): slow
    [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGUSR1, id="SIGUSR1", marks=pytest.mark.slow)],
)
def test_signal_saves_last_ckpt_and_exits_cleanly(sig, tmp_path):
    # val_check_interval=10000: no checkpoint exists unless the signal handler writes one
    proc, run_dir, beat, log = _start(tmp_path, ["trainer.val_check_interval=10000"])
    try:
        wait_for(lambda: read_step(beat) >= 3, 300, proc, "step 3", log)
        proc.send_signal(sig)
        rc = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert rc == 0, out[-3000:]
    assert f"received {sig.name}: saved" in out and "Traceback" not in out
    ckpt = load_ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert 3 <= ckpt["global_step"] <= read_step(beat) + 1
    assert ckpt["callbacks"]["EMA"]["num_updates"] == ckpt["global_step"]
    if sig == signal.SIGTERM:
        _resume_two_more_steps(run_dir, ckpt["global_step"])


def test_sigkill_then_resume_auto(tmp_path):
    proc, run_dir, beat, log = _start(tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        wait_for(lambda: last.exists() and read_step(beat) >= 5, 300, proc, "a checkpoint and step 5", log)
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == -signal.SIGKILL
    ckpt = load_ckpt(last)  # whole: written atomically
    assert ckpt["global_step"] >= 4 and ckpt["global_step"] % 2 == 0
    _resume_two_more_steps(run_dir, ckpt["global_step"])
