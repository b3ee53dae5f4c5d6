"""What a model is conditioned on (``conf/conditioning/``): nothing, a class label, or a low-resolution image.

``conditioning=class`` trains a class-conditional model for classifier-free guidance (Ho &
Salimans 2022, arXiv:2207.12598, Algorithm 1): each training label is replaced by the null
label with probability ``p_uncond``, so one network learns the conditional and the
unconditional model; the null label is the last row (index ``num_classes``) of the backbone's
learned class embedding (``num_classes + 1`` rows, in difflab's UNet and in diffusers'
``UNet2DModel`` through ``num_class_embeds``). ``num_classes`` comes from the data set.

The guidance settings here are what the training callbacks sample with (grids, FID);
sample.py and benchmarks/guidance.py choose their own.

``conditioning=low_res`` trains a super-resolution model, SR3 (Saharia et al. 2021,
arXiv:2104.07636, sec. 2.4): the condition of an image is its low-resolution version (average
pooling by ``factor``), upsampled back to the full size with bicubic interpolation and
concatenated to x_t along the channels (:class:`~difflab.backbones.concat.ConcatConditioned`),
so the network sees 2C channels and predicts C. Pure torch (no Lightning, no Hydra).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ClassConditioning", "LowResConditioning", "NoConditioning", "balanced_labels", "check_labels"]


class NoConditioning:
    """Unconditional models (``conditioning=none``, the default)."""

    num_classes = None
    p_uncond = 0.0

    def __init__(self, num_classes: None = None) -> None:
        if num_classes is not None:
            raise ValueError(f"conditioning=none has no classes, got num_classes={num_classes!r}; use conditioning=class")

    def __repr__(self) -> str:
        return "NoConditioning()"


class ClassConditioning:
    """Class labels with label dropout (classifier-free guidance training).

    Args:
        num_classes: the data set's classes (``${dl.num_classes:${data}}``); the null label is
            ``num_classes``.
        p_uncond: probability that a training label is replaced by the null label (Ho &
            Salimans use 0.1 or 0.2).
        guidance_scale: the w that sample grids and FID use during training (1: conditional).
        guidance_rescale: guidance rescale phi for those (Lin et al. 2023, arXiv:2305.08891).
        guidance_interval: [sigma_lo, sigma_hi] for those (Kynkäänniemi et al. 2024,
            arXiv:2404.07724), or None.
    """

    def __init__(
        self,
        num_classes: int | None,
        p_uncond: float = 0.1,
        guidance_scale: float = 2.0,
        guidance_rescale: float = 0.0,
        guidance_interval: Sequence[float] | None = None,
    ) -> None:
        if num_classes is None:
            raise ValueError(
                "conditioning=class needs labelled data, but the data set has no classes (num_classes=null); "
                "use conditioning=none, a labelled data set, or data=image_folder data.class_folders=true"
            )
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"conditioning.num_classes must be an integer >= 1, got {num_classes!r}")
        if isinstance(p_uncond, bool) or not isinstance(p_uncond, (int, float)) or not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"conditioning.p_uncond must be a probability in [0, 1] (e.g. 0.1), got {p_uncond!r}")
        from difflab.samplers.guidance import Guidance

        self.num_classes = int(num_classes)
        self.p_uncond = float(p_uncond)
        self.guidance = Guidance(guidance_scale, guidance_rescale,
                                 tuple(guidance_interval) if guidance_interval is not None else None)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def drop_labels(self, y: Tensor, generator: torch.Generator) -> Tensor:
        """y with each label replaced by the null label with probability ``p_uncond``.

        The mask is drawn from ``generator`` (the training generator of the step), so label
        dropout is reproducible and differs across DDP ranks like the training noise.
        """
        if self.p_uncond == 0.0:
            return y
        u = torch.rand(y.shape, generator=generator, device=generator.device).to(y.device)
        return torch.where(u < self.p_uncond, torch.full_like(y, self.null_label), y)

    def __repr__(self) -> str:
        return f"ClassConditioning(num_classes={self.num_classes}, p_uncond={self.p_uncond}, guidance={self.guidance})"


class LowResConditioning:
    """Super-resolution conditioning (SR3, Saharia et al. 2021, arXiv:2104.07636).

    Args:
        factor: the upsampling factor, 2 or 4 (mnist5k: 14x14 -> 28x28 or 7x7 -> 28x28).
        upsample: how the low-res image is brought back to the full size before it is
            concatenated to x_t: ``bicubic`` (SR3, sec. 2.4) or ``nearest``.

    The low-res image of x0 is ``F.avg_pool2d(x0, factor)`` (the box filter of the anti-aliased
    downsampling SR3 trains on); its upsampled version is the condition y of the network and the
    bicubic baseline of ``task=super_resolution``. Values stay in the data's [-1, 1].
    """

    num_classes = None
    p_uncond = 0.0
    FACTORS = (2, 4)
    MODES = ("bicubic", "nearest")

    def __init__(self, factor: int = 4, upsample: str = "bicubic") -> None:
        if isinstance(factor, bool) or not isinstance(factor, int) or factor not in self.FACTORS:
            raise ValueError(f"conditioning.factor must be one of {list(self.FACTORS)} (the upsampling factor), got {factor!r}")
        if upsample not in self.MODES:
            raise ValueError(f"conditioning.upsample must be one of {list(self.MODES)}, got {upsample!r}")
        self.factor = int(factor)
        self.upsample_mode = str(upsample)

    def check_shape(self, image_shape: Sequence[int]) -> tuple[int, int, int]:
        """The full-size (C, H, W); ValueError when the data are not images divisible by the factor."""
        shape = tuple(int(s) for s in image_shape)
        if len(shape) != 3:
            raise ValueError(f"conditioning=low_res needs image data (C, H, W), the data have shape {shape}")
        c, h, w = shape
        if h % self.factor or w % self.factor:
            raise ValueError(f"conditioning=low_res: images of {h}x{w} are not divisible by factor {self.factor}; "
                             f"use conditioning.factor={[f for f in self.FACTORS if h % f == 0 and w % f == 0] or 'none'}")
        return shape

    def low_res_shape(self, image_shape: Sequence[int]) -> tuple[int, int, int]:
        c, h, w = self.check_shape(image_shape)
        return (c, h // self.factor, w // self.factor)

    def downsample(self, x: Tensor) -> Tensor:
        """The low-resolution images (B, C, H / factor, W / factor) of x (B, C, H, W)."""
        if x.ndim != 4 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"downsample takes (B, C, H, W) images with H, W divisible by {self.factor}, got {tuple(x.shape)}")
        return F.avg_pool2d(x.float(), self.factor)

    def upsample(self, low_res: Tensor, size: Sequence[int] | None = None) -> Tensor:
        """``low_res`` brought to ``size`` (default: factor times its size), clamped to [-1, 1]."""
        size = tuple(int(s) for s in size) if size is not None else (low_res.shape[-2] * self.factor, low_res.shape[-1] * self.factor)
        kwargs = {"align_corners": False} if self.upsample_mode == "bicubic" else {}
        return F.interpolate(low_res.float(), size=size, mode=self.upsample_mode, **kwargs).clamp(-1.0, 1.0)

    def condition(self, x0: Tensor) -> Tensor:
        """The network's condition y of full-size images x0: upsample(downsample(x0))."""
        return self.upsample(self.downsample(x0), x0.shape[-2:]).to(x0.dtype)

    def __repr__(self) -> str:
        return f"LowResConditioning(factor={self.factor}, upsample={self.upsample_mode!r})"


def balanced_labels(n: int, num_classes: int) -> Tensor:
    """Labels 0, 1, ..., K-1, 0, 1, ... of n samples: sample i has class i mod K, so any n
    is as balanced as it can be, and sample i's class does not depend on n or the batches."""
    return torch.arange(int(n), dtype=torch.long) % int(num_classes)


def check_labels(labels: Any, n: int, num_classes: int | None, where: str = "labels") -> Tensor:
    """``labels`` as a LongTensor (n,), or ValueError in one line (wrong count, out of range,
    or labels for an unconditional model)."""
    if num_classes is None:
        raise ValueError(f"{where}: the model is unconditional (trained with conditioning=none) and takes no class labels")
    t = torch.as_tensor(labels)
    if t.is_floating_point() and not bool((t == t.round()).all()):
        raise ValueError(f"{where} must be integers in [0, {num_classes - 1}], got {t.tolist()}")
    t = t.long().reshape(-1)
    if t.numel() != int(n):
        raise ValueError(f"{where}: {t.numel()} labels for n={n} samples; give exactly n labels, or labels=uniform / class=K")
    bad = t[(t < 0) | (t >= num_classes)]
    if bad.numel():
        raise ValueError(f"{where}: label {int(bad[0])} is out of range; the model has classes 0..{num_classes - 1}")
    return t


def sampling_labels(labels: Any, class_label: Any, n: int, num_classes: int | None) -> tuple[Tensor | None, str | None]:
    """(labels (n,), scheme name) of sample.py's ``labels=`` / ``class=`` options.

    ``labels=uniform`` (the default for a conditional model: sample i of class i mod K),
    ``labels=[3,3,7]`` (exactly n labels; scheme ``list``) or ``class=3`` (all n of class 3;
    scheme ``class3``). An unconditional model (``num_classes`` None) takes none of them:
    (None, None). ValueError in one line for anything that cannot work.
    """
    if labels is not None and class_label is not None:
        raise ValueError("give labels=... or class=..., not both")
    given = labels is not None or class_label is not None
    if num_classes is None:
        if given and not (isinstance(labels, str) and labels.lower() == "none"):
            raise ValueError("labels/class: the checkpoint is unconditional (trained with conditioning=none) and takes "
                             "no class labels; drop labels=/class= (or train with conditioning=class)")
        return None, None
    if class_label is not None:
        if isinstance(class_label, bool) or not isinstance(class_label, int) or not 0 <= class_label < num_classes:
            raise ValueError(f"class={class_label!r} is out of range; the model has classes 0..{num_classes - 1}")
        return torch.full((int(n),), int(class_label), dtype=torch.long), f"class{int(class_label)}"
    if labels is None or (isinstance(labels, str) and labels.lower() == "uniform"):
        return balanced_labels(n, num_classes), "uniform"
    if isinstance(labels, str):
        raise ValueError(f"labels={labels!r}: accepted are uniform, a list of n class labels (labels=[3,3,7]) or class=K")
    if isinstance(labels, int) and not isinstance(labels, bool):
        labels = [labels]
    return check_labels(list(labels), n, num_classes, "labels"), "list"


def class_grid(samples: Tensor, labels: Tensor, num_classes: int, size: int) -> tuple[Tensor, int] | None:
    """(images, columns) of a grid with one class per row, from the samples in order: row k
    holds the first ``size // num_classes`` samples of class k (at least 1). None when some
    class has too few samples for that (e.g. ``class=3``), or when only one class was drawn."""
    present = torch.unique(labels)
    if present.numel() < 2:
        return None
    cols = max(1, int(size) // int(num_classes))
    rows = []
    for k in range(int(num_classes)):
        idx = (labels == k).nonzero().flatten()[:cols]
        if idx.numel() < cols:
            return None
        rows.append(samples[idx])
    return torch.cat(rows), cols


def sampling_guidance(scale: Any, rescale: Any, interval: Any, num_classes: int | None,
                      trained: dict[str, Any] | None = None) -> Any:
    """The :class:`~difflab.samplers.guidance.Guidance` of sample.py's ``guidance_scale``,
    ``guidance_rescale``, ``guidance_interval``; each one left null takes the value the model
    was trained to sample with (``trained``: the checkpoint's ``conditioning`` config), else
    1 / 0 / none. None for an unconditional model, which takes no guidance (ValueError when
    one is given)."""
    from difflab.samplers.guidance import Guidance

    if num_classes is None:
        if scale is not None and float(scale) != 1.0 or rescale or interval is not None:
            raise ValueError("guidance_*: the checkpoint is unconditional (trained with conditioning=none); classifier-"
                             "free guidance needs a model trained with conditioning=class")
        return None
    trained = trained or {}
    scale = trained.get("guidance_scale", 1.0) if scale is None else scale
    rescale = trained.get("guidance_rescale", 0.0) if rescale is None else rescale
    interval = trained.get("guidance_interval") if interval is None else interval
    return Guidance(scale, rescale or 0.0, None if interval is None else tuple(interval))
