"""The layer rules of src/difflab (README, "Architecture"): imports run downward only.

1. diffusion/, backbones/, metrics/, errors.py: pure torch (no Lightning, no Hydra)
2. samplers/ (uses 1), data/
3. evaluation/ (uses 1-2, reaches the ranks through torch.distributed), module.py, utils/
4. callbacks/, tasks/, build.py
5. train.py, sample.py (the libraries behind the entry points)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "difflab"
PURE = ("diffusion", "samplers", "backbones", "metrics", "evaluation")
FRAMEWORKS = ("lightning", "pytorch_lightning", "hydra", "omegaconf")


def _imports(path: Path) -> set[str]:
    """Every module a file imports (at any depth: function-level imports count too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def _files(*parts: str) -> list[Path]:
    return sorted((SRC.joinpath(*parts)).rglob("*.py")) if (SRC.joinpath(*parts)).is_dir() else [SRC.joinpath(*parts)]


def _rel(path: Path) -> str:
    return str(path.relative_to(SRC))


@pytest.mark.parametrize("package", PURE)
def test_pure_layers_import_neither_lightning_nor_hydra(package):
    bad = [
        f"{_rel(f)} imports {m}"
        for f in _files(package)
        for m in sorted(_imports(f))
        if m.split(".")[0] in FRAMEWORKS
    ]
    assert not bad, bad


def test_nothing_in_the_library_imports_the_entry_point_modules():
    bad = [
        f"{_rel(f)} imports {m}"
        for f in sorted(SRC.rglob("*.py"))
        if _rel(f) not in ("train.py", "sample.py")
        for m in sorted(_imports(f))
        if m in ("difflab.train", "difflab.sample") or m.startswith(("difflab.train.", "difflab.sample."))
    ]
    assert not bad, bad


@pytest.mark.parametrize("package", ["diffusion", "backbones", "metrics", "errors.py", "samplers", "data",
                                     "evaluation", "module.py", "utils"])
def test_nothing_below_callbacks_imports_callbacks(package):
    bad = [
        f"{_rel(f)} imports {m}"
        for f in _files(package)
        for m in sorted(_imports(f))
        if m.startswith(("difflab.callbacks", "difflab.tasks"))
    ]
    assert not bad, bad


def test_only_checkpoint_loading_reaches_up_to_build():
    """Rebuilding a model from a checkpoint's config goes through build.py, like every other
    "config -> object" step; it is the one deferred import of build from below it."""
    users = sorted(
        _rel(f)
        for package in ("diffusion", "backbones", "metrics", "errors.py", "samplers", "data", "evaluation",
                        "module.py", "utils")
        for f in _files(package)
        if any(m.startswith("difflab.build") for m in _imports(f))
    )
    assert users in ([], ["utils/checkpoint.py"]), users


def test_the_lowest_layer_imports_nothing_above_it():
    above = ("difflab.samplers", "difflab.data", "difflab.evaluation", "difflab.module", "difflab.utils")
    bad = [
        f"{_rel(f)} imports {m}"
        for package in ("diffusion", "backbones", "metrics", "errors.py")
        for f in _files(package)
        for m in sorted(_imports(f))
        if m.startswith(above)
    ]
    assert not bad, bad


def test_the_evaluation_path_reaches_the_ranks_through_torch_distributed():
    text = "".join(f.read_text() for f in _files("evaluation"))
    assert "torch.distributed" in text
