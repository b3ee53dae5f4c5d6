"""``task=img2img``: SDEdit (Meng et al. 2022, arXiv:2108.01073): noise the input part-way, denoise.

The input x_0 is noised to the grid step that ``strength`` reaches and denoised from there with
any sampler of the ``sampler`` group:

1. the sampler's grid of S steps (``sampler.num_steps``) is cut to its last
   ``int(S * strength)`` steps, as diffusers' img2img pipelines do (``get_timesteps``); the
   number of network evaluations therefore scales with the strength;
2. x_{t0} = sqrt(alpha-bar_{t0}) x_0 + sqrt(1 - alpha-bar_{t0}) eps at the first kept step t0
   (eq. 4 of Ho et al. 2020, arXiv:2006.11239; for a fractional grid, Karras sigmas, the VP
   coefficients of its noise level), the "perturb" of SDEdit Algorithm 1;
3. the sampler runs the kept steps from x_{t0} (the "denoise" of Algorithm 1).

``strength`` (in (0, 1]) trades faithfulness to the input (small) for realism (large); a list of
strengths gives the curve: FID of the results (through :class:`difflab.evaluation.Evaluator`,
against the training split) against the L2 distance to the input.

    python sample.py task=img2img ckpt=... task.strength=0.5 sampler=ddim sampler.num_steps=50
    python sample.py task=img2img ckpt=... task.strength=[0.2,0.4,0.6,0.8,1.0] metrics=[fid] n=500
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from difflab.errors import ConfigError
from difflab.evaluation import eval_mode, protocol_key, sample_generators, sampler_key
from difflab.samplers.base import Generators, ModelFn, Sampler, SamplerState, key_number, randn, vp_coefficients
from difflab.tasks.common import (
    TaskSetup, batches, load_inputs, save_rows_grid, setup_task, task_evaluator, text_table, write_metrics, write_results,
)
from difflab.utils.images import from_uint8, to_uint8
from difflab.utils.logging import get_logger

log = get_logger(__name__)

__all__ = ["check_strength", "keep_steps", "l2_to_input", "partial_denoise", "run", "truncate_state"]


def check_strength(value: Any, key: str = "task.strength") -> float:
    """``value`` as a float in (0, 1], else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise ConfigError(f"{key} must be a number in (0, 1] (the fraction of the noise schedule to go back), got {value!r}")
    return float(value)


def strengths_of(value: Any) -> list[float]:
    """One strength or a list of them, each checked."""
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, str)):
        values = [check_strength(v) for v in value]
        if not values:
            raise ConfigError("task.strength is an empty list; give a number in (0, 1] or a list of them")
        return values
    return [check_strength(value)]


def keep_steps(num_steps: int, strength: float) -> int:
    """The steps kept of a grid of ``num_steps``: ``int(num_steps * strength)`` (diffusers' img2img)."""
    return min(int(num_steps * strength + 1e-9), num_steps)


def truncate_state(state: SamplerState, keep: int) -> SamplerState:
    """Cut a fresh sampler state to the last ``keep`` steps of its grid (SDEdit's start at t0)."""
    S = state.num_steps
    if not 1 <= keep <= S:
        raise ValueError(f"keep must lie in [1, {S}], got {keep}")
    if state.index != 0 or state.history or state.memory:
        raise ValueError("truncate_state takes a fresh state (sampler.init_state), before any step")
    state.timesteps = state.timesteps[S - keep :]
    state.sigmas = state.sigmas[S - keep :]
    return state


def noise_to(state: SamplerState, x0: Tensor, eps: Tensor) -> Tensor:
    """x at the first step of ``state``: sqrt(alpha-bar) x_0 + sqrt(1 - alpha-bar) eps (Ho et al. 2020, eq. 4)."""
    t0 = state.t(0)
    if isinstance(t0, int):
        t = torch.full((x0.shape[0],), t0, dtype=torch.long, device=x0.device)
        return state.process.q_sample(x0, t, eps)
    alpha, sigma = vp_coefficients(state.sigma(0))
    return alpha * x0 + sigma * eps


def partial_denoise(
    model: Callable[..., Tensor],
    process: Any,
    sampler: Sampler,
    prediction_type: str,
    x0: Tensor,
    keep: int,
    generator: Generators,
) -> tuple[Tensor, int]:
    """Noise ``x0`` (float, [-1, 1]) to the first of the last ``keep`` steps of the sampler's grid
    and run those steps (SDEdit, Algorithm 1 of arXiv:2108.01073). The noise of the start is the
    first draw of ``generator`` (one per sample: row i depends on generator i only), the
    sampler's own draws follow. Returns (result, network evaluations per sample)."""
    state = truncate_state(sampler.init_state(process, prediction_type), keep)
    eps = randn(x0.shape, generator, x0.device, x0.dtype)
    x = noise_to(state, x0, eps)
    model_fn = ModelFn(model)
    with torch.inference_mode():
        for _ in range(state.num_steps):
            x = sampler.advance(model_fn, x, state, generator).prev_sample
    return x, model_fn.calls


def l2_to_input(results: Tensor, inputs: Tensor) -> Tensor:
    """Per image, the root mean squared difference of two uint8 batches in [0, 1] pixel units."""
    d = results.double().sub(inputs.double()).div(255.0)
    return d.flatten(1).pow(2).mean(1).sqrt()


def _validate(task: Any) -> None:
    strengths_of(task.get("strength"))


def run(cfg: Any) -> dict[str, Any]:
    """SDEdit on the inputs at each ``task.strength``; writes results.npz, grid.png, metrics.json."""
    from difflab.evaluation import check_metrics

    try:
        metrics = check_metrics(cfg.get("metrics"))
    except ValueError as e:
        raise ConfigError(f"{e} (e.g. metrics=[fid])") from None
    s = setup_task(cfg, _validate)
    strengths = strengths_of(cfg.task.strength)
    model, T = s.model, s.model.process.num_timesteps
    S = s.sampler.steps(T)
    for strength in strengths:
        if keep_steps(S, strength) < 1:
            raise ConfigError(
                f"task.strength={strength} keeps no step of the sampler's {S}: raise the strength to >= {1 / S:.3g} "
                f"or sampler.num_steps")
    inputs = load_inputs(cfg.task.get("input"), model, s.n, None)
    N = len(inputs.images)
    evaluator = task_evaluator(cfg, s, metrics, N) if metrics else None

    results, rows = [], []
    start = time.perf_counter()
    for strength in strengths:
        keep = keep_steps(S, strength)
        out, nfe = [], 0
        with eval_mode(model.backbone):
            for idx in batches(N, s.batch_size):
                x0 = from_uint8(inputs.images[idx.start : idx.stop]).to(s.device)
                x, nfe = partial_denoise(model.backbone, model.process, s.sampler, s.prediction_type, x0, keep,
                                         sample_generators(s.seed, idx))
                out.append(to_uint8(x).cpu())
        result = torch.cat(out)
        results.append(result)
        l2 = l2_to_input(result, inputs.images)
        row = {"strength": strength, "steps": keep, "nfe": nfe, "t0": _first_t(s.sampler, model.process, keep),
               "l2_to_input": float(l2.mean()), "l2_to_input_std": float(l2.std()) if N > 1 else 0.0}
        if evaluator is not None:
            part = f"img2img_s{key_number(strength)}_{sampler_key(s.sampler, T)}"
            values = evaluator.score(iter([result]), N, s.seed)
            row.update({protocol_key(m, evaluator.feature, part, N): values[m] for m in evaluator.metrics})
            row.update({m: values[m] for m in evaluator.metrics})
        rows.append(row)
        log.info("img2img strength %g: %d steps (%d NFE), L2 to the input %.4f", strength, keep, nfe, row["l2_to_input"])
    seconds = time.perf_counter() - start

    protocol = {**s.protocol(), "task": "img2img", "strengths": strengths, "n": N, "input": inputs.source}
    arrays: dict[str, Any] = {"inputs": inputs.images, "strengths": torch.tensor(strengths, dtype=torch.float64)}
    # (K, N, H, W, C): the results at each of the K strengths
    arrays["results"] = torch.stack(results).permute(0, 1, 3, 4, 2).contiguous().numpy()
    if inputs.labels is not None:
        arrays["labels"] = inputs.labels
    npz = write_results(s.out_dir, arrays, protocol)
    grid = save_rows_grid([inputs.images, *results], s.out_dir / "grid.png", s.grid_n) if s.grid_n else None
    report = {"protocol": protocol, "curve": rows, "seconds": seconds}
    if evaluator is not None:
        report["floor"] = evaluator.floor()
    path = write_metrics(s.out_dir, report)
    print(_table(rows))
    print(f"{N} inputs x {len(strengths)} strengths ({seconds:.1f} s) -> {npz}; metrics -> {path}")
    return {"npz": npz, "grid": grid, "metrics": rows, "output_dir": s.out_dir, "results": results, "inputs": inputs}


def _first_t(sampler: Sampler, process: Any, keep: int) -> float:
    timesteps, _ = sampler.grid(process)
    return float(timesteps[len(timesteps) - keep])


def _table(rows: list[dict[str, Any]]) -> str:
    scored = [m for m in ("fid", "kid") if rows and m in rows[0]]
    header = ["strength", "steps", "NFE", "L2 to input", *scored]
    body = [[f"{r['strength']:g}", str(r["steps"]), str(r["nfe"]), f"{r['l2_to_input']:.4f}",
             *(f"{r[m]:.4g}" for m in scored)] for r in rows]
    return text_table(header, body)

