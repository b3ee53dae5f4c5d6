"""Under SLURM, SIGUSR1 saves last.ckpt and requeues the job with scontrol (a fake one here)."""

from __future__ import annotations

import os
import signal
import stat

from difflab.callbacks.preemption import Preemption


def _fake_scontrol(tmp_path, rc=0):
    log = tmp_path / "calls.txt"
    script = tmp_path / "bin" / "scontrol"
    script.parent.mkdir()
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nexit {rc}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return log


def test_requeue_runs_scontrol_for_the_array_task(tmp_path, monkeypatch):
    log = _fake_scontrol(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "1200")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    cb = Preemption()
    cb.received = signal.SIGUSR1
    cb._requeue()
    assert cb.requeued
    assert log.read_text().split() == ["requeue", "1200_7"]


def test_no_requeue_outside_slurm_or_when_disabled(tmp_path, monkeypatch):
    log = _fake_scontrol(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    Preemption()._requeue()
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    Preemption(slurm_requeue=False)._requeue()
    assert not log.exists()


def test_failed_requeue_is_reported_not_raised(tmp_path, monkeypatch):
    _fake_scontrol(tmp_path, rc=1)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    cb = Preemption()
    cb._requeue()
    assert not cb.requeued
