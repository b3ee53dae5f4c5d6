"""sample.py with a class-conditional checkpoint: labels=uniform / labels=[...] / class=K,
guidance_scale, the labels in samples.npz, one class per grid row; bad labels in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.app.test_sample import fails, sample
from tests.conftest import compose_train
from tests.utils.test_checkpoint import TINY_RUN, tiny_checkpoint


@pytest.fixture(scope="session")
def cond_ckpt(tmp_path_factory) -> Path:
    from difflab.train import run

    root = tmp_path_factory.getbasetemp() / "tiny-cond-run"
    ckpt = root / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        run(compose_train([*TINY_RUN, "conditioning=class"], output_dir=str(root)))
    return ckpt


@pytest.fixture(scope="session")
def uncond_ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.getbasetemp() / "tiny-run")


def test_uniform_labels_by_default_stored_in_the_npz(cond_ckpt, tmp_path):
    result = sample(cond_ckpt, tmp_path, "n=20", "batch_size=8", "guidance_scale=3", "grid_size=20")
    data = np.load(result["npz"])
    assert data["labels"].tolist() == [i % 10 for i in range(20)]
    protocol = json.loads(str(data["protocol"]))
    assert protocol["guidance"] == "cfg3_nfe4_uniform" and int(data["nfe"]) == 4  # 2 steps, 2 NFE each
    grid = np.asarray(Image.open(result["grid"]))
    assert grid.shape[0] > grid.shape[1]  # 10 rows (one class each) of 2 columns


def test_label_list_and_class(cond_ckpt, tmp_path):
    data = np.load(sample(cond_ckpt, tmp_path / "a", "n=3", "labels=[3,3,7]", "guidance_scale=1")["npz"])
    assert data["labels"].tolist() == [3, 3, 7] and json.loads(str(data["protocol"]))["guidance"] == "cfg1_nfe2_list"
    data = np.load(sample(cond_ckpt, tmp_path / "b", "n=4", "class=3", "guidance_scale=0")["npz"])
    assert data["labels"].tolist() == [3, 3, 3, 3] and int(data["nfe"]) == 2


@pytest.mark.parametrize("overrides, expected", [
    (["n=3", "labels=[3,3]"], "2 labels for n=3"),
    (["n=3", "labels=[1,2,10]"], "label 10 is out of range"),
    (["n=3", "class=11"], "class=11 is out of range"),
    (["n=3", "guidance_scale=-1"], "guidance_scale must be >= 0"),
    (["n=3", "+class_label=3"], "class_label is not an option of sample.py; use class="),
])
def test_bad_labels_fail_in_one_line(cond_ckpt, tmp_path, capsys, overrides, expected):
    assert expected in fails(cond_ckpt, tmp_path, capsys, *overrides)


@pytest.mark.parametrize("overrides", [["class=3"], ["labels=[1,2]", "n=2"], ["guidance_scale=2"]])
def test_labels_for_an_unconditional_checkpoint_fail_in_one_line(uncond_ckpt, tmp_path, capsys, overrides):
    assert "unconditional" in fails(uncond_ckpt, tmp_path, capsys, *overrides)
