"""task=anomaly: reconstruction scores, AUROC on torchmetrics, the excluded classes of the checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from difflab.diffusion.process import GaussianDiffusion
from difflab.samplers import DDIMSampler, DDPMSampler
from difflab.tasks.anomaly import auroc, steps_up_to
from tests.tasks.conftest import run_task, task_fails


def test_auroc_closed_form():
    """Of the 4 (anomalous, normal) pairs, 3 are ranked right: AUROC 0.75."""
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    assert auroc(scores, torch.tensor([False, False, True, True])) == pytest.approx(0.75)
    assert auroc(scores, torch.tensor([False, False, False, True])) == pytest.approx(1.0)


def test_steps_up_to():
    process = GaussianDiffusion(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    assert steps_up_to(DDPMSampler(), process, 249) == 250  # every step 0..249
    assert steps_up_to(DDIMSampler(num_steps=10), process, 250) == 2  # trailing grid: 99, 199
    assert steps_up_to(DDIMSampler(num_steps=10), process, 50) == 0


def _labelled_npz(path, labels):
    from difflab.data import MNIST5kDataModule

    dm = MNIST5kDataModule()
    dm.setup()
    idx = [int(torch.nonzero(dm.val_set.labels == c)[0]) + k for k, c in enumerate(labels)]
    images = dm.real_images("val")[idx].permute(0, 2, 3, 1).numpy()
    np.savez(path, images=images, labels=np.array(labels))
    return images


def test_task_anomaly_scores_and_auroc(tiny_ckpt, tmp_path):
    _labelled_npz(tmp_path / "in.npz", [1, 7, 1, 7, 3])
    out = tmp_path / "out"
    r = run_task(tiny_ckpt, out, "anomaly", f"task.input={tmp_path / 'in.npz'}", "task.t=500",
                 "task.anomalous_classes=[7]", "sampler=ddim", "sampler.num_steps=4", "batch_size=2")
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    with np.load(out / "results.npz", allow_pickle=False) as f:
        scores = f["scores"]
        assert f["anomalous"].tolist() == [False, True, False, True, False] and f["results"].shape == (5, 28, 28, 1)
    assert scores.shape == (5,) and (scores > 0).all() and m["steps"] == 2 and m["n_anomalous"] == 2
    expected = auroc(torch.from_numpy(scores), torch.tensor([False, True, False, True, False]))
    assert m["auroc"] == pytest.approx(expected)
    assert set(m["score_mean_by_class"]) == {"1", "3", "7"}
    again = run_task(tiny_ckpt, tmp_path / "again", "anomaly", f"task.input={tmp_path / 'in.npz'}", "task.t=500",
                     "task.anomalous_classes=[7]", "sampler=ddim", "sampler.num_steps=4", "batch_size=5")
    assert torch.equal(r["scores"], again["scores"])  # input i draws from (seed, i): not batch-dependent


def test_anomalous_classes_default_to_the_excluded_ones(tiny_ckpt, tmp_path):
    """A checkpoint trained with data.exclude_classes=[7] scores 7 as the anomaly by default."""
    from difflab.utils.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_ckpt)
    ckpt["hyper_parameters"]["config"]["data"]["exclude_classes"] = [7]
    torch.save(ckpt, tmp_path / "no7.ckpt")
    _labelled_npz(tmp_path / "in.npz", [7, 2, 7, 2])
    r = run_task(tmp_path / "no7.ckpt", tmp_path / "out", "anomaly", f"task.input={tmp_path / 'in.npz'}",
                 "task.t=300", "sampler=ddim", "sampler.num_steps=4", "grid_size=0")
    assert r["metrics"]["anomalous_classes"] == [7] and r["metrics"]["n_anomalous"] == 2 and "auroc" in r["metrics"]


@pytest.mark.parametrize("overrides,match", [
    (["task.t=-1"], "task.t must be a timestep"),
    (["task.t=5000"], "the model has T=1000 timesteps"),
    (["task.repeats=0"], "task.repeats must be an integer >= 1"),
    (["task.anomalous_classes=[a]"], "task.anomalous_classes must hold class labels"),
])
def test_bad_settings_fail_in_one_line(tiny_ckpt, tmp_path, capsys, overrides, match):
    assert match in task_fails(tiny_ckpt, tmp_path / "out", capsys, "anomaly", "n=2", *overrides)
