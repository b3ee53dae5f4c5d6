"""Structured config schemas: typos and wrong types stop a run before anything is built.

Each option file of the ``schedule``, ``objective``, ``sampler``, ``data`` and ``backbone``
groups starts from a schema stored here in Hydra's ConfigStore (``/schema/<group>/<name>``).
The schemas of data modules and backbones are made from the constructors' signatures, so
they cannot drift from the code: ``data.batchsize=3`` fails at composition with
"Key 'batchsize' not in ...", ``sampler.eta=abc`` fails with "could not be converted to Float".
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

_PRIMITIVES = (int, float, bool, str)


# --------------------------------------------------------------------------- schedules
@dataclass
class ScheduleConfig:
    _target_: str = "difflab.diffusion.process.GaussianDiffusion.from_schedule"
    name: str = MISSING
    num_timesteps: int = 1000
    zero_terminal_snr: bool = False


@dataclass
class LinearScheduleConfig(ScheduleConfig):
    name: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02


@dataclass
class ScaledLinearScheduleConfig(ScheduleConfig):
    name: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012


@dataclass
class CosineScheduleConfig(ScheduleConfig):
    name: str = "cosine"
    s: float = 0.008
    max_beta: float = 0.999


@dataclass
class SigmoidScheduleConfig(ScheduleConfig):
    name: str = "sigmoid"
    start: float = -3.0
    end: float = 3.0
    tau: float = 1.0
    clamp_min: float = 1e-5


# --------------------------------------------------------------------------- objective
@dataclass
class ObjectiveConfig:
    _target_: str = "difflab.diffusion.objectives.DiffusionObjective"
    target: str = "eps"
    weighting: str = "uniform"
    gamma: float = 5.0


# --------------------------------------------------------------------------- samplers
@dataclass
class _SamplerCommon:
    clip_sample: bool = True
    clip_range: float = 1.0
    dynamic_thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    steps_offset: int = 0


@dataclass
class DDPMSamplerConfig(_SamplerCommon):
    _target_: str = "difflab.samplers.ddpm.DDPMSampler"
    num_steps: Optional[int] = None
    spacing: str = "leading"
    variance_type: str = "fixed_small"


@dataclass
class DDIMSamplerConfig(_SamplerCommon):
    _target_: str = "difflab.samplers.ddim.DDIMSampler"
    num_steps: int = 50
    eta: float = 0.0
    spacing: str = "trailing"


# --------------------------------------------------------------------------- from signatures
def _omegaconf_type(tp: Any) -> Any:
    """Map a Python annotation to a type OmegaConf can enforce (else Any)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp in _PRIMITIVES:
        return tp
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1 and len(non_none) < len(args):
            inner = _omegaconf_type(non_none[0])
            return Optional[inner] if inner is not Any else Any
        if set(non_none) == {int, float}:
            return float if len(non_none) == len(args) else Optional[float]
        return Any
    if origin in (list, tuple, typing.Sequence, List) or tp in (list, tuple):
        elem = [a for a in args if a is not Ellipsis]
        if len(set(elem)) == 1 and elem[0] in _PRIMITIVES:
            return List[elem[0]]
        return List[Any]
    return Any


def schema_from_signature(target: str, name: str, skip: tuple[str, ...] = ()) -> type:
    """A dataclass with ``_target_`` and one typed field per constructor argument."""
    from hydra.utils import get_object

    obj = get_object(target)
    fn = obj.__init__ if inspect.isclass(obj) else obj
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # annotations that cannot be evaluated: fall back to Any
        hints = {}
    fields: list[tuple[str, Any, Any]] = [("_target_", str, field(default=target))]
    for p in sig.parameters.values():
        if p.name in ("self", *skip) or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        tp = _omegaconf_type(hints.get(p.name, Any))
        default = p.default
        if default is p.empty:
            fields.append((p.name, tp, field(default=MISSING)))
        elif isinstance(default, (list, tuple, dict)):
            value = list(default) if not isinstance(default, dict) else dict(default)
            fields.append((p.name, tp, field(default_factory=lambda v=value: v)))
        elif default is None or isinstance(default, _PRIMITIVES):
            if default is None and tp is not Any and typing.get_origin(tp) is not typing.Union:
                tp = Optional[tp]
            fields.append((p.name, tp, field(default=default)))
        else:
            fields.append((p.name, Any, field(default=None)))
    return dataclasses.make_dataclass(name, fields)


# Data modules and backbones whose schema is read off their constructors.
SIGNATURE_SCHEMAS: dict[str, dict[str, str]] = {
    "data": {
        "mnist5k": "difflab.data.MNIST5kDataModule",
        "torchvision": "difflab.data.TorchvisionDataModule",
        "image_folder": "difflab.data.ImageFolderDataModule",
        "toy2d": "difflab.data.Toy2DDataModule",
    },
    "backbone": {
        "unet": "difflab.backbones.UNet",
        "diffusers_unet": "difflab.backbones.DiffusersUNet",
        "mlp": "difflab.backbones.MLP",
    },
}

_registered = False


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    for name, node in {
        "linear": LinearScheduleConfig,
        "scaled_linear": ScaledLinearScheduleConfig,
        "cosine": CosineScheduleConfig,
        "sigmoid": SigmoidScheduleConfig,
    }.items():
        cs.store(group="schema/schedule", name=name, node=node)
    cs.store(group="schema", name="objective", node=ObjectiveConfig)
    cs.store(group="schema/sampler", name="ddpm", node=DDPMSamplerConfig)
    cs.store(group="schema/sampler", name="ddim", node=DDIMSamplerConfig)
    for group, entries in SIGNATURE_SCHEMAS.items():
        for name, target in entries.items():
            node = schema_from_signature(target, f"{name.title().replace('_', '')}{group.title()}Config")
            cs.store(group=f"schema/{group}", name=name, node=node)
    _registered = True
