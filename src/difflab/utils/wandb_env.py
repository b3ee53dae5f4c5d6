"""Decide whether W&B can run online, without asking the network."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from urllib.parse import urlparse


def has_wandb_credentials() -> bool:
    """True when an API key (or identity token) is configured for W&B on this machine.

    Looks where ``wandb login`` looks: ``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``,
    the netrc entry of the W&B host, and the ``api_key`` of wandb's settings file.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    netrc_path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        if netrc.netrc(netrc_path).authenticators(host):
            return True
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR", Path.home() / ".config" / "wandb"))
    settings = config_dir / "settings"
    try:
        return any(line.strip().startswith("api_key") for line in settings.read_text().splitlines())
    except OSError:
        return False


def resolve_wandb_mode(mode: str | None) -> str:
    """``auto`` (or None) -> ``online`` with credentials, else ``offline``; env WANDB_MODE wins."""
    env = os.environ.get("WANDB_MODE")
    if env:
        return env
    if mode in (None, "auto"):
        return "online" if has_wandb_credentials() else "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"logger.mode must be one of auto, online, offline, disabled; got {mode!r}")
    return mode
