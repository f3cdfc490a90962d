"""Folders of our own: made by us, for one model, and removed with it.

``own_folder(parent)`` makes a new folder (``mkdtemp``: a name nobody held, private to this user) for one
model's offloaded weights, inside the user's offload folder or the system's temporary folder. Everything
in it was written for that model, so no other model's files, nor a user's, can share a name with ours.

``remove_with(model, folder)`` removes ``folder`` when ``model`` is garbage collected, or at interpreter
exit (``weakref.finalize``), whichever comes first; only if the path still is the very folder it was
given (not a folder made again under that name, nor a link put in its place). Nothing else (a registry,
an ``atexit`` list) holds the model for that, so dropping every name of a model frees its memory and its folder.
``remove_now(model)`` does it at once, for a model unloaded.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import weakref
from typing import Any, Optional

PREFIX = "hf_notebook-offload-"


def own_folder(parent: Optional[str] = None, label: Optional[str] = None) -> str:
    """A new, empty folder of ours inside ``parent`` (made if missing; the system's temporary folder when
    None), named after ``label`` (a model's name) so a user can tell whose it is."""
    if parent:
        os.makedirs(parent, exist_ok=True)
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", label or "")[:40]
    return tempfile.mkdtemp(prefix=PREFIX + (f"{tag}-" if tag else ""), dir=parent or None)


# model -> the finalizers of its folders, so that unloading it can remove them at once (remove_now)
_FOLDERS: "weakref.WeakKeyDictionary[Any, list]" = weakref.WeakKeyDictionary()


def remove_with(model: Any, folder: str) -> None:
    """Remove ``folder`` (a folder of ours) once ``model`` is gone, or at exit."""
    _FOLDERS.setdefault(model, []).append(weakref.finalize(model, remove_own, folder, _identity(folder)))


def remove_now(model: Any) -> None:
    """Remove ``model``'s folders now (it was unloaded: nothing reads them any more), each only if it is still
    the folder that was made."""
    for finalizer in _FOLDERS.pop(model, ()):
        finalizer()


def remove_own(folder: str, identity: Optional[tuple] = None) -> None:
    """Remove ``folder`` and what it holds, if it is still the folder of that ``identity`` (when given)."""
    if identity is not None and _identity(folder) != identity:
        return
    shutil.rmtree(folder, ignore_errors=True)


def _identity(folder: str) -> Optional[tuple]:
    """(device, inode) of ``folder`` itself (a link is not followed); None if it is not a folder."""
    try:
        st = os.lstat(folder)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None
