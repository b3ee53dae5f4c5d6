"""Export a checkpoint as a diffusers pipeline folder: ``python export.py ckpt=... out=DIR``.

The folder loads with ``diffusers.DiffusionPipeline.from_pretrained(DIR)`` (after
``import difflab`` for a model trained with ``backbone=unet``) and samples like the run:

- ``model_index.json``: ``DDPMPipeline`` or ``DDIMPipeline``, the one of the run's sampler
  (``pipeline=auto``) or the one asked for (``pipeline=ddpm|ddim``);
- ``unet/``: the weights as safetensors (EMA unless ``use_ema=false``) and the config:
  ``UNet2DModel`` for ``backbone=diffusers_unet``, :class:`~difflab.backbones.diffusers_export.
  DifflabUNet2DModel` (library ``difflab``) for difflab's own UNet;
- ``scheduler/``: the exact betas, prediction type, spacing and clipping
  (:func:`difflab.utils.diffusers_interop.scheduler_config`);
- ``README.md``: a model card with the call that reproduces the run's sampler, the run's last
  metrics and its training config.

Only unconditional image models export: the two pipelines draw x_T of the UNet's shape and
call ``unet(x_t, t).sample``; a latent (first-stage) or class-conditional model, or a backbone
that is not a UNet, fails with one line.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from difflab.backbones import DiffusersUNet, UNet
from difflab.errors import CheckpointError, ConfigError, DifflabError
from difflab.samplers import DDIMSampler, DDPMSampler
from difflab.utils.checkpoint import LoadedModel, build_model_from_checkpoint, load_checkpoint, model_from_safetensors
from difflab.utils.diffusers_interop import PIPELINES, PREDICTION_TO_DIFFUSERS, ddim_grid_note, scheduler_config
from difflab.utils.logging import get_logger

log = get_logger(__name__)

__all__ = ["export_pipeline", "last_metrics", "main", "model_card", "pipeline_kind", "run"]

#: what an exported folder holds; a re-export into the same folder replaces exactly these
EXPORTED = ("model_index.json", "unet", "scheduler", "README.md")


def pipeline_kind(sampler: Any, requested: str = "auto") -> str:
    """``ddpm`` or ``ddim``: the pipeline asked for, or (``auto``) the one of the run's sampler
    (``ddim`` for a sampler with no pipeline of its own, e.g. DPM-Solver; the model card says so)."""
    requested = str(requested).lower()
    if requested in PIPELINES:
        return requested
    if requested != "auto":
        raise ConfigError(f"pipeline={requested!r} is not one of {['auto', *PIPELINES]}")
    if isinstance(sampler, DDPMSampler):
        return "ddpm"
    if isinstance(sampler, DDIMSampler):
        return "ddim"
    log.warning("the run's sampler %s has no diffusers pipeline of its own; exporting a DDIMPipeline (pipeline=ddpm "
                "for DDPMPipeline): the weights and the schedule are the run's, the pipeline's sampler is not",
                type(sampler).__name__)
    return "ddim"


def _check_exportable(model: LoadedModel) -> None:
    config = model.config
    for key, what in (("first_stage", "a latent model (first_stage)"), ("conditioning", "a conditional model")):
        node = config.get(key)
        label = f"{node.get('_target_', '')} {node.get('name', '')}" if isinstance(node, dict) else ""
        if isinstance(node, dict) and node.get("_target_") and not re.search(r"\bnone\b|identity|NoConditioning", label, re.I):
            raise ConfigError(
                f"{model.source} is {what}: DDPMPipeline/DDIMPipeline sample an unconditional UNet in pixel space "
                f"and cannot run it; export the weights with difflab.utils.checkpoint.export_safetensors instead"
            )
    backbone = model.backbone
    if not isinstance(backbone, (UNet, DiffusersUNet)):
        raise ConfigError(
            f"{model.source}: backbone {type(backbone).__name__} cannot export to a diffusers pipeline, which needs an "
            "image UNet; train with backbone=unet or backbone=diffusers_unet"
        )
    if len(model.image_shape) != 3:
        raise ConfigError(f"{model.source}: image shape {model.image_shape} is not (C, H, W); only image models export")
    channels = model.image_shape[0]
    unet_channels = (backbone.in_channels, backbone.out_channels if isinstance(backbone, UNet)
                     else backbone.unet.config.out_channels)
    if unet_channels != (channels, channels):
        raise ConfigError(
            f"{model.source}: the backbone maps {unet_channels[0]} to {unet_channels[1]} channels but samples have "
            f"{channels} (a conditioned input?); the pipelines need a UNet from {channels} to {channels} channels"
        )
    if getattr(backbone, "num_classes", None) is not None or (
        isinstance(backbone, DiffusersUNet) and backbone.unet.config.num_class_embeds is not None
    ):
        raise ConfigError(
            f"{model.source}: the backbone is class-conditional; DDPMPipeline/DDIMPipeline are unconditional and "
            "do not pass class labels, so it cannot export"
        )


def _diffusers_unet(model: LoadedModel) -> torch.nn.Module:
    backbone = model.backbone
    if isinstance(backbone, DiffusersUNet):
        return backbone.unet
    from difflab.backbones.diffusers_export import from_unet

    kwargs = dict(model.config["backbone"])
    kwargs.pop("pretrained", None)
    try:
        return from_unet(backbone, kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{model.source}: its UNet cannot be rebuilt as DifflabUNet2DModel ({e})") from None


def last_metrics(ckpt: dict[str, Any]) -> dict[str, float]:
    """The metric values a checkpoint stores: ModelCheckpoint's monitored value (last and best)
    and ``ckpt["difflab"]["metrics"]`` when a run writes one."""
    out: dict[str, float] = {}

    def number(value: Any) -> float | None:
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(float(value)) != float("inf"):
            return float(value)
        return None

    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and isinstance(state, dict) and state.get("monitor"):
            for field, label in (("current_score", "last"), ("best_model_score", "best")):
                value = number(state.get(field))
                if value is not None:
                    out[f"{state['monitor']} ({label})"] = value
    for key, value in ((ckpt.get("difflab") or {}).get("metrics") or {}).items():
        value = number(value)
        if value is not None:
            out[str(key)] = value
    return out


def _call_args(model: LoadedModel, kind: str) -> dict[str, Any]:
    """Keyword arguments of the pipeline call that give the run's sampler."""
    sampler = model.sampler
    T = model.process.num_timesteps
    steps = T if sampler.num_steps is None else int(sampler.num_steps)
    args: dict[str, Any] = {"num_inference_steps": steps}
    if kind == "ddim":
        args["eta"] = float(getattr(sampler, "eta", 0.0))
    return args


def _data_name(config: dict[str, Any]) -> str:
    data = config.get("data") or {}
    name = str(data.get("name") or data.get("_target_", "unknown data").rsplit(".", 1)[-1])
    return name.removesuffix("DataModule") or name


def model_card(
    model: LoadedModel, kind: str, metrics: dict[str, float], notes: list[str], checkpoint: str
) -> str:
    """README.md of an exported folder: use, sampler, metrics, training config."""
    pipeline_class = PIPELINES[kind][0]
    own_unet = isinstance(model.backbone, UNet)
    args = _call_args(model, kind)
    call = ", ".join(f"{k}={v!r}" for k, v in args.items())
    sampler_cfg = model.config.get("sampler", {})
    sampler_name = str(sampler_cfg.get("_target_", type(model.sampler).__name__)).rsplit(".", 1)[-1]
    sampler_desc = ", ".join(f"{k}={v}" for k, v in sampler_cfg.items() if k != "_target_")
    matches = pipeline_kind(model.sampler, "auto") == kind if isinstance(model.sampler, (DDPMSampler, DDIMSampler)) else False
    c, h, w = model.image_shape
    lines = [
        "---",
        "library_name: diffusers",
        "pipeline_tag: unconditional-image-generation",
        "tags:",
        "- difflab",
        f"- diffusers:{pipeline_class}",
        "- unconditional-image-generation",
        "---",
        "",
        f"# difflab diffusion model: {_data_name(model.config)}",
        "",
        f"Exported from `{checkpoint}` (step {model.global_step}) with difflab's `export.py`: "
        f"{'EMA' if model.used_ema else 'raw (non-EMA)'} weights, {c}x{h}x{w} images in [-1, 1], "
        f"T={model.process.num_timesteps}, objective `{model.objective.target}` "
        f"(diffusers `prediction_type={PREDICTION_TO_DIFFUSERS[model.objective.target]}`).",
        "",
        "## Use",
        "",
        "```python",
        "import torch",
    ]
    if own_unet:
        lines.append("import difflab  # registers DifflabUNet2DModel (difflab's UNet) with diffusers")
    lines += [
        "from diffusers import DiffusionPipeline",
        "",
        'pipe = DiffusionPipeline.from_pretrained("PATH/TO/THIS/FOLDER")',
        f"images = pipe(batch_size=16, {call}, generator=torch.Generator().manual_seed(0), output_type=\"np\").images",
        "```",
        "",
    ]
    if own_unet:
        lines += [
            "The UNet is difflab's own (`difflab.backbones.UNet` as a diffusers `ModelMixin`): "
            "`pip install difflab` and `import difflab` before `from_pretrained`.",
            "",
        ]
    lines += ["## Sampler", ""]
    if matches:
        exact = " (up to the note below)" if notes else ""
        lines.append(f"The run sampled with `{sampler_name}` ({sampler_desc}). `{pipeline_class}` with `{call}` is that sampler{exact}")
        if kind == "ddim" and args.get("eta", 0.0) != 0.0:
            lines.append(f"(note `eta={args['eta']}`: the pipeline's default is `eta=0`, deterministic DDIM).")
        elif kind == "ddpm":
            lines.append(f"(note `num_inference_steps={args['num_inference_steps']}`: the pipeline's default is 1000).")
        else:
            lines.append("(`eta=0`, the pipeline's default: deterministic DDIM).")
    else:
        lines.append(
            f"The run sampled with `{sampler_name}` ({sampler_desc}); this folder was exported as `{pipeline_class}`, "
            "whose sampler differs from it."
        )
    lines += [
        "",
        "The scheduler config holds the run's exact betas (`trained_betas`), its timestep spacing and its clipping "
        "of x_0; `rescale_betas_zero_snr` is false because the betas are final.",
    ]
    for note in notes:
        lines += ["", f"Note: {note}."]
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.6g} |" for k, v in metrics.items()]
    else:
        lines.append("The checkpoint stores no metrics.")
    config_yaml = OmegaConf.to_yaml(OmegaConf.create(model.config)).rstrip()
    lines += ["", "## Training config", "", "```yaml", config_yaml, "```", ""]
    return "\n".join(lines)


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file; give a folder for the pipeline")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "model_index.json").is_file():
            raise ConfigError(
                f"out={out} is a non-empty folder that holds no exported pipeline; give a new or empty folder"
            )
        for name in EXPORTED:  # a re-export: replace the previous one, keep anything else
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _load(ckpt_path: str, use_ema: bool) -> tuple[LoadedModel, dict[str, float]]:
    path = Path(ckpt_path).expanduser()
    if path.suffix == ".safetensors":
        return model_from_safetensors(path), {}
    ckpt = load_checkpoint(path)
    model = build_model_from_checkpoint(ckpt, use_ema=use_ema, source=f"checkpoint {path}")
    return model, last_metrics(ckpt)


def export_pipeline(
    ckpt: str | Path, out: str | Path, use_ema: bool = True, pipeline: str = "auto"
) -> Path:
    """Write the diffusers pipeline folder of checkpoint ``ckpt`` to ``out``; returns ``out``.

    ``ckpt`` is a ``.ckpt`` written by train.py or a ``.safetensors`` file written by
    :func:`~difflab.utils.checkpoint.export_safetensors`. A checkpoint without EMA weights
    exports its raw weights (with a warning) when ``use_ema``.
    """
    import diffusers

    model, metrics = _load(str(ckpt), bool(use_ema))
    if use_ema and not model.used_ema:
        log.warning("%s has no EMA weights; exporting the raw weights", ckpt)
    _check_exportable(model)
    kind = pipeline_kind(model.sampler, pipeline)
    pipeline_name, scheduler_name = PIPELINES[kind]

    notes: list[str] = []
    if kind == "ddim":
        note = ddim_grid_note(model.sampler, model.process.num_timesteps)
        if note:
            log.warning("%s", note)
            notes.append(note)
    unet = _diffusers_unet(model).eval()
    if any(p.dtype != torch.float32 for p in unet.parameters()):
        torch.nn.Module.float(unet)  # e.g. bf16-true weights; diffusers pipelines run float32 by default
    scheduler_cls = getattr(diffusers, scheduler_name)
    scheduler = scheduler_cls.from_config(
        scheduler_config(model.process, model.objective.target, model.sampler, kind)
    )
    pipe = getattr(diffusers, pipeline_name)(unet=unet, scheduler=scheduler)

    out = Path(str(out)).expanduser()
    _prepare_out(out)
    pipe.save_pretrained(str(out), safe_serialization=True)
    if isinstance(model.backbone, UNet):
        # save_pretrained names the defining module; name the package, which resolves the class lazily
        index_path = out / "model_index.json"
        index = json.loads(index_path.read_text())
        index["unet"] = ["difflab", "DifflabUNet2DModel"]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text(model_card(model, kind, metrics, notes, str(ckpt)))
    log.info(
        "exported %s (%s weights, step %s) as %s to %s", ckpt, "EMA" if model.used_ema else "raw",
        model.global_step, pipeline_name, out,
    )
    return out


def push_folder(out: Path, repo_id: str) -> str:
    """Upload an exported folder to the Hugging Face Hub as model repo ``repo_id``; one-line errors."""
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        api.upload_folder(folder_path=str(out), repo_id=repo_id, repo_type="model")
    except Exception as e:  # network, auth, quota: all end the same way for the user
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise DifflabError(
            f"push_to_hub to {repo_id} failed ({type(e).__name__}: {reason}); the folder {out} is written: "
            f"upload it later with `huggingface-cli upload {repo_id} {out}` (after `huggingface-cli login`)"
        ) from None
    return f"https://huggingface.co/{repo_id}"


def run(cfg: DictConfig) -> Path:
    """``export.py``: validate the config, export, and push when ``push_to_hub``."""
    for key in ("ckpt", "out"):
        if OmegaConf.is_missing(cfg, key) or not cfg.get(key):
            raise ConfigError(f"{key} is required: python export.py ckpt=<run dir>/checkpoints/last.ckpt out=<folder>")
    push = cfg.get("push_to_hub", False)
    if not isinstance(push, bool):
        raise ConfigError(f"push_to_hub must be true or false, got {push!r}")
    repo_id = cfg.get("repo_id")
    if push and not repo_id:
        raise ConfigError("push_to_hub=true needs repo_id=<user>/<name>")
    use_ema = cfg.get("use_ema", True)
    if not isinstance(use_ema, bool):
        raise ConfigError(f"use_ema must be true or false, got {use_ema!r}")
    pipeline = str(cfg.get("pipeline", "auto")).lower()
    if pipeline not in ("auto", *PIPELINES):
        raise ConfigError(f"pipeline={pipeline!r} is not one of {['auto', *PIPELINES]}")

    out = export_pipeline(str(cfg.ckpt), str(cfg.out), use_ema=use_ema, pipeline=pipeline)
    if push:
        url = push_folder(out, str(repo_id))
        log.info("pushed %s to %s", out, url)
    return out


def main(cfg: DictConfig) -> Path:
    """Entry point behind ``export.py``: input errors exit with one line (code 2), not a traceback."""
    try:
        return run(cfg)
    except DifflabError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
