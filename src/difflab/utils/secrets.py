"""What counts as a secret, and how it is kept out of text, configs and logs.

Two kinds of evidence, used everywhere a config or a command line is written down (the
printed tree, ``.hydra/*.yaml``, ``multirun.yaml``, checkpoints, W&B, log lines):

- **the key**: :func:`is_secret_key` splits the last part of a key (``+s3.access_key`` ->
  ``access``, ``key``; ``dbPassword`` -> ``db``, ``password``) into words and matches them
  against credential words (token, secret, password, pwd, passphrase, auth, bearer, cookie,
  session, credential, ...) and pairs (api key, access key, private key, ...). Whole words
  only, so ``exclude_keys``, ``feature_hash``, ``max_tokens``, ``tokenizer`` or ``author``
  stay readable;
- **the value**: :data:`TOKEN_RE` matches well-known token shapes wherever they appear:
  OpenAI-style ``sk-...``, GitHub ``ghp_``/``gho_``/``ghs_``/``github_pat_``, Hugging Face
  ``hf_``, AWS access key ids ``AKIA``/``ASIA``, Slack ``xoxb-``/``xoxp-``, JWTs ``eyJ...``.
  Hex digests (feature hashes, W&B API keys look alike) are not matched by shape; the W&B
  key is known by its value (``WANDB_API_KEY``).

Values that are interpolations (``${oc.env:MY_TOKEN}``) are kept: they hold no secret.
This module imports only the standard library at import time: Hydra loads it for every run.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

REDACTED = "<redacted>"

# words that make a key secret wherever they stand in it (whole words)
SECRET_WORDS = frozenset(
    {
        "token", "secret", "secrets", "password", "passwords", "passwd", "pwd", "passphrase",
        "credential", "credentials", "creds", "auth", "oauth", "authorization", "bearer", "cookie",
        "cookies", "session", "sessionid", "jwt", "apikey", "accesskey", "secretkey", "privatekey",
        "authtoken", "accesstoken", "refreshtoken", "sessiontoken", "clientsecret", "signingkey",
    }
)
# word pairs that do: api_key, access-key, privateKey, ...
SECRET_PAIRS = frozenset(
    {("api", "key"), ("access", "key"), ("secret", "key"), ("private", "key"), ("signing", "key"),
     ("encryption", "key"), ("master", "key"), ("ssh", "key"), ("deploy", "key"), ("license", "key")}
)
# substrings of a key written without separators ("dbpassword", "myapikey")
SECRET_SUBSTRINGS = ("password", "passwd", "passphrase", "credential", "apikey", "accesskey", "secretkey",
                     "privatekey", "authtoken", "accesstoken", "secret")

_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")

#: token shapes, wherever they appear (not only under a secret-looking key)
TOKEN_RE = re.compile(
    r"(?<![A-Za-z0-9_\-])(?:"
    r"sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_\-]{16,}"  # OpenAI / Anthropic / Stripe-style keys
    r"|gh[pousr]_[A-Za-z0-9]{20,}"  # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{20,}"  # GitHub fine-grained tokens
    r"|hf_[A-Za-z0-9]{20,}"  # Hugging Face
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key ids
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}"  # Slack
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"  # JWT (header.payload.signature)
    r")"
)

# `key=value` (overrides, launch lines, W&B names) or `key: value` (YAML). A value runs to
# whitespace or a bracket; a comma ends it only when another `key=` follows (sweep values
# such as `+db.pwd=a,b` stay whole, `a=1,b=2` names split).
_KEY_VALUE = re.compile(
    r"(?P<key>[+~]{0,2}[A-Za-z_][A-Za-z0-9_.\-/@]*)(?P<sep>[ \t]*[=:][ \t]*)"
    r"(?P<value>\"[^\"\n]*\"|'[^'\n]*'|(?:[^,\s\]\}]|,(?![+~]{0,2}[A-Za-z_][A-Za-z0-9_.\-/@]*=))+)"
)
# the smallest secret replaced by its value alone (shorter ones would match ordinary text;
# they are still redacted where their key stands next to them)
MIN_SECRET_LEN = 4


def key_words(key: str) -> list[str]:
    """The lower-case words of the last part of a dotted/slashed key (camelCase split too)."""
    leaf = re.split(r"[./@]", str(key).lstrip("+~"))[-1]
    return [w.lower() for w in _WORD_SPLIT.split(leaf) if w]


def is_secret_key(key: Any) -> bool:
    """True for keys whose value is a credential: ``api_key``, ``+s3.access_key``, ``db.pwd``,
    ``AWS_SECRET_ACCESS_KEY``, ``hf-token``, ``sessionCookie``, ... (see the module doc)."""
    if not isinstance(key, str) or not key:
        return False
    words = key_words(key)
    if any(w in SECRET_WORDS for w in words):
        return True
    if any(pair in SECRET_PAIRS for pair in zip(words, words[1:])):
        return True
    joined = "".join(words)
    return any(s in joined for s in SECRET_SUBSTRINGS)


def has_token_shape(text: str) -> bool:
    return isinstance(text, str) and TOKEN_RE.search(text) is not None


def env_secrets() -> list[str]:
    """Secret values known from the environment (``WANDB_API_KEY``)."""
    key = os.environ.get("WANDB_API_KEY")
    return [key] if key and len(key) >= MIN_SECRET_LEN else []


def _is_interpolation(value: str) -> bool:
    """Values kept next to a secret key: interpolations, booleans and nulls hold no secret."""
    v = value.strip("\"'")
    return v.startswith("${") or v == REDACTED or v.lower() in ("", "true", "false", "null", "none", "~")


def redact_text(text: str, values: list[str] | tuple[str, ...] = ()) -> str:
    """``text`` with every ``values`` entry, every token-shaped value and the value of every
    ``key=value`` / ``key: value`` of a secret-looking key replaced by ``<redacted>``."""
    for v in sorted({*values, *env_secrets()}, key=len, reverse=True):
        if v and len(v) >= MIN_SECRET_LEN and v != REDACTED:
            text = text.replace(v, REDACTED)
    text = TOKEN_RE.sub(REDACTED, text)
    out, pos = [], 0
    while True:
        m = _KEY_VALUE.search(text, pos)
        if m is None:
            break
        if is_secret_key(m.group("key")) and not _is_interpolation(m.group("value")):
            out.append(text[pos : m.start("value")] + REDACTED)
            pos = m.end("value")
        else:  # look for `key=value` inside this value too (`override_dirname: a=1,db.pwd=x`)
            out.append(text[pos : m.end("sep")])
            pos = m.end("sep")
    out.append(text[pos:])
    return "".join(out)


def redact(obj: Any, values: list[str] | tuple[str, ...] = ()) -> Any:
    """A copy of a plain container with the values of secret-looking keys, token-shaped
    strings and the given ``values`` replaced (booleans and None under such keys are kept)."""
    if isinstance(obj, dict):
        return {
            k: (REDACTED if is_secret_key(k) and v is not None and not isinstance(v, bool) else redact(v, values))
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, values) for v in obj)
    if isinstance(obj, str):
        new = obj
        for v in sorted({*values, *env_secrets()}, key=len, reverse=True):
            if v and len(v) >= MIN_SECRET_LEN and v != REDACTED:
                new = new.replace(v, REDACTED)
        return TOKEN_RE.sub(REDACTED, new)
    return obj


def secret_values_of(plain: Any) -> list[str]:
    """Values of secret-looking keys in a plain container (strings and numbers, long enough)."""
    found: list[str] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if is_secret_key(k) and isinstance(v, (str, int, float)) and not isinstance(v, bool):
                    found.append(str(v))
                elif is_secret_key(k) and isinstance(v, (dict, list)):
                    found.extend(str(x) for x in _leaves(v))
                else:
                    walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    walk(plain)
    return sorted({v for v in found if worth_scrubbing(v)}, key=len, reverse=True)


def worth_scrubbing(value: str) -> bool:
    """Whether a secret value is also replaced where it stands alone (not next to its key).

    Short values and plain lower-case words (``none``, ``basic``) would replace ordinary text,
    and short numbers step counts; such values are redacted only next to their key."""
    v = str(value)
    if len(v) < 6 or v.startswith("${") or v == REDACTED:
        return False
    if v.isdigit() and len(v) < 8:
        return False
    return not (v.isalpha() and v.islower())


def _leaves(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _leaves(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _leaves(v)]
    return [] if obj is None or isinstance(obj, bool) else [obj]


def override_secret_values(overrides: list[str]) -> list[str]:
    """Values given to secret-looking keys in ``key=value`` overrides (sweep lists split)."""
    found = []
    for o in overrides:
        key, sep, value = str(o).partition("=")
        if sep and value and is_secret_key(key) and not value.startswith("${"):
            found.append(value)
            found.extend(v for v in value.split(",") if v)
    return [v for v in found if worth_scrubbing(v)]


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed record is logging's problem, not ours
        return
    redacted = redact_text(message)
    if redacted != message:
        record.msg, record.args = redacted, ()


def install_log_redaction() -> None:
    """Redact every log record of this process as it is made (see :func:`redact_text`).

    A record factory rather than a handler filter: Hydra re-configures logging from
    ``hydra.hydra_logging`` / ``hydra.job_logging`` (with ``dictConfig``, which replaces the
    handlers and their filters) before it logs the launch lines ``#0 : +db.pwd=... ...`` and
    again for every job, and any of those configs may be swapped (``hydra/job_logging=stdout``).
    The factory stays through all of it and covers the console and ``<job name>.log`` alike.
    Idempotent.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_difflab_redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _redact_record(record)
        return record

    factory._difflab_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object  # type: ignore[assignment,misc]


class ScrubSecrets(_HydraCallback):
    """A Hydra callback (conf/hydra/default.yaml): redact secrets in the log lines and in the
    files Hydra writes.

    ``on_run_start`` / ``on_multirun_start`` install :func:`install_log_redaction` before Hydra
    logs anything of the job (the launch lines come later, from the launcher). Hydra saves ``<run dir>/.hydra/{config,hydra,overrides}.yaml`` with every override as
    typed just before the job starts, and a multirun's ``<sweep dir>/multirun.yaml`` before
    its first job; ``on_job_start`` runs after both and before the job's own code, so a job
    that stops on a config error leaves no secret behind either. ``on_multirun_end`` scrubs
    ``multirun.yaml`` once more (a sweeper may rewrite it).
    """

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        install_log_redaction()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        install_log_redaction()

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        from difflab.utils.validation import scrub_run_dir

        install_log_redaction()  # a launcher that runs jobs in fresh processes (submitit, joblib)

        from omegaconf import OmegaConf

        try:
            output_dir = config.hydra.runtime.output_dir
            raw = OmegaConf.to_container(config, resolve=False)
        except Exception:  # pragma: no cover - not a Hydra job config
            return
        task = {k: v for k, v in raw.items() if k != "hydra"} if isinstance(raw, dict) else None
        scrub_run_dir(output_dir, _plain(task))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from pathlib import Path

        from difflab.utils.validation import _scrub_file

        path = Path(str(config.hydra.sweep.dir)) / "multirun.yaml"
        if path.is_file():
            _scrub_file(path, [])


def _plain(node: Any) -> Any:
    """A plain container of a (partial) config, resolved where possible."""
    from omegaconf import OmegaConf

    if node is None:
        return None
    try:
        return OmegaConf.to_container(OmegaConf.create(node), resolve=True, throw_on_missing=False)
    except Exception:  # an interpolation that cannot be resolved here: its text is enough
        try:
            return OmegaConf.to_container(OmegaConf.create(node), resolve=False)
        except Exception:
            return None
