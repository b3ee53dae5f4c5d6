"""task=img2img: SDEdit against diffusers' DDIMScheduler img2img steps, NFE against strength, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from difflab.diffusion.process import GaussianDiffusion
from difflab.errors import ConfigError
from difflab.samplers import DDIMSampler, HeunSampler
from difflab.tasks.img2img import check_strength, keep_steps, l2_to_input, partial_denoise
from tests.tasks.conftest import run_task, task_fails
from tests.tasks.test_inpaint import TinyModel


@pytest.mark.parametrize("strength,keep", [(1.0, 10), (0.5, 5), (0.35, 3), (0.1, 1), (0.05, 0)])
def test_keep_steps_is_diffusers_img2img(strength, keep):
    """diffusers' img2img get_timesteps: init_timestep = min(int(S * strength), S)."""
    assert keep_steps(10, strength) == keep


@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
def test_sdedit_matches_diffusers_ddim_img2img(strength):
    """DDIM (eta 0, leading spacing): diffusers' img2img recipe -- timesteps[S - keep:],
    add_noise at the first of them, DDIMScheduler.step over the rest -- gives our result."""
    from diffusers import DDIMScheduler

    T, S, shape = 50, 10, (2, 1, 8, 8)
    betas = torch.linspace(1e-3, 0.1, T, dtype=torch.float64)
    process, model = GaussianDiffusion(betas), TinyModel(T)
    x0 = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    sampler = DDIMSampler(num_steps=S, eta=0.0, spacing="leading")
    keep = keep_steps(S, strength)
    ours, nfe = partial_denoise(model, process, sampler, "eps", x0, keep, torch.Generator().manual_seed(4))
    assert nfe == keep

    sch = DDIMScheduler(num_train_timesteps=T, trained_betas=betas.numpy(), clip_sample=True, set_alpha_to_one=True,
                        steps_offset=0, timestep_spacing="leading")
    sch.set_timesteps(S)
    timesteps = sch.timesteps[S - keep :]
    eps = torch.randn(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x = sch.add_noise(x0, eps, timesteps[:1])
    for t in timesteps:
        x = sch.step(model(x, torch.full((2,), int(t))), int(t), x).prev_sample
    # DDIMScheduler keeps its betas in float32 (RePaintScheduler keeps trained_betas as given)
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-6)


def test_nfe_scales_with_strength_for_any_sampler():
    process = GaussianDiffusion(torch.linspace(1e-3, 0.1, 50, dtype=torch.float64))
    x0 = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    heun = HeunSampler(num_steps=8)
    nfes = [partial_denoise(TinyModel(50), process, heun, "eps", x0, keep_steps(8, s), torch.Generator())[1]
            for s in (0.25, 0.5, 1.0)]
    assert nfes == [3, 7, 15]  # Heun: 2 per step but the last


def test_l2_to_input_closed_form():
    a = torch.zeros(2, 1, 2, 2, dtype=torch.uint8)
    b = a.clone()
    b[0] = 255
    b[1, 0, 0, 0] = 51
    assert l2_to_input(b, a).tolist() == pytest.approx([1.0, 0.1])


@pytest.mark.parametrize("value", [0, -0.1, 1.5, "half", True])
def test_strength_outside_the_unit_interval(value):
    with pytest.raises(ConfigError, match=r"task.strength must be a number in \(0, 1\]"):
        check_strength(value)


def test_task_img2img_curve(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    r = run_task(tiny_ckpt, out, "img2img", "n=4", "batch_size=3", "sampler=ddim", "sampler.num_steps=4",
                 "task.strength=[0.5,1.0]", "metrics=[fid]")
    with np.load(out / "results.npz", allow_pickle=False) as f:
        assert f["inputs"].shape == (4, 28, 28, 1) and f["results"].shape == (2, 4, 28, 28, 1)
        assert f["strengths"].tolist() == [0.5, 1.0]
    curve = json.loads((out / "metrics.json").read_text())["curve"]
    assert [c["nfe"] for c in curve] == [2, 4] and all(c["l2_to_input"] > 0 for c in curve)
    assert "fid/digits/img2img_s0.5_ddim4/n4" in curve[0] and curve[0]["fid"] >= 0
    again = run_task(tiny_ckpt, tmp_path / "again", "img2img", "n=4", "batch_size=1", "sampler=ddim",
                     "sampler.num_steps=4", "task.strength=[0.5,1.0]")
    assert all(torch.equal(a, b) for a, b in zip(r["results"], again["results"]))  # not batch-dependent


@pytest.mark.parametrize("overrides,match", [
    (["task.strength=0"], "task.strength must be a number in (0, 1]"),
    (["task.strength=[0.5,2]"], "task.strength must be a number in (0, 1]"),
    (["task.strength=0.1", "sampler=ddim", "sampler.num_steps=4"], "keeps no step of the sampler's 4"),
    (["task.input=/nonexistent/folder"], "not a folder of images or an .npz file"),
])
def test_bad_settings_fail_in_one_line(tiny_ckpt, tmp_path, capsys, overrides, match):
    assert match in task_fails(tiny_ckpt, tmp_path / "out", capsys, "img2img", "n=2", *overrides)


def test_inputs_from_a_folder_of_the_wrong_size(tiny_ckpt, tmp_path, capsys):
    from PIL import Image

    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "in" / "a.png")
    err = task_fails(tiny_ckpt, tmp_path / "out", capsys, "img2img", f"task.input={tmp_path / 'in'}")
    assert "is 32x32 pixels; the model takes 28x28" in err


def test_inputs_from_a_folder(tiny_ckpt, tmp_path):
    from PIL import Image

    (tmp_path / "in").mkdir()
    for i in range(3):
        Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(tmp_path / "in" / f"{i}.png")
    r = run_task(tiny_ckpt, tmp_path / "out", "img2img", f"task.input={tmp_path / 'in'}", "sampler=ddim",
                 "sampler.num_steps=2", "task.strength=0.5")
    assert r["inputs"].images[:, 0, 0, 0].tolist() == [0, 40, 80] and r["inputs"].labels is None
