"""Every script in benchmarks/ runs with --quick and prints a markdown table.

Slow: on the 2 shared CPU cores of the development machine the scripts together take
5-15 minutes (each is under a minute on an idle machine). Run with ``pytest -m slow``.
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
