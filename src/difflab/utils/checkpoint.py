"""Load training checkpoints safely and rebuild the model they hold; export weights to safetensors.

``torch.load`` runs with ``weights_only=True``: a checkpoint that holds arbitrary Python
objects (unpickling those can run code) is refused. difflab checkpoints hold tensors and plain
containers only (the module stores the resolved config as a plain dict), so they always load.

Every failure is a :class:`~difflab.errors.CheckpointError` with one line that names the file
and says what to do: a missing or unreadable file, an unsafe one, one that was not written by
``train.py``, or weights that do not fit the backbone its config describes.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from difflab.diffusion.objectives import DiffusionObjective
from difflab.diffusion.process import GaussianDiffusion
from difflab.errors import CheckpointError, DifflabError
from difflab.samplers.base import Sampler
from difflab.utils.logging import get_logger

log = get_logger(__name__)

__all__ = [
    "InitFrom",
    "LoadedModel",
    "build_model_from_checkpoint",
    "check_same_model",
    "checkpoint_config",
    "ema_names",
    "ema_state_from_checkpoint",
    "export_safetensors",
    "init_weights_from",
    "load_checkpoint",
    "load_model",
    "load_safetensors",
    "load_state_into",
    "model_from_safetensors",
]

CKPT_HINT = "give the path of a .ckpt file, e.g. <run dir>/checkpoints/last.ckpt"
#: Keys of a difflab checkpoint that hold the backbone: EMA copy and the LightningModule's weights.
BACKBONE_PREFIX = "backbone."
_COMPILED_PREFIX = "_orig_mod."
#: Where the EMA callback's state (and its backbone weights) sits in ``checkpoint["callbacks"]``.
EMA_STATE_KEY = "EMA"
_MAX_LISTED = 5
_UNSAFE = re.compile(r"Unsupported global|not an allowed global|unrecognized function|Unsupported class", re.IGNORECASE)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line errors."""
    path = Path(path).expanduser()
    if path.is_dir():
        last = path / "checkpoints" / "last.ckpt"
        hint = f"; did you mean {last}?" if last.is_file() else f"; {CKPT_HINT}"
        raise CheckpointError(f"checkpoint {path} is a directory, not a file{hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file; {CKPT_HINT}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        message = str(e)
        if _UNSAFE.search(message):  # objects the safe unpickler refuses (not a damaged file)
            reason = _unpickler_reason(message)
            raise CheckpointError(
                f"checkpoint {path} was refused for safety: it holds Python objects other than tensors and "
                f"plain containers ({reason}), and unpickling those can run arbitrary code. Checkpoints written "
                "by train.py hold plain data only: use one of those (e.g. the run's checkpoints/last.ckpt), "
                "or ask the file's author for a .safetensors export"
            ) from None
        reason = _unpickler_reason(message) if "WeightsUnpickler" in message else _short(e)
        raise CheckpointError(f"checkpoint {path} cannot be read ({reason}); the file is damaged or not a checkpoint") from None
    except (RuntimeError, EOFError, KeyError, OSError, ValueError, IndexError, AttributeError) as e:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({_short(e)}); the file is truncated, damaged or not a PyTorch "
            "checkpoint. Use another one, e.g. the previous step_*.ckpt of the run"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a checkpoint dict; {CKPT_HINT}")
    return ckpt


def _unpickler_reason(message: str) -> str:
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", message, re.DOTALL)
    reason = (m.group(1) if m else "an object the safe unpickler does not allow").strip()
    return " ".join(reason.split())[:160]


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    text = text.split(". This is an internal")[0]
    # never pass on torch's advice to load with weights_only=False
    text = ". ".join(s for s in text.split(". ") if "weights_only" not in s) or type(e).__name__
    return f"{type(e).__name__}: {text[:200]}"


# --------------------------------------------------------------------------- rebuilding the model
@dataclass
class LoadedModel:
    """What a checkpoint holds, rebuilt: the evaluation backbone and the parts it samples with."""

    backbone: nn.Module
    process: GaussianDiffusion
    objective: DiffusionObjective
    sampler: Sampler
    image_shape: tuple[int, ...]
    config: dict[str, Any]
    used_ema: bool
    global_step: int | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    ema_name: str | None = None  # which further EMA (a named EMA callback) the weights are; None: the run's own
    low_res: Any = None  # a super-resolution checkpoint's LowResConditioning (conditioning=low_res), built once here


def checkpoint_config(ckpt: dict[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """The resolved train config stored in ``ckpt["hyper_parameters"]["config"]``."""
    config = (ckpt.get("hyper_parameters") or {}).get("config")
    if not isinstance(config, dict) or not config:
        raise CheckpointError(
            f"{source} has no training config (hyper_parameters.config); it was not written by difflab's "
            "train.py; give the .ckpt of a difflab run, e.g. <run dir>/checkpoints/last.ckpt"
        )
    missing = [k for k in ("schedule", "objective", "sampler", "backbone") if k not in config]
    if missing:
        raise CheckpointError(f"{source}: its stored config lacks {missing}; it was not written by difflab's train.py")
    return config


def _strip_compiled(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop torch.compile's ``_orig_mod.`` prefix (a run with compile=true stores it)."""
    return {k.replace(_COMPILED_PREFIX, ""): v for k, v in state.items()}


def ema_state_from_checkpoint(checkpoint: dict[str, Any], name: str | None = None) -> dict[str, torch.Tensor] | None:
    """The EMA backbone weights stored in a checkpoint dict (the run's own EMA, or the further EMA
    called ``name``), or None if it has none."""
    key = EMA_STATE_KEY if name is None else f"{EMA_STATE_KEY}:{name}"
    state = (checkpoint.get("callbacks") or {}).get(key)
    return state.get("state_dict") if state else None


def ema_names(checkpoint: dict[str, Any]) -> list[str]:
    """The names of the further EMAs a checkpoint holds (named EMA callbacks)."""
    prefix = f"{EMA_STATE_KEY}:"
    return sorted(k[len(prefix):] for k, v in (checkpoint.get("callbacks") or {}).items() if k.startswith(prefix) and v)


def _flat(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}.{k}"))
        return out
    return {prefix: node}


#: The config values that define a model: a checkpoint resumes only into the same ones.
MODEL_KEYS = ("backbone", "schedule", "objective.target")


def check_same_model(ckpt: dict[str, Any], cfg: Any, source: str) -> None:
    """A CheckpointError naming the config values that differ between the checkpoint's stored
    config and this run's, for the values that define the model (:data:`MODEL_KEYS`)."""
    stored = checkpoint_config(ckpt, source)
    current = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    diffs = []
    for key in MODEL_KEYS:
        head, _, tail = key.partition(".")
        a, b = stored.get(head, {}), current.get(head, {})
        if tail:
            a, b = {tail: (a or {}).get(tail)}, {tail: (b or {}).get(tail)}
        fa, fb = _flat(a, head), _flat(b, head)
        for k in sorted(set(fa) | set(fb)):
            if fa.get(k) != fb.get(k):
                diffs.append(f"{k}={fb.get(k)!r} here, {fa.get(k)!r} in the checkpoint")
    # model=autoencoder vs diffusion, pixels vs a first stage (older configs: a pixel diffusion model);
    # which autoencoder: its fingerprint, checked when the checkpoint loads (difflab.latent)
    for key, default in (("model.name", "diffusion"), ("first_stage._target_", None)):
        head, _, tail = key.partition(".")
        a, b = ((c.get(head) or {}).get(tail, default) for c in (stored, current))
        if a != b:
            diffs.append(f"{key}={b!r} here, {a!r} in the checkpoint")
    if diffs:
        more = f" and {len(diffs) - _MAX_LISTED} more" if len(diffs) > _MAX_LISTED else ""
        raise CheckpointError(
            f"{source} holds another model than this run configures: {'; '.join(diffs[:_MAX_LISTED])}{more}. "
            "Resume with the checkpoint's values, or start a new run dir"
        )


def _backbone_state(ckpt: dict[str, Any], use_ema: bool, ema: str | None = None,
                    source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], bool]:
    if ema is not None:  # a further EMA, asked for by name: there is no fallback to other weights
        state = ema_state_from_checkpoint(ckpt, ema)
        if not state:
            names = ema_names(ckpt)
            have = f"it holds {', '.join(repr(n) for n in names)}" if names else "it holds no named EMA"
            raise CheckpointError(f"{source} has no EMA named {ema!r} ({have}); train with an EMA callback of that name, "
                                  "or leave ema unset for the run's own EMA")
        return _strip_compiled(state), True
    if use_ema:
        ema = ema_state_from_checkpoint(ckpt)
        if ema:
            return _strip_compiled(ema), True
    raw = ckpt.get("state_dict") or {}
    state = {k[len(BACKBONE_PREFIX) :]: v for k, v in raw.items() if k.startswith(BACKBONE_PREFIX)}
    return _strip_compiled(state), False


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, fix: str) -> None:
    """``model.load_state_dict(state)``, or a CheckpointError listing the keys and shapes that differ."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
                parts.append(f"{len(items)} {label} ({'; '.join(items[:_MAX_LISTED])}{more})")
        raise CheckpointError(
            f"{source}: the weights do not fit the backbone its config describes: {', '.join(parts)}. {fix}"
        )
    model.load_state_dict(state)


def _build_parts(config: dict[str, Any], source: str, betas: torch.Tensor | None = None) -> tuple[GaussianDiffusion, DiffusionObjective, Sampler, nn.Module, Any]:
    """(process, objective, sampler, backbone, the low-res conditioning of a super-resolution
    checkpoint or None)."""
    from difflab.build import build_backbone, build_conditioning, build_core

    cfg = OmegaConf.create({k: config[k] for k in ("schedule", "objective", "sampler", "backbone")})
    try:
        process, objective, sampler = build_core(cfg, betas=betas, strict=False)
        # only super-resolution changes how the backbone is built (2C channels in, behind
        # ConcatConditioned); class labels live in the backbone config already
        node = config.get("conditioning")
        low_res = isinstance(node, dict) and str(node.get("_target_", "")).endswith(".LowResConditioning")
        conditioning = build_conditioning(OmegaConf.create({"conditioning": node})) if low_res else None
        backbone = build_backbone(cfg.backbone, conditioning)
    except DifflabError as e:
        raise CheckpointError(f"{source}: its stored config no longer builds: {e}") from None
    return process, objective, sampler, backbone, conditioning


def _image_shape(ckpt: dict[str, Any], config: dict[str, Any]) -> tuple[int, ...]:
    shape = (ckpt.get("difflab") or {}).get("image_shape")
    if shape:
        return tuple(int(s) for s in shape)
    if "data" in config:  # older checkpoints: ask the data module (its constructor does no I/O)
        import hydra

        return tuple(int(s) for s in hydra.utils.instantiate(config["data"]).image_shape)
    raise CheckpointError("the checkpoint stores no image shape (difflab.image_shape) and no data config")


def build_model_from_checkpoint(ckpt: dict[str, Any], use_ema: bool = True, source: str = "checkpoint",
                                ema: str | None = None) -> LoadedModel:
    """Rebuild process, objective, sampler and backbone from the checkpoint's stored config.

    The backbone gets the EMA weights (``checkpoint["callbacks"]["EMA"]["state_dict"]``) when
    ``use_ema`` and the checkpoint has them, else the raw ``backbone.*`` weights of
    ``state_dict``; ``LoadedModel.used_ema`` says which. ``ema`` names a further EMA the run
    kept (a named EMA callback, ``checkpoint["callbacks"]["EMA:<name>"]``): its weights, or a
    CheckpointError naming the EMAs the file has. The backbone is returned in eval mode on the CPU.
    """
    config = checkpoint_config(ckpt, source)
    betas = (ckpt.get("state_dict") or {}).get("process.betas")  # the schedule it was trained with
    process, objective, sampler, backbone, low_res = _build_parts(config, source, betas)
    state, used_ema = _backbone_state(ckpt, use_ema, ema, source)
    if not state:
        raise CheckpointError(f"{source} holds no backbone weights (no EMA state and no backbone.* in state_dict)")
    fix = (
        "The file was written by another version of the backbone code, or its stored config was edited; "
        "sample with the difflab version that trained it, or train again"
    )
    load_state_into(backbone, state, source, fix)
    backbone.eval().requires_grad_(False)
    return LoadedModel(
        backbone=backbone,
        process=process,
        objective=objective,
        sampler=sampler,
        image_shape=_image_shape(ckpt, config),
        config=config,
        used_ema=used_ema,
        global_step=ckpt.get("global_step"),
        source=source,
        extra=_latent_extra(ckpt, config, sampler, source),
        ema_name=ema,
        low_res=low_res,
    )


def _latent_extra(ckpt: dict[str, Any], config: dict[str, Any], sampler: Sampler, source: str) -> dict[str, Any]:
    """A latent model's ``decode`` (scaled latents -> images in [-1, 1]), ``data_shape`` and
    ``first_stage`` (a callable that builds it), from its stored ``first_stage`` config and latent
    scale; ``{}`` for a pixel model. The autoencoder is built on the first decode (a checkpoint
    loads without it, e.g. for export, which refuses latent models), and checked against the
    fingerprint the checkpoint stores. The sampler clips x_0 to the stored range of the training
    latents, ``clip_bound`` (:func:`difflab.latent.clip_for_latents`; None: unclipped, for
    ``first_stage.clip_latents=false`` and for checkpoints written before the bound was stored)."""
    node = config.get("first_stage")
    if not isinstance(node, dict) or not node.get("_target_") or str(node.get("name", "")).lower() == "none":
        return {}
    from difflab.latent import clip_bound_of, clip_for_latents

    info = ckpt.get("difflab") or {}
    data_shape = tuple(int(s) for s in info.get("data_shape") or ())
    raw = ckpt.get("state_dict") or {}
    built: dict[str, Any] = {}

    def first_stage() -> Any:
        if "first_stage" not in built:
            from difflab.build import build_first_stage

            if not data_shape or "latent_scale" not in raw:
                raise CheckpointError(f"{source}: a latent model (first_stage) without its data shape or latent scale; "
                                      "it was not written by train.py; train it again")
            fs = build_first_stage(OmegaConf.create({"first_stage": node}), data_shape)
            stored = (info.get("first_stage") or {}).get("fingerprint")
            if stored is not None and stored != fs.fingerprint:
                raise CheckpointError(
                    f"{source} was trained on the latents of another autoencoder than {fs.source} (fingerprint "
                    f"{stored}, now {fs.fingerprint}); point first_stage at the one it was trained with"
                )
            built["first_stage"] = fs
        return built["first_stage"]

    scale = float(raw["latent_scale"]) if "latent_scale" in raw else float("nan")
    shift = float(raw.get("latent_shift", torch.tensor(0.0)))
    bound = float(raw["latent_bound"]) if "latent_bound" in raw else float("nan")
    clip_bound = clip_bound_of(bound, bool(node.get("clip_latents", True)))
    if "latent_bound" not in raw:
        log.warning("%s: a latent model without its clip range (written before latent_bound was stored); its samples "
                    "are drawn unclipped, and eps-prediction samplers can diverge near t = T: train it again", source)
    clip_for_latents(sampler, clip_bound)

    def decode(z: torch.Tensor) -> torch.Tensor:
        return first_stage().decode(z.float() / scale + shift)

    return {"decode": decode, "data_shape": data_shape, "first_stage": first_stage, "latent_scale": scale,
            "clip_bound": clip_bound}


def load_model(path: str | Path, use_ema: bool = True, ema: str | None = None) -> LoadedModel:
    """A model from a ``.ckpt`` (:func:`load_checkpoint`) or an exported ``.safetensors`` file;
    ``ema`` names a further EMA of the run (see :func:`build_model_from_checkpoint`)."""
    path = Path(path).expanduser()
    if path.suffix == ".safetensors":
        if ema is not None:
            raise CheckpointError(f"{path} is exported weights (one set); ema={ema!r} needs the run's .ckpt")
        return model_from_safetensors(path)
    return build_model_from_checkpoint(load_checkpoint(path), use_ema=use_ema, source=f"checkpoint {path}", ema=ema)


# --------------------------------------------------------------------------- safetensors export
def export_safetensors(ckpt_path: str | Path, out_path: str | Path, use_ema: bool = True) -> Path:
    """Write the backbone weights of a checkpoint to ``out_path`` (safetensors, no pickle).

    The metadata holds everything needed to rebuild the model without the checkpoint:
    ``config`` (the resolved train config as JSON), ``image_shape`` (JSON), ``use_ema``
    ("true"/"false": which weights were exported), ``global_step`` and ``format``.
    Load it back with :func:`load_safetensors` or :func:`model_from_safetensors`.
    """
    from safetensors.torch import save_file

    ckpt_path = Path(ckpt_path).expanduser()
    model = build_model_from_checkpoint(load_checkpoint(ckpt_path), use_ema=use_ema, source=f"checkpoint {ckpt_path}")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.backbone.state_dict().items()}
    metadata = {
        "format": "difflab-backbone-v1",
        "config": json.dumps(model.config, sort_keys=True),
        "image_shape": json.dumps(list(model.image_shape)),
        "use_ema": "true" if model.used_ema else "false",
        "global_step": str(model.global_step if model.global_step is not None else ""),
        "source": ckpt_path.name,
    }
    out_path = Path(out_path).expanduser()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_path), metadata=metadata)
    return out_path


def load_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, metadata) of a file written by :func:`export_safetensors`.

    ``metadata["config"]`` and ``metadata["image_shape"]`` are decoded from JSON, ``use_ema``
    is a bool and ``global_step`` an int (or None).
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"exported weights {path}: no such file; give a .safetensors file written by export_safetensors")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = dict(f.metadata() or {})
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        kind = _pickle_kind(path)
        if kind:  # a pickle under a .safetensors name: never unpickled here, since that can run code
            raise CheckpointError(
                f"exported weights {path} were refused: the file is {kind}, not safetensors, and unpickling it can "
                "run arbitrary code, so it was not loaded. Give a .safetensors file written by export_safetensors, "
                "or a .ckpt file written by train.py (read with weights_only=True)"
            ) from None
        raise CheckpointError(
            f"exported weights {path} cannot be read ({_short(e)}); the file is truncated, damaged or not a "
            "safetensors file. Export it again with export_safetensors"
        ) from None
    if "config" not in raw:
        raise CheckpointError(f"{path} has no difflab metadata (config); it was not written by export_safetensors")
    try:
        meta: dict[str, Any] = dict(raw)
        meta["config"] = json.loads(raw["config"])
        meta["image_shape"] = tuple(json.loads(raw.get("image_shape", "[]")))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: its metadata is not valid JSON ({e})") from None
    meta["use_ema"] = raw.get("use_ema") == "true"
    meta["global_step"] = int(raw["global_step"]) if raw.get("global_step") else None
    return state, meta


def _pickle_kind(path: Path) -> str | None:
    """What a file that is not safetensors is, when its first bytes say it is a pickle; else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        return "a PyTorch checkpoint (a zip archive of pickles)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO opcode, protocol 2-5
        return "a Python pickle"
    return None


def model_from_safetensors(path: str | Path) -> LoadedModel:
    """Rebuild the model of a file written by :func:`export_safetensors`."""
    state, meta = load_safetensors(path)
    ckpt = {
        "hyper_parameters": {"config": meta["config"]},
        "state_dict": {BACKBONE_PREFIX + k: v for k, v in state.items()},
        "difflab": {"image_shape": list(meta["image_shape"])},
        "global_step": meta["global_step"],
    }
    model = build_model_from_checkpoint(ckpt, use_ema=False, source=f"exported weights {path}")
    model.used_ema = meta["use_ema"]
    return model


# --------------------------------------------------------------------------- fine-tuning
@dataclass
class InitFrom:
    """What :func:`init_weights_from` loaded."""

    path: str
    #: tensors loaded into the raw backbone
    num_tensors: int
    #: True when the file held EMA weights, which the EMA callback then starts from
    ema: bool
    #: the step the source run had reached (not carried over: the new run starts at 0)
    source_step: int | None


def _config_diffs(stored: Any, current: Any, prefix: str) -> list[str]:
    fa, fb = _flat_values(stored, prefix), _flat_values(current, prefix)
    return [f"{k}={fb.get(k)!r} here, {fa.get(k)!r} in the file" for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def _flat_values(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat_values(v, f"{prefix}.{k}"))
        return out
    return {prefix: list(node) if isinstance(node, tuple) else node}


def init_weights_from(module: nn.Module, path: str | Path) -> InitFrom:
    """Load the raw and EMA backbone weights of a difflab checkpoint into ``module`` (fine-tuning).

    Unlike resuming (``ckpt_path``), nothing else is taken over: the step count, the optimizer
    and LR-scheduler state and the EMA update count start afresh. The raw weights go into
    ``module.backbone``; the EMA weights (when the file has them) are kept in
    ``module.initial_ema_state``, from which the EMA callback starts instead of copying the
    raw weights. ``path`` is a ``.ckpt`` written by train.py or a ``.safetensors`` file written
    by :func:`export_safetensors` (one set of weights: raw and EMA start from it).

    Refused with a one-line :class:`CheckpointError`: a missing, unreadable or unsafe file, one
    without a difflab config, a backbone config that differs from this run's (the keys are
    named), and weights that do not fit the backbone.
    """
    path = Path(path).expanduser()
    source = f"init_from={path}"
    try:
        if path.suffix == ".safetensors":
            raw, meta = load_safetensors(path)
        else:
            ckpt = load_checkpoint(path)
    except CheckpointError as e:
        raise CheckpointError(f"init_from: {e}") from None
    if path.suffix == ".safetensors":
        config, ema, step = meta["config"], None, meta["global_step"]
    else:
        config = checkpoint_config(ckpt, source)
        raw = {k[len(BACKBONE_PREFIX) :]: v for k, v in (ckpt.get("state_dict") or {}).items() if k.startswith(BACKBONE_PREFIX)}
        ema, step = ema_state_from_checkpoint(ckpt), ckpt.get("global_step")
    if not raw:
        raise CheckpointError(f"{source} holds no backbone weights (no backbone.* in its state_dict); give a checkpoint of a difflab run")
    here = ((getattr(module, "hparams", None) or {}).get("config") or {}).get("backbone")
    if here and config.get("backbone") is not None:
        diffs = _config_diffs(config["backbone"], here, "backbone")
        if diffs:
            more = f" and {len(diffs) - _MAX_LISTED} more" if len(diffs) > _MAX_LISTED else ""
            raise CheckpointError(
                f"{source} holds another backbone than this run configures: {'; '.join(diffs[:_MAX_LISTED])}{more}. "
                "Fine-tuning needs the same backbone: set those backbone values to the file's"
            )
    fix = "init_from needs a checkpoint of the backbone this run configures"
    initial_ema = None
    if ema:  # check the EMA weights against the backbone by loading them first, then keep a copy
        load_state_into(module.backbone, _strip_compiled(ema), f"{source} (EMA weights)", fix)
        initial_ema = {k: v.detach().clone() for k, v in module.backbone.state_dict().items()}
    load_state_into(module.backbone, _strip_compiled(raw), source, fix)
    module.initial_ema_state = initial_ema
    return InitFrom(path=str(path), num_tensors=len(raw), ema=initial_ema is not None, source_step=step)
