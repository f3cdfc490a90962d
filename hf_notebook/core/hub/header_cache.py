"""Safetensors headers kept on disk, so a warm plan reads none over the network.

Where: ``<hub cache>/models--org--name/.hf_notebook-headers/<commit sha>/<file>.hdr``. Inside the repo's
own cache folder, as its ``snapshots/<sha>`` are: deleting the repo from the cache (``hf cache delete``,
``rm -r``) drops its headers too, and huggingface_hub's cache scan reads only ``blobs``, ``refs`` and
``snapshots`` there (a folder of our own at the cache's top would be reported as a corrupted repo).

Key: (repo id, full commit sha, file name); an entry also records the file's etag as the Hub gave it
(sha256 for LFS files, git blob id for others) and size, and the sha256 of the header bytes it holds.
An entry is used only if all of that matches and ``safetensors_io`` parses the bytes again; anything
else is a miss (the header is fetched again and the entry rewritten). Writes are atomic (temp file,
then ``os.replace``); each repo's entries are capped (least recently used go first). Nothing is
written or deleted through a symlink: a folder on the way that is a link turns the cache off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from ..errors import LoadError
from ..safetensors_io import MAX_HEADER, Header, header_length, parse_header
from ..spec import is_commit_sha

log = logging.getLogger(__name__)

FOLDER = ".hf_notebook-headers"
MAGIC = b"hf_notebook safetensors header 1\n"
MAX_META = 4096  # the JSON line that names the entry
REPO_BUDGET = 64 * 2**20  # bytes of entries per repo; a 70B checkpoint's headers take ~100 kB
MAX_ENTRY = min(len(MAGIC) + MAX_META + 8 + MAX_HEADER, REPO_BUDGET)  # nothing larger is written or read
STALE_TEMP_S = 3600  # a temp file this old was left by a writer that died


def normalize_etag(etag: Optional[str]) -> Optional[str]:
    """An ETag header's value without ``W/`` and quotes (huggingface_hub normalizes it the same way)."""
    return etag.removeprefix("W/").strip('"') if etag else None


class HeaderCache:
    """The cached headers of one repo at one commit: :meth:`get` a checked header, :meth:`put` raw bytes."""

    def __init__(self, repo_id: str, sha: str, cache_dir: str | os.PathLike | None = None):
        from .resolve import repo_cache_folder

        self.repo_id, self.sha = repo_id, sha
        root = Path(cache_dir) if cache_dir is not None else _default_cache()
        self.root = root.resolve()
        self.repo_folder = repo_cache_folder(repo_id, self.root) / FOLDER
        self.folder = self.repo_folder / sha
        self.usable = len(sha) == 40 and is_commit_sha(sha) and self.folder.parent.parent.parent == self.root
        self.written = 0  # bytes put by this instance
        self._checked = False  # the folders were found safe once: no need to look again

    def path(self, name: str) -> Path:
        """The entry of file ``name`` (quoted: a repo path's ``/`` or ``..`` names no other folder)."""
        safe = quote(name, safe="")
        if len(safe) > 200:  # file names are capped at 255 bytes
            safe = hashlib.sha256(name.encode()).hexdigest()
        return self.folder / f"{safe}.hdr"

    def get(self, name: str, etag: Optional[str] = None, size: Optional[int] = None) -> Optional[Header]:
        """The checked header of ``name``, or None (absent, unreadable, damaged, or of other content)."""
        if not self.usable or not self._safe(create=False):
            return None
        try:
            entry = self._read(self.path(name))
            if entry is None:
                return None
            meta, body = entry
            if (meta.get("repo"), meta.get("sha"), meta.get("file")) != (self.repo_id, self.sha, name):
                raise LoadError(f"{name}: the entry names another file")
            if etag is not None and meta.get("etag") != normalize_etag(etag):
                raise LoadError(f"{name}: the Hub's etag is {etag}, the entry's {meta.get('etag')}")
            if size is not None and meta.get("size") not in (None, size):
                raise LoadError(f"{name}: the Hub's size is {size}, the entry's {meta.get('size')}")
            if meta.get("digest") != hashlib.sha256(body).hexdigest():
                raise LoadError(f"{name}: the entry's bytes do not match its digest")
            length = header_length(name, body[:8], meta.get("size"))
            if len(body) != 8 + length:
                raise LoadError(f"{name}: the entry holds {len(body)} bytes, its header says {8 + length}")
            return parse_header(name, body[8:], length)
        except (LoadError, OSError, ValueError, TypeError, AttributeError) as exc:
            log.info("header cache: ignoring the entry of %s@%s %s: %s", self.repo_id, self.sha, name, exc)
            return None

    def put(self, name: str, body: bytes, etag: Optional[str], size: Optional[int]) -> None:
        """Keep ``body`` (the file's first ``8 + header length`` bytes); best effort, never raises OSError."""
        meta = {"repo": self.repo_id, "sha": self.sha, "file": name, "etag": normalize_etag(etag), "size": size,
                "digest": hashlib.sha256(body).hexdigest()}
        line = json.dumps(meta, ensure_ascii=True).encode()
        data = MAGIC + line + b"\n" + body
        if not self.usable or len(line) > MAX_META or len(data) > MAX_ENTRY:
            return
        try:
            if not self._safe(create=True):
                return
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".hdr", dir=self.folder)  # O_EXCL: a fresh file
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.chmod(tmp, self.folder.stat().st_mode & 0o666)  # as the umask says (mkstemp's is 0600)
                os.replace(tmp, self.path(name))  # replaces a link at that name, never writes through it
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            self.written += len(data)
        except OSError as exc:  # a read-only or full disk: the plan goes on without the cache
            log.info("header cache: could not keep the header of %s: %s", name, exc)

    def trim(self, budget: int = REPO_BUDGET) -> None:
        """Drop this repo's least recently used entries (any sha) until they fit ``budget``; remove stale temps."""
        if not self.usable or not self._safe(create=False):
            return
        entries, now = [], time.time()
        with contextlib.suppress(OSError), os.scandir(self.repo_folder) as shas:
            for sha_dir in shas:
                if not sha_dir.is_dir(follow_symlinks=False):
                    continue
                with contextlib.suppress(OSError), os.scandir(sha_dir.path) as files:
                    for entry in files:
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        stat = entry.stat(follow_symlinks=False)
                        if entry.name.startswith(".tmp-"):
                            if now - stat.st_mtime > STALE_TEMP_S:
                                _unlink(entry.path)
                        else:
                            entries.append((stat.st_mtime, stat.st_size, entry.path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= budget:
                break
            _unlink(path)
            total -= size
        with contextlib.suppress(OSError), os.scandir(self.repo_folder) as shas:
            for sha_dir in shas:
                if sha_dir.is_dir(follow_symlinks=False) and sha_dir.name != self.sha:
                    with contextlib.suppress(OSError):
                        os.rmdir(sha_dir.path)  # only when empty

    def _read(self, path: Path) -> Optional[tuple[dict, bytes]]:
        """(meta, body) of an entry, or None when there is none; not a regular file or malformed: LoadError."""
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return None
        except OSError as exc:  # ELOOP: a symlink put there
            raise LoadError(f"cannot open {path.name}: {exc}") from None
        with os.fdopen(fd, "rb") as handle:
            if os.fstat(fd).st_size > MAX_ENTRY:
                raise LoadError(f"{path.name} is larger than any header cache entry")
            data = handle.read(MAX_ENTRY + 1)
            with contextlib.suppress(OSError):
                os.utime(fd if os.utime in os.supports_fd else path)  # recently used: trimmed last
        if len(data) > MAX_ENTRY or not data.startswith(MAGIC):
            raise LoadError(f"{path.name} is not a header cache entry")
        line, newline, body = data[len(MAGIC):].partition(b"\n")
        if not newline or len(line) > MAX_META:
            raise LoadError(f"{path.name} is not a header cache entry")
        meta = json.loads(line)
        if not isinstance(meta, dict):
            raise LoadError(f"{path.name} is not a header cache entry")
        return meta, body

    def _safe(self, *, create: bool) -> bool:
        """Whether the folders from the repo's cache folder down to the sha's are real folders, not links
        (made when ``create``); a cache reached through links elsewhere is left alone."""
        if self._checked:
            return True
        for folder in (self.folder.parent.parent, self.folder.parent, self.folder):
            try:
                if os.path.islink(folder):
                    log.info("header cache: %s is a symlink; not using the header cache", folder)
                    return False
                if not folder.is_dir():
                    if not create:
                        return False
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(folder)
                    if os.path.islink(folder) or not folder.is_dir():
                        return False
            except OSError:
                return False
        self._checked = True
        return True


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)  # a regular file (checked with follow_symlinks=False); unlink never follows a link


def _default_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)
