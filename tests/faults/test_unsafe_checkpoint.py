"""A checkpoint that carries code (a pickle with a callable) is refused, and its code never runs.

Resuming goes through Lightning's loader, which in 2.6 with torch 2.6+ unpickles with
``weights_only=True``: the run stops before training. (It stops with the unpickler's traceback;
``difflab.utils.checkpoint.load_checkpoint`` would turn it into one line.)
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from tests.faults.conftest import run_main


class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_resume_from_a_malicious_checkpoint_runs_no_code(tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "global_step": 0, "x": Payload(str(marker))}, bad)
    with pytest.raises((pickle.UnpicklingError, RuntimeError, SystemExit)) as err:
        torch.load(bad, weights_only=True)
    assert "weights_only" in str(err.value) or "Unsupported global" in str(err.value)
    with pytest.raises(SystemExit) as err:
        run_main(tmp_path / "run", [f"ckpt_path={bad}", "trainer.max_steps=1"])
    assert err.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "refused for safety" in lines[0]
    assert not marker.exists()
