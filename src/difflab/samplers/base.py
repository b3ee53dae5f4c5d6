"""What every sampler shares: timestep grids, the step contract and x_0 post-processing.

A sampler is stateless: ``timesteps(T)`` returns the descending grid and ``step`` maps x_t to
x_{t_prev} for an explicit pair ``(t, t_prev)`` (``t_prev = -1`` for the last step). Nothing
has to be primed before use. The one denoising loop lives in :mod:`difflab.samplers.loop`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch
from torch import Tensor

from difflab.diffusion.process import PREDICTION_TYPES, GaussianDiffusion

__all__ = [
    "SPACINGS",
    "Sampler",
    "StepOutput",
    "Generators",
    "check_prediction_type",
    "is_generator",
    "randn",
    "make_timesteps",
    "prev_timesteps",
    "threshold_sample",
]

#: Timestep spacings of Lin et al. 2023 (arXiv:2305.08891), Table 2.
SPACINGS: tuple[str, ...] = ("linspace", "leading", "trailing")


@dataclass
class StepOutput:
    """Result of one sampler step: x_{t_prev} and the (clipped or thresholded) x_0 estimate."""

    prev_sample: Tensor
    pred_x0: Tensor


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def make_timesteps(
    num_train_timesteps: int, num_steps: int, spacing: str, steps_offset: int = 0
) -> Tensor:
    """Descending sampling timesteps (LongTensor of length ``num_steps``) in [0, T - 1].

    Lin et al. 2023 (arXiv:2305.08891), Table 2, as in diffusers' ``set_timesteps``
    (DDPMScheduler / DDIMScheduler ``timestep_spacing``), with T = ``num_train_timesteps``
    and S = ``num_steps``:

    - ``linspace``: round(linspace(0, T - 1, S)), reversed; starts at T - 1 and ends at 0;
    - ``leading``:  arange(S) * (T // S) + steps_offset, reversed; ends at ``steps_offset``
      but starts below T - 1 (never samples from pure noise);
    - ``trailing``: round(arange(T, 0, -T / S)) - 1; starts at T - 1 — use it with zero
      terminal SNR (sec. 3.3 of the paper). Where floating-point error makes that arange one
      entry too long (a trailing -1, e.g. T=17, S=7) the extra entry is dropped.

    ``steps_offset`` is added for ``leading`` only, as in diffusers.
    """
    if not _is_int(num_train_timesteps) or num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be an integer >= 1, got {num_train_timesteps!r}")
    if not _is_int(num_steps) or not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(
            f"num_steps must be an integer in [1, num_train_timesteps={num_train_timesteps}], got {num_steps!r}"
        )
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {list(SPACINGS)}")
    if not _is_int(steps_offset) or steps_offset < 0:
        raise ValueError(f"steps_offset must be an integer >= 0, got {steps_offset!r}")

    T, S = int(num_train_timesteps), int(num_steps)
    if spacing == "linspace":
        timesteps = np.linspace(0, T - 1, S).round()[::-1].astype(np.int64)
    elif spacing == "leading":
        step_ratio = T // S
        timesteps = (np.arange(0, S) * step_ratio).round()[::-1].astype(np.int64) + steps_offset
        if timesteps[0] >= T:
            raise ValueError(
                f"steps_offset={steps_offset} pushes the first timestep to {timesteps[0]}, beyond "
                f"num_train_timesteps - 1 = {T - 1}; lower steps_offset or num_steps"
            )
    elif spacing == "trailing":
        step_ratio = T / S
        timesteps = np.round(np.arange(T, 0, -step_ratio)).astype(np.int64) - 1
        # Floating-point error in arange can add an (S+1)-th entry near 0 that rounds to -1
        # (e.g. T=17, S=7); diffusers keeps it, we drop it so that exactly S steps remain.
        timesteps = timesteps[:S]
    else:  # pragma: no cover - guarded above
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {list(SPACINGS)}")
    return torch.from_numpy(np.ascontiguousarray(timesteps))


def prev_timesteps(timesteps: Tensor) -> Tensor:
    """The previous timestep of each entry of a descending grid: ``timesteps[1:]`` then -1."""
    timesteps = torch.as_tensor(timesteps, dtype=torch.long)
    if timesteps.ndim != 1 or timesteps.numel() < 1:
        raise ValueError(f"timesteps must be a non-empty 1-D tensor, got shape {tuple(timesteps.shape)}")
    if timesteps.numel() > 1 and not bool((timesteps[1:] < timesteps[:-1]).all()):
        raise ValueError(f"timesteps must be strictly descending, got {timesteps.tolist()}")
    return torch.cat([timesteps[1:], timesteps.new_full((1,), -1)])


def threshold_sample(sample: Tensor, ratio: float = 0.995, max_value: float = 1.0) -> Tensor:
    """Dynamic thresholding of x_0 (Saharia et al. 2022, arXiv:2205.11487, sec. 2.3).

    Per sample, s is the ``ratio`` quantile of |x_0| over all non-batch dims, clamped to
    [1, ``max_value``]; x_0 is clipped to [-s, s] and divided by s. Same as diffusers
    ``_threshold_sample`` (with s >= 1 it equals plain clipping to [-1, 1] when max_value = 1).
    """
    dtype = sample.dtype
    if dtype not in (torch.float32, torch.float64):
        sample = sample.float()  # quantile needs float32/64
    batch_size = sample.shape[0]
    flat = sample.reshape(batch_size, -1)
    s = torch.quantile(flat.abs(), ratio, dim=1)
    s = torch.clamp(s, min=1.0, max=max_value).unsqueeze(1)
    flat = torch.clamp(flat, -s, s) / s
    return flat.reshape(sample.shape).to(dtype)


#: A generator for a whole batch, or one per sample (noise of sample i from generator i, so a
#: sample does not depend on the batch it is drawn in: see :mod:`difflab.evaluation`).
Generators = Union[torch.Generator, Sequence[torch.Generator]]


def is_generator(generator: object) -> bool:
    """True for a torch.Generator or a non-empty sequence of them."""
    if isinstance(generator, torch.Generator):
        return True
    return (
        isinstance(generator, (list, tuple))
        and len(generator) > 0
        and all(isinstance(g, torch.Generator) for g in generator)
    )


def randn(shape: Sequence[int], generator: Generators, device: torch.device | str | None = None,
          dtype: torch.dtype = torch.float32) -> Tensor:
    """N(0, I) of ``shape`` drawn on the generator's device, moved to ``device``.

    With one generator per sample (a sequence as long as ``shape[0]``), row i is drawn from
    generator i alone, so it is the same whatever other rows are drawn with it.
    """
    shape = tuple(int(s) for s in shape)
    if isinstance(generator, torch.Generator):
        out = torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)
    else:
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} per-sample generators for a batch of {shape[0]}")
        out = torch.stack([torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator])
    return out if device is None else out.to(device)


def check_prediction_type(prediction_type: str) -> str:
    """``prediction_type`` if it is one of ``eps | x0 | v``, else ValueError."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {list(PREDICTION_TYPES)}")
    return prediction_type


class Sampler:
    """Base class of the samplers: validated options, the timestep grid, x_0 post-processing.

    Subclasses implement :meth:`step`. What the model outputs (``eps | x0 | v``) is not a
    sampler option: it belongs to the trained model (its objective), and the loop passes it to
    every ``step`` as ``prediction_type``; conversions go through
    :meth:`GaussianDiffusion.split_prediction`.
    With a zero-terminal-SNR process the first ``trailing`` step is at alpha-bar = 0, where an
    eps-prediction defines no x_0 (the step returns non-finite values): use ``v`` or ``x0``
    there (Lin et al. 2023, arXiv:2305.08891, sec. 3.2).
    """

    def __init__(
        self,
        num_steps: int | None,
        spacing: str,
        clip_sample: bool = True,
        clip_range: float = 1.0,
        dynamic_thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        steps_offset: int = 0,
    ) -> None:
        if num_steps is not None and (not _is_int(num_steps) or num_steps < 1):
            raise ValueError(f"num_steps must be an integer >= 1 or None, got {num_steps!r}")
        if spacing not in SPACINGS:
            raise ValueError(f"unknown spacing {spacing!r}; choose one of {list(SPACINGS)}")
        if not clip_range > 0:
            raise ValueError(f"clip_range must be > 0, got {clip_range!r}")
        if not 0 < dynamic_thresholding_ratio <= 1:
            raise ValueError(
                f"dynamic_thresholding_ratio must lie in (0, 1], got {dynamic_thresholding_ratio!r}"
            )
        if not sample_max_value >= 1:
            raise ValueError(f"sample_max_value must be >= 1, got {sample_max_value!r}")
        if not _is_int(steps_offset) or steps_offset < 0:
            raise ValueError(f"steps_offset must be an integer >= 0, got {steps_offset!r}")
        self.num_steps = None if num_steps is None else int(num_steps)
        self.spacing = spacing
        self.clip_sample = bool(clip_sample)
        self.clip_range = float(clip_range)
        self.dynamic_thresholding = bool(dynamic_thresholding)
        self.dynamic_thresholding_ratio = float(dynamic_thresholding_ratio)
        self.sample_max_value = float(sample_max_value)
        self.steps_offset = int(steps_offset)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"

    def nfe(self, num_train_timesteps: int) -> int:
        """Network evaluations per sample (one per step here; multi-call steps override this)."""
        return int(self.timesteps(num_train_timesteps).numel())

    def key_part(self, num_train_timesteps: int) -> str:
        """The sampler's part of a metric key: its name and NFE, e.g. ``ddpm1000``, ``ddim50``."""
        return f"{type(self).__name__.removesuffix('Sampler').lower()}{self.nfe(num_train_timesteps)}"

    def timesteps(self, num_train_timesteps: int) -> Tensor:
        """Descending LongTensor of the timesteps this sampler visits (``num_steps`` None = all T)."""
        num_steps = num_train_timesteps if self.num_steps is None else self.num_steps
        return make_timesteps(num_train_timesteps, num_steps, self.spacing, self.steps_offset)

    def postprocess_x0(self, pred_x0: Tensor) -> Tensor:
        """Dynamic thresholding if enabled, else clipping to [-clip_range, clip_range] if enabled."""
        if self.dynamic_thresholding:
            return threshold_sample(pred_x0, self.dynamic_thresholding_ratio, self.sample_max_value)
        if self.clip_sample:
            return pred_x0.clamp(-self.clip_range, self.clip_range)
        return pred_x0

    @staticmethod
    def check_step_args(
        process: GaussianDiffusion, model_output: Tensor, t: int, t_prev: int, x_t: Tensor,
        prediction_type: str,
    ) -> None:
        """Raise ValueError unless 0 <= t < T, -1 <= t_prev < t, the shapes match and the
        prediction type is known."""
        check_prediction_type(prediction_type)
        T = process.num_timesteps
        if not _is_int(t) or not 0 <= t < T:
            raise ValueError(f"t must be an int in [0, {T - 1}], got {t!r}")
        if not _is_int(t_prev) or not -1 <= t_prev < t:
            raise ValueError(f"t_prev must be an int in [-1, t - 1 = {t - 1}], got {t_prev!r}")
        if model_output.shape != x_t.shape:
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)} but x_t has shape "
                f"{tuple(x_t.shape)}; they must match"
            )

    @staticmethod
    def draw_noise(x_t: Tensor, generator: torch.Generator | None, noise: Tensor | None) -> Tensor:
        """``noise`` if given, else N(0, I) drawn from ``generator`` on its device, moved to x_t's device."""
        if noise is not None:
            if noise.shape != x_t.shape:
                raise ValueError(
                    f"noise has shape {tuple(noise.shape)} but x_t has shape {tuple(x_t.shape)}; they must match"
                )
            return noise.to(device=x_t.device, dtype=x_t.dtype)
        if not is_generator(generator):
            raise ValueError(
                "generator must be a torch.Generator (or one per sample) for a stochastic step, "
                f"got {type(generator).__name__}"
            )
        return randn(x_t.shape, generator, x_t.device, x_t.dtype)

    def step(
        self,
        process: GaussianDiffusion,
        model_output: Tensor,
        t: int,
        t_prev: int,
        x_t: Tensor,
        generator: Generators | None = None,
        *,
        prediction_type: str,
        noise: Tensor | None = None,
    ) -> StepOutput:
        """Map x_t to x_{t_prev} given the model output at ``t``; ``t_prev = -1`` for the last step.

        ``prediction_type`` is what ``model_output`` is (``eps | x0 | v``, the trained objective's
        target). Stochastic samplers draw their noise from ``generator`` (or take ``noise``).
        """
        raise NotImplementedError
