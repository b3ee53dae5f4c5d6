"""Every "config -> object" function: core, module, data, callbacks, loggers, trainer.

train.py, sample.py, checkpoint loading, the benchmarks and the tests build through here, so
an object is made one way, and a bad value fails in one line naming its config key:

    process, objective, sampler = build_core(cfg)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule.image_shape)
    callbacks, loggers = build_callbacks(cfg), build_loggers(cfg)
    trainer = build_trainer(cfg, callbacks, loggers)
"""

from __future__ import annotations

import math
import os
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from difflab.errors import ConfigError, DifflabError
from difflab.module import DiffusionModule
from difflab.utils.logging import get_logger
from difflab.utils.validation import key_message

log = get_logger(__name__)

__all__ = [
    "build_callbacks",
    "build_autoencoder_module",
    "build_backbone",
    "build_conditioning",
    "build_core",
    "build_datamodule",
    "build_first_stage",
    "build_loggers",
    "build_module",
    "build_sampler",
    "build_trainer",
    "check_backbone",
    "settle_num_classes",
    "instantiate",
]


def instantiate(node: Any, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with the config key named in the error (one line)."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except hydra.errors.InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, (ValueError, TypeError, DifflabError)):
            raise ConfigError(key_message(key, cause, node)) from None
        raise


def build_sampler(node: Any, num_timesteps: int, key: str = "sampler") -> Any:
    """A sampler from its config node, checked against T (a bad num_steps fails now)."""
    if isinstance(node, (dict, DictConfig)):
        node = OmegaConf.create(node) if isinstance(node, dict) else node
        if "prediction_type" in node:  # configs written before it left the sampler group
            node = OmegaConf.create({k: v for k, v in OmegaConf.to_container(node).items() if k != "prediction_type"})
    sampler = instantiate(node, key)
    try:
        sampler.steps(num_timesteps)
    except ValueError as e:
        raise ConfigError(f"{key_message(key, e, node)} (schedule.num_timesteps={num_timesteps})") from None
    return sampler


def build_core(cfg: DictConfig, betas: torch.Tensor | None = None, strict: bool = True):
    """(process, objective, sampler) from ``cfg.schedule``, ``cfg.objective``, ``cfg.sampler``.

    ``betas`` (a checkpoint's) build the process instead of the schedule config: a model samples
    with the schedule it was trained with, whatever later code makes of its config. A schedule
    config that gives other betas is reported in one line (an error when ``strict``, else a
    warning: the stored config of an old checkpoint under changed schedule code).
    """
    process = instantiate(cfg.schedule, "schedule")
    if betas is not None:
        from difflab.diffusion.process import GaussianDiffusion

        stored = torch.as_tensor(betas, dtype=torch.float64)
        if stored.shape != process.betas.shape or not torch.allclose(stored, process.betas.double(), rtol=1e-12, atol=0):
            message = (
                f"schedule: the config ({OmegaConf.to_container(cfg.schedule)}) gives other betas than the "
                f"checkpoint stores (T={stored.numel()}); the model samples with the stored ones"
            )
            if strict:
                raise ConfigError(f"{message}: drop the schedule override")
            log.warning(message)
        process = GaussianDiffusion(stored)
    objective = instantiate(cfg.objective, "objective")
    sampler = build_sampler(cfg.sampler, process.num_timesteps)
    if float(process.alphas_cumprod[-1]) == 0.0 and objective.target == "eps":
        raise ConfigError(
            "schedule.zero_terminal_snr=true needs objective=v or objective=x0: with eps-prediction x0 is "
            "undefined at the last timestep (Lin et al. 2023, sec. 3.2)"
        )
    return process, objective, sampler


def check_backbone(backbone: torch.nn.Module, image_shape: tuple[int, ...], key: str = "backbone") -> None:
    """Call the backbone once on a dummy batch of the data's shape: mismatches stop the run now."""
    x = torch.zeros(2, *image_shape)
    t = torch.zeros(2, dtype=torch.long)
    try:
        with torch.no_grad():
            out = backbone(x, t, torch.zeros_like(x)) if getattr(backbone, "takes_image_condition", False) else backbone(x, t)
    except (ValueError, RuntimeError, IndexError) as e:
        if len(image_shape) == 1:
            fix = "2-D (point) data need backbone=mlp"
        elif hasattr(backbone, "image_size") or hasattr(backbone, "in_channels"):
            fix = "set the backbone's in_channels / image_size to the data's, or change data.image_size / data.channels"
        else:
            fix = "this backbone does not take images: use backbone=unet or backbone=diffusers_unet"
        raise ConfigError(f"{key} cannot take data of shape {tuple(image_shape)}: {e}. {fix}") from None
    if out.shape != x.shape:
        raise ConfigError(f"{key} maps {tuple(x.shape)} to {tuple(out.shape)}; it must keep the shape")


def build_module(cfg: DictConfig, image_shape: tuple[int, ...], config_dict: dict | None = None) -> DiffusionModule:
    """The DiffusionModule; the optimizer is built once here, so a bad optimizer argument
    fails before any logger starts.

    ``model=autoencoder`` gives the :class:`~difflab.autoencoder.AutoencoderModule` instead; a
    ``first_stage`` gives a :class:`~difflab.latent.LatentDiffusionModule` whose backbone is
    sized for the latent shape (``image_shape`` is the data's; the module samples latents)."""
    if model_name(cfg) == "autoencoder":
        return build_autoencoder_module(cfg, image_shape, config_dict)
    first_stage = build_first_stage(cfg, image_shape)
    process, objective, sampler = build_core(cfg)
    if cfg.backbone.get("pretrained"):  # a diffusers folder: its schedule must be the run's
        from difflab.utils.diffusers_interop import check_pretrained_schedule

        check_pretrained_schedule(cfg.backbone.pretrained, process, objective.target)
    conditioning = build_conditioning(cfg)
    backbone_kwargs = {}
    num_classes = settle_num_classes(cfg, conditioning, config_dict)
    if num_classes is not None:
        backbone_kwargs["num_classes"] = num_classes
    if first_stage is not None:  # the backbone takes latents: channels and size follow them
        if is_low_res(conditioning):
            raise ConfigError("conditioning=low_res (super-resolution) runs on pixels; drop the first_stage override")
        image_shape = latent_backbone_kwargs(cfg, first_stage.latent_shape, backbone_kwargs, config_dict)
    if is_low_res(conditioning):
        try:
            conditioning.check_shape(image_shape)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    backbone = build_backbone(cfg.backbone, conditioning, **backbone_kwargs)
    check_backbone(backbone, image_shape)
    optimizer = instantiate(cfg.optimizer, "optimizer")
    lr = cfg.optimizer.get("lr")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"optimizer.lr must be a positive number, got {lr}")
    try:
        optimizer([torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError) as e:
        raise ConfigError(key_message("optimizer", e, cfg.optimizer)) from None
    check_schedule_length(cfg)
    latent_kwargs: dict[str, Any] = {}
    module_cls: type[DiffusionModule] = DiffusionModule
    if first_stage is not None:
        from difflab.latent import LatentDiffusionModule

        module_cls = LatentDiffusionModule  # its sampler clips x_0 to the latents' range once it is known
        latent_kwargs = {"first_stage": first_stage, "sample_posterior": bool(cfg.first_stage.get("sample_posterior", True)),
                         "clip_latents": bool(cfg.first_stage.get("clip_latents", True))}
    module = module_cls(
        backbone=backbone,
        process=process,
        objective=objective,
        sampler=sampler,
        optimizer=optimizer,
        lr_warmup_steps=cfg.lr_warmup_steps,
        lr_scheduler=instantiate(cfg.lr_scheduler, "lr_scheduler") if cfg.get("lr_scheduler") is not None else None,
        seed=cfg.seed,
        val_seed=cfg.val_seed,
        max_consecutive_nonfinite=cfg.max_consecutive_nonfinite,
        channels_last=cfg.channels_last,
        image_shape=image_shape,
        config=config_dict,
        conditioning=conditioning if conditioning.num_classes is not None or is_low_res(conditioning) else None,
        **latent_kwargs,
    )
    if cfg.get("compile"):
        # in place: the state-dict keys stay those of the plain backbone, so checkpoints of
        # compiled and plain runs load into each other
        module.backbone.compile()
    return module


def check_schedule_length(cfg: DictConfig) -> None:
    """A decaying LR schedule needs the run's length: ``trainer.max_steps`` (or epochs), or its own
    ``lr_scheduler.total_steps``. A time budget alone (``trainer.max_steps=-1
    +trainer.max_time=...``) gives none, so it stops here in one line, before any logger starts."""
    node = cfg.get("lr_scheduler")
    if node is None or str(node.get("name", "constant")) == "constant" or node.get("total_steps") is not None:
        return
    trainer = cfg.get("trainer") or {}
    steps, epochs = trainer.get("max_steps", -1), trainer.get("max_epochs")
    if (steps is None or int(steps) < 0) and (epochs is None or int(epochs) < 0):
        raise ConfigError(
            f"lr_scheduler={node.get('name')} decays over the run's length, but trainer.max_steps={steps} and "
            f"trainer.max_epochs={epochs} give none (a time budget?); set lr_scheduler.total_steps=N (the steps you "
            "expect), trainer.max_steps=N, or lr_scheduler=constant"
        )


def is_low_res(conditioning: Any) -> bool:
    """Whether ``conditioning`` is super-resolution (``conditioning=low_res``, SR3)."""
    from difflab.conditioning import LowResConditioning

    return isinstance(conditioning, LowResConditioning)


def build_backbone(node: Any, conditioning: Any = None, **kwargs: Any) -> torch.nn.Module:
    """The backbone of ``node`` (``cfg.backbone``); for ``conditioning=low_res`` it is built with
    twice the data's channels in and the data's channels out, behind
    :class:`~difflab.backbones.concat.ConcatConditioned` (SR3: the upsampled low-res image is
    concatenated to x_t). Training and checkpoint loading both build it here."""
    if not is_low_res(conditioning):
        return instantiate(node, "backbone", **kwargs)
    from difflab.backbones.concat import ConcatConditioned

    channels = kwargs.get("in_channels", node.get("in_channels"))
    if channels is None:
        raise ConfigError("conditioning=low_res needs an image backbone with in_channels (backbone=unet or diffusers_unet)")
    if node.get("pretrained"):
        raise ConfigError("conditioning=low_res takes 2x the data's channels in; backbone.pretrained weights do not fit it")
    kwargs = {**kwargs, "in_channels": 2 * int(channels), "out_channels": int(channels)}
    return ConcatConditioned(instantiate(node, "backbone", **kwargs), int(channels))


def settle_num_classes(cfg: Any, conditioning: Any, config_dict: dict[str, Any] | None = None) -> int | None:
    """The class count of ``conditioning=class`` (None without it), written into
    ``cfg.backbone.num_classes`` and ``config_dict`` (the stored config) as the run records it:
    checkpoints rebuild the class embedding from it, and a resume compares the backbone with it.
    A ConfigError when ``backbone.num_classes`` says another count."""
    if conditioning.num_classes is None:
        if cfg.backbone.get("num_classes") is not None:
            log.warning(
                "backbone.num_classes=%s without conditioning=class: every batch is trained with its labels (no label "
                "dropout), so the null label that guidance needs stays untrained; use conditioning=class",
                cfg.backbone.num_classes,
            )
        return None
    given = cfg.backbone.get("num_classes")
    if given is not None and given != conditioning.num_classes:
        raise ConfigError(
            f"backbone.num_classes={given} but conditioning=class takes num_classes={conditioning.num_classes} "
            "from the data set; drop the backbone.num_classes override"
        )
    with open_dict(cfg):
        cfg.backbone.num_classes = conditioning.num_classes
    if config_dict is not None and isinstance(config_dict.get("backbone"), dict):
        config_dict["backbone"]["num_classes"] = conditioning.num_classes
    return int(conditioning.num_classes)


def build_conditioning(cfg: DictConfig) -> Any:
    """``cfg.conditioning`` (``NoConditioning`` when absent, e.g. in an older checkpoint's config)."""
    from difflab.conditioning import NoConditioning

    node = cfg.get("conditioning")
    if node is None:
        return NoConditioning()
    return instantiate(node, "conditioning")


def model_name(cfg: Any) -> str:
    """``cfg.model.name``: ``diffusion`` (also when absent, e.g. an older checkpoint's config) or ``autoencoder``."""
    node = cfg.get("model") if hasattr(cfg, "get") else None
    name = str((node or {}).get("name", "diffusion"))
    if name not in ("diffusion", "autoencoder"):
        raise ConfigError(f"model={name!r} is not a model; accepted: diffusion, autoencoder")
    return name


def build_first_stage(cfg: Any, image_shape: tuple[int, ...]) -> Any:
    """The :class:`~difflab.first_stage.FirstStage` of ``cfg.first_stage``, or None for pixels
    (``first_stage=none``, or no first_stage in an older checkpoint's config)."""
    node = cfg.get("first_stage")
    if node is None or not node.get("_target_") or str(node.get("name", "")).lower() == "none":
        return None
    if model_name(cfg) == "autoencoder":
        raise ConfigError("model=autoencoder trains a first stage on pixels; drop the first_stage override")
    if len(tuple(image_shape)) != 3:
        raise ConfigError(f"first_stage={node.get('name')} needs image data (C, H, W), the data have shape {tuple(image_shape)}")
    args = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in ("name", "sample_posterior", "clip_latents")}
    return instantiate(OmegaConf.create(args), "first_stage", image_shape=list(image_shape))


def latent_backbone_kwargs(cfg: DictConfig, latent_shape: tuple[int, ...], kwargs: dict[str, Any],
                           config_dict: dict | None) -> tuple[int, ...]:
    """Set the backbone's channels and size to the latent's (in ``kwargs``, in the run's config and
    in the stored one, so that checkpoints rebuild it); returns the latent shape."""
    c, h, w = (int(s) for s in latent_shape)
    node = cfg.backbone
    sizes = {"in_channels": c}
    if node.get("out_channels") is not None:
        sizes["out_channels"] = c
    for key in ("image_size", "sample_size"):
        if key in node:
            sizes[key] = h if h == w else [h, w]
    kwargs.update(sizes)
    with open_dict(cfg):  # a resume compares the backbone with this config
        for key, value in sizes.items():
            cfg.backbone[key] = value
    if config_dict is not None and isinstance(config_dict.get("backbone"), dict):
        config_dict["backbone"].update(sizes)
    return (c, h, w)


def build_autoencoder_module(cfg: DictConfig, image_shape: tuple[int, ...], config_dict: dict | None = None) -> Any:
    """The :class:`~difflab.autoencoder.AutoencoderModule` of ``model=autoencoder`` (an AutoencoderKL
    sized from ``cfg.model.autoencoder``, its input channels the data's)."""
    from difflab.autoencoder import AutoencoderModule, PatchDiscriminator
    from difflab.first_stage import build_autoencoder_kl

    if len(tuple(image_shape)) != 3:
        raise ConfigError(f"model=autoencoder needs image data (C, H, W), the data have shape {tuple(image_shape)}")
    node = cfg.model
    try:
        vae = build_autoencoder_kl(in_channels=int(image_shape[0]), **OmegaConf.to_container(node.autoencoder, resolve=True))
        disc = node.get("discriminator") or {}
        discriminator = None
        if float(node.get("gan_weight", 0.0)) > 0:
            discriminator = PatchDiscriminator(int(image_shape[0]), int(disc.get("channels", 32)), int(disc.get("num_layers", 2)))
        optimizer = instantiate(cfg.optimizer, "optimizer")
        optimizer([torch.nn.Parameter(torch.zeros(1))])
        module = AutoencoderModule(
            vae=vae, optimizer=optimizer, image_shape=image_shape, latent_multiple=int(node.get("latent_multiple", 1)),
            loss=str(node.get("loss", "l1")), kl_weight=float(node.get("kl_weight", 1e-6)),
            gan_weight=float(node.get("gan_weight", 0.0)), gan_start_step=int(node.get("gan_start_step", 0)),
            discriminator=discriminator, lr_warmup_steps=cfg.lr_warmup_steps,
            lr_scheduler=instantiate(cfg.lr_scheduler, "lr_scheduler") if cfg.get("lr_scheduler") is not None else None,
            seed=cfg.seed, config=config_dict, max_consecutive_nonfinite=cfg.max_consecutive_nonfinite,
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model: {' '.join(str(e).split())}") from None
    return module


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The data module, with its data read and checked (a missing folder, a corrupt image,
    an offline download fail here, before any logger starts). With a ``first_stage`` it is
    wrapped in a :class:`~difflab.data.latent.LatentDataModule` (latents encoded once, cached)."""
    dm = instantiate(cfg.data, "data")
    first_stage = build_first_stage(cfg, tuple(dm.image_shape)) if cfg.get("first_stage") is not None else None
    if first_stage is not None:
        from difflab.data.latent import LatentDataModule

        cache = (cfg.get("paths") or {}).get("cache_dir")
        dm = LatentDataModule(dm, first_stage, cache_dir=cache)
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return dm  # other ranks set up after rank 0's prepare_data, inside fit
    try:
        dm.prepare_data()
        dm.setup("fit")
    except DifflabError:
        raise
    except (ValueError, OSError, RuntimeError) as e:
        raise ConfigError(f"data: {' '.join(str(e).split())}") from None
    return dm


def _group(node: DictConfig | None, key: str) -> list[Any]:
    out = []
    for name, sub in (node or {}).items():
        if isinstance(sub, DictConfig) and "_target_" in sub:
            out.append(instantiate(sub, f"{key}.{name}"))
    return out


def build_callbacks(cfg: DictConfig) -> list[Any]:
    callbacks = _group(cfg.get("callbacks"), "callbacks")
    if not cfg.trainer.get("enable_progress_bar", True):  # trainer.enable_progress_bar=false wins
        from lightning.pytorch.callbacks import ProgressBar

        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    _check_emas(callbacks)
    return callbacks


def _check_emas(callbacks: list[Any]) -> None:
    """One unnamed EMA at most (its weights serve sampling), and distinct names for the others:
    each is saved in the checkpoint under its name."""
    from difflab.callbacks.ema import EMA

    names = [c.name for c in callbacks if isinstance(c, EMA)]
    doubled = [n for i, n in enumerate(names) if names.count(n) > 1 and names.index(n) == i]
    if doubled:
        what = ", ".join("the unnamed EMA" if d is None else f"name={d!r}" for d in doubled)
        raise ConfigError(f"callbacks: two EMA callbacks share {what}; give each further EMA its own "
                          "name (callbacks.<key>.name=...), the run's own EMA has none")


def build_loggers(cfg: DictConfig) -> list[Any]:
    return _group(cfg.get("logger"), "logger")


def build_trainer(cfg: DictConfig, callbacks: list[Any], loggers: list[Any]) -> L.Trainer:
    accelerator = str(cfg.trainer.get("accelerator", "auto")).lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError("no CUDA device found; use trainer=cpu or trainer=default")
    steps = val_check_batches(cfg.trainer.get("val_check_interval"), cfg.trainer.get("accumulate_grad_batches", 1))
    trainer: L.Trainer = instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, val_check_interval=steps)
    _share_cpu_threads(trainer)
    return trainer


def val_check_batches(val_check_interval: Any, accumulate_grad_batches: Any = 1) -> Any:
    """``trainer.val_check_interval`` counts optimizer steps; Lightning counts training batches,
    so an integer interval is multiplied by ``accumulate_grad_batches`` (a fraction of an
    epoch or null passes through)."""
    if isinstance(val_check_interval, int) and not isinstance(val_check_interval, bool):
        return val_check_interval * int(accumulate_grad_batches or 1)
    return val_check_interval


def _share_cpu_threads(trainer: L.Trainer) -> None:
    """Several CPU processes of one run (DDP on CPU) split the cores instead of each taking all:
    oversubscribed OpenMP threads make small ops hundreds of times slower."""
    from lightning.pytorch.accelerators import CPUAccelerator

    if isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // trainer.num_devices))
