"""Safetensors headers only: parameter counts by dtype and bytes per shard, no weight bytes read.

Remote headers come from the header cache beside the Hub cache (``header_cache``: a warm plan makes
no request for them), else through two HTTP Range requests per shard (length, then header), then
kept there; a server that ignores ``Range`` is read only as far as the header. Local ones from the
files' first bytes. Either way the bytes are checked by ``safetensors_io`` (the one parser of the
format); that the tensors lie inside the files is checked on the local files before a load
(``check_files``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from ..dtypes import FLOAT_NAMES
from ..errors import LoadError, OfflineError, Secret
from ..safetensors_io import Header, check_extent, header_length, parse_header, read_header, tensor_nbytes
from ..units import numel
from .header_cache import HeaderCache, normalize_etag


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


def remote_headers(repo_id: str, sha: str, shard_names: list[str], *, token=None, max_workers: int = 8,
                   etags: Optional[dict[str, str]] = None, cache_dir=None, offline: bool = False) -> HeaderInfo:
    """Headers of ``shard_names`` at ``sha``: from the header cache, else two Range requests per shard
    (so no weight byte moves), kept in the cache for the next plan.

    ``etags``: file -> what the Hub says its content is (the Resolution's ``file_hashes`` and ``blob_ids``);
    a cached header of other content is not used. ``cache_dir``: the Hub cache (default: huggingface_hub's).
    Offline (``offline`` or ``HF_HUB_OFFLINE``) a header missing from the cache is an :class:`OfflineError`.
    (huggingface_hub's ``get_safetensors_metadata`` fetches a first 100 kB per shard to save a
    round trip; that is weight bytes on most shards, and the whole of small ones.)
    """
    from concurrent.futures import ThreadPoolExecutor

    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    etags = etags or {}
    cache = HeaderCache(repo_id, sha, cache_dir)
    found = {name: cache.get(name, etags.get(name)) for name in shard_names}
    missing = [name for name, header in found.items() if header is None]
    if missing and (offline or constants.HF_HUB_OFFLINE):
        raise OfflineError(f"Offline, and the safetensors headers of {', '.join(missing)} ({repo_id}@{sha[:8]}) "
                           f"are not in the cache at {cache.root}.",
                           hint="Plan it once with network (or download its shards), then plan offline.",
                           missing=missing)
    if missing:
        auth = Secret(build_hf_headers(token=token))

        def read(name: str) -> Header:
            url = hf_hub_url(repo_id, name, revision=sha)
            prefix, size, etag = _get_range(url, auth, 0, 7)
            length = header_length(name, prefix, size)
            raw, _, again = _get_range(url, auth, 8, 8 + length - 1)
            header = parse_header(name, raw, length)
            expected = normalize_etag(etags.get(name))
            if etag == again and (None in (etag, expected) or etag == expected):  # one content, as far as told
                cache.put(name, prefix[:8] + raw[:length], etag or expected, size)
            return header

        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(missing)))) as pool:
            found.update(zip(missing, pool.map(read, missing)))
        if cache.written:
            cache.trim()
    return _tally((name.rsplit("/", 1)[-1], found[name]) for name in shard_names)  # keyed by file name, as local


def cached_headers(repo_id: str, sha: str, shard_names: list[str], *, etags: Optional[dict[str, str]] = None,
                   cache_dir=None) -> Optional[HeaderInfo]:
    """Headers of ``shard_names`` at ``sha`` from the header cache alone (an offline plan), or None if one is
    missing there."""
    cache = HeaderCache(repo_id, sha, cache_dir)
    found = [(name.rsplit("/", 1)[-1], cache.get(name, (etags or {}).get(name))) for name in shard_names]
    return None if any(header is None for _, header in found) else _tally(found)


def _get_range(url: str, headers: dict, first: int, last: int) -> tuple[bytes, int | None, str | None]:
    """Bytes ``first..last`` of ``url``, the file's size when the server says it, and its etag (the Hub's
    ``X-Linked-Etag`` of a redirected LFS file, else the ``ETag`` of an answer that came straight).

    A server that answers 200 with the whole file (some mirrors and proxies ignore ``Range``) is
    read only up to ``last`` and then dropped, so a header never costs a whole shard.
    """
    from huggingface_hub.utils import get_session, hf_raise_for_status

    with get_session().stream("GET", url, headers=Secret(headers, Range=f"bytes={first}-{last}"),
                              follow_redirects=True) as response:
        hf_raise_for_status(response)
        etag = _etag(response)
        if response.status_code == 206:
            span, _, total = response.headers.get("Content-Range", "").removeprefix("bytes ").partition("/")
            if not span.startswith(f"{first}-"):
                raise LoadError(f"{url} answered a Range request with bytes {span or '?'}, not {first}-{last}.",
                                hint="The server or a proxy in between mangles Range requests; try another network.")
            return response.read()[: last - first + 1], int(total) if total.isdigit() else None, etag
        data = bytearray()
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) > last:
                break
        size = response.headers.get("Content-Length")
        return bytes(data[first : last + 1]), int(size) if size and size.isdigit() else None, etag


def _etag(response) -> str | None:
    hops = [*getattr(response, "history", ()), response]
    linked = next((hop.headers.get("X-Linked-Etag") for hop in hops if hop.headers.get("X-Linked-Etag")), None)
    return normalize_etag(linked or (response.headers.get("ETag") if len(hops) == 1 else None))


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
