"""Safetensors headers only: parameter counts by dtype and bytes per shard, no weight bytes read.

Remote headers come through two HTTP Range requests per shard (length, then header); a server
that ignores ``Range`` is read only as far as the header. Local ones from the files' first bytes.
Either way the bytes are checked by ``safetensors_io`` (the one parser of the format); that the
tensors lie inside the files is checked on the local files before a load (``check_files``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..dtypes import FLOAT_NAMES
from ..errors import LoadError, Secret
from ..safetensors_io import Header, check_extent, header_length, parse_header, read_header, tensor_nbytes
from ..units import numel


@dataclass(frozen=True)
class HeaderInfo:
    """What a checkpoint's headers say."""

    param_counts: dict[str, int] = field(default_factory=dict)  # safetensors dtype code -> parameters
    tensors: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)  # shard -> tensor -> (code, bytes)
    extents: dict[str, tuple[int, str]] = field(default_factory=dict)  # shard -> (bytes it must have, last tensor)

    def check_files(self, paths: list[Path]) -> None:
        """Refuse a local shard shorter than its header says, naming the file and the tensor cut off."""
        for path in paths:
            need, last = self.extents.get(Path(path).name, (0, ""))
            check_extent(Path(path).name, os.path.getsize(path), need, last)

    @property
    def shard_bytes(self) -> dict[str, int]:
        """Shard file -> tensor data bytes."""
        return {shard: sum(n for _, n in tensors.values()) for shard, tensors in self.tensors.items()}

    @property
    def total_params(self) -> int:
        return sum(self.param_counts.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.shard_bytes.values())

    @property
    def float_dtype(self) -> str | None:
        """The dominant floating dtype as a torch name (what ``--dtype auto`` means without a config dtype)."""
        floats = {code: n for code, n in self.param_counts.items() if code in FLOAT_NAMES}
        return FLOAT_NAMES[max(floats, key=floats.get)] if floats else None


def remote_headers(repo_id: str, sha: str, shard_names: list[str], *, token=None, max_workers: int = 8) -> HeaderInfo:
    """Headers of ``shard_names`` at ``sha``: two Range requests per shard, so no weight byte moves.

    (huggingface_hub's ``get_safetensors_metadata`` fetches a first 100 kB per shard to save a
    round trip; that is weight bytes on most shards, and the whole of small ones.)
    """
    from concurrent.futures import ThreadPoolExecutor

    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    auth = Secret(build_hf_headers(token=token))

    def read(name: str) -> tuple[str, Header]:
        url = hf_hub_url(repo_id, name, revision=sha)
        prefix, size = _get_range(url, auth, 0, 7)
        length = header_length(name, prefix, size)
        raw, _ = _get_range(url, auth, 8, 8 + length - 1)
        return name.rsplit("/", 1)[-1], parse_header(name, raw, length)  # keyed by file name, as local headers are

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(shard_names)))) as pool:
        return _tally(pool.map(read, shard_names))


def _get_range(url: str, headers: dict, first: int, last: int) -> tuple[bytes, int | None]:
    """Bytes ``first..last`` of ``url`` and the file's size when the server says it.

    A server that answers 200 with the whole file (some mirrors and proxies ignore ``Range``) is
    read only up to ``last`` and then dropped, so a header never costs a whole shard.
    """
    from huggingface_hub.utils import get_session, hf_raise_for_status

    with get_session().stream("GET", url, headers=Secret(headers, Range=f"bytes={first}-{last}"),
                              follow_redirects=True) as response:
        hf_raise_for_status(response)
        if response.status_code == 206:
            span, _, total = response.headers.get("Content-Range", "").removeprefix("bytes ").partition("/")
            if not span.startswith(f"{first}-"):
                raise LoadError(f"{url} answered a Range request with bytes {span or '?'}, not {first}-{last}.",
                                hint="The server or a proxy in between mangles Range requests; try another network.")
            return response.read()[: last - first + 1], int(total) if total.isdigit() else None
        data = bytearray()
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) > last:
                break
        size = response.headers.get("Content-Length")
        return bytes(data[first : last + 1]), int(size) if size and size.isdigit() else None


def local_headers(shards: list[Path]) -> HeaderInfo:
    """Headers of local shard files (reads only their first bytes; a header-only file is fine for a plan)."""
    return _tally((Path(path).name, read_header(str(path), data=False)) for path in shards)


def _tally(headers: Iterable[tuple[str, Header]]) -> HeaderInfo:
    counts: dict[str, int] = {}
    tensors: dict[str, dict[str, tuple[str, int]]] = {}
    extents: dict[str, tuple[int, str]] = {}
    for name, header in headers:
        extents[name] = (header.end, header.last)
        shard = tensors[name] = {}
        for key, tensor in header.tensors.items():
            counts[tensor["dtype"]] = counts.get(tensor["dtype"], 0) + numel(tensor["shape"])
            shard[key] = (tensor["dtype"], tensor_nbytes(tensor["dtype"], tensor["shape"]))
    return HeaderInfo(counts, tensors, extents)
