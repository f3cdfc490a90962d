"""Folders on this machine: the nearest one that exists at or above a path (where a new folder would
be made, whose disk it would fill), whether a folder can be written into (``parse_folder``: a folder
option's check), and the temporary sibling a folder is written into before it is renamed into place."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

from .errors import OptionError


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


def parse_folder(text: Optional[str], flag: str) -> Optional[str]:
    """A folder that exists, or could be created: its nearest existing ancestor is a writable folder."""
    if not text:
        return None
    path = probe = Path(str(text)).expanduser()
    if path.is_symlink() and not path.exists():
        raise OptionError(f"{flag} {str(path)!r} is a link to nothing ({os.readlink(path)!r}).",
                          hint=f"Give {flag} a folder that exists, or remove the link.")
    try:
        probe = nearest_existing(path)
        usable = writable_folder(probe)
    except (OSError, ValueError):
        usable = False
    if not usable:
        where = "is not a folder" if probe == path else f"cannot be created ({str(probe)!r} is not a writable folder)"
        raise OptionError(f"{flag} {str(path)!r} {where}.", hint=f"Give {flag} a folder you can write to.")
    return str(path)
