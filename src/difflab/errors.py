"""User-facing errors: printed as one line that says what was wrong and what to do."""

from __future__ import annotations


class DifflabError(Exception):
    """Base of the errors caused by input (configs, data, checkpoints), not by a bug."""


class ConfigError(DifflabError, ValueError):
    """A config value that cannot work; the message names the key, the value and what is allowed."""


class CheckpointError(DifflabError, RuntimeError):
    """A missing, unreadable, unsafe or mismatched checkpoint."""
