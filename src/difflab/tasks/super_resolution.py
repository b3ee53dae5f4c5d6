"""``task=super_resolution``: SR3 (Saharia et al. 2021, arXiv:2104.07636) with a trained model.

The checkpoint is a super-resolution model, trained with ``conditioning=low_res`` (factor 2 or
4): its network takes x_t concatenated with the bicubic-upsampled low-resolution image
(:class:`~difflab.conditioning.LowResConditioning`). Sampling is ordinary ancestral / DDIM /
fast-solver sampling from x_T ~ N(0, I) with that condition (SR3, Algorithm 2), through the
one loop (:func:`difflab.samplers.generate`), the noise of input i from generator (seed, i).

Inputs (``task.input``): the checkpoint's val split by default, or a folder / ``.npz`` of
images of either size:

- full-size images (H, W): their low-res versions are made as in training (average pooling by
  the factor), and the originals are kept as the reference of the metrics;
- low-res images (H / factor, W / factor): upscaled as they are (no reference: no PSNR/SSIM).

Metrics (``metrics.json``), when the originals are known: PSNR and SSIM (torchmetrics, on
[0, 1] pixels) of the results and of the bicubic baseline against the originals, and FID/KID
(``metrics=[fid]``) of both against the training split, on the one evaluation path
(:class:`difflab.evaluation.Evaluator`); the floor at the same n says where real images land.

    python train.py conditioning=low_res conditioning.factor=2
    python sample.py task=super_resolution ckpt=<run>/checkpoints/last.ckpt n=500 'metrics=[fid]'
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from difflab.errors import ConfigError
from difflab.evaluation import eval_mode, protocol_key, sample_generators, sampler_key
from difflab.samplers import generate
from difflab.tasks.common import (
    batches, load_inputs, save_rows_grid, setup_task, task_evaluator, text_table, write_metrics, write_results,
)
from difflab.utils.images import from_uint8, to_uint8
from difflab.utils.logging import get_logger

log = get_logger(__name__)

__all__ = ["low_res_of", "psnr_ssim", "run", "upscale"]


def low_res_of(model: Any) -> Any:
    """The :class:`~difflab.conditioning.LowResConditioning` a checkpoint was trained with (built
    once, when the checkpoint was loaded), or a ConfigError when it has none."""
    conditioning = getattr(model, "low_res", None)
    if conditioning is None or not getattr(model.backbone, "takes_image_condition", False):
        raise ConfigError("task=super_resolution needs a super-resolution checkpoint (trained with conditioning=low_res "
                          "conditioning.factor=2 or 4); this one has no low-res conditioning")
    return conditioning


def upscale(model: Any, process: Any, sampler: Any, prediction_type: str, condition: Tensor,
            generators: Any, device: Any) -> Tensor:
    """SR3 samples (float, [-1, 1]) of one batch of conditions y (the upsampled low-res images)."""
    return generate(model, process, sampler, tuple(condition.shape), generators, progress=False,
                    prediction_type=prediction_type, y=condition.to(device), device=device)


def psnr_ssim(images: Tensor, reference: Tensor) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM of uint8 ``images`` against uint8 ``reference``, on [0, 1]
    pixels (torchmetrics, per image, then averaged)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    x, r = images.double() / 255.0, reference.double() / 255.0
    psnr = peak_signal_noise_ratio(x, r, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(x, r, data_range=1.0, reduction="none")
    return float(psnr.mean()), float(ssim.mean())


def _inputs(cfg: Any, model: Any, low_res: Any, n: int) -> tuple[Tensor, Tensor | None, Any]:
    """(low-res float images in [-1, 1], full-size uint8 originals or None, Inputs)."""
    full = tuple(int(s) for s in model.image_shape)
    small = low_res.low_res_shape(full)
    source = cfg.task.get("input")
    try:
        inputs = load_inputs(source, model, n, None, shapes=(full, small))
    except ConfigError as e:
        raise ConfigError(f"{e}; task=super_resolution takes images of {full[1]}x{full[2]} (downsampled x{low_res.factor} "
                          f"here) or low-res ones of {small[1]}x{small[2]}") from None
    if tuple(inputs.images.shape[1:]) == full:
        return low_res.downsample(from_uint8(inputs.images)), inputs.images, inputs
    return from_uint8(inputs.images), None, inputs


def run(cfg: Any) -> dict[str, Any]:
    """Upscale the inputs; write results.npz, grid.png and metrics.json."""
    from difflab.evaluation import check_metrics

    try:
        metrics = check_metrics(cfg.get("metrics"))
    except ValueError as e:
        raise ConfigError(f"{e} (e.g. metrics=[fid])") from None
    s = setup_task(cfg)
    model, T = s.model, s.model.process.num_timesteps
    low_res = low_res_of(model)
    small, originals, inputs = _inputs(cfg, model, low_res, s.n)
    N = len(small)
    full_hw = tuple(int(v) for v in model.image_shape[1:])
    conditions = low_res.upsample(small, full_hw)  # the network's y, and the bicubic baseline
    bicubic = to_uint8(conditions)

    out = []
    start = time.perf_counter()
    nfe = s.sampler.nfe(T)
    with eval_mode(model.backbone):
        for idx in batches(N, s.batch_size):
            x = upscale(model.backbone, model.process, s.sampler, s.prediction_type, conditions[idx.start : idx.stop],
                        sample_generators(s.seed, idx),
                        s.device)
            out.append(to_uint8(x).cpu())
            log.info("super-resolution: %d / %d inputs", idx.stop, N)
    results = torch.cat(out)
    seconds = time.perf_counter() - start

    key_part = f"sr{low_res.factor}x_{sampler_key(s.sampler, T)}"
    rows: dict[str, dict[str, Any]] = {"sr3": {"nfe": nfe, "seconds": round(seconds, 2)}, "bicubic": {"nfe": 0}}
    if originals is not None:
        for name, images in (("sr3", results), ("bicubic", bicubic)):
            psnr, ssim = psnr_ssim(images, originals)
            rows[name].update(psnr=psnr, ssim=ssim)
    floor = None
    if metrics:
        evaluator = task_evaluator(cfg, s, metrics, N)
        for name, images in (("sr3", results), ("bicubic", bicubic)):
            values = evaluator.score(iter([images]), N, s.seed)
            part = key_part if name == "sr3" else f"sr{low_res.factor}x_bicubic"
            rows[name].update({protocol_key(m, evaluator.feature, part, N): values[m] for m in evaluator.metrics})
            rows[name].update({m: values[m] for m in evaluator.metrics})
        floor = evaluator.floor()

    protocol = {**s.protocol(), "task": "super_resolution", "factor": low_res.factor, "upsample": low_res.upsample_mode,
                "n": N, "input": inputs.source, "originals": originals is not None}
    arrays: dict[str, Any] = {"low_res": to_uint8(small), "bicubic": bicubic, "results": results}
    if originals is not None:
        arrays["originals"] = originals
    if inputs.labels is not None:
        arrays["labels"] = inputs.labels
    npz = write_results(s.out_dir, arrays, protocol)
    columns = [to_uint8(torch.nn.functional.interpolate(small, size=full_hw, mode="nearest")), bicubic, results]
    if originals is not None:
        columns.append(originals)
    grid = save_rows_grid(columns, s.out_dir / "grid.png", s.grid_n) if s.grid_n else None
    report = {"protocol": protocol, "results": rows, "floor": floor,
              "grid_columns": ["low-res input (nearest)", "bicubic", "SR3", *(["original"] if originals is not None else [])]}
    path = write_metrics(s.out_dir, report)
    print(_table(rows))
    print(f"{N} inputs x{low_res.factor} ({seconds:.1f} s, {nfe} NFE each) -> {npz}; metrics -> {path}")
    return {"npz": npz, "grid": grid, "metrics": rows, "floor": floor, "output_dir": s.out_dir, "results": results,
            "bicubic": bicubic, "originals": originals}


def _table(rows: dict[str, dict[str, Any]]) -> str:
    cols = [c for c in ("psnr", "ssim", "fid", "kid") if any(c in r for r in rows.values())]
    header = ["method", "NFE", *cols]
    body = [[name, str(r.get("nfe", "")), *(f"{r[c]:.4g}" if c in r else "-" for c in cols)] for name, r in rows.items()]
    return text_table(header, body)
