"""task=inpaint: RePaint against diffusers' RePaintScheduler, masks, the known region, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from difflab.diffusion.process import GaussianDiffusion
from difflab.errors import ConfigError
from difflab.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler
from difflab.tasks.inpaint import make_masks, repaint, repaint_schedule, reverse_steps
from tests.tasks.conftest import run_task, task_fails


class TinyModel(torch.nn.Module):
    """A fixed random conv net with a timestep gain: enough to make every step differ."""

    def __init__(self, T: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1).double()
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g, dtype=torch.float64) * 0.3)
            self.conv.bias.zero_()
        self.T = T

    def forward(self, x, t):
        return torch.tanh(self.conv(x)) * (1 + t.double().view(-1, 1, 1, 1) / self.T)


@pytest.mark.parametrize("S,jump_length,jump_n_sample", [(20, 10, 10), (25, 5, 3), (12, 3, 1), (7, 10, 4), (30, 1, 2)])
def test_schedule_is_diffusers(S, jump_length, jump_n_sample):
    from diffusers import RePaintScheduler

    sch = RePaintScheduler(num_train_timesteps=S)
    sch.set_timesteps(S, jump_length=jump_length, jump_n_sample=jump_n_sample)
    ours = repaint_schedule(S, jump_length, jump_n_sample)
    assert ours == sch.timesteps.tolist()
    if jump_n_sample == 1:
        assert ours == list(range(S - 1, -1, -1)) and reverse_steps(ours, S) == S


@pytest.mark.parametrize("prediction_type", ["eps", "v", "x0"])
@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_repaint_matches_diffusers_repaint_scheduler(prediction_type, eta):
    """Float64, one generator, every grid step (T = S: diffusers' undo_step then noises one
    training step, as ours does): the same model, the same draws in the same order (x_T, one
    per reverse step, one per forward jump) give the same result as RePaintPipeline's loop over
    RePaintScheduler, which takes eps: a v or x0 output is converted to eps for it."""
    from diffusers import RePaintScheduler

    T, shape = 20, (1, 1, 8, 8)
    betas = torch.linspace(1e-3, 0.2, T, dtype=torch.float64)
    process = GaussianDiffusion(betas)
    model = TinyModel(T)
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    known = torch.ones(shape, dtype=torch.bool)
    known[..., 2:6, 1:5] = False

    sampler = DDIMSampler(num_steps=T, eta=eta, spacing="leading")
    ours = repaint(model, process, sampler, prediction_type, x0, known, torch.Generator().manual_seed(7), 4, 3)

    sch = RePaintScheduler(num_train_timesteps=T, trained_betas=betas.numpy(), eta=eta, clip_sample=True)
    sch.set_timesteps(T, jump_length=4, jump_n_sample=3)
    gen = torch.Generator().manual_seed(7)
    from diffusers.utils.torch_utils import randn_tensor

    image = randn_tensor(shape, generator=gen, dtype=torch.float64)
    t_last = sch.timesteps[0] + 1
    for t in sch.timesteps:  # the loop of diffusers' RePaintPipeline.__call__
        if t < t_last:
            out = model(image, torch.full((1,), int(t)))
            tb = torch.full((1,), int(t), dtype=torch.long)
            eps = process.split_prediction(out, image, tb, prediction_type)[1]
            image = sch.step(eps, int(t), image, x0, known.double(), gen).prev_sample
        else:
            image = sch.undo_step(image, int(t_last), gen)
        t_last = t
    torch.testing.assert_close(ours, image, rtol=1e-9, atol=1e-9)
    assert torch.equal(ours[known], x0[known])  # the known pixels are the input's exactly


def test_ddpm_step_and_per_sample_noise():
    """With DDPM steps, a row of the batch depends on its own generator only (not on the batch)."""
    T, shape = 10, (3, 1, 6, 6)
    process = GaussianDiffusion(torch.linspace(1e-3, 0.3, T, dtype=torch.float64))
    model, sampler = TinyModel(T), DDPMSampler(num_steps=5)
    x0 = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    known = torch.zeros(shape, dtype=torch.bool)
    known[..., :3, :] = True
    gens = lambda idx: [torch.Generator().manual_seed(100 + i) for i in idx]  # noqa: E731
    batch = repaint(model, process, sampler, "eps", x0, known, gens(range(3)), 2, 2)
    alone = repaint(model, process, sampler, "eps", x0[1:2], known[1:2], gens([1]), 2, 2)
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-12)
    assert torch.equal(batch[known], x0[known])


def test_multistep_samplers_are_refused():
    process = GaussianDiffusion(torch.linspace(1e-3, 0.3, 10, dtype=torch.float64))
    with pytest.raises(ConfigError, match="sampler=ddpm or ddim"):
        repaint(TinyModel(10), process, DPMSolverSampler(num_steps=5), "eps", torch.zeros(1, 1, 4, 4),
                torch.ones(1, 1, 4, 4, dtype=torch.bool), torch.Generator(), 2, 2)


# ----------------------------------------------------------------------------- masks
def test_mask_presets():
    center = make_masks("center", (28, 28), 2, box=14)
    assert center.shape == (2, 28, 28) and center.sum() == 2 * 14 * 14 and center[0, 7:21, 7:21].all()
    left, right = make_masks("left", (28, 28), 1), make_masks("right", (28, 28), 1)
    assert left[0, :, :14].all() and not left[0, :, 14:].any() and np.array_equal(left, ~right)
    a, b = make_masks("strokes", (28, 28), 4, seed=1), make_masks("strokes", (28, 28), 4, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, make_masks("strokes", (28, 28), 4, seed=2))
    assert all(0 < m.mean() < 1 for m in a) and not np.array_equal(a[0], a[1])


def test_mask_files(tmp_path):
    from PIL import Image

    m = np.zeros((28, 28), np.uint8)
    m[:10] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    assert np.array_equal(make_masks(str(tmp_path / "m.png"), (28, 28), 3)[2], m == 255)
    np.save(tmp_path / "m.npy", (m > 0)[None].repeat(2, 0))
    assert make_masks(str(tmp_path / "m.npy"), (28, 28), 2).shape == (2, 28, 28)


@pytest.mark.parametrize("array,match", [
    (np.ones((14, 14), np.uint8), "the images are 28x28"),
    (np.full((28, 28), 0.5), "not binary"),
    (np.zeros((28, 28), np.uint8), "all zero: nothing to fill in"),
    (np.ones((28, 28), np.uint8), "all one: nothing is known"),
    (np.ones((3, 28, 28), np.uint8), "3 masks for 2 inputs"),
])
def test_bad_masks(tmp_path, array, match):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(ConfigError, match=match):
        make_masks(str(tmp_path / "bad.npy"), (28, 28), 2)


# ----------------------------------------------------------------------------- sample.py
def test_task_inpaint_writes_results(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    r = run_task(tiny_ckpt, out, "inpaint", "n=5", "batch_size=3", "sampler=ddpm", "sampler.num_steps=6",
                 "task.jump_length=2", "task.jump_n_sample=2", "task.mask=strokes")
    with np.load(out / "results.npz", allow_pickle=False) as f:
        inputs, masks, results = f["inputs"], f["masks"], f["results"]
        protocol = json.loads(str(f["protocol"]))
    assert inputs.shape == results.shape == (5, 28, 28, 1) and masks.shape == (5, 28, 28) and results.dtype == np.uint8
    keep = ~masks[..., None]
    assert np.array_equal(results[keep], inputs[keep])  # the known region is the input, exactly
    assert (results[~keep] != inputs[~keep]).any()
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["known_max_abs_diff"] == 0 and metrics["nfe"] == reverse_steps(repaint_schedule(6, 2, 2), 6)
    assert {"label_kept", "label_kept_noise_filled", "psnr_filled"} <= set(metrics)
    assert protocol["task"] == "inpaint" and protocol["jump_n_sample"] == 2 and r["grid"] == out / "grid.png"
    from PIL import Image

    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape[:2] == (5 * 30 + 2, 4 * 30 + 2)  # one row per input: masked input, mask, result, original


def test_a_checkpoint_with_a_multistep_sampler_inpaints_with_ddim(tiny_ckpt, tmp_path, caplog):
    """The default sampler (SDE-DPM-Solver++ 2M) cannot resample one step at a time: without
    sampler=..., RePaint runs DDIM eta 1 at the checkpoint's step count, and says so."""
    from difflab.utils.checkpoint import load_model

    assert isinstance(load_model(tiny_ckpt).sampler, DPMSolverSampler)
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        run_task(tiny_ckpt, out, "inpaint", "n=2", "task.jump_length=1", "task.jump_n_sample=1")
    assert "inpaints with DDIM" in caplog.text
    with np.load(out / "results.npz", allow_pickle=False) as f:
        protocol = json.loads(str(f["protocol"]))
        assert f["results"].shape == (2, 28, 28, 1)
    text = json.dumps(protocol)
    assert "difflab.samplers.ddim.DDIMSampler" in text and '"eta": 1.0' in text and '"num_steps": 2' in text


@pytest.mark.parametrize("overrides,match", [
    (["task.mask=nope"], "not a preset"),
    (["task.jump_length=0"], "task.jump_length must be an integer >= 1"),
    (["sampler=dpm_solver"], "sampler=ddpm or ddim"),
    (["task.box=40"], "task.box must be an integer in"),
])
def test_bad_settings_fail_in_one_line(tiny_ckpt, tmp_path, capsys, overrides, match):
    assert match in task_fails(tiny_ckpt, tmp_path / "out", capsys, "inpaint", "n=2", *overrides)


def test_bad_mask_file_fails_in_one_line(tiny_ckpt, tmp_path, capsys):
    np.save(tmp_path / "m.npy", np.ones((32, 32), np.uint8))
    err = task_fails(tiny_ckpt, tmp_path / "out", capsys, "inpaint", "n=2", f"task.mask={tmp_path / 'm.npy'}")
    assert "the images are 28x28" in err
