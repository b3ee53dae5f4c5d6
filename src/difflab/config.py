"""Structured config schemas: typos and wrong types stop a run before anything is built.

Each option file of the ``schedule``, ``objective``, ``sampler``, ``data`` and ``backbone``
groups starts from a schema stored here in Hydra's ConfigStore (``/schema/<group>/<name>``).
Every schema is made from the signature of the code it configures (a schedule: the process
constructor plus the schedule function; a sampler: its class), so each default has one home,
the code, and cannot drift: ``data.batchsize=3`` fails at composition with
"Key 'batchsize' not in ...", ``sampler.eta=abc`` fails with "could not be converted to Float".
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

_PRIMITIVES = (int, float, bool, str)


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


def schema_from_signature(
    target: str, name: str, skip: tuple[str, ...] = (), also: Any = None, fixed: dict[str, Any] | None = None
) -> type:
    """A dataclass with ``_target_`` and one typed field per constructor argument.

    ``also``: a second callable whose arguments become fields too (a schedule function behind
    ``GaussianDiffusion.from_schedule(**kwargs)``); ``fixed``: defaults that override the
    signature's (the schedule's ``name``).
    """
    from hydra.utils import get_object

    obj = get_object(target)
    fns = [obj.__init__ if inspect.isclass(obj) else obj] + ([also] if also is not None else [])
    fields: list[tuple[str, Any, Any]] = [("_target_", str, field(default=target))]
    params = []
    for fn in fns:
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # annotations that cannot be evaluated: fall back to Any
            hints = {}
        params += [(p, hints) for p in inspect.signature(fn).parameters.values()]
    seen: set[str] = set()
    for p, hints in params:
        if p.name in ("self", "cls", *skip, *seen) or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        seen.add(p.name)
        if fixed and p.name in fixed:
            p = p.replace(default=fixed[p.name])
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


def _camel(name: str) -> str:
    return name.title().replace("_", "")


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    global _registered
    if _registered:
        return
    from difflab.diffusion.schedules import SCHEDULES
    from difflab.samplers import SAMPLERS

    cs = ConfigStore.instance()
    process = "difflab.diffusion.process.GaussianDiffusion.from_schedule"
    for name, fn in SCHEDULES.items():
        node = schema_from_signature(process, f"{_camel(name)}ScheduleConfig", also=fn, fixed={"name": name})
        cs.store(group="schema/schedule", name=name, node=node)
    cs.store(group="schema", name="objective",
             node=schema_from_signature("difflab.diffusion.objectives.DiffusionObjective", "ObjectiveConfig"))
    for name, cls in SAMPLERS.items():
        node = schema_from_signature(f"{cls.__module__}.{cls.__qualname__}", f"{_camel(name)}SamplerConfig")
        cs.store(group="schema/sampler", name=name, node=node)
    for group, entries in SIGNATURE_SCHEMAS.items():
        for name, target in entries.items():
            node = schema_from_signature(target, f"{_camel(name)}{group.title()}Config")
            cs.store(group=f"schema/{group}", name=name, node=node)
    _registered = True
