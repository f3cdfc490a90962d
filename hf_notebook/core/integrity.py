"""Is a cached file what the Hub says it is? Verify cache files by content, once per file identity.

huggingface_hub names each repo's cache entry ``models--org--name/blobs/<etag>`` by its content:
an LFS (or Xet-stored) file by the sha256 of its bytes, any other file by its git blob sha1. Since
huggingface_hub 2.4 a Xet download's entry is a symlink into a cache-wide shared store named by
the file's *Xet* hash (``<cache>/blobs/<xx>/<xet hash>``), which is not a sha256 and whose file
other repos share. So a file is checked against the Hub's sha256 when known, else against the name
of the repo's own entry (the first link from the snapshot), never against the shared store's name;
and nothing here deletes anything. Hashing runs at ~1.7 GB/s here; a file that passed is
remembered by its identity (size, mtime, ctime, inode) in ``$HF_HOME/hf_notebook/verified.json``
and checked again when that changes (ctime moves with every write and with every mtime reset).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Optional

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")
_CHUNK = 8 * 2**20
MANIFEST = "hf_notebook.manifest.json"  # a saved folder's or bundle's files, each with its size and sha256


def digest_of(path: Path, kind: str) -> str:
    """``sha256`` of the content, or ``git-sha1``: sha1 of ``blob <size>\\0`` + the content."""
    h = hashlib.sha256() if kind == "sha256" else hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def repo_entry(path: Path) -> Path:
    """The repo's own cache entry behind a snapshot path (``blobs/<etag>``): the target of its first link,
    not followed further (a shared blob's name is a Xet hash). A path that is no link is its own entry."""
    path = Path(path)
    if not path.is_symlink():
        return path
    return Path(os.path.normpath(path.parent / os.readlink(path)))


def recorded_sha256(path: Path, known: Optional[str] = None) -> str:
    """The sha256 a file goes by: ``known`` (the Hub's LFS metadata), the name of its repo cache entry when
    that is a sha256 (checked against the content once by :func:`problem_with`), else its content's, read."""
    if known:
        return known
    promise = expected_digest(repo_entry(path))
    return promise[1] if promise and promise[0] == "sha256" else digest_of(Path(os.path.realpath(path)), "sha256")


def expected_digest(entry: Path) -> Optional[tuple[str, str]]:
    """What a repo cache entry's name promises: ``("sha256", oid)``, ``("git-sha1", oid)``, or None."""
    if entry.parent.name != "blobs":
        return None
    if _SHA256.fullmatch(entry.name):
        return "sha256", entry.name
    if _SHA1.fullmatch(entry.name):
        return "git-sha1", entry.name
    return None


class Verified:
    """The blobs that passed, by real path -> identity; one JSON file, written atomically."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._entries: Optional[dict] = None

    def _load(self) -> dict:
        if self._entries is None:
            try:
                self._entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self._entries = {}
        return self._entries

    def knows(self, blob: Path, identity: list) -> bool:
        with self._lock:
            return self._load().get(str(blob)) == identity

    def add(self, blob: Path, identity: list) -> None:
        with self._lock:
            self._load()[str(blob)] = identity
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
                tmp.write_text(json.dumps(self._entries, sort_keys=True))
                tmp.replace(self.path)
            except OSError:  # a read-only HF_HOME: verify again next time, still correct
                pass


def default_memo() -> Verified:
    from huggingface_hub import constants

    return Verified(Path(constants.HF_HOME) / "hf_notebook" / "verified.json")


def problem_with(path: Path, memo: Verified, expected_size: Optional[int] = None,
                 sha256: Optional[str] = None, git_sha1: Optional[str] = None, source: str = "the Hub") -> Optional[str]:
    """Why the cached file at ``path`` is not what it should be, or None when it is: of ``expected_size``, with
    content of the ``sha256`` (LFS files) or ``git_sha1`` (the others) that ``source`` records when known, else
    of the digest its repo cache entry's name promises."""
    blob = Path(os.path.realpath(path))
    promise = ("sha256", sha256) if sha256 else ("git-sha1", git_sha1) if git_sha1 else expected_digest(repo_entry(path))
    try:
        st = blob.stat()
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    if expected_size is not None and st.st_size != expected_size:
        return f"it has {st.st_size} bytes, not {expected_size} as {source} records"
    if promise is None:
        return None
    identity = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, promise[1]]
    if memo.knows(blob, identity):
        return None
    kind, oid = promise
    actual = digest_of(blob, kind)
    if actual != oid:
        return f"its {kind} is {actual[:12]}…, not {oid[:12]}… as {source} records"
    memo.add(blob, identity)
    return None
