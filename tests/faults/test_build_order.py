"""Checks that run before anything is logged, and resume points that are refused in one line.

Each case failed before the build moved into difflab/build.py: resume=auto read last.ckpt
without the safe loader, another model's checkpoint gave a size-mismatch traceback, data and
optimizer errors came after the W&B run had started, callback errors were prefixed twice and
came after the config tree, and trainer=gpu without CUDA gave a Hydra instantiate error.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from tests.faults.conftest import one_error_line, run_main

WANDB = ["logger=wandb"]


def _no_logger_started(run_dir: Path) -> None:
    assert not (run_dir / "wandb").exists(), "a W&B run was started before the error"


def _train(run_dir: Path, overrides=()) -> Path:
    run_main(run_dir, ["trainer.max_steps=2", "trainer.val_check_interval=2", *overrides])
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("trained") / "run")


def test_resume_auto_refuses_a_truncated_last_ckpt_in_one_line(tmp_path, capsys, trained):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    data = trained.read_bytes()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(data[: len(data) // 2])
    shutil.copy(trained, run_dir / "checkpoints" / "step_0000001.ckpt")
    with pytest.raises(SystemExit):
        run_main(run_dir, ["trainer.max_steps=4"])
    line = one_error_line(capsys.readouterr().err)
    assert "last.ckpt" in line and "resume=never" in line and "step_0000001.ckpt" in line


def test_resume_auto_refuses_a_pickle_payload_without_unsafe_advice(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)

    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))

    import torch

    torch.save({"state_dict": Payload()}, run_dir / "checkpoints" / "last.ckpt")  # a zip checkpoint with a payload
    (run_dir / "checkpoints" / "old.ckpt").write_bytes(pickle.dumps({"state_dict": Payload()}))  # a raw pickle
    with pytest.raises(SystemExit):
        run_main(run_dir, ["trainer.max_steps=4"])
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert "refused for safety" in line and "resume=never" in line
    assert "weights_only" not in captured.err + captured.out and "payload ran" not in captured.out
    from difflab.errors import CheckpointError
    from difflab.utils.checkpoint import load_checkpoint

    with pytest.raises(CheckpointError) as e:
        load_checkpoint(run_dir / "checkpoints" / "old.ckpt")
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)


def test_a_checkpoint_of_another_backbone_names_the_values_that_differ(tmp_path, capsys, trained):
    with pytest.raises(SystemExit):
        run_main(tmp_path / "run", [f"ckpt_path={trained}", "backbone.base_channels=16"])
    line = one_error_line(capsys.readouterr().err)
    assert "backbone.base_channels=16 here, 8 in the checkpoint" in line
    assert "size mismatch" not in line


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["data=image_folder", "data.root=/nonexistent/images"], "/nonexistent/images"),
        (["+optimizer.foo=1"], "optimizer"),
    ],
)
def test_data_and_optimizer_errors_come_before_any_logger(tmp_path, capsys, overrides, words):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit):
        run_main(run_dir, [*WANDB, *overrides])
    line = one_error_line(capsys.readouterr().err)
    assert words in line
    _no_logger_started(run_dir)


def test_callback_errors_are_prefixed_once_and_come_before_the_config_tree(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_main(tmp_path / "run", ["callbacks.ema.decay=2", "print_config=true"])
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert line.count("callbacks.ema") == 1, line
    assert "CONFIG" not in captured.out and "callbacks" not in captured.out  # no tree printed


def test_trainer_gpu_without_cuda(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit):
        run_main(tmp_path / "run", ["trainer=gpu", "trainer.accelerator=gpu", "trainer.precision=32-true"])  # TINY pins cpu
    assert one_error_line(capsys.readouterr().err) == "error: no CUDA device found; use trainer=cpu or trainer=default"
