"""Every script in benchmarks/ runs with --quick and prints a markdown table.

Slow: on 2 CPU cores the scripts together take about 80 s when the machine is idle (12-21 s
each) and 5-15 minutes when it is shared. Run with ``pytest -m slow`` (``make test-slow``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
TABLE_RULE = re.compile(r"^\|(-{3,}:?\|)+$", re.MULTILINE)


def test_every_benchmark_is_listed():
    assert {"fid.py", "sampling.py", "train_throughput.py", "quality_nfe.py", "memory.py"} <= set(SCRIPTS)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_quick_prints_a_table(script, tmp_path):
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, f"{script} --quick failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    assert TABLE_RULE.search(proc.stdout), f"{script} --quick printed no markdown table:\n{proc.stdout[-2000:]}"


def test_step_flops_match_a_count_by_layer_hooks():
    """train_throughput.step_flops (FlopCounterMode) against an independent closed form: the
    forward FLOPs of the default UNet are those of its Conv2d and Linear layers,
    2 * (in/groups) * out * kh * kw * H_out * W_out and 2 * in * out per sample, plus the two
    matmuls of the middle attention block (Q K^T and A V over N = H * W positions of C
    channels: 2 * 2 * N^2 * C per sample)."""
    from difflab.backbones.unet import AttentionBlock
    import torch
    from torch import nn

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_throughput as tt

    params, fwd, total = tt.step_flops([], batch=4)
    cfg = tt.compose_train(tt.SWITCH_BASE)
    model = tt._backbone(cfg)
    assert params == sum(p.numel() for p in model.parameters())
    counted = []

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            counted.append(2 * mod.in_channels // mod.groups * mod.out_channels * kh * kw * out.shape[-2] * out.shape[-1] * out.shape[0])
        elif isinstance(mod, nn.Linear):
            counted.append(2 * mod.in_features * mod.out_features * out.shape[0])
        elif isinstance(mod, AttentionBlock):
            b, c, h, w = inp[0].shape
            counted.append(4 * b * (h * w) ** 2 * c)

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, AttentionBlock)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.randn(4, 1, 28, 28), torch.randint(0, 1000, (4,)))
    assert fwd == sum(counted)
    # backward: a gradient for the weights and one for the inputs, each a forward's worth
    # (the first layer needs no input gradient), so the step is just under 3 forwards
    assert 2.9 * fwd < total <= 3 * fwd
