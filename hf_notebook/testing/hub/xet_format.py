"""Read what hf_xet writes into a local CAS: the file sections of shards (``*.mdb``), and xorbs' chunks.

Formats as in xet-core (``xet_core_structures``): a shard starts with a 48-byte header (tag
``HFRepoMetaData``, version, footer size), then per file a 48-byte ``FileDataSequenceHeader``
(file hash, u32 flags, u32 entry count, 8 unused bytes), its ``FileDataSequenceEntry`` segments
(xorb hash, u32 flags, u32 unpacked bytes, u32 first chunk, u32 end chunk), as many verification
entries if flag bit 31 is set, and one metadata-ext entry (the sha256) if bit 30 is set; a header
whose hash is all ``0xff`` ends the section. A xorb is a run of chunks, each an 8-byte header
(version, 3-byte compressed length, scheme, 3-byte uncompressed length) and its bytes, then a footer
starting ``XETBLOB``. A chunk's bytes are stored as they are (scheme 0), as an LZ4 frame (1), or
as an LZ4 frame of the bytes regrouped by position modulo 4 (2, "bg4"). Hashes are four
little-endian u64 words, written as 16 hex digits each.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

ENTRY_SIZE = 48
SHARD_TAG = b"HFRepoMetaData\0"
FLAG_WITH_VERIFICATION = 1 << 31
FLAG_WITH_METADATA_EXT = 1 << 30
_BOOKEND = "f" * 64
_XORB_FOOTER = b"XETBLOB"
_CHUNK_HEADER = 8
_LZ4_MAGIC = 0x184D2204


@dataclass(frozen=True)
class Segment:
    """Chunks ``[chunk_start, chunk_end)`` of a xorb, ``size`` bytes once unpacked."""

    xorb: str
    size: int
    chunk_start: int
    chunk_end: int


@dataclass(frozen=True)
class XetFile:
    """A file as a shard lists it: its Xet hash, the segments it is made of, and its sha256 if recorded."""

    hash: str
    segments: tuple[Segment, ...]
    sha256: str | None

    @property
    def size(self) -> int:
        return sum(segment.size for segment in self.segments)


@dataclass(frozen=True)
class Chunk:
    """Where a chunk lies in its xorb file, and how big it is unpacked."""

    offset: int
    stored: int  # header included
    size: int
    scheme: int


def hash_hex(raw: bytes) -> str:
    """A 32-byte hash as Xet writes it: each of the four little-endian u64 words as 16 hex digits."""
    return "".join(f"{word:016x}" for word in struct.unpack("<4Q", raw))


def shard_files(path: Path) -> list[XetFile]:
    """The files a shard describes; ``ValueError`` if ``path`` is not a shard."""
    data = path.read_bytes()
    if not data.startswith(SHARD_TAG):
        raise ValueError(f"{path} is not a Xet shard")
    files, pos = [], ENTRY_SIZE
    while True:
        file_hash = hash_hex(data[pos : pos + 32])
        flags, count = struct.unpack_from("<II", data, pos + 32)
        pos += ENTRY_SIZE
        if file_hash == _BOOKEND:
            return files
        segments = []
        for _ in range(count):
            size, start, end = struct.unpack_from("<III", data, pos + 36)
            segments.append(Segment(hash_hex(data[pos : pos + 32]), size, start, end))
            pos += ENTRY_SIZE
        if flags & FLAG_WITH_VERIFICATION:
            pos += count * ENTRY_SIZE
        sha256 = None
        if flags & FLAG_WITH_METADATA_EXT:
            sha256 = hash_hex(data[pos : pos + 32])
            pos += ENTRY_SIZE
        files.append(XetFile(file_hash, tuple(segments), sha256))


def xorb_chunks(path: Path) -> list[Chunk]:
    """The chunks of a xorb file, in order, read from their headers up to the footer."""
    chunks, offset = [], 0
    with open(path, "rb") as stream:
        while (header := stream.read(_CHUNK_HEADER)) and not header.startswith(_XORB_FOOTER):
            if len(header) < _CHUNK_HEADER:
                raise ValueError(f"{path}: truncated chunk header at byte {offset}")
            stored = _CHUNK_HEADER + int.from_bytes(header[1:4], "little")
            chunks.append(Chunk(offset, stored, int.from_bytes(header[5:8], "little"), header[4]))
            offset += stored
            stream.seek(offset)
    return chunks


def unpack_chunk(chunk: Chunk, stored: bytes) -> bytes:
    """The bytes of ``chunk`` from what the xorb stores for it (its header included)."""
    data = stored[_CHUNK_HEADER:]
    if chunk.scheme == 0:
        return data
    if chunk.scheme not in (1, 2):
        raise ValueError(f"unknown compression scheme {chunk.scheme}")
    unpacked = _lz4_frame(data)
    if chunk.scheme == 2:  # the four groups, one after the other: put each byte back at its place
        regrouped, start = bytearray(len(unpacked)), 0
        for group in range(4):
            length = len(range(group, len(unpacked), 4))
            regrouped[group::4] = unpacked[start : start + length]
            start += length
        unpacked = bytes(regrouped)
    if len(unpacked) != chunk.size:
        raise ValueError(f"a chunk of {chunk.size} bytes unpacked to {len(unpacked)}")
    return unpacked


def _lz4_frame(data: bytes) -> bytes:
    """Decode an LZ4 frame: header (magic, flags, block size, optional content size and dict id, checksum), blocks."""
    magic, flags = struct.unpack_from("<IB", data)
    if magic != _LZ4_MAGIC:
        raise ValueError("not an LZ4 frame")
    pos = 7 + (8 if flags & 0x08 else 0) + (4 if flags & 0x01 else 0)
    out = bytearray()
    while (size := struct.unpack_from("<I", data, pos)[0]) != 0:
        length, pos = size & 0x7FFFFFFF, pos + 4
        if size & 0x80000000:  # stored as it is
            out += data[pos : pos + length]
        else:
            _lz4_block(data[pos : pos + length], out)
        pos += length + (4 if flags & 0x10 else 0)  # and a block checksum, if the flags say so
    return bytes(out)


def _lz4_block(block: bytes, out: bytearray) -> None:
    """Decode one LZ4 block onto ``out``: (literals, match) sequences; matches may reach into earlier blocks."""
    pos = 0
    while True:
        token = block[pos]
        pos += 1
        literals, pos = _lz4_length(block, pos, token >> 4)
        out += block[pos : pos + literals]
        pos += literals
        if pos >= len(block):
            return
        offset = block[pos] | block[pos + 1] << 8
        length, pos = _lz4_length(block, pos + 2, token & 15)
        length += 4
        start = len(out) - offset
        if offset >= length:
            out += out[start : start + length]
        else:  # the match overlaps what it writes: a repeating pattern
            out += (out[start:] * (length // offset + 1))[:length]


def _lz4_length(block: bytes, pos: int, length: int) -> tuple[int, int]:
    if length == 15:
        while True:
            extra = block[pos]
            pos += 1
            length += extra
            if extra != 255:
                break
    return length, pos
