"""Every option of every config group composes and instantiates; typos fail at composition."""

from __future__ import annotations

import subprocess
import sys

import hydra
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from tests.conftest import ROOT, compose_train

GROUPS = {
    "schedule": ["linear", "scaled_linear", "cosine", "sigmoid"],
    "objective": ["eps", "x0", "v"],
    "sampler": ["ddpm", "ddim", "ddim_eta1", "dpm_solver", "dpm_solver_sde", "euler", "euler_ancestral", "heun", "unipc"],
    "backbone": ["unet", "diffusers_unet"],
    "conditioning": ["none", "class", "low_res"],  # built with each backbone in tests/test_conditioning.py
    "optimizer": ["adamw", "adam", "adamw_edm2"],
    "lr_scheduler": ["constant", "cosine", "linear"],
    "trainer": ["default", "cpu", "gpu", "ddp", "ddp_sim"],
    "logger": ["wandb", "csv", "tensorboard", "none"],
    "callbacks": ["default", "none", "ema", "model_checkpoint", "sample_grid", "progress_bar", "trajectory", "nfe_table", "fid", "preemption", "lr_monitor",
                  "autoencoder", "reconstructions", "rfid"],
    "model": ["diffusion", "autoencoder"],
    "first_stage": ["none", "autoencoder", "pretrained_vae"],
}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_option_file_is_tested(group):
    assert set(_options(group)) <= set(GROUPS[group]) | {"mlp"}, "a new option needs a line in GROUPS"


@pytest.mark.parametrize("schedule", GROUPS["schedule"])
@pytest.mark.parametrize("objective", GROUPS["objective"])
def test_schedule_objective_sampler_instantiate(schedule, objective):
    from difflab.build import build_core

    for sampler in GROUPS["sampler"]:
        cfg = compose_train([f"schedule={schedule}", f"objective={objective}", f"sampler={sampler}"])
        process, obj, smp = build_core(cfg)
        assert process.num_timesteps == 1000
        assert obj.target == objective and not hasattr(smp, "prediction_type")  # the objective's, only
        assert smp.nfe(1000) >= 1


@pytest.mark.parametrize("optimizer", GROUPS["optimizer"])
@pytest.mark.parametrize("lr_scheduler", GROUPS["lr_scheduler"])
def test_optimizer_and_lr_scheduler_options_instantiate(optimizer, lr_scheduler):
    import torch

    cfg = compose_train([f"optimizer={optimizer}", f"lr_scheduler={lr_scheduler}", "lr_warmup_steps=7"])
    opt = hydra.utils.instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2))])
    schedule = hydra.utils.instantiate(cfg.lr_scheduler)
    assert schedule.name == lr_scheduler and schedule.warmup_steps == 7
    sched = schedule.build(opt, total_steps=cfg.trainer.max_steps)
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.optimizer.lr / 7)
    assert sched.lr_lambdas[0](cfg.trainer.max_steps) == pytest.approx(1.0 if lr_scheduler == "constant" else 0.1)
    if optimizer == "adamw_edm2":
        assert tuple(opt.defaults["betas"]) == (0.9, 0.99)


@pytest.mark.parametrize("weighting", ["uniform", "min_snr"])
def test_weightings(weighting):
    cfg = compose_train([f"objective.weighting={weighting}"])
    assert hydra.utils.instantiate(cfg.objective).weighting == weighting


def test_zero_terminal_snr_with_v():
    from difflab.build import build_core

    cfg = compose_train(["schedule.zero_terminal_snr=true", "objective=v"])
    process, _, _ = build_core(cfg)
    assert float(process.alphas_cumprod[-1]) == 0.0


@pytest.mark.parametrize("backbone", GROUPS["backbone"])
def test_backbones_follow_the_data_shape(backbone):
    from difflab.build import check_backbone

    for data, shape in [("mnist5k", (1, 28, 28)), ("cifar10", (3, 32, 32))]:
        overrides = [f"backbone={backbone}", f"data={data}"]
        if backbone == "unet" and data == "cifar10":
            overrides.append("backbone.channel_mult=[1,2,2,2]")
        cfg = compose_train(overrides)
        dm = hydra.utils.instantiate(cfg.data)
        assert tuple(dm.image_shape) == shape
        check_backbone(hydra.utils.instantiate(cfg.backbone), shape)


def test_mlp_with_toy2d():
    from difflab.build import check_backbone

    cfg = compose_train(["data=toy2d", "backbone=mlp"])
    dm = hydra.utils.instantiate(cfg.data)
    check_backbone(hydra.utils.instantiate(cfg.backbone), tuple(dm.image_shape))


@pytest.mark.parametrize("data", ["mnist5k", "mnist", "fashion_mnist", "cifar10", "toy2d"])
def test_data_options_instantiate_without_io(data, tmp_path):
    cfg = compose_train([f"data={data}", f"paths.data_dir={tmp_path}"])
    dm = hydra.utils.instantiate(cfg.data)
    assert dm.image_shape


def test_image_folder_needs_root():
    cfg = compose_train(["data=image_folder", "data.root=/nonexistent"])
    assert cfg.data.root == "/nonexistent"


@pytest.mark.parametrize("trainer", GROUPS["trainer"])
def test_trainer_options_compose(trainer):
    cfg = compose_train([f"trainer={trainer}"])
    assert cfg.trainer._target_.endswith("Trainer")
    assert cfg.trainer.precision in ("32-true", "bf16-mixed", "16-mixed")


@pytest.mark.parametrize("trainer", ["default", "cpu"])
def test_cpu_trainers_instantiate(trainer, tmp_path):
    cfg = compose_train([f"trainer={trainer}", "logger=none"], output_dir=str(tmp_path))
    t = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
    assert t.max_steps == cfg.trainer.max_steps


@pytest.mark.parametrize("logger", GROUPS["logger"])
def test_loggers_instantiate(logger, tmp_path):
    from difflab.build import build_loggers

    cfg = compose_train([f"logger={logger}"], output_dir=str(tmp_path))
    loggers = build_loggers(cfg)
    assert len(loggers) == (0 if logger == "none" else 1)


def test_callbacks_instantiate(tmp_path):
    from difflab.build import build_callbacks

    cfg = compose_train([], output_dir=str(tmp_path))
    names = {type(c).__name__ for c in build_callbacks(cfg)}
    assert {"ModelCheckpoint", "EMA", "SampleGrid", "FID", "StepProgressBar"} <= names


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
def test_experiments_compose(experiment):
    from difflab.build import build_core

    cfg = compose_train([f"experiment={experiment}"])
    build_core(cfg)


def test_cifar10_ddpm_is_the_papers_model():
    from difflab.backbones import count_parameters

    cfg = compose_train(["experiment=cifar10_ddpm"])
    n = count_parameters(hydra.utils.instantiate(cfg.backbone))
    assert abs(n / 35.7e6 - 1) < 0.01, n
    assert cfg.optimizer.lr == 2e-4 and cfg.data.batch_size == 128
    assert cfg.callbacks.ema.decay == 0.9999 and cfg.trainer.max_steps == 800_000
    assert cfg.schedule.name == "linear" and cfg.schedule.num_timesteps == 1000


@pytest.mark.parametrize("debug", sorted(p.stem for p in (ROOT / "conf" / "debug").glob("*.yaml")))
def test_debug_configs_compose(debug):
    compose_train([f"debug={debug}"])


# ----------------------------------------------------------------------------- typos
def test_unknown_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="max_epoch"):
        compose_train(["trainer.max_epoch=1"])


def test_unknown_data_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="batchsize"):
        compose_train(["data.batchsize=3"])


def test_wrong_type_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as e:
        compose_train(["sampler.eta=abc"])
    assert "eta" in str(e.value) or isinstance(e.value.__cause__, (ValidationError, ConfigKeyError))


def test_unknown_option_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="cosin"):
        compose_train(["schedule=cosin"])


@pytest.mark.parametrize(
    "override, expected",
    [
        (["trainer.max_epoch=1"], "max_epoch"),
        (["schedule=cosin"], "cosine"),  # Hydra lists the available options
    ],
)
def test_train_py_typos_exit_nonzero_before_training(override, expected, tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", *override, f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert expected in proc.stderr + proc.stdout
    assert not (tmp_path / "checkpoints").exists()


def test_default_sampler_is_sde_dpm_solver_2m_30_and_ddim_stays_deterministic():
    """The default run samples with SDE-DPM-Solver++ 2M at 30 NFE (benchmarks/README.md, "Sample
    quality against NFE": below DDIM 50 eta 1's FID on the default checkpoint, 40% fewer NFE)."""
    from difflab.samplers import DDIMSampler, DPMSolverSampler
    from difflab.build import build_core

    _, _, default = build_core(compose_train([]))
    _, _, ddim = build_core(compose_train(["sampler=ddim"]))
    _, _, eta1 = build_core(compose_train(["sampler=ddim_eta1"]))
    assert isinstance(default, DPMSolverSampler) and isinstance(ddim, DDIMSampler)
    assert (default.num_steps, default.order, default.algorithm, default.spacing) == (30, 2, "sde-dpmsolver++", "trailing")
    assert default.nfe(1000) == 30 and default.key_part(1000) == "dpmpp2m_sde_nfe30"
    assert (ddim.num_steps, ddim.eta, ddim.spacing) == (50, 0.0, "trailing")
    assert (eta1.num_steps, eta1.eta) == (50, 1.0)


def test_schemas_take_their_defaults_from_the_code():
    """One home per default: the schedule, objective and sampler schemas are read off the
    constructors, so the composed config holds exactly the code's defaults."""
    import inspect

    from difflab.diffusion.objectives import DiffusionObjective
    from difflab.diffusion.schedules import SCHEDULES
    from difflab.samplers import SAMPLERS

    cfg = compose_train([])
    assert cfg.objective.weighting == inspect.signature(DiffusionObjective).parameters["weighting"].default == "min_snr"
    for name, fn in SCHEDULES.items():
        node = compose_train([f"schedule={name}"]).schedule
        for p in list(inspect.signature(fn).parameters.values())[1:]:
            assert node[p.name] == p.default, (name, p.name)
    for name in ("ddpm", "ddim", "dpm_solver", "heun"):
        node = compose_train([f"sampler={name}"]).sampler
        for p in list(inspect.signature(SAMPLERS[name]).parameters.values()):
            if p.name in node and p.name != "num_steps":
                assert node[p.name] == p.default, (name, p.name)
    with pytest.raises(Exception, match="prediction_type"):
        compose_train(["sampler.prediction_type=v"])  # not a sampler option any more


@pytest.mark.parametrize("model", GROUPS["model"])
@pytest.mark.parametrize("first_stage", GROUPS["first_stage"])
def test_model_and_first_stage_options_compose(model, first_stage):
    cfg = compose_train([f"model={model}", f"first_stage={first_stage}"])
    assert cfg.model.name == model and cfg.first_stage.name == first_stage
    # an autoencoder run has its own callbacks: no EMA, sample grid or sample FID
    assert ("rfid" in cfg.callbacks and "ema" not in cfg.callbacks) == (model == "autoencoder")
