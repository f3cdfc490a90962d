"""An in-process stand-in for hf_xet's upload session, for pushes with Xet enabled.

With hf_xet installed, huggingface_hub sends weights to Xet storage (a CAS service the Hub
stand-in does not speak) and then commits them as ``lfsFile`` lines by sha256. This session
takes the place of ``huggingface_hub.utils._xet.get_xet_session()``'s: each file it is given is
put into the Hub stand-in's LFS objects (what Xet storage makes the Hub see for that sha256),
and its upload reported to the commit's ``progress_callback`` in the shape hf_xet reports it
(a group report, and per-file reports with ``item_name``, ``bytes_completed``, ``total_bytes``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional

STEP = 64 * 1024  # bytes per progress report


@dataclass
class _Item:
    item_name: str
    bytes_completed: int
    total_bytes: int


class XetSession:
    """Stores uploads in ``store.lfs``; ``uploaded`` lists the paths it was given, in order."""

    def __init__(self, store: Any):
        self.store, self.uploaded, self.callbacks = store, [], []

    def new_upload_commit(self, *, progress_callback: Optional[Callable] = None, **_: Any) -> "_Commit":
        self.callbacks.append(progress_callback)
        return _Commit(self, progress_callback)


class _Commit(contextlib.AbstractContextManager):
    def __init__(self, session: XetSession, callback: Optional[Callable]):
        self.session, self.callback, self.items = session, callback, {}

    def start_upload_file(self, path: str, sha256: Any = None) -> Any:
        size = os.path.getsize(path)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            done = 0
            while chunk := f.read(STEP):
                digest.update(chunk)
                done += len(chunk)
                self._report(path, done, size)
        if not size:
            self._report(path, 0, 0)
        self.session.store.lfs.put(Path(path))
        self.session.uploaded.append(path)
        info = SimpleNamespace(sha256=digest.hexdigest(), file_size=size)
        return SimpleNamespace(result=lambda: SimpleNamespace(xet_info=info))

    def _report(self, path: str, done: int, size: int) -> None:
        self.items[path] = _Item(path, done, size)
        if self.callback is None:
            return
        total = sum(i.total_bytes for i in self.items.values())
        completed = sum(i.bytes_completed for i in self.items.values())
        group = SimpleNamespace(total_bytes=total, total_bytes_completed=completed, total_transfer_bytes=total,
                                total_transfer_bytes_completed=completed, total_bytes_increment=0,
                                total_bytes_completion_increment=0, total_transfer_bytes_increment=0,
                                total_transfer_bytes_completion_increment=0)
        self.callback(group, {path: self.items[path]})

    def __exit__(self, *exc: Any) -> None:
        return None
