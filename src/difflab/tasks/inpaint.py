"""``task=inpaint``: RePaint (Lugmayr et al. 2022, arXiv:2201.09865) with an unconditional model.

Notation: x_0 the input, m the *known* mask (1 where a pixel is kept), t_prev the grid step
after t. At every reverse step of the sampler's grid (Algorithm 1 of the paper):

1. known part:   x^known_{t_prev} = sqrt(alpha-bar_{t_prev}) x_0 + sqrt(1 - alpha-bar_{t_prev}) z
   (eq. 8a, the input noised to the current step; alpha-bar = 1 after the last step, so the
   known pixels of the result are the input's exactly);
2. unknown part: x^unknown_{t_prev} = one step of the sampler from x_t (eq. 8b; DDPM, or DDIM
   with any eta), with the same draw z as its noise (each pixel takes it in one part only);
3. x_{t_prev} = m * x^known + (1 - m) * x^unknown (eq. 8c).

Resampling (sec. 4.2, Fig. 9 of the paper): after every ``jump_length`` steps the sample is
noised back ``jump_length`` steps, x_t = sqrt(alpha-bar_t / alpha-bar_{t_prev}) x_{t_prev}
+ sqrt(1 - alpha-bar_t / alpha-bar_{t_prev}) z (the forward process between the two steps), and
denoised again, ``jump_n_sample - 1`` times, so that the unknown region harmonises with the
known one. The schedule of steps is the paper's (and diffusers' ``RePaintScheduler``);
``jump_n_sample=1`` turns resampling off. Draws per sample, in order: x_T, then one z per
reverse step and one per forward jump, from the sample's own generator.

The mask marks the pixels to *fill in* (1 or white) and those to keep (0 or black): a preset
(``center``: a ``box`` x ``box`` square, ``left`` / ``right``: that half, ``strokes``: random
brush strokes seeded per image by (seed, i)), a file (.png, .npy, or .npz with ``masks``) of one
(H, W) mask or one per input (N, H, W), or ``input``: the ``masks`` array of an ``.npz`` input.

    python sample.py task=inpaint ckpt=... task.mask=center task.box=14 sampler=ddpm sampler.num_steps=250
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from difflab.errors import ConfigError
from difflab.evaluation import eval_mode, sample_generators, sample_seed
from difflab.samplers.base import Generators, ModelFn, Sampler, randn
from difflab.tasks.common import batches, load_inputs, save_rows_grid, setup_task, write_metrics, write_results
from difflab.utils.images import from_uint8, to_uint8
from difflab.utils.logging import get_logger

log = get_logger(__name__)

__all__ = ["MASK_PRESETS", "check_mask", "label_kept", "make_masks", "repaint", "repaint_schedule", "run"]

MASK_PRESETS = ("center", "left", "right", "strokes")


# --------------------------------------------------------------------------- masks
def check_mask(mask: np.ndarray, shape: tuple[int, int], n: int, what: str) -> np.ndarray:
    """A binary fill-in mask as bool (N, H, W) (one (H, W) mask is repeated), or a ConfigError."""
    h, w = shape
    m = np.asarray(mask)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    elif m.ndim == 3 and m.shape[-1] == 1 and m.shape[:2] == (h, w):
        m = m[..., 0]
    if m.ndim == 2:
        m = np.broadcast_to(m, (n, *m.shape))
    if m.ndim != 3 or m.shape[1:] != (h, w):
        raise ConfigError(f"{what}: a mask of shape {np.asarray(mask).shape}; the images are {h}x{w} (give (H, W) or (N, H, W))")
    if m.shape[0] != n:
        raise ConfigError(f"{what}: {m.shape[0]} masks for {n} inputs; give one mask or one per input")
    values = np.unique(m)
    top = 255 if m.dtype == np.uint8 and values.max(initial=0) > 1 else 1
    if not set(values.tolist()) <= {0, top}:
        shown = ", ".join(f"{v:g}" for v in values[:6].astype(float))
        raise ConfigError(f"{what}: the mask is not binary (values {shown}{', ...' if len(values) > 6 else ''}); "
                          f"use 0 (keep) and 1 or 255 (fill in)")
    m = m == top
    per = m.reshape(n, -1)
    if not per.any(1).all():
        raise ConfigError(f"{what}: mask {int(np.flatnonzero(~per.any(1))[0])} is all zero: nothing to fill in")
    if per.all(1).any():
        raise ConfigError(f"{what}: mask {int(np.flatnonzero(per.all(1))[0])} is all one: nothing is known "
                          f"(that is plain generation, task=generate)")
    return np.ascontiguousarray(m)


def _strokes(h: int, w: int, seed: int) -> np.ndarray:
    """Random brush strokes (1 = fill in): 1-4 strokes of 2-5 segments, width 2 to max(3, H/6)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(1, 5))):
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        width = rng.uniform(2.0, max(3.0, h / 6))
        for _ in range(int(rng.integers(2, 6))):
            angle, length = rng.uniform(0, 2 * math.pi), rng.uniform(h / 8, h / 3)
            y2, x2 = np.clip(y + length * math.sin(angle), 0, h - 1), np.clip(x + length * math.cos(angle), 0, w - 1)
            for s in np.linspace(0, 1, 16):
                cy, cx = y + s * (y2 - y), x + s * (x2 - x)
                m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= (width / 2) ** 2
            y, x = y2, x2
    if m.all():  # keep one known pixel at least
        m[0, 0] = False
    return m


def make_masks(spec: Any, shape: tuple[int, int], n: int, seed: int = 0, box: int | None = None) -> np.ndarray:
    """Fill-in masks bool (N, H, W) from a preset name or a file path (module docstring)."""
    h, w = shape
    what = f"task.mask={spec}"
    name = str(spec)
    if name == "center":
        b = h // 2 if box is None else box
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b < min(h, w):
            raise ConfigError(f"task.box must be an integer in [1, {min(h, w) - 1}] for {h}x{w} images, got {box!r}")
        m = np.zeros((h, w), bool)
        top, left = (h - b) // 2, (w - b) // 2
        m[top : top + b, left : left + b] = True
        return check_mask(m, shape, n, what)
    if name in ("left", "right"):
        m = np.zeros((h, w), bool)
        m[:, : w // 2] = True
        return check_mask(m if name == "left" else ~m, shape, n, what)
    if name == "strokes":
        return check_mask(np.stack([_strokes(h, w, sample_seed(seed, i)) for i in range(n)]), shape, n, what)
    path = Path(name).expanduser()
    if not path.is_file():
        raise ConfigError(f"{what}: not a preset ({', '.join(MASK_PRESETS)}) and no such file")
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            if "masks" not in f.files:
                raise ConfigError(f"{what}: the .npz holds no 'masks' array (it holds {sorted(f.files)})")
            arr = f["masks"]
    else:
        from PIL import Image

        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("L"))
        except OSError as e:
            raise ConfigError(f"{what}: cannot be read as an image ({e})") from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return check_mask(arr, shape, n, what)


# --------------------------------------------------------------------------- RePaint
def repaint_schedule(num_steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """The grid indices visited, in order: index k means "at step k of the ascending grid".

    A lower index than the one before is a reverse step at that index, a higher one a forward
    jump from the one before (Lugmayr et al. 2022, sec. 4.2; the schedule of the authors' code
    and of diffusers' ``RePaintScheduler.set_timesteps``).
    """
    for key, value, low in (("num_steps", num_steps, 1), ("task.jump_length", jump_length, 1),
                            ("task.jump_n_sample", jump_n_sample, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}")
    jumps = {j: jump_n_sample - 1 for j in range(0, num_steps - jump_length, jump_length)}
    out, t = [], num_steps
    while t >= 1:
        t -= 1
        out.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                out.append(t)
    return out


def reverse_steps(schedule: list[int], num_steps: int) -> int:
    """The network evaluations of a schedule: its reverse steps."""
    last, count = num_steps, 0
    for k in schedule:
        count += k < last
        last = k
    return count


def repaint(
    model: Callable[..., Tensor],
    process: Any,
    sampler: Sampler,
    prediction_type: str,
    x0: Tensor,
    known: Tensor,
    generator: Generators,
    jump_length: int = 10,
    jump_n_sample: int = 10,
) -> Tensor:
    """Inpaint ``x0`` (float, [-1, 1]) outside ``known`` (True = keep, broadcastable to x0) with
    RePaint (module docstring) on the grid of ``sampler`` (a DDPM or DDIM step)."""
    _check_sampler(sampler)
    T = process.num_timesteps
    asc = sampler.timesteps(T).flip(0).tolist()  # asc[k]: step k of the ascending grid
    S = len(asc)
    schedule = repaint_schedule(S, jump_length, jump_n_sample)
    known = known.to(device=x0.device, dtype=torch.bool).expand_as(x0)
    model_fn = ModelFn(model)

    def alpha_bar(k: int) -> float:  # alpha-bar of grid step k; 1 below the grid (the clean sample)
        return 1.0 if k < 0 else float(process.alphas_cumprod[asc[k]])

    x = randn(x0.shape, generator, x0.device, x0.dtype)  # x_T at grid step S - 1
    last = S
    with torch.inference_mode():
        for k in schedule:
            if k < last:  # reverse step from grid step k to k - 1, eq. 8
                t, t_prev = asc[k], (asc[k - 1] if k > 0 else -1)
                out = model_fn(x, t)
                z = randn(x0.shape, generator, x0.device, x0.dtype)
                unknown = sampler.step(process, out, t, t_prev, x, None, prediction_type=prediction_type,
                                       noise=z).prev_sample
                ab_prev = alpha_bar(k - 1)
                known_part = math.sqrt(ab_prev) * x0 + math.sqrt(1.0 - ab_prev) * z
                x = torch.where(known, known_part, unknown)
            else:  # forward jump from grid step last - 1 to last: q(x_t | x_{t_prev})
                ratio = alpha_bar(last) / alpha_bar(last - 1)
                z = randn(x0.shape, generator, x0.device, x0.dtype)
                x = math.sqrt(ratio) * x + math.sqrt(1.0 - ratio) * z
            last = k
    return x


def _fall_back_to_ddim(s: Any) -> None:
    """RePaint resamples one step at a time: a checkpoint whose own sampler is multistep (the
    default SDE-DPM-Solver++ 2M) inpaints with DDIM, eta 1 (the stochastic one-step sampler), at
    its number of steps, spacing and clipping; ``sampler=ddim|ddpm`` chooses another."""
    from omegaconf import OmegaConf

    from difflab.build import build_sampler

    old = s.sampler
    node = {"_target_": "difflab.samplers.ddim.DDIMSampler", "num_steps": old.num_steps, "eta": 1.0,
            "spacing": old.spacing, "clip_sample": bool(old.clip_sample), "clip_range": float(old.clip_range)}
    s.sampler_cfg = OmegaConf.create(node)
    s.sampler = build_sampler(s.sampler_cfg, s.model.process.num_timesteps)
    log.warning("task=inpaint (RePaint) steps one timestep at a time; the checkpoint's %s is multistep, so it inpaints "
                "with DDIM, %s steps, eta 1 (sampler=ddpm or sampler=ddim to choose)", type(old).__name__, old.num_steps)


def _multistep(sampler: Sampler) -> bool:
    """True for a sampler without a one-step ``step`` (DPM-Solver, UniPC, Heun, ...): RePaint cannot
    resample between its steps."""
    return type(sampler).step is Sampler.step


def _check_sampler(sampler: Sampler) -> None:
    if _multistep(sampler):
        raise ConfigError(
            f"task=inpaint (RePaint) needs a single-step sampler to resample between steps: sampler=ddpm or ddim "
            f"(with any eta), got {type(sampler).__name__}")


# --------------------------------------------------------------------------- scoring
def label_kept(images: Tensor, labels: Tensor, extractor: Any = None) -> float:
    """The fraction of uint8 digits (N, 1, 28, 28) that the digits classifier assigns ``labels``."""
    from difflab.metrics.features import build_feature_extractor

    extractor = extractor or build_feature_extractor("digits")
    with torch.no_grad():
        pred = torch.cat([extractor.logits(images[i : i + 500]).argmax(1).cpu() for i in range(0, len(images), 500)])
    return float((pred == labels.cpu()).double().mean())


def noise_filled(images: Tensor, fill: Tensor, seed: int) -> Tensor:
    """The baseline: the fill-in region (``fill`` bool (N, 1, H, W)) replaced by uniform noise."""
    g = torch.Generator().manual_seed(sample_seed(seed, -1))
    noise = torch.randint(0, 256, images.shape, generator=g, dtype=torch.uint8)
    return torch.where(fill.expand_as(images), noise, images)


def _validate(task: Any) -> None:
    repaint_schedule(1, task.get("jump_length"), task.get("jump_n_sample"))
    spec = task.get("mask")
    if spec is None or (str(spec) not in (*MASK_PRESETS, "input") and not Path(str(spec)).expanduser().is_file()):
        raise ConfigError(f"task.mask={spec}: not a preset ({', '.join(MASK_PRESETS)}) and no such file")


def run(cfg: Any) -> dict[str, Any]:
    """RePaint on the inputs; writes results.npz, grid.png (masked input, mask, result, original), metrics.json."""
    s = setup_task(cfg, _validate)
    if _multistep(s.sampler) and cfg.get("sampler") is None:
        _fall_back_to_ddim(s)  # the checkpoint's own sampler (e.g. the default SDE-DPM-Solver++)
    _check_sampler(s.sampler)
    model, T = s.model, s.model.process.num_timesteps
    task = cfg.task
    inputs = load_inputs(task.get("input"), model, s.n, None)
    N, (C, H, W) = len(inputs.images), model.image_shape
    if "masks" in inputs.extra and str(task.mask) == "input":
        fill = check_mask(inputs.extra["masks"], (H, W), N, "masks of task.input")
    else:
        fill = make_masks(task.mask, (H, W), N, s.seed, task.get("box"))
    fill_t = torch.from_numpy(fill).unsqueeze(1)  # (N, 1, H, W), True = fill in
    S = s.sampler.steps(T)
    schedule = repaint_schedule(S, int(task.jump_length), int(task.jump_n_sample))
    nfe = reverse_steps(schedule, S)
    log.info("RePaint on %d inputs: %d grid steps, jump_length %d, jump_n_sample %d: %d NFE per input",
             N, S, task.jump_length, task.jump_n_sample, nfe)

    out = []
    start = time.perf_counter()
    with eval_mode(model.backbone):
        for idx in batches(N, s.batch_size):
            x0 = from_uint8(inputs.images[idx.start : idx.stop]).to(s.device)
            known = (~fill_t[idx.start : idx.stop]).to(s.device)
            x = repaint(model.backbone, model.process, s.sampler, s.prediction_type, x0, known,
                        sample_generators(s.seed, idx), int(task.jump_length), int(task.jump_n_sample))
            out.append(to_uint8(x).cpu())
    seconds = time.perf_counter() - start
    result = torch.cat(out)

    # metrics: the known region is the input's; the filled region against the original
    known_b = (~fill_t).expand_as(inputs.images)
    diff = result.int() - inputs.images.int()
    fill_b = ~known_b
    mse = (diff.double() / 255.0).pow(2).mul(fill_b).flatten(1).sum(1) / fill_b.flatten(1).sum(1)
    metrics: dict[str, Any] = {
        "known_max_abs_diff": int(diff.abs()[known_b].max()) if known_b.any() else 0,
        "fill_fraction": float(fill.mean()),
        "mse_filled": float(mse.mean()),
        "psnr_filled": float((10 * torch.log10(1.0 / mse.clamp(min=1e-12))).mean()),
        "nfe": nfe, "seconds": seconds,
    }
    if inputs.labels is not None and (C, H, W) == (1, 28, 28):
        from difflab.metrics import FeatureWeightsNotFoundError
        from difflab.metrics.features import build_feature_extractor

        try:
            extractor = build_feature_extractor("digits", device=s.device)
            metrics["label_kept"] = label_kept(result, inputs.labels, extractor)
            metrics["label_kept_noise_filled"] = label_kept(noise_filled(inputs.images, fill_t, s.seed), inputs.labels,
                                                            extractor)
            metrics["label_of_originals"] = label_kept(inputs.images, inputs.labels, extractor)
        except FeatureWeightsNotFoundError as e:
            log.warning("no digits classifier, so no label_kept: %s", e)

    protocol = {**s.protocol(), "task": "inpaint", "n": N, "input": inputs.source, "mask": str(task.mask),
                "box": task.get("box"), "jump_length": int(task.jump_length), "jump_n_sample": int(task.jump_n_sample),
                "nfe": nfe}
    arrays: dict[str, Any] = {"inputs": inputs.images, "masks": fill, "results": result}
    if inputs.labels is not None:
        arrays["labels"] = inputs.labels.numpy()
    npz = write_results(s.out_dir, arrays, protocol)
    shown = torch.where(fill_t.expand_as(inputs.images), torch.full_like(inputs.images, 128), inputs.images)
    mask_img = fill_t.to(torch.uint8) * 255
    grid = save_rows_grid([shown, mask_img, result, inputs.images], s.out_dir / "grid.png", s.grid_n) if s.grid_n else None
    path = write_metrics(s.out_dir, {"protocol": protocol, "metrics": metrics})
    print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
    print(f"{N} inputs inpainted ({nfe} NFE each, {seconds:.1f} s) -> {npz}; metrics -> {path}")
    return {"npz": npz, "grid": grid, "metrics": metrics, "output_dir": s.out_dir, "results": result, "inputs": inputs,
            "masks": fill}
