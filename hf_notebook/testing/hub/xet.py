"""Xet storage for the stand-in: hf_xet's own local CASes under the store, read back as plain files.

hf_xet writes a local CAS (``endpoint="local:///<folder>"``) through a database that one process
at a time may open, and a client keeps it open for as long as its upload commit lives (after
``upload_folder``, until its next garbage collection). So each writer gets a folder of its own
under ``root``: the stand-in's process (``store-<pid>``, for :meth:`XetStorage.put`) and each push
(:meth:`XetStorage.push_endpoint`, named in a write token). Everything else reads the shards and
xorbs those leave on disk, across all folders, without hf_xet: :meth:`XetStorage.read` rebuilds a
file, :meth:`XetStorage.reconstruction` plans what an HTTP CAS answers to
``GET /v2/reconstructions/{hash}`` (the same computation as xet-core's ``LocalClient``).
"""

from __future__ import annotations

import os
import struct
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from .xet_format import Chunk, Segment, XetFile, shard_files, unpack_chunk, xorb_chunks

_TOKEN_EXPIRY = 2**40  # a local CAS checks no token, but hf_xet wants one with an expiry
_SHARDS = "xet/xorbs/shards"
_XORBS = "xet/xorbs/xorbs"


@dataclass(frozen=True)
class Reconstruction:
    """How to rebuild bytes of a file: skip ``offset`` bytes of the first term, then the terms in order.

    ``fetches`` gives, per xorb, ``(chunk_start, chunk_end, byte_start, byte_end)`` ranges (ends
    excluded) of the xorb file that hold the terms' chunks, merged where they touch.
    """

    offset: int
    terms: tuple[Segment, ...]
    fetches: dict[str, list[tuple[int, int, int, int]]]


class XetStorage:
    """Local CASes in the folders of ``root``, with the files their shards describe indexed in memory."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, XetFile] = {}
        self._by_sha256: dict[str, str] = {}
        self._shards_read: set[Path] = set()
        self._xorbs: dict[str, Path] = {}
        self._chunks: dict[str, list[Chunk]] = {}
        self._lock = threading.Lock()
        self._session = None

    def push_endpoint(self) -> str:
        """A new local CAS for one client's push: ``local:///...`` (three slashes: the path is absolute)."""
        return f"local://{self.root / f'push-{uuid.uuid4().hex}'}"

    # -- lookups -----------------------------------------------------------------------------

    def file(self, xet_hash: str) -> XetFile | None:
        """The file with this Xet hash, or None when no CAS has it."""
        with self._lock:
            if xet_hash not in self._files:
                self._read_new_shards()
            return self._files.get(xet_hash)

    def find(self, sha256: str) -> XetFile | None:
        """The file whose content has this sha256, or None when no CAS has it."""
        with self._lock:
            if sha256 not in self._by_sha256:
                self._read_new_shards()
            xet_hash = self._by_sha256.get(sha256)
            return self._files[xet_hash] if xet_hash else None

    def xorb_path(self, xorb: str) -> Path | None:
        """The file of a xorb, in whichever CAS holds it; None if none does."""
        with self._lock:
            if xorb not in self._xorbs:
                found = next(self.root.glob(f"*/{_XORBS}/default.{xorb}"), None)
                if found is None:
                    return None
                self._xorbs[xorb] = found
            return self._xorbs[xorb]

    def chunks(self, xorb: str) -> list[Chunk]:
        """The chunks of a xorb (``FileNotFoundError`` if no CAS has it)."""
        path = self.xorb_path(xorb)
        if path is None:
            raise FileNotFoundError(f"no xorb {xorb} in {self.root}")
        with self._lock:
            if xorb not in self._chunks:
                self._chunks[xorb] = xorb_chunks(path)
            return self._chunks[xorb]

    def _read_new_shards(self) -> None:
        """Index the shards not read yet (hf_xet writes one per upload); skip any still being written."""
        for path in sorted(self.root.glob(f"*/{_SHARDS}/*.mdb")):
            if path in self._shards_read:
                continue
            try:
                files = shard_files(path)
            except (ValueError, struct.error, IndexError):
                continue
            for file in files:
                if file.hash not in self._files or file.sha256:
                    self._files[file.hash] = file
                if file.sha256:
                    self._by_sha256[file.sha256] = file.hash
            self._shards_read.add(path)

    # -- writes and reads --------------------------------------------------------------------

    def put(self, path: str | os.PathLike, sha256: str) -> XetFile:
        """Upload the file at ``path`` (content ``sha256``) with hf_xet, unless a CAS has it; return it as stored."""
        found = self.find(sha256)
        if found is not None:
            return found
        endpoint = f"local://{self.root / f'store-{os.getpid()}'}"
        connection = {"endpoint": endpoint, "token": "local", "token_expiry_unix_secs": _TOKEN_EXPIRY}
        with self._hf_xet_session().new_upload_commit(**connection) as commit:
            handle = commit.start_upload_file(str(path), sha256=sha256)
        xet_hash = handle.result().xet_info.hash
        stored = self.file(xet_hash)
        if stored is None or stored.sha256 != sha256:
            raise RuntimeError(f"hf_xet stored {path} as {xet_hash}, but no shard lists it with sha256 {sha256}")
        return stored

    def read(self, file: XetFile, destination: str | os.PathLike) -> None:
        """Rebuild ``file`` into ``destination`` from the xorbs."""
        with open(destination, "wb") as out:
            for segment in file.segments:
                chunks = self.chunks(segment.xorb)[segment.chunk_start : segment.chunk_end]
                with open(self.xorb_path(segment.xorb), "rb") as xorb:
                    xorb.seek(chunks[0].offset)
                    for chunk in chunks:
                        out.write(unpack_chunk(chunk, xorb.read(chunk.stored)))

    def _hf_xet_session(self):
        with self._lock:
            if self._session is None:
                import hf_xet

                self._session = hf_xet.XetSession()
            return self._session

    # -- reads over HTTP ---------------------------------------------------------------------

    def reconstruction(self, file: XetFile, start: int, end: int) -> Reconstruction:
        """The terms and xorb byte ranges that rebuild bytes ``[start, end)`` of ``file`` (whole chunks)."""
        terms: list[Segment] = []
        offset, position = 0, 0
        for segment in file.segments:
            first, last = position, position + segment.size
            position = last
            if last <= start:
                continue
            if first >= end:
                break
            chunks = self.chunks(segment.xorb)[segment.chunk_start : segment.chunk_end]
            low, high = 0, len(chunks)
            while first + chunks[low].size <= start:  # drop whole chunks before the range ...
                first += chunks[low].size
                low += 1
            while last - chunks[high - 1].size >= end:  # ... and after it
                last -= chunks[high - 1].size
                high -= 1
            if not terms:
                offset = start - first
            terms.append(Segment(segment.xorb, last - first, segment.chunk_start + low, segment.chunk_start + high))
        return Reconstruction(offset, tuple(terms), self._fetches(terms))

    def _fetches(self, terms: list[Segment]) -> dict[str, list[tuple[int, int, int, int]]]:
        fetches: dict[str, list[tuple[int, int, int, int]]] = {}
        for term in sorted(terms, key=lambda t: (t.xorb, t.chunk_start)):
            chunks = self.chunks(term.xorb)
            ranges = fetches.setdefault(term.xorb, [])
            if ranges and term.chunk_start <= ranges[-1][1]:  # overlaps or touches the previous range: merge
                chunk_start, chunk_end, byte_start, _ = ranges.pop()
                chunk_end = max(chunk_end, term.chunk_end)
            else:
                chunk_start, chunk_end, byte_start = term.chunk_start, term.chunk_end, chunks[term.chunk_start].offset
            last = chunks[chunk_end - 1]
            ranges.append((chunk_start, chunk_end, byte_start, last.offset + last.stored))
        return fetches
