"""Tampering with a Hub cache as someone who knows its layout would: for tests of what must refuse it."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path


def swap_cached_shard(cache: Path, repo_id: str) -> str:
    """Change one weight byte of the first cached safetensors shard of ``repo_id`` in ``cache``, give its blob the
    name of its new sha256 and point the snapshot link at it: the cache stays self-consistent, so only a record
    kept elsewhere (a lock file, a bundle's manifest) tells. Returns the shard's name."""
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    link = sorted(next((repo / "snapshots").iterdir()).glob("*.safetensors"))[0]
    blob = Path(os.path.realpath(link))
    data = bytearray(blob.read_bytes())
    data[8 + struct.unpack("<Q", data[:8])[0] + 16] ^= 0xFF  # past the 8-byte length and the header: a weight
    new = repo / "blobs" / hashlib.sha256(data).hexdigest()
    new.write_bytes(data)
    blob.unlink()
    link.unlink()
    link.symlink_to(os.path.relpath(new, link.parent))
    return link.name
