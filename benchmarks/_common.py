"""Helpers shared by the benchmark scripts: config composition, machine line, tables, timing."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def compose_train(overrides: Sequence[str] = (), output_dir: str | None = None):
    """conf/train.yaml composed with ``overrides``, as ``python train.py`` would (no run dir)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from difflab.config import register_configs
    from difflab.utils.hydra import register_resolvers

    register_resolvers()
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.output_dir = output_dir or "/tmp/difflab-bench-output"
        cfg.paths.root_dir = str(ROOT)
    return cfg


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine() -> str:
    import torch

    dev = "no GPU" if not torch.cuda.is_available() else torch.cuda.get_device_name(0)
    return (
        f"{os.cpu_count()} cores ({cpu_model()}), {dev}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}, "
        f"load average {loadavg()} (1/5/15 min)"
    )


def median(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """A markdown table; ``align`` holds 'l' or 'r' per column (default: first left, rest right)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    lines = ["| " + " | ".join(str(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" if a == "l" else "---:" for a in align) + "|")
    for r in rows:
        lines.append("| " + " | ".join(str(x) for x in r) + " |")
    return "\n".join(lines)


def status_kib(field: str, pid: int | str = "self") -> int:
    """A ``/proc/<pid>/status`` field in KiB (VmRSS, VmHWM, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


class Stopwatch:
    def __enter__(self) -> "Stopwatch":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.t0


def note(msg: str) -> None:
    """Progress to stderr (the tables go to stdout)."""
    print(msg, file=sys.stderr, flush=True)


#: A tiny UNet trained for a few steps in-process: what every benchmark's --quick scores (it
#: checks a pipeline, not a figure). No FID callback, no grids: the benchmark scores itself.
TINY = [
    "backbone.base_channels=8",
    "backbone.channel_mult=[1,2]",
    "backbone.num_res_blocks=1",
    "data.batch_size=16",
    "data.val_batch_size=16",
    "trainer.max_steps=4",
    "trainer.val_check_interval=4",
    "trainer.limit_val_batches=1",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "~callbacks.sample_grid",
    "~callbacks.progress_bar",
    "~callbacks.fid",
    "lr_warmup_steps=0",
    "logger=none",
    "print_config=false",
    "resume=false",
]


def train_tiny(out_dir: str, extra: Sequence[str] = ()) -> Path:
    """Train :data:`TINY` (plus ``extra`` overrides) into ``out_dir``; the path of its last.ckpt."""
    from difflab.train import run

    run(compose_train([*TINY, *extra], output_dir=out_dir))
    return Path(out_dir) / "checkpoints" / "last.ckpt"
