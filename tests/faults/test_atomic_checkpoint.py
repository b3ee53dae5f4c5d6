"""Checkpoints are written atomically: a save that fails or is killed leaves the old file whole."""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import signal
import time

import pytest
import torch

from difflab.utils import checkpoint_io
from difflab.utils.checkpoint_io import AtomicCheckpointIO, atomic_torch_save
from tests.faults.conftest import compose, load_ckpt


def _state(value: float, n: int = 200_000) -> dict:
    return {"global_step": int(value), "state_dict": {"w": torch.full((n,), float(value))}}


def _half_write_then_hang(path: str, marker: str, new_bytes: bytes) -> None:
    """In a forked child: start saving a new checkpoint, write half of its bytes, then hang.

    The bytes are serialized by the parent: torch ops in a forked child can deadlock on the
    parent's thread pools.
    """

    def half_save(obj, f):
        f.write(new_bytes[: len(new_bytes) // 2])
        f.flush()
        open(marker, "w").close()
        time.sleep(120)

    checkpoint_io.torch.save = half_save  # this process only (forked)
    AtomicCheckpointIO().save_checkpoint({"unused": 0}, path)


def test_sigkill_during_a_save_leaves_the_old_checkpoint_whole(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_state(1.0), path)
    marker = tmp_path / "half-written"
    buf = io.BytesIO()
    torch.save(_state(2.0), buf)
    child = mp.get_context("fork").Process(target=_half_write_then_hang, args=(str(path), str(marker), buf.getvalue()))
    child.start()
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.is_alive() and time.monotonic() < deadline, "the child did not start its save"
            time.sleep(0.05)
        temps = list(tmp_path.glob(".last.ckpt.*.tmp"))
        assert len(temps) == 1 and temps[0].stat().st_size > 0  # the half-written new checkpoint
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.join(30)
    assert child.exitcode == -signal.SIGKILL
    old = load_ckpt(path)  # whole and loadable: still the old checkpoint
    assert old["global_step"] == 1 and torch.equal(old["state_dict"]["w"], torch.full((200_000,), 1.0))
    # the next save replaces it and clears the killed save's temporary file
    AtomicCheckpointIO().save_checkpoint(_state(3.0), path)
    assert load_ckpt(path)["global_step"] == 3 and not list(tmp_path.glob(".*.tmp"))


def test_a_failing_save_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save(_state(1.0), path)

    def disk_full(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        AtomicCheckpointIO().save_checkpoint(_state(2.0), path)
    monkeypatch.undo()
    assert load_ckpt(path)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_the_trainer_config_uses_the_atomic_plugin(tmp_path):
    import hydra

    cfg = compose(tmp_path, [])
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
