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


class IncompleteUpload(ValueError):
    """An upload stream ended before the object's size: the sender hung up; nothing was stored."""


class ContentMismatch(ValueError):
    """Uploaded bytes whose sha256 is not the oid they were sent as; nothing was stored."""


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

    def size(self, oid: str) -> int | None:
        """The size of the stored content of ``oid``, or None when the store does not have it."""
        try:
            return self.path(oid).stat().st_size
        except FileNotFoundError:
            return None

    def put(self, source: Path) -> LfsInfo:
        """Copy the file at ``source`` into the store (once per content) and describe it."""
        source = Path(source)
        if source.parent == self.root and _OID_RE.fullmatch(source.name):  # already stored: nothing to copy
            size = source.stat().st_size
            return LfsInfo(oid=source.name, size=size, pointer_size=len(pointer(source.name, size)))
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

    def receive(self, stream: BinaryIO, oid: str, size: int) -> LfsInfo:
        """Store ``size`` bytes read from ``stream`` as the content of ``oid``, checked against both.

        The bytes go to a temp file, renamed to ``root/<oid>`` only once all ``size`` of them have
        arrived and their sha256 is ``oid``: a stream that ends early raises :class:`IncompleteUpload`,
        other content :class:`ContentMismatch`, and either way nothing is left behind.
        """
        target = self.path(oid)
        with tempfile.NamedTemporaryFile(dir=self.root, prefix=".upload-", delete=False) as tmp:
            try:
                digest = _copy_exactly(stream, tmp, size)
                if digest != oid:
                    message = f"sha256 mismatch: the {size} bytes uploaded as LFS object {oid} have sha256 {digest}"
                    raise ContentMismatch(message)
            except BaseException:
                tmp.close()
                os.unlink(tmp.name)
                raise
        os.chmod(tmp.name, 0o644)
        os.replace(tmp.name, target)
        return LfsInfo(oid=oid, size=size, pointer_size=len(pointer(oid, size)))


def _copy_hashing(src: BinaryIO, dst: BinaryIO) -> str:
    """Copy ``src`` to ``dst`` and return the sha256 of what was copied."""
    digest = hashlib.sha256()
    while chunk := src.read(_COPY_CHUNK):
        digest.update(chunk)
        dst.write(chunk)
    return digest.hexdigest()


def _copy_exactly(src: BinaryIO, dst: BinaryIO, size: int) -> str:
    """Copy ``size`` bytes and return their sha256; :class:`IncompleteUpload` if ``src`` ends before."""
    digest, copied = hashlib.sha256(), 0
    while copied < size:
        chunk = src.read(min(_COPY_CHUNK, size - copied))
        if not chunk:
            raise IncompleteUpload(f"upload ended after {copied} of {size} bytes")
        digest.update(chunk)
        dst.write(chunk)
        copied += len(chunk)
    return digest.hexdigest()
