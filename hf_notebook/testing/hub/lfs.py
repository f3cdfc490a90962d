"""Git LFS as the Hub uses it: pointer files in git, content in a store addressed by sha256."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".gguf")
LFS_MIN_SIZE = 1 << 20  # files from 1 MiB up go to LFS whatever their name
_POINTER_RE = re.compile(rb"version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize (\d+)\n")
_OID_RE = re.compile(r"[0-9a-f]{64}")
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class LfsInfo:
    """What a pointer file says: the content's sha256 and size, plus the pointer's own size."""

    oid: str
    size: int
    pointer_size: int


def is_lfs(path: str, size: int) -> bool:
    """Whether a file goes to LFS: a weights suffix or a big file (empty files never do)."""
    return size > 0 and (path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE)


def pointer(oid: str, size: int) -> bytes:
    """The pointer file that stands for LFS content in the git tree."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def parse_pointer(data: bytes) -> LfsInfo | None:
    """The :class:`LfsInfo` of a pointer file, or None when ``data`` is not one."""
    match = _POINTER_RE.fullmatch(data)
    if match is None:
        return None
    return LfsInfo(oid=match[1].decode(), size=int(match[2]), pointer_size=len(data))


class LfsObjects:
    """Content-addressed files ``root/<sha256>``; writes are atomic renames so readers never see halves."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, oid: str) -> Path:
        """Where the content of ``oid`` lives; raise ``ValueError`` for a malformed oid."""
        if not _OID_RE.fullmatch(oid):
            raise ValueError(f"not a sha256 oid: {oid!r}")
        return self.root / oid

    def put(self, source: Path) -> LfsInfo:
        """Copy the file at ``source`` into the store (once per content) and describe it."""
        with open(source, "rb") as src, tempfile.NamedTemporaryFile(dir=self.root, delete=False) as tmp:
            try:
                oid = _copy_hashing(src, tmp)
            except BaseException:
                os.unlink(tmp.name)
                raise
        size = os.path.getsize(tmp.name)
        os.chmod(tmp.name, 0o644)
        os.replace(tmp.name, self.path(oid))
        return LfsInfo(oid=oid, size=size, pointer_size=len(pointer(oid, size)))


def _copy_hashing(src: BinaryIO, dst: BinaryIO) -> str:
    """Copy ``src`` to ``dst`` and return the sha256 of what was copied."""
    digest = hashlib.sha256()
    while chunk := src.read(_COPY_CHUNK):
        digest.update(chunk)
        dst.write(chunk)
    return digest.hexdigest()
