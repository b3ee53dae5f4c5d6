"""The one denoising loop: x_T ~ N(0, I), then ``sampler.advance`` over the sampler's grid.

The loop creates the per-call state (``sampler.init_state``) and the model callable
(:class:`~difflab.samplers.base.ModelFn`, where classifier-free guidance will live), so the
sampler object itself is never changed by sampling and can be shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from difflab.diffusion.process import GaussianDiffusion
from difflab.samplers.base import Generators, ModelFn, Sampler, check_prediction_type, is_generator, randn

__all__ = ["Trajectory", "generate"]


@dataclass
class Trajectory:
    """The states visited by :func:`generate`.

    - ``timesteps``: (S,) the descending timesteps of the steps: a LongTensor, or float64 for
      fractional timesteps (Karras sigmas);
    - ``x_t``: S + 1 tensors: ``x_t[i]`` is the (variance-preserving) sample at ``timesteps[i]``
      (``x_t[0]`` = x_T) and ``x_t[S]`` the final sample;
    - ``pred_x0``: S tensors, the (clipped) x_0 estimate of each step (from its first model call);
    - ``nfe``: the network evaluations of the run.

    Tensors stay on the sampling device.
    """

    timesteps: Tensor
    x_t: list[Tensor] = field(default_factory=list)
    pred_x0: list[Tensor] = field(default_factory=list)
    nfe: int = 0


def _default_device(model: Callable[..., Tensor], process: GaussianDiffusion) -> torch.device:
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        for p in parameters():
            return p.device
    return process.betas.device


@torch.inference_mode()
def generate(
    model: Callable[..., Tensor],
    process: GaussianDiffusion,
    sampler: Sampler,
    shape: Sequence[int],
    generator: Generators,
    return_trajectory: bool = False,
    progress: bool = True,
    *,
    prediction_type: str,
    y: Tensor | None = None,
    device: torch.device | str | None = None,
    on_step: Callable[[int, int], None] | None = None,
    guidance_scale: float = 1.0,
    guidance_rescale: float = 0.0,
    guidance_interval: Sequence[float] | None = None,
    null_label: int | None = None,
) -> Tensor | tuple[Tensor, Trajectory]:
    """Sample a batch of shape ``shape`` with ``sampler`` (Ho et al. 2020, arXiv:2006.11239, Algorithm 2).

    ``generator`` is one torch.Generator for the batch, or one per sample (row i then depends
    on generator i only, whatever batch it is drawn in).
    x_T ~ N(0, I) is drawn in float32 from ``generator`` on the generator's device and moved to
    ``device`` (default: the model's parameter device, else the process' buffer device); every
    later random draw also comes from ``generator``, so a fixed seed reproduces the run bit for
    bit. The model is called as ``model(x_t, t_batch)`` (or ``model(x_t, t_batch, y)``) with
    ``t_batch`` (B,) a LongTensor, or a float tensor for fractional timesteps (Karras sigmas,
    EDM churn); a step may call it more than once (``sampler.nfe(T)`` calls per sample).
    ``prediction_type`` says what it outputs (``eps | x0 | v``: the trained objective's target,
    stored with the model). The model's train/eval mode is left as
    it is. ``on_step(i, num_steps)`` is called after step i (0-based), e.g. to show progress.

    Classifier-free guidance (:mod:`difflab.samplers.guidance`), for every sampler: with labels
    ``y`` the model output is ``u + guidance_scale (c - u)`` of the conditional and the
    unconditional (``null_label``, default ``model.num_classes``) passes, run as one batched
    forward (1: purely conditional, the default; 0: unconditional); ``guidance_rescale``
    (Lin et al. 2023, arXiv:2305.08891) and ``guidance_interval`` [sigma_lo, sigma_hi]
    (Kynkäänniemi et al. 2024, arXiv:2404.07724) as described there. A guided evaluation
    counts 2 NFE in the trajectory.

    Returns the final sample (float, roughly in [-1, 1] for image data), or
    ``(sample, Trajectory)`` when ``return_trajectory``. Runs under ``torch.inference_mode()``:
    the returned tensors are inference tensors (``.clone()`` them to use them with autograd).
    """
    if not is_generator(generator):
        raise ValueError(f"generator must be a torch.Generator (or one per sample), got {type(generator).__name__}")
    if not isinstance(sampler, Sampler):
        raise ValueError(f"sampler must be a difflab Sampler, got {type(sampler).__name__}")
    check_prediction_type(prediction_type)
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or any(s < 1 for s in shape):
        raise ValueError(f"shape must be a non-empty sequence of positive sizes, got {shape}")
    if y is not None and (y.ndim < 1 or y.shape[0] != shape[0]):
        raise ValueError(f"y must have batch size {shape[0]}, got shape {tuple(y.shape)}")

    device = torch.device(device) if device is not None else _default_device(model, process)
    state = sampler.init_state(process, prediction_type)
    if y is not None:
        y = y.to(device)
    guidance = None
    if guidance_scale != 1.0 or guidance_rescale or guidance_interval is not None:
        from difflab.samplers.guidance import Guidance

        guidance = Guidance(guidance_scale, guidance_rescale,
                            tuple(guidance_interval) if guidance_interval is not None else None)
        if y is None:
            raise ValueError("guidance_scale != 1 needs class labels y (guidance mixes the conditional and unconditional outputs)")
        null_label = getattr(model, "num_classes", None) if null_label is None else null_label
        if null_label is None:
            raise ValueError("guidance needs the null label of a class-conditional model: pass null_label or a model with num_classes")
    sigma_of_t = None
    if guidance is not None and guidance.interval is not None:
        from difflab.samplers.base import t_to_sigma, vp_sigmas

        log_sigmas = vp_sigmas(process).log()
        sigma_of_t = lambda t: float(t_to_sigma(torch.tensor(float(t)), log_sigmas))  # noqa: E731
    model_fn = ModelFn(model, y, guidance=guidance, null_label=null_label, sigma_of_t=sigma_of_t)

    x_t = randn(shape, generator, device)
    trajectory = Trajectory(timesteps=state.timesteps.clone(), x_t=[x_t], pred_x0=[])
    num_steps = state.num_steps
    for i in tqdm(range(num_steps), disable=not progress, desc="sampling", leave=False):
        out = sampler.advance(model_fn, x_t, state, generator)
        x_t = out.prev_sample
        if on_step is not None:
            on_step(i, num_steps)
        if return_trajectory:
            trajectory.x_t.append(x_t)
            trajectory.pred_x0.append(out.pred_x0)
    if return_trajectory:
        trajectory.nfe = model_fn.calls
        return x_t, trajectory
    return x_t
