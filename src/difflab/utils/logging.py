"""Rank-aware logging: messages from rank 0 only, so a DDP run prints each line once."""

from __future__ import annotations

import logging

from lightning.pytorch.utilities import rank_zero_only


def get_logger(name: str = __name__) -> logging.LoggerAdapter:
    """A logger whose info/warning/... calls are no-ops on ranks other than 0."""
    logger = logging.getLogger(name)
    for level in ("debug", "info", "warning", "error", "exception", "fatal", "critical"):
        setattr(logger, level, rank_zero_only(getattr(logger, level)))
    return logger
