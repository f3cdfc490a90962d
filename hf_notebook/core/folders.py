"""Folders on this machine: the nearest one that exists at or above a path (where a new folder would
be made, whose disk it would fill), whether a folder can be written into, and the temporary sibling
a folder is written into before it is renamed into place."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` itself if it exists, else its nearest existing ancestor (at worst the root)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def writable_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder we may create entries in."""
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def temp_sibling(target: Path) -> Path:
    """A new hidden folder beside ``target`` (the same file system: it can be renamed into place)."""
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.hf_notebook-", dir=target.parent))
