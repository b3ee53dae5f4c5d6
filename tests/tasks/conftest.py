"""Fixtures of the editing-task tests: a tiny trained checkpoint and sample.py's composition."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.utils.test_checkpoint import tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.getbasetemp() / "tiny-run")


def run_task(ckpt, out: Path, task: str, *overrides: str):
    """``python sample.py task=<task> ckpt=... device=cpu`` as a library call."""
    from difflab.sample import run
    from tests.app.test_sample import compose_sample

    args = [f"ckpt={ckpt}", "device=cpu", "progress=false", f"task={task}", f"cache_dir={out / 'cache'}", *overrides]
    return run(compose_sample(args, out))


def task_fails(ckpt, out: Path, capsys, task: str, *overrides: str) -> str:
    """sample.py's main with a bad task setting: exit code 2 and one line on stderr (returned)."""
    import pytest as _pytest

    from difflab.sample import main
    from tests.app.test_sample import compose_sample

    cfg = compose_sample([f"ckpt={ckpt}", "device=cpu", "progress=false", f"task={task}", *overrides], out)
    capsys.readouterr()
    with _pytest.raises(SystemExit) as e:
        main(cfg)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert not (out / "results.npz").exists()
    return err
