"""Checkpoints written atomically: a checkpoint file is either the old one or the new one, whole.

Lightning's default ``TorchCheckpointIO`` (2.6) saves through
``lightning.fabric.utilities.cloud_io._atomic_save``: it serializes into memory, then writes
inside an fsspec transaction. For local paths fsspec's ``LocalFileOpener`` writes the bytes
to ``tempfile.mkstemp()`` -- in the *system* temp folder -- and commits with
``shutil.move``. That is a rename only when /tmp and the checkpoint folder share a file
system; otherwise (tmpfs /tmp, a network or scratch disk for outputs) ``shutil.move`` copies
into the destination path itself, so a kill during the copy leaves a truncated
``last.ckpt``. Nothing is fsynced, so after a power loss or a node crash the renamed file can
be empty, and a killed run leaves its temporary file behind in /tmp.

:class:`AtomicCheckpointIO` writes to a hidden temporary file in the checkpoint's own
folder, fsyncs it, ``os.replace``-s it over the target (atomic on POSIX within one file
system) and fsyncs the folder. Remote paths (``s3://``, ``gs://``, ...) go to the default
implementation. It is wired into the trainer with ``trainer.plugins`` (conf/trainer/default.yaml).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

TMP_SUFFIX = ".tmp"


def _is_local(path: str | os.PathLike) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(get_filesystem(str(path)), LocalFileSystem)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``.

    The bytes go to ``.<name>.<random>.tmp`` next to ``path``, are fsynced, and replace
    ``path`` in one ``os.replace``. On any error (or a kill) the old ``path`` is untouched;
    on an error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    remove_stale_temporaries(path)
    return path


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files left next to ``path`` by a save that was killed."""
    path = Path(path)
    removed = []
    for stale in path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"):
        try:
            stale.unlink()
            removed.append(stale)
        except OSError:
            pass
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local saves go through :func:`atomic_torch_save`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(
                "`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg"
                f" is not supported for `{self.__class__.__name__}`."
            )
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)
