"""run(cfg): checkpoint -> samples (.npz + grid PNG), optionally scored with FID/KID.

    python sample.py ckpt=<run dir>/checkpoints/last.ckpt sampler=ddim sampler.num_steps=50 \\
        n=1000 seed=0 batch_size=250 device=auto use_ema=true metrics=[fid,kid] feature=digits

Writes into the run dir (``outputs/sample/runs/<date>_<time>`` unless ``hydra.run.dir`` is given):

- ``samples.npz``: ``images`` uint8 (N, H, W, C) (2-D data: ``points`` float (N, 2)) and the
  protocol (``sampler``, ``nfe``, ``seed``, ``n``, ``use_ema``, ``checkpoint``, ``global_step``,
  and ``protocol``, all of it as a JSON string); load with ``np.load(path)`` (no pickle needed);
- ``grid.png``: the first 64 samples (2-D data: a scatter plot of the samples over the data);
- with ``metrics``: ``metrics.json`` and a printed table (metric, protocol key, value, floor).

Samples and scores come from :mod:`difflab.evaluation`, the path the FID and NFE-table
callbacks use: sample i is drawn from its own generator seeded by (seed, i), so the same
seed gives the same samples (and the same score) here, in training callbacks and on any
number of GPUs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from difflab.errors import ConfigError, DifflabError
from difflab.utils.images import make_grid_uint8, save_png
from difflab.utils.logging import get_logger
from difflab.utils.outputs import check_int as _check_int
from difflab.utils.outputs import output_dir as _output_dir
from difflab.utils.outputs import resolve_device, write_npz
from difflab.utils.outputs import sampler_node as _sampler_node

log = get_logger(__name__)

__all__ = ["format_table", "main", "resolve_device", "run", "write_npz"]

NPZ_NAME = "samples.npz"
GRID_NAME = "grid.png"
METRICS_NAME = "metrics.json"
#: fid, kid (images), swd, mmd (point data), nll (bits/dim of the val split by the probability-flow ODE)
SAMPLE_METRICS = ("fid", "kid", "swd", "mmd", "nll")


# --------------------------------------------------------------------------- tables
def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table: metric, protocol key, value, floor."""
    floor_n = next((r["floor_n"] for r in rows if r.get("floor_n")), None)
    header = ["metric", "protocol key", "value", f"floor (real vs real, n={floor_n})" if floor_n else "floor"]
    body = [
        [r["metric"], r["key"], f"{r['value']:.6g}", "-" if r.get("floor") is None else f"{r['floor']:.6g}"] for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------- run
def _tune_malloc(cfg: DictConfig) -> None:
    from difflab.utils.runtime import tune_malloc

    value = cfg.get("malloc_tuning", True)
    if not isinstance(value, bool):
        raise ConfigError(f"malloc_tuning must be true or false, got {value!r}")
    tune_malloc(value)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Sample ``n`` images from ``cfg.ckpt``; write samples.npz, grid.png (and metrics.json).

    Returns ``{"npz": path, "grid": path, "metrics": rows or [], "sampler": info, "output_dir": dir}``.
    """
    _tune_malloc(cfg)
    task = cfg.get("task")
    if task is not None and str(task.get("name", "generate")) != "generate":
        from difflab.tasks import run_task  # inpaint, img2img, anomaly: conf/task/

        return run_task(cfg)
    from difflab.build import build_sampler
    from difflab.evaluation import Evaluator, check_metrics, draw, eval_mode, evaluate, sampler_key
    from difflab.utils.checkpoint import load_model

    # 1. validate the cheap things first, before the checkpoint is read or anything sampled
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.get("ckpt"):
        raise ConfigError("ckpt is required: ckpt=<run dir>/checkpoints/last.ckpt (or an exported .safetensors file)")
    try:
        metrics = check_metrics(cfg.get("metrics"), accepted=SAMPLE_METRICS)
    except ValueError as e:
        raise ConfigError(f"{e} (e.g. metrics=[fid,kid])") from None
    nll = "nll" in metrics
    metrics = tuple(m for m in metrics if m != "nll")
    n = _check_int("n", cfg.n, 2 if metrics else 1, " with metrics (a covariance needs 2 samples)" if metrics else "")
    batch_size = _check_int("batch_size", cfg.batch_size, 1)
    seed = _check_int("seed", cfg.seed, 0)
    grid_n = _check_int("grid_size", cfg.get("grid_size", 64), 0)
    device = resolve_device(cfg.get("device", "auto"))
    out_dir = _output_dir(cfg)

    # 2. the model, the sampler (the checkpoint's unless one is chosen) and the scorer
    ema = cfg.get("ema")
    if ema is not None and (not isinstance(ema, str) or not cfg.use_ema):
        raise ConfigError(f"ema={ema!r}: the name of a further EMA the run kept (a string), with use_ema=true; "
                          "or ema=null for the run's own EMA")
    model = load_model(str(cfg.ckpt), use_ema=bool(cfg.use_ema), ema=ema)
    if cfg.use_ema and not model.used_ema:
        log.warning("%s has no EMA weights; sampling with the raw weights", cfg.ckpt)
    sampler_cfg = _sampler_node(cfg, model.config["sampler"])
    sampler = build_sampler(sampler_cfg, model.process.num_timesteps)
    decode = model.extra.get("decode")  # a latent model: samples are decoded by its first stage
    if decode is not None:
        from difflab.latent import clip_for_latents

        bound = model.extra.get("clip_bound")
        if bound is not None and not sampler.clip_sample:  # the model's own setting clips: its keys say _noclip
            log.info("sampler.clip_sample=false: x_0 of this latent model is not clipped to its latents' range %.4g", bound)
        clip_for_latents(sampler, bound)
        model.extra["first_stage"]()  # the autoencoder now: a missing or another one fails before sampling
        if nll:
            raise ConfigError("metrics=[nll] is the likelihood of pixels; this checkpoint is a latent model (first_stage), "
                              "whose ODE likelihood would be of its latents: drop nll")
    T = model.process.num_timesteps
    info = {"sampler": sampler_key(sampler, T), "nfe": sampler.nfe(T), "config": repr(sampler)}
    labels, label_scheme, guidance = _labels_and_guidance(cfg, n, model)
    if labels is not None:
        from difflab.samplers.guidance import guidance_key, guided_nfe

        info["nfe"] = guided_nfe(model.process, sampler, model.objective.target, guidance)
        info["guidance"] = guidance_key(guidance, info["nfe"], label_scheme)
    evaluator = None
    if metrics or nll:
        import hydra

        datamodule = hydra.utils.instantiate(model.config["data"])
    if metrics:
        from difflab.evaluation.points import POINT_METRICS, PointEvaluator
        from difflab.metrics import FeatureWeightsNotFoundError

        points = len(model.image_shape) == 1
        wrong = [m for m in metrics if (m in POINT_METRICS) != points]
        if wrong:
            kind = f"point data of shape {tuple(model.image_shape)}: use metrics=[swd,mmd]" if points else "images: use metrics=[fid,kid]"
            raise ConfigError(f"metrics={list(wrong)} do not apply to this checkpoint's {kind}")
        try:
            if points:
                evaluator = PointEvaluator(datamodule, metrics, n)
            else:
                evaluator = Evaluator(datamodule, str(cfg.feature), metrics, n, cfg.get("cache_dir"),
                                      weights_path=cfg.get("weights_path"), device=device)
        except (ValueError, FeatureWeightsNotFoundError) as e:
            raise ConfigError(f"metrics: {e}") from None

    # 3. sample (and score) on the one evaluation path
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    backbone, process = model.backbone.to(device), model.process.to(device)
    log.info("sampling n=%d with %s from %s (%s weights) on %s", n, info["sampler"], cfg.ckpt,
             "EMA" if model.used_ema else "raw", device)
    progress = "sampling" if cfg.get("progress", True) else False
    start = time.perf_counter()
    with eval_mode(backbone):
        if evaluator is not None:
            result = evaluate(backbone, process, sampler, model.objective.target, evaluator, seed, batch_size, device,
                              progress=progress, keep_samples=True, labels=labels, guidance=guidance,
                              label_scheme=label_scheme, shape=model.image_shape, decode=decode)
            samples = result.samples
        else:
            result = None
            samples = torch.cat([x for _, x in draw(backbone, process, sampler, model.objective.target, model.image_shape,
                                                    n, seed, batch_size, device, batches=None, progress=progress,
                                                    labels=labels, guidance=guidance, decode=decode)])
    seconds = time.perf_counter() - start

    # 4. files
    protocol = {
        "checkpoint": str(cfg.ckpt), "global_step": model.global_step, "use_ema": model.used_ema, "n": n,
        **({} if ema is None else {"ema": ema}), "seed": seed, "batch_size": batch_size, "device": device.type, **info,
        "sampler_config": OmegaConf.to_container(sampler_cfg, resolve=True),
        "data": (model.config.get("data") or {}).get("_target_"), "image_shape": list(model.image_shape),
    }
    images = samples.ndim == 4
    arrays = {
        ("images" if images else "points"): samples.permute(0, 2, 3, 1).contiguous().numpy() if images else samples.numpy(),
        "sampler": np.array(info["sampler"]),
        "nfe": np.array(info["nfe"], dtype=np.int64),
        "seed": np.array(seed, dtype=np.int64),
        "n": np.array(n, dtype=np.int64),
        "use_ema": np.array(model.used_ema),
        "checkpoint": np.array(str(cfg.ckpt)),
        "global_step": np.array(-1 if model.global_step is None else model.global_step, dtype=np.int64),
        "protocol": np.array(json.dumps(protocol, sort_keys=True)),
        **({} if labels is None else {"labels": labels.numpy().astype(np.int64)}),
    }
    npz = write_npz(out_dir / NPZ_NAME, arrays)
    grid = None
    if grid_n and images:
        from difflab.conditioning import class_grid

        rows = None if labels is None else class_grid(samples, labels, model.backbone.num_classes, grid_n)
        tiles, cols = rows if rows is not None else (samples[:grid_n], None)  # one class per row when possible
        grid = save_png(make_grid_uint8(tiles, nrow=cols), out_dir / GRID_NAME)
    elif grid_n:
        grid = _scatter(model, samples, out_dir / GRID_NAME)
    what = info["sampler"] + (f", {info['guidance']}" if labels is not None else "")
    print(f"{n} samples ({what}, {info['nfe']} NFE, {seconds:.1f} s) -> {npz}")

    # 5. metrics
    rows: list[dict[str, Any]] = []
    if nll:
        rows.append(_nll_row(cfg, model, datamodule, backbone, process, device))
    if result is not None or rows:
        if result is not None:
            rows = _rows(result) + rows
        report = {"protocol": protocol, "metrics": {r["key"]: r["value"] for r in rows},
                  "floor": {} if result is None else result.floor, "rows": rows,
                  "score_protocol": None if result is None else result.protocol,
                  # the share of sample pixel values quantisation clamped to [-1, 1], and their mean
                  # excess over all values (diagnostics)
                  "clamped": None if result is None else result.values.get("clamped"),
                  "overshoot": None if result is None else result.values.get("overshoot")}
        (out_dir / METRICS_NAME).write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
        print(format_table(rows))
        print(f"metrics -> {out_dir / METRICS_NAME}")
    return {"npz": npz, "grid": grid, "metrics": rows, "sampler": info, "output_dir": out_dir}


def _nll_row(cfg: DictConfig, model: Any, datamodule: Any, backbone: Any, process: Any, device: Any) -> dict[str, Any]:
    """Bits/dim of the val split through the probability-flow ODE (difflab.evaluation.likelihood):
    ``nll_n`` val items (all by default), solver tolerances ``nll_rtol`` / ``nll_atol``."""
    from difflab.evaluation.likelihood import bits_per_dim

    split = str(cfg.get("nll_split", "val"))
    if len(model.image_shape) == 3:
        x = datamodule.real_images(split, cfg.get("nll_n"), 0)
    else:
        x = datamodule.real_points(split, cfg.get("nll_n"), 0)
    tol = float(cfg.get("nll_rtol", 1e-5)), float(cfg.get("nll_atol", 1e-5))
    from tqdm.auto import tqdm

    bar = tqdm(total=len(x), desc="bits/dim (probability-flow ODE)", unit="sample", disable=not cfg.get("progress", True))
    try:
        out = bits_per_dim(backbone, process, model.objective.target, x.to(device), rtol=tol[0], atol=tol[1],
                           dequantize=len(model.image_shape) == 3, batch_size=int(cfg.batch_size),
                           progress=lambda done, total: bar.update(done - bar.n))
    finally:
        bar.close()
    key = f"nll/bpd/{out['key']}/{split}{out['n']}"
    return {"metric": "nll", "key": key, "value": float(out["mean"]), "std": float(out["std"]), "floor": None,
            "floor_key": None, "floor_n": None, "n": int(out["n"]), "nfe": int(out["nfe"]), "settings": out["settings"]}


def _labels_and_guidance(cfg: DictConfig, n: int, model: Any) -> tuple[Any, str | None, Any]:
    """(labels (n,), label scheme, Guidance) from ``labels=`` / ``class=`` / ``guidance_*``:
    conditional checkpoints draw ``labels=uniform`` by default; (None, None, None) for
    unconditional ones, which take none of these (one-line error)."""
    from difflab.conditioning import sampling_guidance, sampling_labels

    for wrong, right in (("class_label", "class"), ("label", "labels"), ("y", "labels"), ("cfg_scale", "guidance_scale"),
                         ("guidance", "guidance_scale"), ("guidance_weight", "guidance_scale")):
        if wrong in cfg:  # a '+key=' that sample.py would otherwise ignore
            raise ConfigError(f"{wrong} is not an option of sample.py; use {right}= (see conf/sample.yaml)")
    if getattr(model.backbone, "takes_image_condition", False):
        raise ConfigError("this checkpoint is a super-resolution model (conditioning=low_res): it upscales images and "
                          "does not generate from noise alone; use sample.py task=super_resolution")
    num_classes = getattr(model.backbone, "num_classes", None)
    labels = cfg.get("labels")
    labels = OmegaConf.to_container(labels) if OmegaConf.is_config(labels) else labels
    try:
        y, scheme = sampling_labels(labels, cfg.get("class"), n, num_classes)
        guidance = sampling_guidance(cfg.get("guidance_scale"), cfg.get("guidance_rescale"),
                                     cfg.get("guidance_interval"), num_classes, model.config.get("conditioning"))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return y, scheme, guidance


def _rows(result: Any) -> list[dict[str, Any]]:
    """One row per metric: key, value, floor (and its n)."""
    rows = []
    for key, value in result.scores.items():
        metric = key.split("/", 1)[0]
        floor_key = next((k for k in result.floor if k.startswith(f"{metric}_floor/")), None)
        rows.append({
            "metric": metric, "key": key, "value": float(value),
            "std": result.values.get(f"{metric}_std"),
            "floor": None if floor_key is None else float(result.floor[floor_key]),
            "floor_key": floor_key, "floor_n": None if floor_key is None else int(floor_key.rsplit("/n", 1)[1]),
            "n": result.protocol["n"],
        })
    return rows


def _scatter(model: Any, points: torch.Tensor, path: Path) -> Path:
    """A scatter plot of 2-D samples over the training data."""
    import hydra

    from difflab.utils.images import save_scatter_png

    data = hydra.utils.instantiate(model.config["data"])
    reference = data.real_points("val") if hasattr(data, "real_points") else None
    return save_scatter_png(points, path, reference=reference, title=f"{len(points)} samples over the val data")


def main(cfg: DictConfig) -> dict[str, Any]:
    """Entry point behind ``sample.py``: input errors exit with one line (code 2), not a traceback."""
    try:
        return run(cfg)
    except DifflabError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
