"""Secrets (WANDB_API_KEY, values of secret-looking keys) stay out of stdout, the run dir and checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.conftest import ROOT, TINY, env, load_ckpt

import subprocess
import sys

FAKE_KEY = "fakekey0123456789abcdef0123456789abcdef01"
TOKEN = "s3cr3tTOKENvalue"
NESTED = "APIKEYvalue123"
SECRETS = (FAKE_KEY, TOKEN, NESTED)


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory):
    """One 2-step run with W&B (offline), the config tree printed, a key in the env and two secret overrides."""
    run_dir = tmp_path_factory.mktemp("secrets") / "run"
    tiny = [o for o in TINY if not o.startswith(("logger=", "print_config="))]
    cmd = [sys.executable, "train.py", *tiny, "logger=wandb", "print_config=true", "trainer.max_steps=2",
           "trainer.val_check_interval=2", f"+secret_token={TOKEN}", f"+my_service.api_key={NESTED}",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400,
                          env={**env(), "WANDB_API_KEY": FAKE_KEY})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def _files_holding(folder: Path, secret: str, skip: str | None = None) -> list[str]:
    hits = []
    for p in folder.rglob("*"):
        if p.is_file() and not (skip and skip in p.parts) and secret.encode() in p.read_bytes():
            hits.append(str(p.relative_to(folder)))
    return hits


def test_secrets_not_in_output_hydra_files_or_checkpoints(secret_run):
    run_dir, proc = secret_run
    assert "secret_token" in proc.stdout and "<redacted>" in proc.stdout  # the tree was printed, redacted
    for secret in SECRETS:
        assert secret not in proc.stdout and secret not in proc.stderr
        assert _files_holding(run_dir, secret, skip="wandb") == [], secret
    cfg = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "secret_token: <redacted>" in cfg and "api_key: <redacted>" in cfg
    hparams = load_ckpt(run_dir / "checkpoints" / "last.ckpt")["hyper_parameters"]["config"]
    assert hparams["secret_token"] == "<redacted>" and hparams["my_service"]["api_key"] == "<redacted>"


def test_secrets_not_in_the_wandb_run(secret_run):
    run_dir, _ = secret_run
    assert (run_dir / "wandb").is_dir()
    for secret in SECRETS:
        assert _files_holding(run_dir / "wandb", secret) == [], secret
