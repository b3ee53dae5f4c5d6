"""Bad config values stop the run before anything is built, with one line naming key, value and what is allowed."""

from __future__ import annotations

import pytest

from tests.faults.conftest import one_error_line, run_main, run_train

# (override, words the one line must hold: the key, the bad value, what is allowed)
CASES = [
    (["sampler=ddim_eta1", "sampler.eta=1.5"], ["sampler.eta", "1.5", "[0, 1]"]),
    (["sampler.num_steps=5000"], ["num_steps", "5000", "1000"]),
    (["objective.target=noise"], ["objective", "noise", "eps", "x0", "v"]),
    (["optimizer.lr=-1"], ["optimizer.lr", "-1", "positive"]),
    (["data.batch_size=0"], ["data.batch_size", "0", ">= 1"]),
    (["backbone.image_size=32"], ["backbone", "32", "28", "image_size"]),
    (["backbone.channel_mult=[1,2,2,2]"], ["backbone", "28", "channel_mult", "divisible by 8"]),
    (["backbone.in_channels=3"], ["backbone", "3", "(1, 28, 28)", "in_channels"]),
    (["max_consecutive_nonfinite=0"], ["max_consecutive_nonfinite", "0", ">= 1"]),
    (["lr_warmup_steps=-5"], ["lr_warmup_steps", "-5", ">= 0"]),
    (["resume=yes"], ["resume", "yes", "auto"]),
    (["trainer.gradient_clip_val=-1"], ["trainer.gradient_clip_val", "-1", ">= 0"]),
    (["data=image_folder"], ["data.root", "required"]),
    (["compile=yes"], ["compile", "yes", "true or false"]),
    (["channels_last=1"], ["channels_last", "1", "true or false"]),
]


@pytest.mark.parametrize("override, words", CASES, ids=[c[0][0] for c in CASES])
def test_bad_value_is_one_line_naming_key_value_and_choices(override, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(tmp_path, override)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    line = one_error_line(err)
    for w in words:
        assert w in line, line
    assert not (tmp_path / "checkpoints").exists()


def test_a_time_budget_with_a_decaying_lr_is_one_line_before_training(tmp_path, capsys):
    """trainer.max_steps=-1 +trainer.max_time=...: cosine decay has no length to decay over.
    It stops in one line before any step (it used to be OverflowError in configure_optimizers)."""
    with pytest.raises(SystemExit) as exit_info:
        run_main(tmp_path, ["trainer.max_steps=-1", "+trainer.max_time=00:00:01:00"])
    assert exit_info.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert "lr_scheduler.total_steps" in line and "lr_scheduler=constant" in line, line
    assert not (tmp_path / "checkpoints").exists()


def test_a_time_budget_with_a_planned_decay_builds(tmp_path):
    from difflab.build import build_module
    from tests.conftest import compose_train

    cfg = compose_train(["trainer.max_steps=-1", "+trainer.max_time=00:00:01:00", "lr_scheduler.total_steps=100",
                         "backbone.base_channels=8", "backbone.channel_mult=[1,2]"], output_dir=str(tmp_path))
    assert build_module(cfg, (1, 28, 28)).lr_scheduler.total_steps == 100


def test_image_channels_differ_from_the_backbone(tmp_path, capsys):
    """An RGB image folder with a greyscale UNet: the channel counts are named."""
    from PIL import Image

    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i, 2 * i, 3 * i)).save(root / f"{i}.png")
    with pytest.raises(SystemExit):
        run_main(tmp_path / "run", ["data=image_folder", f"data.root={root}", "data.image_size=8", "data.channels=3", "data.batch_size=2",
                                    "backbone.in_channels=1"])
    line = one_error_line(capsys.readouterr().err)
    assert "(3, 8, 8)" in line and "in_channels" in line


SUBPROCESS = [CASES[0], CASES[4]]
SUBPROCESS_SLOW = [c for c in CASES if c not in SUBPROCESS]


def _check_subprocess(override, words, tmp_path):
    proc = run_train(tmp_path, override)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    for w in words:
        assert w in line, line
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("override, words", SUBPROCESS, ids=[c[0][0] for c in SUBPROCESS])
def test_train_py_exits_2_with_one_line(override, words, tmp_path):
    _check_subprocess(override, words, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("override, words", SUBPROCESS_SLOW, ids=[c[0][0] for c in SUBPROCESS_SLOW])
def test_train_py_exits_2_with_one_line_every_case(override, words, tmp_path):
    """The same cases through `python train.py` (~20 s each on 2 busy cores, so all together are slow)."""
    _check_subprocess(override, words, tmp_path)
