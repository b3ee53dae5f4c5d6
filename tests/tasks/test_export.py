"""export.py: checkpoint -> diffusers pipeline folder; diffusers (the oracle) samples as difflab does.

Most tests export small synthetic checkpoints (a tiny randomised backbone, EMA weights that
differ from the raw ones) in well under a second each; the round trip through a real 20-step
training run, ``python export.py`` and ``backbone.pretrained`` is marked slow.
"""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch
from safetensors.torch import load_file

import difflab  # noqa: F401  (registers DifflabUNet2DModel with diffusers' loader)
from difflab.errors import ConfigError
from difflab.samplers import DDIMSampler, generate, prev_timesteps
from difflab.tasks.export import export_pipeline, last_metrics
from difflab.utils.checkpoint import load_model
from tests.backbones.conftest import randomize_
from tests.conftest import ROOT, compose_train

T = 100
UNET = ["backbone=unet", "backbone.base_channels=8", "backbone.channel_mult=[1,2]", "backbone.num_res_blocks=1"]
DIFFUSERS_UNET = [
    "backbone=diffusers_unet",
    "backbone.block_out_channels=[8,16]",
    "backbone.layers_per_block=1",
    "backbone.norm_num_groups=4",
    "backbone.down_block_types=[DownBlock2D,DownBlock2D]",
    "backbone.up_block_types=[UpBlock2D,UpBlock2D]",
]
DDIM = ["sampler=ddim", "sampler.num_steps=10"]
DDIM_ETA1 = ["sampler=ddim_eta1", "sampler.num_steps=10"]
DDPM = ["sampler=ddpm", "sampler.num_steps=10"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is fastest, and on a busy machine several threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_checkpoint(
    path: Path, overrides: list[str], backbone: list[str] = UNET, ema: bool = True, seed: int = 0
) -> Path:
    """A checkpoint as train.py writes it (config, raw + EMA backbone weights, ModelCheckpoint
    state), with random weights: what it would hold after training, minus the training."""
    from difflab.utils.hydra import to_plain_dict

    cfg = compose_train([*backbone, f"schedule.num_timesteps={T}", *overrides], output_dir=str(path.parent))
    model = randomize_(hydra.utils.instantiate(cfg.backbone), seed=seed)
    callbacks: dict = {
        "ModelCheckpoint{'monitor': 'val/loss'}": {
            "monitor": "val/loss", "current_score": torch.tensor(0.25), "best_model_score": torch.tensor(0.125)
        }
    }
    if ema:
        ema_model = randomize_(copy.deepcopy(model), seed=seed + 1, std=0.02)
        callbacks["EMA"] = {"decay": 0.999, "num_updates": 7, "state_dict": ema_model.state_dict()}
    ckpt = {
        "global_step": 7,
        "hyper_parameters": {"config": to_plain_dict(cfg)},
        "state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items()},
        "callbacks": callbacks,
        "difflab": {"image_shape": [1, 28, 28], "skipped_steps": 0},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def load_pipeline(folder: Path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unet_state(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


# ----------------------------------------------------------------------------- folder contents
def test_folder_layout_scheduler_config_and_model_card(tmp_path):
    ckpt = make_checkpoint(tmp_path / "run.ckpt", ["sampler=ddim_eta1", "sampler.num_steps=10"])
    out = export_pipeline(ckpt, tmp_path / "out")
    model = load_model(ckpt)  # EMA weights, as exported

    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "DDIMPipeline"
    assert index["unet"] == ["difflab", "DifflabUNet2DModel"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]

    state = unet_state(out)
    expected = model.backbone.state_dict()
    assert state.keys() == expected.keys()  # the UNet's own keys: checkpoints and exports agree
    for k, v in expected.items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)

    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert torch.equal(torch.tensor(sched["trained_betas"], dtype=torch.float64), model.process.betas)
    assert sched["num_train_timesteps"] == T and sched["prediction_type"] == "epsilon"
    assert sched["timestep_spacing"] == "trailing" and sched["set_alpha_to_one"] is True
    assert sched["clip_sample"] is True and sched["clip_sample_range"] == 1.0 and sched["thresholding"] is False
    assert sched["rescale_betas_zero_snr"] is False

    card = (out / "README.md").read_text()
    assert "library_name: diffusers" in card and "import difflab" in card and "# difflab diffusion model: MNIST5k" in card
    assert "num_inference_steps=10, eta=1.0" in card  # the run's sampler: the pipeline's eta defaults to 0
    assert "| val/loss (last) | 0.25 |" in card and "| val/loss (best) | 0.125 |" in card
    assert "## Training config" in card and "num_timesteps: 100" in card


def test_use_ema_false_exports_the_raw_weights(tmp_path):
    ckpt = make_checkpoint(tmp_path / "run.ckpt", DDIM)
    out = export_pipeline(ckpt, tmp_path / "out", use_ema=False)
    raw = load_model(ckpt, use_ema=False).backbone.state_dict()
    ema = load_model(ckpt, use_ema=True).backbone.state_dict()
    state = unet_state(out)
    assert all(torch.equal(state[k], raw[k]) for k in raw)
    assert not all(torch.equal(state[k], ema[k]) for k in ema)
    assert "raw (non-EMA) weights" in (out / "README.md").read_text()


def test_checkpoint_without_ema_falls_back_to_raw_with_a_warning(tmp_path, caplog):
    ckpt = make_checkpoint(tmp_path / "run.ckpt", DDIM, ema=False)
    with caplog.at_level(logging.WARNING):
        out = export_pipeline(ckpt, tmp_path / "out")
    assert "has no EMA weights; exporting the raw weights" in caplog.text
    raw = load_model(ckpt, use_ema=False).backbone.state_dict()
    assert all(torch.equal(unet_state(out)[k], raw[k]) for k in raw)


def test_diffusers_unet_exports_as_a_standard_unet2dmodel(tmp_path):
    from diffusers import DDPMPipeline, UNet2DModel

    ckpt = make_checkpoint(tmp_path / "run.ckpt", DDPM, backbone=DIFFUSERS_UNET)
    out = export_pipeline(ckpt, tmp_path / "out")
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["_class_name"] == "DDPMPipeline"
    assert "import difflab" not in (out / "README.md").read_text()
    pipe = load_pipeline(out)
    assert isinstance(pipe, DDPMPipeline) and type(pipe.unet) is UNet2DModel
    model = load_model(ckpt)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 90])
    torch.testing.assert_close(pipe.unet(x, t).sample, model.backbone(x, t), rtol=0, atol=0)


def test_pipeline_choice_follows_the_sampler_unless_asked(tmp_path):
    ckpt = make_checkpoint(tmp_path / "run.ckpt", DDPM)
    auto = export_pipeline(ckpt, tmp_path / "auto")
    forced = export_pipeline(ckpt, tmp_path / "forced", pipeline="ddim")
    assert json.loads((auto / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    assert json.loads((forced / "model_index.json").read_text())["_class_name"] == "DDIMPipeline"
    sched = json.loads((auto / "scheduler" / "scheduler_config.json").read_text())
    assert sched["variance_type"] == "fixed_small" and sched["timestep_spacing"] == "leading"
    assert "whose sampler differs from it" in (forced / "README.md").read_text()


def test_a_sampler_without_a_pipeline_exports_as_ddim_and_the_card_says_so(tmp_path, caplog):
    """The default sampler (SDE-DPM-Solver++ 2M) has no diffusers pipeline: auto gives a
    DDIMPipeline with the run's betas, a warning and a model card that says the samplers differ."""
    ckpt = make_checkpoint(tmp_path / "run.ckpt", [])  # the default sampler
    with caplog.at_level("WARNING"):
        out = export_pipeline(ckpt, tmp_path / "out")
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "DDIMPipeline"
    assert "no diffusers pipeline of its own" in caplog.text
    card = (out / "README.md").read_text()
    assert "DPMSolverSampler" in card and "whose sampler differs from it" in card


def test_reexport_replaces_the_folder_and_a_foreign_folder_is_refused(tmp_path):
    ckpt = make_checkpoint(tmp_path / "run.ckpt", DDIM)
    out = export_pipeline(ckpt, tmp_path / "out")
    (out / "notes.txt").write_text("mine")
    export_pipeline(ckpt, out, use_ema=False)
    assert (out / "notes.txt").read_text() == "mine"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="non-empty folder that holds no exported pipeline"):
        export_pipeline(ckpt, foreign)


def test_exports_from_an_exported_safetensors_file(tmp_path):
    from difflab.utils.checkpoint import export_safetensors

    ckpt = make_checkpoint(tmp_path / "run.ckpt", DDIM)
    weights = export_safetensors(ckpt, tmp_path / "model.safetensors", use_ema=False)
    out = export_pipeline(weights, tmp_path / "out")
    raw = load_model(ckpt, use_ema=False).backbone.state_dict()
    assert all(torch.equal(unet_state(out)[k], raw[k]) for k in raw)
    assert "The checkpoint stores no metrics." in (out / "README.md").read_text()


def test_last_metrics_reads_model_checkpoint_state():
    ckpt = {"callbacks": {"ModelCheckpoint{x}": {"monitor": "val/loss", "current_score": torch.tensor(0.5),
                                                 "best_model_score": None}}}
    assert last_metrics(ckpt) == {"val/loss (last)": 0.5}
    assert last_metrics({}) == {}


# ----------------------------------------------------------------------------- agreement with difflab
CASES = {
    "cosine-eps": [],
    "linear-x0": ["schedule=linear", "objective=x0"],
    "ztsnr-v": ["schedule=scaled_linear", "schedule.zero_terminal_snr=true", "objective=v"],
    "sigmoid-v-threshold": ["schedule=sigmoid", "objective=v", "sampler.dynamic_thresholding=true",
                            "sampler.sample_max_value=1.5"],
}
SAMPLERS = {
    "ddim": DDIM,
    "ddim_eta1": DDIM_ETA1,
    "ddpm": DDPM,
    "ddpm-all-steps-fixed_large": ["sampler=ddpm", "sampler.variance_type=fixed_large"],
    "ddpm-linspace-noclip": ["sampler=ddpm", "sampler.num_steps=7", "sampler.spacing=linspace",
                             "sampler.clip_sample=false"],
}


# diffusers computes in float32 what difflab computes in float64; where that is ill-conditioned,
# the loaded scheduler is further from difflab than 1e-5 (its float64 twin below is not):
FLOAT32_ATOL = {
    # DDIM eta > 0 at the first step: sqrt(1 - alpha-bar_prev - sigma^2) cancels to ~alpha-bar_t
    # (exactly 0 at zero terminal SNR), so float32 leaves ~sqrt(6e-8) of it
    "ddim_eta1": 2e-3,
    # fixed_large: sigma^2 = 1 - alpha-bar_t / alpha-bar_{t-1} ~ 1e-4 at small t, 6e-8 absolute error
    "ddpm-all-steps-fixed_large": 5e-5,
    # eps with no clipping at alpha-bar_T ~ 2e-7: x_0 = (x_t - sqrt(1 - alpha-bar) eps) / sqrt(alpha-bar)
    # is ~1e4, and float32 keeps ~7 digits of it
    "ddpm-linspace-noclip": 5e-2,
}
FLOAT32_RTOL = {"ddpm-linspace-noclip": 1e-5}


def _float64_twin(scheduler, process):
    """The same scheduler with difflab's float64 alpha-bar: the formulas alone, without float32 rounding."""
    twin = type(scheduler).from_config(scheduler.config)
    twin.betas, twin.alphas, twin.alphas_cumprod = process.betas.clone(), process.alphas.clone(), process.alphas_cumprod.clone()
    return twin


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("sampler_name", list(SAMPLERS))
def test_every_step_of_the_loaded_scheduler_matches_difflab(tmp_path, case, sampler_name):
    """From the same x_t, model output and noise, one step of the exported scheduler equals
    difflab's sampler step: to 1e-5 as loaded (float32 betas, see FLOAT32_ATOL for the
    ill-conditioned exceptions), and to 1e-6 at every step with float64 alpha-bar."""
    overrides = [*SAMPLERS[sampler_name], *CASES[case]]
    if "ztsnr" in case and sampler_name.startswith("ddpm") and "linspace" not in sampler_name:
        overrides.append("sampler.spacing=trailing")  # zero terminal SNR: start from t = T - 1
    ckpt = make_checkpoint(tmp_path / "run.ckpt", overrides)
    pipe = load_pipeline(export_pipeline(ckpt, tmp_path / "out"))
    model = load_model(ckpt)
    sampler, process, target = model.sampler, model.process, model.objective.target
    assert torch.equal(pipe.scheduler.betas, process.betas.float())  # the betas travel as float32

    S = T if sampler.num_steps is None else sampler.num_steps
    timesteps = sampler.timesteps(T)
    eta = getattr(sampler, "eta", None)
    as_loaded = (pipe.scheduler, FLOAT32_ATOL.get(sampler_name, 1e-5), FLOAT32_RTOL.get(sampler_name, 0.0))
    for scheduler, atol, rtol in (as_loaded, (_float64_twin(pipe.scheduler, process), 1e-6, 0.0)):
        scheduler.set_timesteps(S)
        assert scheduler.timesteps.tolist() == timesteps.tolist()
        g = torch.Generator().manual_seed(0)
        for t, t_prev in zip(timesteps.tolist(), prev_timesteps(timesteps).tolist()):
            x_t, out = torch.randn(2, 1, 28, 28, generator=g), torch.randn(2, 1, 28, 28, generator=g)
            ours = sampler.step(process, out, t, t_prev, x_t, torch.Generator().manual_seed(t), prediction_type=target)
            if eta is None:  # DDPMScheduler draws its noise from the generator, as difflab does
                theirs = scheduler.step(out, t, x_t, generator=torch.Generator().manual_seed(t))
            else:
                noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t))
                theirs = scheduler.step(out, t, x_t, eta=eta, variance_noise=noise if eta > 0 else None)
            where = f"t={t}, {theirs.prev_sample.dtype} scheduler"
            msg = lambda m, where=where: f"{where}: {m}"  # noqa: E731
            assert torch.isfinite(ours.prev_sample).all(), f"{where}: difflab's step is not finite"
            if (scheduler is as_loaded[0] and "ztsnr" in case and eta and t == timesteps[0]
                    and not torch.isfinite(theirs.prev_sample).all()):
                # diffusers' float32 DDIM, eta > 0, first step at zero terminal SNR: 1 - alpha-bar_prev
                # - sigma^2 is exactly 0 and rounds below it on some CPUs (AVX-512 EPYC), so its
                # sqrt is NaN; difflab computes in float64. The float64 twin below checks the step.
                continue
            torch.testing.assert_close(theirs.prev_sample, ours.prev_sample, rtol=rtol, atol=atol, msg=msg)
            torch.testing.assert_close(theirs.pred_original_sample, ours.pred_x0, rtol=rtol, atol=atol, msg=msg)


@pytest.mark.parametrize("sampler_name", ["ddim", "ddim_eta1", "ddpm"])
@pytest.mark.parametrize("backbone", ["unet", "diffusers_unet"])
def test_pipeline_samples_the_same_images_as_difflab(tmp_path, sampler_name, backbone):
    """Whole trajectories from the same seed: the pipeline's images are difflab's (to 1e-3 in [-1, 1])."""
    ckpt = make_checkpoint(tmp_path / "run.ckpt", SAMPLERS[sampler_name],
                           backbone=UNET if backbone == "unet" else DIFFUSERS_UNET)
    pipe = load_pipeline(export_pipeline(ckpt, tmp_path / "out"))
    model = load_model(ckpt)
    kwargs = {"num_inference_steps": model.sampler.num_steps}
    if sampler_name != "ddpm":
        kwargs["eta"] = model.sampler.eta
    images = pipe(batch_size=3, generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs).images
    ours = generate(model.backbone, model.process, model.sampler, (3, 1, 28, 28), torch.Generator().manual_seed(0),
                    progress=False, prediction_type=model.objective.target)
    assert (images * 2 - 1 - ours.clamp(-1, 1)).abs().max() < 1e-3


# ----------------------------------------------------------------------------- what cannot export
def test_mlp_backbone_fails_in_one_line(tmp_path):
    from difflab.utils.hydra import to_plain_dict

    cfg = compose_train(["data=toy2d", "backbone=mlp", "backbone.hidden=16"], output_dir=str(tmp_path))
    mlp = hydra.utils.instantiate(cfg.backbone)
    ckpt = {"hyper_parameters": {"config": to_plain_dict(cfg)}, "global_step": 1, "difflab": {"image_shape": [2]},
            "state_dict": {f"backbone.{k}": v for k, v in mlp.state_dict().items()}}
    torch.save(ckpt, tmp_path / "mlp.ckpt")
    with pytest.raises(ConfigError, match="backbone MLP cannot export to a diffusers pipeline") as e:
        export_pipeline(tmp_path / "mlp.ckpt", tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("key", ["first_stage", "conditioning"])
def test_latent_or_conditional_model_fails_in_one_line(tmp_path, key):
    path = make_checkpoint(tmp_path / "run.ckpt", DDIM)
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["config"][key] = {"_target_": "somewhere.Something"}
    torch.save(ckpt, path)
    with pytest.raises(ConfigError, match="cannot run it") as e:
        export_pipeline(path, tmp_path / "out")
    assert "\n" not in str(e.value)


def test_a_none_option_is_not_a_latent_or_conditional_model(tmp_path):
    path = make_checkpoint(tmp_path / "run.ckpt", DDIM)
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["config"]["first_stage"] = {"_target_": "difflab.first_stage.Identity", "name": "none"}
    torch.save(ckpt, path)
    assert (export_pipeline(path, tmp_path / "out") / "model_index.json").is_file()


def test_a_unet_with_extra_input_channels_fails_in_one_line(tmp_path):
    ckpt = make_checkpoint(tmp_path / "run.ckpt", [*DDIM, "backbone.in_channels=2", "+backbone.out_channels=1"])
    with pytest.raises(ConfigError, match="maps 2 to 1 channels but samples have 1"):
        export_pipeline(ckpt, tmp_path / "out")


def test_class_conditional_backbone_fails_in_one_line(tmp_path):
    ckpt = make_checkpoint(tmp_path / "run.ckpt", [*DDIM, "+backbone.num_classes=3"])
    with pytest.raises(ConfigError, match="class-conditional"):
        export_pipeline(ckpt, tmp_path / "out")


def test_bad_pipeline_name(tmp_path):
    ckpt = make_checkpoint(tmp_path / "run.ckpt", DDIM)
    with pytest.raises(ConfigError, match=r"pipeline='pndm' is not one of \['auto', 'ddpm', 'ddim'\]"):
        export_pipeline(ckpt, tmp_path / "out", pipeline="pndm")


# ----------------------------------------------------------------------------- the task's config
def compose_export(overrides: list[str], output_dir: Path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from difflab.config import register_configs
    from difflab.utils.hydra import register_resolvers

    register_resolvers()
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="export", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def fails(cfg, capsys) -> str:
    from difflab.tasks.export import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(cfg)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_task_config_defaults_and_one_line_errors(tmp_path, capsys):
    from difflab.tasks.export import run

    ckpt = make_checkpoint(tmp_path / "run.ckpt", DDIM)
    cfg = compose_export([f"ckpt={ckpt}", f"out={tmp_path / 'out'}"], tmp_path / "hydra")
    assert (cfg.use_ema, cfg.pipeline, cfg.push_to_hub, cfg.repo_id) == (True, "auto", False, None)
    assert run(cfg) == tmp_path / "out"
    assert "ckpt is required" in fails(compose_export([f"out={tmp_path / 'o'}"], tmp_path), capsys)
    assert "out is required" in fails(compose_export([f"ckpt={ckpt}"], tmp_path), capsys)
    assert "needs repo_id" in fails(compose_export([f"ckpt={ckpt}", f"out={tmp_path / 'o'}", "push_to_hub=true"],
                                                   tmp_path), capsys)
    assert "no such file" in fails(compose_export([f"ckpt={tmp_path / 'nope.ckpt'}", f"out={tmp_path / 'o'}"],
                                                  tmp_path), capsys)


def test_push_to_hub_without_network_fails_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here anyway; never try to reach one
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_token")
    ckpt = make_checkpoint(tmp_path / "run.ckpt", DDIM)
    cfg = compose_export([f"ckpt={ckpt}", f"out={tmp_path / 'out'}", "push_to_hub=true", "repo_id=me/tiny"], tmp_path)
    err = fails(cfg, capsys)
    assert "push_to_hub to me/tiny failed" in err and "huggingface-cli upload me/tiny" in err
    assert (tmp_path / "out" / "model_index.json").is_file()  # the folder is written before the upload


# ----------------------------------------------------------------------------- round trip (slow)
TRAIN = [
    "trainer.max_steps=20", "trainer.val_check_interval=20", "schedule.num_timesteps=100",
    "sampler.num_steps=10", "callbacks.sample_grid.every_n_steps=0", "callbacks.sample_grid.at_end=false",
    "~callbacks.progress_bar", "data.batch_size=8", "data.val_batch_size=8", "trainer.accelerator=cpu",
    "trainer.precision=32-true", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false", "lr_warmup_steps=0", "logger=none", "print_config=false",
]


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["unet", "diffusers_unet"])
def test_round_trip_train_export_sample_import(tmp_path, backbone):
    """Train 20 steps, `python export.py`, load with from_pretrained, sample with diffusers: the
    images are difflab's (DDIM eta 0 from the same x_T, to 1e-3); then the exported folder as
    backbone.pretrained holds the same weights, and its schedule passes the check."""
    from diffusers import DDIMPipeline

    from difflab.train import run
    from difflab.utils.diffusers_interop import check_pretrained_schedule

    run_dir = tmp_path / "run"
    arch = UNET if backbone == "unet" else DIFFUSERS_UNET
    run(compose_train([*arch, "sampler=ddim", *TRAIN], output_dir=str(run_dir)))
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    out = tmp_path / "exported"
    proc = subprocess.run(
        [sys.executable, "export.py", f"ckpt={ckpt}", f"out={out}", f"hydra.run.dir={tmp_path / 'export-run'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]

    pipe = load_pipeline(out)
    assert isinstance(pipe, DDIMPipeline)
    model = load_model(ckpt)
    assert model.used_ema
    images = pipe(batch_size=4, num_inference_steps=10, generator=torch.Generator().manual_seed(3), output_type="pt").images
    sampler = DDIMSampler(num_steps=10, eta=0.0)
    ours = generate(model.backbone, model.process, sampler, (4, 1, 28, 28), torch.Generator().manual_seed(3),
                    progress=False, prediction_type=model.objective.target)
    assert (images * 2 - 1 - ours.clamp(-1, 1)).abs().max() < 1e-3

    check_pretrained_schedule(out, model.process, model.objective.target)
    if backbone == "diffusers_unet":
        cfg = compose_train([*arch, f"backbone.pretrained={out}"], output_dir=str(tmp_path))
        imported = hydra.utils.instantiate(cfg.backbone)
        expected = model.backbone.state_dict()
        got = imported.state_dict()
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected)
