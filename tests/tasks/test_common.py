"""What the tasks share: inputs (val split, .npz, folders), the per-row grid, the task group, conditional checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difflab.errors import ConfigError
from difflab.tasks.common import TASKS, load_inputs, save_rows_grid
from tests.app.test_sample import compose_sample
from tests.conftest import ROOT, compose_train
from tests.tasks.conftest import run_task, task_fails


class _Model:
    image_shape = (1, 28, 28)
    config = {"data": {"_target_": "difflab.data.MNIST5kDataModule"}}


def test_every_task_option_composes(tmp_path):
    names = sorted(p.stem for p in (ROOT / "conf" / "task").glob("*.yaml"))
    assert names == sorted(["generate", *TASKS])
    for name in names:
        cfg = compose_sample(["ckpt=x", f"task={name}"], tmp_path)
        assert cfg.task.name == name
    assert compose_sample(["ckpt=x"], tmp_path).task.name == "generate"


def test_val_inputs_are_a_fixed_subset_with_their_labels():
    from difflab.data import MNIST5kDataModule

    dm = MNIST5kDataModule()
    a, b = load_inputs(None, _Model(), 40, dm), load_inputs(None, _Model(), 40, dm)
    assert torch.equal(a.images, b.images) and a.labels is not None and len(set(a.labels.tolist())) > 3
    full = load_inputs(None, _Model(), 10_000, dm)
    assert len(full.images) == 500
    rows = [int(torch.nonzero((full.images == img).flatten(1).all(1))[0]) for img in a.images[:5]]
    assert a.labels[:5].tolist() == full.labels[rows].tolist()  # each image keeps its own label


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_npz_inputs(tmp_path, layout):
    x = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    np.savez(tmp_path / "in.npz", images=x if layout == "nhwc" else x.transpose(0, 3, 1, 2), labels=np.array([4, 5, 6]))
    inputs = load_inputs(str(tmp_path / "in.npz"), _Model(), 2, None)
    assert np.array_equal(inputs.images.permute(0, 2, 3, 1).numpy(), x[:2]) and inputs.labels.tolist() == [4, 5]


@pytest.mark.parametrize("arrays,match", [
    ({"pictures": np.zeros((2, 28, 28, 1), np.uint8)}, "holds no 'images' array"),
    ({"images": np.zeros((2, 28, 28, 1), np.float32)}, "must be uint8"),
    ({"images": np.zeros((2, 32, 32, 1), np.uint8)}, "the model takes"),
    ({"images": np.zeros((2, 28, 28, 1), np.uint8), "labels": np.zeros(3)}, "'labels' must have shape"),
])
def test_bad_npz_inputs(tmp_path, arrays, match):
    np.savez(tmp_path / "in.npz", **arrays)
    with pytest.raises(ConfigError, match=match):
        load_inputs(str(tmp_path / "in.npz"), _Model(), 5, None)


def test_rows_grid(tmp_path):
    from PIL import Image

    rgb = torch.full((3, 3, 4, 4), 200, dtype=torch.uint8)
    mask = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    save_rows_grid([rgb, mask, rgb], tmp_path / "g.png", rows=2)
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape == (2 * 6 + 2, 3 * 6 + 2, 3)
    assert (grid[2:6, 8:12] == 0).all() and (grid[2:6, 2:6] == 200).all()  # row 0: image, mask (repeated to RGB)


def test_unknown_task_fails_in_one_line(tmp_path, capsys, tiny_ckpt):
    err = task_fails(tiny_ckpt, tmp_path / "out", capsys, "inpaint", "task.name=outpaint")
    assert "task='outpaint' is not a task" in err


def test_metrics_are_for_img2img_only(tmp_path, capsys, tiny_ckpt):
    err = task_fails(tiny_ckpt, tmp_path / "out", capsys, "anomaly", "metrics=[fid]")
    assert "task=anomaly writes its own metrics.json" in err


@pytest.fixture(scope="module")
def labelled_no_dropout(tmp_path_factory):
    """A tiny class-conditional checkpoint trained with every label (p_uncond=0)."""
    from difflab.train import run
    from tests.utils.test_checkpoint import TINY_RUN

    out = tmp_path_factory.mktemp("cond")
    run(compose_train([*TINY_RUN, "conditioning=class", "conditioning.p_uncond=0"], output_dir=str(out)))
    return out / "checkpoints" / "last.ckpt"


def test_class_conditional_checkpoint_without_label_dropout(labelled_no_dropout, tmp_path, capsys):
    err = task_fails(labelled_no_dropout, tmp_path / "out", capsys, "img2img", "n=2")
    assert "never trained it (conditioning.p_uncond=0" in err
    from difflab.utils.checkpoint import load_checkpoint

    ckpt = load_checkpoint(labelled_no_dropout)  # the same weights, as if trained with label dropout
    ckpt["hyper_parameters"]["config"]["conditioning"]["p_uncond"] = 0.1
    torch.save(ckpt, tmp_path / "dropout.ckpt")
    r = run_task(tmp_path / "dropout.ckpt", tmp_path / "ok", "img2img", "n=2", "sampler=ddim", "sampler.num_steps=2")
    assert r["results"][0].shape == (2, 1, 28, 28)
