"""Secrets under many key spellings, and token-shaped values under any key, stay out of every
file a multirun writes (.hydra/*.yaml, multirun.yaml, checkpoints, the W&B run, logs) and out of
the console, Hydra's ``#0 : ...`` launch lines included; hashes, run ids and ordinary keys stay
readable. The same sweep, run again, skips its finished job and starts no W&B run for it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from omegaconf import OmegaConf

from difflab.utils.secrets import REDACTED, is_secret_key, redact, redact_text
from difflab.utils.sweeps import finished_marker
from tests.faults.conftest import ROOT, TINY, env, load_ckpt

# key spellings -> a distinct value each (mixed case and digits: replaced wherever they appear)
SECRET_KEYS = {
    "+s3.access_key": "AccessVal1x9Q",
    "+db.pwd": "PwdVal2x9Q",
    "+db.password": "PasswordVal3x9Q",
    "+vault.passphrase": "PhraseVal4x9Q",
    "+svc.auth": "AuthVal5x9Q",
    "+svc.auth_header": "HeaderVal6x9Q",
    "+ssh.private_key": "PrivVal7x9Q",
    "+svc.bearer": "BearerVal8x9Q",
    "+web.cookie": "CookieVal9x9Q",
    "+web.session": "SessionVal10x9Q",
    "+web.session_id": "SessIdVal11x9Q",
    "+hf_token": "HfTokVal12x9Q",
    "+env.GITHUB_TOKEN": "GhTokVal13x9Q",
    "+aws.AWS_SECRET_ACCESS_KEY": "AwsSecVal14x9Q",
    "+svc.apiKey": "CamelVal15x9Q",
    "+svc.clientSecret": "ClientVal16x9Q",
    "+svc.x-api-key": "DashVal17x9Q",
    "+svc.credentials": "CredVal18x9Q",
    "+svc.signing_key": "SignVal19x9Q",
}
# token shapes under keys that look harmless
TOKENS = {
    "notes": "sk-proj-Abc123def456GHI789jkl012",
    "+misc.a": "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "+misc.b": "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuv",
    "+misc.c": "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345",
    "+misc.d": "AKIAIOSFODNN7EXAMPLE",
    "+misc.e": "xoxb-123456789012-1234567890123-AbCdEfGhIjKl",
    "+misc.f": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
}
FAKE_WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"
# must stay readable
FEATURE_HASH = "3f786850e387550fdab836ed7e6dc881de23001b"  # a sha1, like the FID feature hash
RUN_ID = "k3x9q2m7"  # a W&B run id
READABLE = {"+probe.feature_hash": FEATURE_HASH, "+probe.run_id": RUN_ID, "+probe.max_tokens": "4096",
            "+probe.tokenizer": "bpe", "+probe.author": "ada"}


@pytest.mark.parametrize("key", [k.lstrip("+") for k in SECRET_KEYS] + ["token", "Password", "DB_PASS_PHRASE",
                                                                        "refresh-token", "sessionCookie"])
def test_secret_key_spellings(key):
    assert is_secret_key(key), key


@pytest.mark.parametrize("key", ["feature_hash", "exclude_keys", "run_id", "id", "max_tokens", "tokenizer", "author",
                                 "keys", "key_part", "num_heads", "base_channels", "monkey", "hotkey", "passes",
                                 "item_sep", "kv_sep", "name", "group", "sweep"])
def test_ordinary_keys_are_not_secret(key):
    assert not is_secret_key(key), key


def test_values_by_shape_and_no_false_positives():
    for value in TOKENS.values():
        assert redact_text(f"x={value} y", []) == f"x={REDACTED} y"
        assert redact({"a": [value]}) == {"a": [REDACTED]}
    plain = {"feature_hash": FEATURE_HASH, "run_id": RUN_ID, "exclude_keys": ["seed", "resume"], "uuid": "task-0001"}
    assert redact(plain) == plain
    text = (f"feature_hash: {FEATURE_HASH}\nid: {RUN_ID}\nexclude_keys: [seed, hydra.run.dir]\n"
            "override_dirname: objective=v,schedule=linear\n")
    assert redact_text(text, []) == text
    # a secret inside another value, and a sweep of secret values
    assert redact_text("override_dirname: a=1,db.pwd=x1y2,b=2", []) == f"override_dirname: a=1,db.pwd={REDACTED},b=2"
    assert redact_text("+db.pwd=one1,two2 seed=0", []) == f"+db.pwd={REDACTED} seed=0"
    assert redact_text("token=${oc.env:MY_TOKEN}", []) == "token=${oc.env:MY_TOKEN}"  # no secret in it
    assert redact_text("use_auth: true\nsession: null\n", []) == "use_auth: true\nsession: null\n"
    assert redact({"use_auth": True, "session": None}) == {"use_auth": True, "session": None}


@pytest.fixture(scope="module")
def secret_multirun(tmp_path_factory):
    """A one-job multirun with W&B offline, the config tree printed and every spelling above."""
    sweep_dir = tmp_path_factory.mktemp("secret-multirun") / "sweep"
    tiny = [o for o in TINY if not o.startswith(("logger=", "print_config="))]
    given = {**SECRET_KEYS, **TOKENS, **READABLE}
    cmd = [sys.executable, "train.py", "-m", *tiny, "logger=wandb", "print_config=true", "trainer.max_steps=2",
           "trainer.val_check_interval=2", *(f"{k}={v}" for k, v in given.items()), f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400,
                          env={**env(), "WANDB_API_KEY": FAKE_WANDB_KEY})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return sweep_dir, proc, cmd


def test_no_secret_in_any_file_or_line_of_a_multirun(secret_multirun):
    sweep_dir, proc, _ = secret_multirun
    console = proc.stdout + proc.stderr
    assert "#0 : " in console and f"+db.pwd={REDACTED}" in console  # the launch line, redacted
    assert "<redacted>" in console.split("#0 : ", 1)[1]  # the config tree too
    files = [p for p in sweep_dir.rglob("*") if p.is_file()]
    names = {p.relative_to(sweep_dir).as_posix() for p in files}
    assert {"multirun.yaml", "0/.hydra/config.yaml", "0/.hydra/hydra.yaml", "0/.hydra/overrides.yaml",
            "0/checkpoints/last.ckpt"} <= names
    assert any(n.startswith("0/wandb/") for n in names) and any(n.endswith(".log") for n in names)
    leaks = {}
    for secret in [*SECRET_KEYS.values(), *TOKENS.values(), FAKE_WANDB_KEY]:
        hits = [p.relative_to(sweep_dir).as_posix() for p in files if secret.encode() in p.read_bytes()]
        if hits or secret in console:
            leaks[secret] = hits + (["console"] if secret in console else [])
    assert leaks == {}
    hparams = load_ckpt(sweep_dir / "0" / "checkpoints" / "last.ckpt")["hyper_parameters"]["config"]
    assert hparams["db"]["pwd"] == hparams["s3"]["access_key"] == hparams["notes"] == REDACTED


def test_hashes_ids_and_ordinary_keys_stay_readable(secret_multirun):
    sweep_dir, _, _ = secret_multirun
    config = (sweep_dir / "0" / ".hydra" / "config.yaml").read_text()
    assert f"feature_hash: {FEATURE_HASH}" in config and f"run_id: {RUN_ID}" in config
    assert "max_tokens: 4096" in config and "tokenizer: bpe" in config and "author: ada" in config
    hydra_yaml = (sweep_dir / "0" / ".hydra" / "hydra.yaml").read_text()
    assert "exclude_keys:\n        - seed\n        - hydra.run.dir\n" in hydra_yaml
    multirun = (sweep_dir / "multirun.yaml").read_text()
    assert f"+probe.feature_hash={FEATURE_HASH}" in multirun and f"+db.pwd={REDACTED}" in multirun
    hparams = load_ckpt(sweep_dir / "0" / "checkpoints" / "last.ckpt")["hyper_parameters"]["config"]
    assert hparams["probe"] == {"feature_hash": FEATURE_HASH, "run_id": RUN_ID, "max_tokens": 4096,
                                "tokenizer": "bpe", "author": "ada"}


def test_rerunning_the_sweep_skips_the_finished_job(secret_multirun):
    """The job finished at max_steps (a marker in its run dir): the same command again skips
    it, says so, and starts no W&B run (before, every re-run added an empty run to the group)."""
    sweep_dir, _, cmd = secret_multirun
    job = sweep_dir / "0"
    marker = OmegaConf.load(finished_marker(job))
    assert marker.global_step == 2 and "trainer.max_steps=2" in marker.overrides
    assert f"+db.pwd={REDACTED}" in marker.overrides
    run_id = (job / "wandb" / "run_id").read_text().strip()
    assert marker.wandb_run_id == run_id
    wandb_before = sorted(p.name for p in (job / "wandb").iterdir())
    ckpt_mtime = (job / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400,
                           env={**env(), "WANDB_API_KEY": FAKE_WANDB_KEY})
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert "job 0: finished before at global step 2" in again.stdout and "skipping it" in again.stdout
    assert "multirun: 1 jobs, 0 failed" in again.stdout
    assert sorted(p.name for p in (job / "wandb").iterdir()) == wandb_before  # no new W&B run
    assert "wandb sync" not in again.stdout
    assert (job / "checkpoints" / "last.ckpt").stat().st_mtime_ns == ckpt_mtime


def test_log_redaction_survives_logging_reconfiguration():
    """Hydra re-configures logging (dictConfig) before its launch lines and for every job, and
    hydra/job_logging may be swapped: the redaction must not hang on a handler."""
    import io
    import logging
    import logging.config

    from difflab.utils.secrets import install_log_redaction

    previous = logging.getLogRecordFactory()
    stream = io.StringIO()
    try:
        install_log_redaction()
        install_log_redaction()  # idempotent
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False,
                                   "handlers": {"s": {"class": "logging.StreamHandler", "stream": stream}},
                                   "loggers": {"probe.launcher": {"handlers": ["s"], "level": "INFO"}}})
        logging.getLogger("probe.launcher").info("\t#%d : %s", 0, "+db.pwd=Hunter2xyz notes=ghp_" + "a" * 36)
    finally:
        logging.setLogRecordFactory(previous)
        logging.getLogger("probe.launcher").handlers.clear()
    assert stream.getvalue() == f"\t#0 : +db.pwd={REDACTED} notes={REDACTED}\n"
