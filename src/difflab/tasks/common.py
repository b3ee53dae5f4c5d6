"""What the editing tasks of sample.py share: the model and sampler, the inputs, the files.

``python sample.py task=<name> ckpt=...`` runs :func:`run_task`, which hands the composed config
to the task's module (``difflab.tasks.<name>.run``). Every task

- loads the checkpoint (:func:`difflab.utils.checkpoint.load_model`) and the sampler of the
  ``sampler`` group (the checkpoint's own unless one is chosen), like ``task=generate``;
- reads its inputs with :func:`load_inputs`: the checkpoint's data set's val split by default,
  or ``task.input`` = a folder of images or an ``.npz`` (``images`` uint8 (N, H, W, C) as
  sample.py writes them, or (N, C, H, W); optional ``labels`` (N,));
- draws the noise of input i from its own generator seeded by (seed, i)
  (:func:`difflab.evaluation.sample_generators`), so a result does not depend on the batch;
- writes ``results.npz``, ``grid.png`` (one row per input: input, mask or low-res input,
  result, and the original where one exists) and ``metrics.json`` into the run dir.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from difflab.errors import ConfigError
from difflab.utils.images import make_grid_uint8, save_png
from difflab.utils.logging import get_logger
from difflab.utils.outputs import check_int, output_dir, resolve_device, sampler_node, write_npz

log = get_logger(__name__)

__all__ = [
    "NPZ_NAME", "TASKS", "Inputs", "TaskSetup", "batches", "load_inputs", "run_task", "save_rows_grid",
    "setup_task", "task_evaluator", "text_table", "write_metrics",
]

#: ``task.name`` -> the module whose ``run(cfg)`` does it (``generate`` stays in sample.py).
TASKS: dict[str, str] = {
    "inpaint": "difflab.tasks.inpaint",
    "img2img": "difflab.tasks.img2img",
    "anomaly": "difflab.tasks.anomaly",
    "super_resolution": "difflab.tasks.super_resolution",
}
NPZ_NAME = "results.npz"
GRID_NAME = "grid.png"
METRICS_NAME = "metrics.json"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def run_task(cfg: DictConfig) -> dict[str, Any]:
    """Run ``cfg.task.name`` (one of :data:`TASKS`) on ``cfg.ckpt``."""
    name = str(cfg.task.get("name"))
    if name not in TASKS:
        raise ConfigError(f"task={name!r} is not a task; accepted: generate, {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name]).run(cfg)


# --------------------------------------------------------------------------- model and sampler
@dataclass
class TaskSetup:
    """The validated run settings, the model and the sampler of a task."""

    model: Any  # difflab.utils.checkpoint.LoadedModel
    sampler: Any
    sampler_cfg: DictConfig
    device: torch.device
    out_dir: Path
    n: int
    seed: int
    batch_size: int
    grid_n: int
    progress: bool

    @property
    def prediction_type(self) -> str:
        return self.model.objective.target

    def protocol(self) -> dict[str, Any]:
        from difflab.evaluation import sampler_key

        T = self.model.process.num_timesteps
        return {
            "checkpoint": self.model.source, "global_step": self.model.global_step, "use_ema": self.model.used_ema,
            "seed": self.seed, "batch_size": self.batch_size, "device": self.device.type,
            "sampler": sampler_key(self.sampler, T), "sampler_config": OmegaConf.to_container(self.sampler_cfg, resolve=True),
            "data": (self.model.config.get("data") or {}).get("_target_"), "image_shape": list(self.model.image_shape),
        }


def setup_task(cfg: DictConfig, validate: Callable[[DictConfig], None] | None = None) -> TaskSetup:
    """Check the run settings (and the task's own, with ``validate``) before the checkpoint is
    read, then load the model and build the sampler."""
    from difflab.build import build_sampler
    from difflab.utils.checkpoint import load_model

    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.get("ckpt"):
        raise ConfigError("ckpt is required: ckpt=<run dir>/checkpoints/last.ckpt (or an exported .safetensors file)")
    n = check_int("n", cfg.n, 1)
    batch_size = check_int("batch_size", cfg.batch_size, 1)
    seed = check_int("seed", cfg.seed, 0)
    grid_n = check_int("grid_size", cfg.get("grid_size", 64), 0)
    device = resolve_device(cfg.get("device", "auto"))
    out_dir = output_dir(cfg)
    if cfg.get("metrics") and str(cfg.task.name) not in ("img2img", "super_resolution"):
        raise ConfigError(f"metrics={list(cfg.metrics)} score generated or img2img samples; task={cfg.task.name} writes "
                          "its own metrics.json (leave metrics=[])")
    if validate is not None:
        validate(cfg.task)
    model = load_model(str(cfg.ckpt), use_ema=bool(cfg.use_ema))
    if len(model.image_shape) != 3:
        raise ConfigError(f"task={cfg.task.name} edits images; this checkpoint's data has shape {tuple(model.image_shape)}")
    if model.extra.get("decode") is not None:
        raise ConfigError(f"task={cfg.task.name} edits pixels with the diffusion model; this checkpoint is a latent model "
                          "(first_stage), whose diffusion runs on latents: use task=generate")
    if cfg.use_ema and not model.used_ema:
        log.warning("%s has no EMA weights; using the raw weights", cfg.ckpt)
    check_unconditional(model, str(cfg.task.name))
    if getattr(model.backbone, "takes_image_condition", False) and str(cfg.task.name) != "super_resolution":
        raise ConfigError(f"task={cfg.task.name}: this checkpoint is a super-resolution model (conditioning=low_res), "
                          "whose network needs a low-res input; use task=super_resolution")
    sampler_cfg = sampler_node(cfg, model.config["sampler"])
    sampler = build_sampler(sampler_cfg, model.process.num_timesteps)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    model.backbone.to(device)
    model.process.to(device)
    return TaskSetup(model=model, sampler=sampler, sampler_cfg=sampler_cfg, device=device, out_dir=out_dir, n=n,
                     seed=seed, batch_size=batch_size, grid_n=grid_n, progress=bool(cfg.get("progress", True)))


def check_unconditional(model: Any, task: str) -> None:
    """The tasks call the network without a label: a class-conditional checkpoint then runs on
    its null label, which only label dropout (``conditioning.p_uncond`` > 0) has trained."""
    if getattr(model.backbone, "num_classes", None) is None:
        return
    p_uncond = float((model.config.get("conditioning") or {}).get("p_uncond") or 0.0)
    if p_uncond == 0.0:
        raise ConfigError(
            f"task={task} runs the model without a class label, on its null label, but this class-conditional "
            "checkpoint never trained it (conditioning.p_uncond=0, or backbone.num_classes without conditioning=class); "
            "use an unconditional checkpoint or one trained with conditioning=class conditioning.p_uncond=0.1")


def datamodule_of(model: Any) -> Any:
    """The checkpoint's data module (its constructor does no I/O)."""
    import hydra

    if "data" not in model.config:
        raise ConfigError("the checkpoint stores no data config; give the inputs with task.input=<folder or .npz>")
    return hydra.utils.instantiate(model.config["data"])


# --------------------------------------------------------------------------- inputs
@dataclass
class Inputs:
    """uint8 images (N, C, H, W), their labels (N,) when known, and where they came from."""

    images: torch.Tensor
    labels: torch.Tensor | None
    source: str
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def _read_folder(root: Path, shape: tuple[int, int, int]) -> torch.Tensor:
    from PIL import Image

    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ConfigError(f"task.input={root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    c, h, w = shape
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("L" if c == 1 else "RGB"))
        except OSError as e:
            raise ConfigError(f"task.input: {f} cannot be read as an image ({e})") from None
        if arr.shape[:2] != (h, w):
            raise ConfigError(f"task.input: {f} is {arr.shape[1]}x{arr.shape[0]} pixels; the model takes {w}x{h} (resize it first)")
        out.append(arr.reshape(h, w, c))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def _read_npz(path: Path, accepted: list[tuple[int, int, int]]
              ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, np.ndarray]]:
    """An .npz's 'images' (and 'labels' and any other arrays); of the accepted (C, H, W), the
    images take the one they match (the first one when they match none, for the error)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise ConfigError(f"task.input={path} is not a readable .npz ({e})") from None
    if "images" not in arrays:
        raise ConfigError(f"task.input={path} holds no 'images' array (it holds {sorted(arrays)})")
    x = arrays.pop("images")
    shp = x.shape
    c, h, w = next((a for a in accepted if len(shp) == 4 and (shp[1:] == (a[1], a[2], a[0]) or shp[1:] == a)),
                   accepted[0])
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ConfigError(f"task.input={path}: 'images' must be uint8 (N, H, W, C) or (N, C, H, W), got {x.dtype} {x.shape}")
    if x.shape[1:] == (h, w, c):
        x = x.transpose(0, 3, 1, 2)
    elif x.shape[1:] != (c, h, w):
        raise ConfigError(f"task.input={path}: images of shape {x.shape[1:]}; the model takes {(h, w, c)} (H, W, C)")
    labels = arrays.pop("labels", None)
    if labels is not None and labels.shape != (x.shape[0],):
        raise ConfigError(f"task.input={path}: 'labels' must have shape ({x.shape[0]},), got {labels.shape}")
    return (torch.from_numpy(np.ascontiguousarray(x)), None if labels is None else torch.from_numpy(labels.astype(np.int64)),
            arrays)


def _first_shape(path: Path, accepted: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """Of the accepted (C, H, W), the one the first image of a folder has (the reader then checks
    every image against it); the first accepted one when it matches none."""
    if len(accepted) == 1:
        return accepted[0]
    from PIL import Image

    first = next((p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS), None)
    if first is None:
        return accepted[0]
    try:
        with Image.open(first) as im:  # reads the header only
            w, h = im.size
    except OSError:
        return accepted[0]  # the reader reports the unreadable file
    return next((a for a in accepted if a[1:] == (h, w)), accepted[0])


def load_inputs(source: Any, model: Any, n: int, datamodule: Any = None,
                shapes: Sequence[tuple[int, int, int]] | None = None) -> Inputs:
    """``n`` input images (all of them when there are fewer).

    ``shapes``: the (C, H, W) an input from a folder or .npz may have (default: the model's
    image shape only; super-resolution also takes low-res images); all inputs share one.

    ``source`` None: the val split of the checkpoint's data set (``real_images("val")``, with
    its labels; n of them: a fixed random subset, the same for every seed); else the first n
    of a folder of images (in sorted path order) or of an ``.npz`` file.
    """
    shape = tuple(int(s) for s in model.image_shape)
    accepted = [tuple(int(v) for v in sh) for sh in shapes] if shapes else [shape]
    if source is None or str(source) == "":
        dm = datamodule if datamodule is not None else datamodule_of(model)
        images = dm.real_images("val")
        labels = getattr(getattr(dm, "val_set", None), "labels", None)
        name, extra = f"{dm.name}/val", {}
        labels = None if labels is None or (labels < 0).all() else torch.as_tensor(labels).clone()
        if n < len(images):  # splits may be stored by class: a fixed random subset, in split order
            from difflab.data.base import subset_indices

            idx = subset_indices(len(images), n, 0)
            images, labels = images[idx], None if labels is None else labels[idx]
    else:
        path = Path(str(source)).expanduser()
        if path.is_dir():
            images, labels, extra = _read_folder(path, _first_shape(path, accepted)), None, {}
        elif path.is_file() and path.suffix == ".npz":
            images, labels, extra = _read_npz(path, accepted)
        else:
            raise ConfigError(f"task.input={source}: not a folder of images or an .npz file")
        name = str(path)
    if tuple(images.shape[1:]) not in accepted:
        raise ConfigError(f"the inputs have shape {tuple(images.shape[1:])}; the model takes "
                          f"{' or '.join(str(a) for a in accepted)}")
    if len(images) > n:
        images = images[:n]
        labels = None if labels is None else labels[:n]
        extra = {k: v[:n] if getattr(v, "ndim", 0) and len(v) >= n else v for k, v in extra.items()}
    elif len(images) < n:
        log.info("%s holds %d images (n=%d): using all of them", name, len(images), n)
    return Inputs(images=images, labels=labels, source=name, extra=extra)


def batches(count: int, batch_size: int) -> Iterator[range]:
    """Index ranges of ``count`` items cut into batches of ``batch_size``."""
    for start in range(0, count, batch_size):
        yield range(start, min(count, start + batch_size))


# --------------------------------------------------------------------------- outputs
def save_rows_grid(columns: Sequence[torch.Tensor], path: Path, rows: int) -> Path | None:
    """A grid with one row per input: ``columns`` (uint8 (N, C, H, W) each) side by side.

    Single-channel columns (a mask) are repeated to the images' channels.
    """
    rows = min(rows, min(len(c) for c in columns))
    if rows <= 0:
        return None
    channels = max(c.shape[1] for c in columns)
    cols = [c[:rows].expand(-1, channels, -1, -1) if c.shape[1] != channels else c[:rows] for c in columns]
    tiles = torch.stack(cols, dim=1).reshape(rows * len(cols), *cols[0].shape[1:])
    return save_png(make_grid_uint8(tiles.cpu(), nrow=len(cols)), path)


def write_metrics(out_dir: Path, report: dict[str, Any]) -> Path:
    path = out_dir / METRICS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    return path


def write_results(out_dir: Path, arrays: dict[str, Any], protocol: dict[str, Any]) -> Path:
    """``results.npz``: image arrays as uint8 (N, H, W, C) and the protocol as a JSON string."""
    out = {}
    for k, v in arrays.items():
        if isinstance(v, torch.Tensor):
            v = v.cpu()
            v = v.permute(0, 2, 3, 1).contiguous().numpy() if v.ndim == 4 else v.numpy()
        out[k] = v
    out["protocol"] = np.array(json.dumps(protocol, sort_keys=True, default=str))
    return write_npz(out_dir / NPZ_NAME, out)


def task_evaluator(cfg: Any, s: TaskSetup, metrics: Sequence[str], n: int) -> Any:
    """The Evaluator of a task's ``metrics`` over n results (FID/KID against the training split)."""
    from difflab.evaluation import Evaluator
    from difflab.metrics import FeatureWeightsNotFoundError

    if n < 2:
        raise ConfigError(f"metrics={list(metrics)} need at least 2 inputs (a covariance), got {n}")
    try:
        return Evaluator(datamodule_of(s.model), str(cfg.feature), metrics, n, cfg.get("cache_dir"),
                         weights_path=cfg.get("weights_path"), device=s.device)
    except (ValueError, FeatureWeightsNotFoundError) as e:
        raise ConfigError(f"metrics: {e}") from None


def text_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, a dashed rule under the header (the tasks' printouts)."""
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
