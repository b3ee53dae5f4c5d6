"""What every sampler shares: timestep grids, the sampling contract and x_0 post-processing.

The contract (one for every sampler; the loop in :mod:`difflab.samplers.loop` is its only caller):

- a sampler object holds validated options only; it is shared across calls, threads and DDP
  ranks and never changes while sampling;
- ``state = sampler.init_state(process, prediction_type)`` creates the per-call
  :class:`SamplerState`: the grid of the run (model timesteps, ``long`` for a spaced grid or
  ``float64`` for continuous noise levels such as Karras sigmas, and the noise levels
  sigma = sqrt((1 - alpha-bar) / alpha-bar) ending at 0), the step index and the history of
  multistep methods;
- ``sampler.advance(model, x, state, generator)`` takes step ``state.index`` from x (always in
  the variance-preserving scale of the process, x = sqrt(alpha-bar) x_0 + sqrt(1 - alpha-bar)
  eps) and returns :class:`StepOutput`; ``model`` is a :class:`ModelFn` that the step may call
  more than once (Heun), with an integer or a fractional timestep;
- ``sampler.nfe(T)``: network evaluations per sample; ``sampler.key_part(T)``: the sampler's
  part of every metric key (scheme below).

Samplers whose step needs one model output at t and nothing else (DDPM, DDIM) implement the
stateless ``step(process, model_output, t, t_prev, x_t, ...)`` for an explicit pair
``(t, t_prev)`` (``t_prev = -1`` for the last step); the base ``advance`` calls it.

Metric-key scheme (:meth:`Sampler.key_part`): the two samplers of the first tables keep their
step-count names, ``ddpm<steps>`` and ``ddim<steps>[_eta<eta>]`` (``ddpm1000``, ``ddim50``,
``ddim50_eta1``); every other sampler writes ``<variant>_nfe<NFE>``, where the variant names the
method and each result-changing option that is not at its default, in a fixed order
(``dpmpp2m_nfe10``, ``dpmpp3m_sde_karras_nfe20``, ``heun_karras_nfe19``, ``euler_a_nfe20``,
``unipc_nfe10``). NFE counts network evaluations, not steps (Heun: 2 per step but the last).
Every key then names the x_0 post-processing when it is not the default clip to [-1, 1]
(``ddim10_eta1_noclip``, ``dpmpp2m_nfe20_dynthresh0.995``); DDPM and DDIM also name a spacing
off their default (``ddim50_leading``) and DDPM a variance off ``fixed_small``
(``ddpm1000_fixed_large``), so that results which are not comparable never share a key.
"""

from __future__ import annotations

from collections.abc import Sequence
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Union

import numpy as np
import torch
from torch import Tensor

from difflab.diffusion.process import PREDICTION_TYPES, GaussianDiffusion

__all__ = [
    "MIN_ALPHA_BAR",
    "SPACINGS",
    "ModelFn",
    "Sampler",
    "SamplerState",
    "SigmaSampler",
    "StepOutput",
    "karras_sigmas",
    "key_number",
    "sigma_to_t",
    "split_output",
    "t_to_sigma",
    "vp_coefficients",
    "vp_sigmas",
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


def key_number(x: float) -> str:
    """A number in a metric key: short (``0.5``, ``80``, ``1e-05``) where ``:g`` gives it back
    exactly, else every digit, so that two settings never share a key."""
    x = float(x)
    short = f"{x:g}"
    return short if float(short) == x else repr(x)


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


# ------------------------------------------------------------------ noise levels (sigma)
#: The alpha-bar that stands for an alpha-bar of exactly 0 when sigmas are taken: with zero
#: terminal SNR alpha-bar_{T-1} = 0 and sigma would be infinite; diffusers'
#: ``rescale_betas_zero_snr`` puts the same 2**-24 there. Only zeros are replaced: a small
#: alpha-bar that is not 0 (cosine's 2.4e-9 at t = T - 1) keeps its own sigma (2.03e4), the
#: noise level the model was trained at for that timestep.
MIN_ALPHA_BAR = 2.0**-24


def vp_sigmas(process: GaussianDiffusion) -> Tensor:
    """sigma_t = sqrt((1 - alpha-bar_t) / alpha-bar_t) for t = 0..T-1, float64 on the CPU.

    The variance-exploding noise level of the process (Karras et al. 2022, arXiv:2206.00364,
    Table 1, "VP" column): x_t / sqrt(alpha-bar_t) = x_0 + sigma_t eps. Increasing in t.
    An alpha-bar of 0 (zero terminal SNR) reads :data:`MIN_ALPHA_BAR`; every other keeps its
    value, so that sigma_t and the timestep t the model sees agree (a floor on all of them
    would evaluate the model at t with a smaller sigma than its own, and the first x_0
    estimate of a sigma sampler would be off by the ratio of the two alphas).
    """
    ab = process.alphas_cumprod.detach().to("cpu", torch.float64)
    ab = torch.where(ab > 0, ab, torch.full_like(ab, MIN_ALPHA_BAR))
    return ((1.0 - ab) / ab).sqrt()


def vp_coefficients(sigma: float) -> tuple[float, float]:
    """(alpha, sigma_vp) = (1 / sqrt(1 + sigma^2), sigma / sqrt(1 + sigma^2)) of a VE noise level.

    x_vp = alpha x_0 + sigma_vp eps is the variance-preserving sample at that level
    (alpha^2 = alpha-bar); sigma = 0 gives (1, 0).
    """
    alpha = 1.0 / math.sqrt(sigma * sigma + 1.0)
    return alpha, sigma * alpha


def sigma_to_t(sigma: Tensor, log_sigmas: Tensor) -> Tensor:
    """The fractional timestep of each noise level: log-sigma interpolated between training steps.

    ``log_sigmas`` (T,) is log :func:`vp_sigmas`; levels outside the table are clamped to its ends.
    The same map as diffusers' ``_sigma_to_t`` (and k-diffusion's ``DiscreteSchedule.sigma_to_t``),
    in float64.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    log_sigmas = log_sigmas.to(torch.float64)
    T = log_sigmas.numel()
    if T < 2:
        return torch.zeros_like(sigma)
    log_sigma = sigma.clamp(min=1e-10).log()
    low = ((log_sigmas[None, :] <= log_sigma.reshape(-1, 1)).sum(1) - 1).clamp(0, T - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = ((lo - log_sigma.reshape(-1)) / (lo - hi)).clamp(0, 1)
    return ((1 - w) * low + w * (low + 1)).reshape(sigma.shape)


def t_to_sigma(t: Tensor, log_sigmas: Tensor) -> Tensor:
    """Inverse of :func:`sigma_to_t` on [0, T - 1]: log-linear interpolation of the sigma table."""
    t = torch.as_tensor(t, dtype=torch.float64).clamp(0, log_sigmas.numel() - 1)
    log_sigmas = log_sigmas.to(torch.float64)
    if log_sigmas.numel() < 2:
        return log_sigmas.exp().expand_as(t).clone()
    low = t.floor().long().clamp(max=log_sigmas.numel() - 2)
    w = t - low
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[low + 1]).exp()


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0) -> Tensor:
    """Noise levels of Karras et al. 2022 (arXiv:2206.00364), eq. 5, float64, descending.

    sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    i = 0..N-1 (the final sigma_N = 0 is appended by the sampler). rho = 7 is the paper's.
    """
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def split_output(
    model_output: Tensor, x: Tensor, alpha: float, sigma: float, prediction_type: str
) -> tuple[Tensor, Tensor]:
    """(x_0, eps) from a model output at x = alpha x_0 + sigma eps (the VP coefficients of any level).

    The coefficient form of :meth:`GaussianDiffusion.split_prediction`, for noise levels between
    training steps (fractional timesteps, Karras sigmas): eps: x_0 = (x - sigma eps) / alpha;
    x0: eps = (x - alpha x_0) / sigma; v (Salimans & Ho 2022, arXiv:2202.00512, appendix D):
    x_0 = alpha x - sigma v, eps = sigma x + alpha v.
    """
    if prediction_type == "eps":
        return (x - sigma * model_output) / alpha, model_output
    if prediction_type == "x0":
        return model_output, (x - alpha * model_output) / sigma
    if prediction_type == "v":
        return alpha * x - sigma * model_output, sigma * x + alpha * model_output
    raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {list(PREDICTION_TYPES)}")


# ------------------------------------------------------------------ the model and per-call state
class ModelFn:
    """The model as samplers see it: ``model_fn(x, t)`` -> the raw output (``eps | x0 | v``).

    Built once per sampling call by the loop from the network (and the class labels ``y``):
    ``x`` is the variance-preserving input, ``t`` a Python ``int`` (a training timestep, passed
    to the network as a LongTensor (B,)) or ``float`` (a fractional timestep between training
    steps, passed in x's dtype). A step may call it more than once; ``calls`` counts the
    network evaluations (NFE) of the run.

    Classifier-free guidance lives here, once for every sampler (:mod:`difflab.samplers.guidance`):
    with ``guidance`` and labels ``y`` the conditional and unconditional passes run as one
    batched forward (x twice; y, then ``null_label``) and their combination is returned; such
    an evaluation counts 2 in ``calls`` (w = 1 and w = 0 run one pass and count 1).
    ``sigma_of_t`` maps a timestep to its noise level, for the guidance interval. ``guided``
    says whether the last call returned such a combination (DDIM then re-derives eps from its
    clipped x_0: :class:`~difflab.samplers.ddim.DDIMSampler`).
    """

    def __init__(self, model: Callable[..., Tensor], y: Tensor | None = None, guidance: Any = None,
                 null_label: int | None = None, sigma_of_t: Callable[[int | float], float] | None = None) -> None:
        self.model = model
        self.y = y
        self.guidance = guidance
        self.null_label = null_label
        self.sigma_of_t = sigma_of_t
        self.calls = 0
        #: whether the last call returned a guided mix of two passes (w other than 0 and 1)
        self.guided = False

    def __call__(self, x: Tensor, t: int | float) -> Tensor:
        if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
            t_batch = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        else:
            t_batch = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
        self.guided = False
        if self.guidance is None or self.y is None:
            self.calls += 1
            return self.model(x, t_batch) if self.y is None else self.model(x, t_batch, self.y)
        from difflab.samplers.guidance import apply_guidance

        interval = self.guidance.interval is not None and self.sigma_of_t is not None
        w = self.guidance.scale_at(self.sigma_of_t(t) if interval else None)
        if w == 1.0 or w == 0.0:  # one pass: purely conditional / unconditional
            self.calls += 1
            return self.model(x, t_batch, self.y if w == 1.0 else torch.full_like(self.y, self.null_label))
        self.calls += 2
        self.guided = True
        y = torch.cat([self.y, torch.full_like(self.y, self.null_label)])
        cond, uncond = self.model(torch.cat([x, x]), torch.cat([t_batch, t_batch]), y).chunk(2)
        return apply_guidance(cond, uncond, w, self.guidance.rescale)


@dataclass
class SamplerState:
    """The per-call state of one sampling run, created by :meth:`Sampler.init_state` in the loop.

    - ``timesteps``: (S,) descending model timesteps, LongTensor (a spaced grid) or float64
      (fractional, e.g. under Karras sigmas);
    - ``sigmas``: (S + 1,) float64 noise levels sqrt((1 - alpha-bar) / alpha-bar) of the grid,
      the last one 0 (the clean sample);
    - ``index``: the step to take next (0..S-1), advanced by :meth:`Sampler.advance`;
    - ``history``, ``memory``: what multistep methods remember between steps (past model
      outputs, the last sample...), never kept on the sampler;
    - ``log_sigmas``: log sigma of every training step, to place noise levels off the grid.
    """

    process: GaussianDiffusion
    prediction_type: str
    timesteps: Tensor
    sigmas: Tensor
    index: int = 0
    history: list[Any] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    log_sigmas: Tensor | None = None

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.numel())

    def t(self, i: int) -> int | float:
        """Timestep ``i`` of the grid as a Python int (spaced grid) or float (fractional)."""
        value = self.timesteps[i].item()
        return int(value) if not self.timesteps.dtype.is_floating_point else float(value)

    def sigma(self, i: int) -> float:
        return float(self.sigmas[i])

    def t_of_sigma(self, sigma: float) -> float:
        """The fractional model timestep of a noise level off the grid (e.g. EDM's churned sigma-hat)."""
        if self.log_sigmas is None:
            self.log_sigmas = vp_sigmas(self.process).log()
        return float(sigma_to_t(torch.tensor(sigma, dtype=torch.float64), self.log_sigmas))


class Sampler:
    """Base class of the samplers: validated options, the grid, the step contract, x_0 post-processing.

    Subclasses implement :meth:`step` (one model output at t, nothing remembered: DDPM, DDIM)
    or override :meth:`advance` (several calls or a history: Heun, DPM-Solver, UniPC). What
    the model outputs (``eps | x0 | v``) is not a sampler option: it belongs to the trained
    model (its objective), and the loop passes it to :meth:`init_state` as ``prediction_type``;
    conversions go through :meth:`GaussianDiffusion.split_prediction` (or
    :func:`split_output` between training steps).
    With a zero-terminal-SNR process the first ``trailing`` step is at alpha-bar = 0, where an
    eps-prediction defines no x_0 (the step returns non-finite values): use ``v`` or ``x0``
    there (Lin et al. 2023, arXiv:2305.08891, sec. 3.2).
    """

    #: The sampler's option name in the ``sampler`` config group (and its registry key).
    name: ClassVar[str] = ""
    #: The default spacing, left out of the metric key.
    default_spacing: ClassVar[str] = "trailing"

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
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"

    def steps(self, num_train_timesteps: int) -> int:
        """The number of steps S of a run with T = ``num_train_timesteps``; validates ``num_steps`` against T.

        Use it (or :meth:`nfe`) to check a sampler against T: ``timesteps(T)`` alone cannot
        place Karras sigmas, which depend on the noise schedule.
        """
        return int(self.timesteps(num_train_timesteps).numel())

    def nfe(self, num_train_timesteps: int) -> int:
        """Network evaluations per sample: one per step here (Heun overrides it). Validates num_steps."""
        return self.steps(num_train_timesteps)

    def key_part(self, num_train_timesteps: int) -> str:
        """The sampler's part of a metric key (scheme in the module docstring), e.g. ``ddpm1000``:
        ``<name><steps>``, then :meth:`option_suffix`, :meth:`spacing_suffix` (off the default
        spacing, on a grid that skips timesteps) and :meth:`x0_suffix`."""
        T = int(num_train_timesteps)
        spacing = self.spacing_suffix() if self.steps(T) < T else ""
        return f"{self.name}{self.nfe(T)}{self.option_suffix()}{spacing}{self.x0_suffix()}"

    def option_suffix(self) -> str:
        """The method's own result-changing options off their defaults (DDIM: ``_eta1``)."""
        return ""

    def spacing_suffix(self) -> str:
        """``_<spacing>`` off the sampler's default spacing (``_leading_offset1`` with an offset)."""
        suffix = "" if self.spacing == self.default_spacing else f"_{self.spacing}"
        return suffix + (f"_offset{self.steps_offset}" if self.steps_offset and self.spacing == "leading" else "")

    #: (clip_sample, clip_range) that the key leaves unnamed: pixels' [-1, 1]; a latent model's
    #: sampler gets its own (:func:`difflab.latent.clip_for_latents`), so that the key names what
    #: a user changed, not a bound each run computes.
    x0_default: ClassVar[tuple[bool, float]] = (True, 1.0)

    def x0_suffix(self) -> str:
        """How x_0 estimates are post-processed, off the default (:attr:`x0_default`):
        ``_noclip``, ``_clip<range>``, or ``_dynthresh<ratio>`` (``_max<s>`` off s = 1)."""
        if self.dynamic_thresholding:
            return f"_dynthresh{key_number(self.dynamic_thresholding_ratio)}" + (
                f"_max{key_number(self.sample_max_value)}" if self.sample_max_value != 1 else "")
        clip, bound = self.x0_default
        if not self.clip_sample:
            return "_noclip" if clip else ""
        if not clip or self.clip_range != bound:
            return f"_clip{key_number(self.clip_range)}"
        return ""

    def timesteps(self, num_train_timesteps: int) -> Tensor:
        """Descending LongTensor of the timesteps this sampler visits (``num_steps`` None = all T)."""
        num_steps = num_train_timesteps if self.num_steps is None else self.num_steps
        return make_timesteps(num_train_timesteps, num_steps, self.spacing, self.steps_offset)

    def grid(self, process: GaussianDiffusion) -> tuple[Tensor, Tensor]:
        """(timesteps (S,), sigmas (S + 1,)) of a run on ``process``: see :class:`SamplerState`."""
        timesteps = self.timesteps(process.num_timesteps)
        sigmas = vp_sigmas(process)[timesteps]
        return timesteps, torch.cat([sigmas, sigmas.new_zeros(1)])

    def init_state(self, process: GaussianDiffusion, prediction_type: str) -> SamplerState:
        """A fresh :class:`SamplerState` for one sampling run (the loop calls this once per call)."""
        check_prediction_type(prediction_type)
        timesteps, sigmas = self.grid(process)
        return SamplerState(process=process, prediction_type=prediction_type, timesteps=timesteps, sigmas=sigmas)

    def advance(
        self,
        model: Callable[[Tensor, int | float], Tensor],
        x: Tensor,
        state: SamplerState,
        generator: Generators | None = None,
        *,
        noise: Tensor | None = None,
    ) -> StepOutput:
        """Take step ``state.index`` from ``x`` (one model call, then :meth:`step`) and advance the index."""
        i = state.index
        if not 0 <= i < state.num_steps:
            raise ValueError(f"state.index must lie in [0, {state.num_steps - 1}], got {i}; create a new state per call")
        t = state.t(i)
        t_prev = state.t(i + 1) if i + 1 < state.num_steps else -1
        output = model(x, t)
        out = self.step(state.process, output, t, t_prev, x, generator, prediction_type=state.prediction_type,
                        noise=noise, **self.step_options(model))
        state.index += 1
        return out

    def step_options(self, model: Any) -> dict[str, Any]:
        """Keyword arguments of :meth:`step` that :meth:`advance` reads off the model function
        after its call (DDIM: whether the output was guided); none by default."""
        return {}

    @property
    def postprocesses_x0(self) -> bool:
        """Whether :meth:`postprocess_x0` changes x_0 (clipping or dynamic thresholding is on)."""
        return self.clip_sample or self.dynamic_thresholding

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
        Only samplers whose step needs one model output and no history implement it.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no single-output step; sample through advance() (difflab.samplers.generate)"
        )


class SigmaSampler(Sampler):
    """Base of the samplers that step between noise levels sigma: Euler, Heun, DPM-Solver, UniPC.

    The grid is the spaced timesteps (``spacing``, ``steps_offset``: see :func:`make_timesteps`)
    and their sigma = sqrt((1 - alpha-bar) / alpha-bar), or with ``use_karras_sigmas`` the
    noise levels of Karras et al. 2022 (arXiv:2206.00364, eq. 5, exponent ``rho``) between
    ``sigma_min`` and ``sigma_max`` (default: sigma(0) and sigma(T - 1) of the training
    schedule, as diffusers does; EDM uses sigma_max = 80, which spares the steps a schedule
    such as cosine spends above it, where sigma(T - 1) = 2.03e4), each at the fractional
    timestep that has it (:func:`sigma_to_t`). The grid ends at sigma = 0: the last step returns the clean
    sample. The default spacing is ``trailing``, so that no step is spent between t = 0 and
    the clean sample (Lin et al. 2023, arXiv:2305.08891).

    Clipping or thresholding (on by default, as for DDIM) acts on every x_0 estimate the
    solver uses; pass ``clip_sample=False`` to integrate the unclipped ODE.
    """

    def __init__(
        self,
        num_steps: int,
        spacing: str = "trailing",
        use_karras_sigmas: bool = False,
        rho: float = 7.0,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        clip_sample: bool = True,
        clip_range: float = 1.0,
        dynamic_thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        steps_offset: int = 0,
    ) -> None:
        if not _is_int(num_steps) or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not rho > 0:
            raise ValueError(f"rho must be a number > 0, got {rho!r}")
        for key, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
                raise ValueError(f"{key} must be a number > 0 or null (the schedule's end), got {value!r}")
        if sigma_min is not None and sigma_max is not None and not sigma_min < sigma_max:
            raise ValueError(f"sigma_min must be < sigma_max, got {sigma_min!r} and {sigma_max!r}")
        if (sigma_min is not None or sigma_max is not None) and not use_karras_sigmas:
            raise ValueError("sigma_min and sigma_max set the Karras grid: pass use_karras_sigmas=true with them")
        super().__init__(
            num_steps=num_steps,
            spacing=spacing,
            clip_sample=clip_sample,
            clip_range=clip_range,
            dynamic_thresholding=dynamic_thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            sample_max_value=sample_max_value,
            steps_offset=steps_offset,
        )
        self.use_karras_sigmas = bool(use_karras_sigmas)
        self.rho = float(rho)
        self.sigma_min = None if sigma_min is None else float(sigma_min)
        self.sigma_max = None if sigma_max is None else float(sigma_max)

    # ------------------------------------------------------------------ grid and names
    def steps(self, num_train_timesteps: int) -> int:
        """The number of steps S, validated against T for a spaced grid."""
        if self.use_karras_sigmas:
            if not _is_int(num_train_timesteps) or num_train_timesteps < 2:
                raise ValueError(f"Karras sigmas need num_train_timesteps >= 2, got {num_train_timesteps!r}")
            return int(self.num_steps)
        return int(self.timesteps(num_train_timesteps).numel())

    def nfe(self, num_train_timesteps: int) -> int:
        """One network evaluation per step (Heun overrides it)."""
        return self.steps(num_train_timesteps)

    def timesteps(self, num_train_timesteps: int, process: GaussianDiffusion | None = None) -> Tensor:
        """The model timesteps of the grid: a LongTensor, or float64 under Karras sigmas (which need ``process``)."""
        if self.use_karras_sigmas:
            if process is None:
                raise ValueError(
                    "Karras sigmas depend on the noise schedule: call timesteps(T, process) or grid(process)"
                )
            return self.grid(process)[0]
        return make_timesteps(num_train_timesteps, int(self.num_steps), self.spacing, self.steps_offset)

    def grid(self, process: GaussianDiffusion) -> tuple[Tensor, Tensor]:
        table = vp_sigmas(process)
        if not self.use_karras_sigmas:
            timesteps = self.timesteps(process.num_timesteps)
            sigmas = table[timesteps]
        else:
            self.steps(process.num_timesteps)
            lo, hi = float(table[0]), float(table[-1])
            sigma_min = lo if self.sigma_min is None else self.sigma_min
            sigma_max = hi if self.sigma_max is None else self.sigma_max
            if not lo <= sigma_min < sigma_max <= hi * (1 + 1e-12):
                raise ValueError(
                    f"sigma_min={sigma_min:g}, sigma_max={sigma_max:g} must lie in the schedule's range "
                    f"[{lo:.4g}, {hi:.4g}] (the model saw no other noise levels) with sigma_min < sigma_max"
                )
            sigmas = karras_sigmas(sigma_min, sigma_max, int(self.num_steps), self.rho)
            timesteps = sigma_to_t(sigmas, table.log())
        return timesteps, torch.cat([sigmas, sigmas.new_zeros(1)])

    def init_state(self, process: GaussianDiffusion, prediction_type: str) -> SamplerState:
        state = super().init_state(process, prediction_type)
        state.log_sigmas = vp_sigmas(process).log()
        return state

    def variant(self) -> str:
        """The method and its non-default result-changing options, e.g. ``dpmpp2m_sde``."""
        raise NotImplementedError

    def grid_suffix(self) -> str:
        """``_karras`` (``_karras_rho<rho>`` off rho = 7, then ``_smin<sigma_min>``/``_smax<sigma_max>`` if set)
        or ``_<spacing>`` off the default spacing."""
        if self.use_karras_sigmas:
            part = "_karras" if self.rho == 7.0 else f"_karras_rho{key_number(self.rho)}"
            if self.sigma_min is not None:
                part += f"_smin{key_number(self.sigma_min)}"
            if self.sigma_max is not None:
                part += f"_smax{key_number(self.sigma_max)}"
            return part
        return self.spacing_suffix()

    def key_part(self, num_train_timesteps: int) -> str:
        """``<variant>_nfe<NFE>``, e.g. ``dpmpp2m_nfe10`` or ``heun_karras_nfe19``, then :meth:`x0_suffix`."""
        return f"{self.variant()}_nfe{self.nfe(num_train_timesteps)}{self.x0_suffix()}"

    # ------------------------------------------------------------------ shared pieces of a step
    def denoise(
        self, model: Callable[[Tensor, int | float], Tensor], x: Tensor, sigma: float, t: int | float,
        state: SamplerState,
    ) -> tuple[Tensor, Tensor]:
        """One model call at noise level ``sigma`` (timestep ``t``) on the VP sample ``x``.

        Returns the post-processed (clipped or thresholded) x_0 estimate and the eps consistent
        with it, eps = (x - alpha x_0) / sigma_vp (the model's own eps when nothing is clipped).
        """
        alpha, sigma_vp = vp_coefficients(sigma)
        model_output = model(x, t)
        if model_output.shape != x.shape:
            raise ValueError(
                f"the model output has shape {tuple(model_output.shape)} but x has shape {tuple(x.shape)}; they must match"
            )
        pred_x0, pred_eps = split_output(model_output, x, alpha, sigma_vp, state.prediction_type)
        if self.postprocesses_x0:
            pred_x0 = self.postprocess_x0(pred_x0)
            pred_eps = (x - alpha * pred_x0) / sigma_vp
        return pred_x0, pred_eps
