"""Hydra/OmegaConf glue: resolvers, config printing, redaction of secrets."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

from omegaconf import DictConfig, OmegaConf

from difflab.utils.secrets import REDACTED, is_secret_key  # noqa: F401  (re-exported)
from difflab.utils.secrets import redact as _redact


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has AVX512-BF16 or AMX-BF16 (bf16 autocast pays off there)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def auto_precision(kind: str = "auto") -> str:
    """Resolve ``${dl.precision:auto}``: bf16-mixed where bf16 is fast, else 32-true."""
    if kind != "auto":
        return kind
    import torch

    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


def auto_channels_last(accelerator: str = "auto", precision: str = "32-true") -> bool:
    """Resolve ``${dl.channels_last:${trainer.accelerator},${trainer.precision}}``.

    Channels-last pays on GPUs (cuDNN's NHWC kernels) and for float32 convolutions on CPUs
    (oneDNN: 2.1x the contiguous step on an AVX2 EPYC, 1.02x on an AVX512 one), but under
    bf16 autocast on a CPU it is the slow path (0.51x contiguous bf16 on an AVX512-BF16 EPYC;
    benchmarks/README.md, "Speed switches"). So: true, except for bf16 on the CPU.
    """
    accelerator = str(accelerator).lower()
    on_cpu = accelerator == "cpu"
    if accelerator == "auto":
        import torch

        on_cpu = not torch.cuda.is_available()
    return not (on_cpu and str(precision).startswith("bf16"))


def data_shape(data_node: Any, index: Any = None) -> Any:
    """Resolve ``${dl.data_shape:${data},0}``: the data module's sample shape (or one entry).

    Backbone configs take their in_channels and image_size from here, so ``data=cifar10``
    or ``data.pad_to_32=true`` needs no matching backbone override. Data module
    constructors do no I/O, so building one here is cheap.
    """
    import hydra

    dm = hydra.utils.instantiate(data_node)
    shape = [int(s) for s in dm.image_shape]
    return shape if index is None else shape[int(index)]


def data_num_classes(data_node: Any) -> int | None:
    """Resolve ``${dl.num_classes:${data}}`` (conf/conditioning/class.yaml): the data set's number
    of classes, None when it has no labels (the constructor does no I/O, except that
    ``data=image_folder data.class_folders=true`` lists the subfolders of its root)."""
    import hydra

    dm = hydra.utils.instantiate(data_node)
    k = getattr(dm, "num_classes", None)
    return None if k is None else int(k)


def metric_key(metric: str = "fid", *, _root_: Any) -> str:
    """Resolve ``${dl.metric_key:fid}``: the key the FID callback logs its score under in this run.

    E.g. ``fid/digits/ddim50_eta1/n1000``: the metric, ``callbacks.fid.feature``, the sampler's
    key part (``callbacks.fid.sampler``, else the run's ``sampler``, on ``schedule.num_timesteps``
    steps) and ``callbacks.fid.n``, built by the same functions as the score
    (``difflab.evaluation.protocol``), so a sweep's ``optimized_metric`` follows the key when
    the sampler or n change.
    """
    import hydra

    from difflab.evaluation.protocol import protocol_key, sampler_key

    fid = OmegaConf.select(_root_, "callbacks.fid")
    if fid is None:
        raise ValueError(f"${{dl.metric_key:{metric}}} needs the FID callback; keep callbacks.fid (it is in callbacks=default)")
    node = fid.get("sampler") or _root_.sampler
    sampler = hydra.utils.instantiate(node)
    guidance = None
    conditioning = OmegaConf.select(_root_, "conditioning")
    if conditioning is not None and conditioning.get("num_classes") is not None:
        # conditioning=class: the FID callback scores balanced labels under the run's guidance
        from difflab.conditioning import ClassConditioning
        from difflab.samplers.guidance import guidance_key, guided_nfe

        g = ClassConditioning(int(conditioning.num_classes), 0.0, conditioning.get("guidance_scale", 2.0),
                              conditioning.get("guidance_rescale", 0.0), conditioning.get("guidance_interval")).guidance
        process = hydra.utils.instantiate(_root_.schedule)
        guidance = guidance_key(g, guided_nfe(process, sampler, str(_root_.objective.target), g), "uniform")
    return protocol_key(metric, str(fid.feature), sampler_key(sampler, int(_root_.schedule.num_timesteps)), int(fid.n),
                        guidance)


def sweep_group() -> str | None:
    """Resolve ``${dl.sweep_group:}`` (conf/train.yaml ``group``): the W&B group of this job of a
    multirun (``difflab.utils.sweeps.wandb_identity``, ``train-<sweep dir name>``), None in a
    single run. So the logged config holds the group as well as W&B's run record, and a
    dashboard can filter on ``config.group``."""
    from difflab.utils.sweeps import wandb_identity

    return wandb_identity().get("group")


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("dl.sweep_group"):
        OmegaConf.register_new_resolver("dl.sweep_group", sweep_group)
    if not OmegaConf.has_resolver("dl.metric_key"):
        OmegaConf.register_new_resolver("dl.metric_key", metric_key)
    if not OmegaConf.has_resolver("dl.data_shape"):
        OmegaConf.register_new_resolver("dl.data_shape", data_shape)
    if not OmegaConf.has_resolver("dl.num_classes"):
        OmegaConf.register_new_resolver("dl.num_classes", data_num_classes)
    if not OmegaConf.has_resolver("dl.precision"):
        OmegaConf.register_new_resolver("dl.precision", auto_precision)
    if not OmegaConf.has_resolver("dl.channels_last"):
        OmegaConf.register_new_resolver("dl.channels_last", auto_channels_last)
    if not OmegaConf.has_resolver("dl.cpu_count"):
        OmegaConf.register_new_resolver("dl.cpu_count", lambda: os.cpu_count() or 1)


def redact(obj: Any) -> Any:
    """A copy of a plain config container with secrets replaced (``difflab.utils.secrets``)."""
    return _redact(obj)


def to_plain_dict(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python containers, with secrets redacted."""
    return redact(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))


def print_config_tree(cfg: DictConfig, order: tuple[str, ...] = ()) -> None:
    """Print the resolved config as a rich tree (call on rank 0 only)."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    plain = to_plain_dict(cfg)
    keys = [k for k in order if k in plain] + [k for k in plain if k not in order]
    for key in keys:
        branch = tree.add(str(key), style="bold")
        value = plain[key]
        text = OmegaConf.to_yaml(OmegaConf.create({key: value})) if isinstance(value, (dict, list)) else str(value)
        if isinstance(value, (dict, list)):
            text = OmegaConf.to_yaml(OmegaConf.create(value)) if isinstance(value, dict) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
