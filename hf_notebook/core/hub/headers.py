"""Safetensors headers only: parameter counts by dtype and bytes per shard, no weight bytes read.

Remote headers come through two HTTP Range requests per shard (length, then header); a server
that ignores ``Range`` is read only as far as the header. Local ones from the files' first bytes.
Every header is checked before it is trusted: a sane length, valid JSON, known dtypes, and
tensor offsets that lie inside the file, match their dtype and shape, and do not overlap.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ..dtypes import FLOAT_NAMES, ITEMSIZE
from ..errors import LoadError, Secret
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
            size = os.path.getsize(path)
            if size < need:
                raise LoadError(f"{Path(path).name}: tensor {last!r} lies past the end of the {size}-byte file "
                                f"({need} bytes expected).",
                                hint="The file is truncated or damaged; download it again (--force-download).")

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


MAX_HEADER = 100 * 2**20  # safetensors' own limit on a header's size
_EXTENT = "\0extent"  # (bytes the file must have, its last tensor), added by _parse; no JSON key can be this


def remote_headers(repo_id: str, sha: str, shard_names: list[str], *, token=None, max_workers: int = 8) -> HeaderInfo:
    """Headers of ``shard_names`` at ``sha``: two Range requests per shard, so no weight byte moves.

    (huggingface_hub's ``get_safetensors_metadata`` fetches a first 100 kB per shard to save a
    round trip; that is weight bytes on most shards, and the whole of small ones.)
    """
    from concurrent.futures import ThreadPoolExecutor

    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    auth = Secret(build_hf_headers(token=token))

    def read(name: str) -> tuple[str, dict]:
        url = hf_hub_url(repo_id, name, revision=sha)
        prefix, size = _get_range(url, auth, 0, 7)
        length = _header_length(name, prefix, size)
        raw, _ = _get_range(url, auth, 8, 8 + length - 1)
        return name.rsplit("/", 1)[-1], _parse(name, raw, length)  # keyed by file name, as local headers are

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


def _header_length(name: str, prefix: bytes, size: int | None) -> int:
    if len(prefix) < 8:
        raise LoadError(f"{name} is {len(prefix)} bytes long: too short for a safetensors file.",
                        hint="The file is truncated; download it again (--force-download).")
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER or (size is not None and 8 + length > size):
        raise LoadError(f"{name} declares a {length}-byte header"
                        + (f" in a {size}-byte file" if size is not None else "") + ": not a valid safetensors file.",
                        hint="The file is damaged or not safetensors; download it again (--force-download).")
    return length


def _parse(name: str, raw: bytes, length: int) -> dict:
    """The header JSON, checked: known dtypes, offsets that match each tensor and do not overlap.

    Whether the data fits the file is checked on the local file (``HeaderInfo.check_files``).
    """
    hint = "The file is damaged or not safetensors; download it again (--force-download)."
    if len(raw) < length:
        raise LoadError(f"{name} ends inside its header ({len(raw)} of {length} bytes).", hint=hint)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise LoadError(f"{name}: its header is not valid JSON.", hint=hint) from None
    if not isinstance(header, dict):
        raise LoadError(f"{name}: its header is not a JSON object.", hint=hint)
    spans = []
    for key, tensor in header.items():
        if key == "__metadata__":
            continue
        try:
            code, shape, (begin, end) = tensor["dtype"], tensor["shape"], tensor["data_offsets"]
            ok = code in ITEMSIZE and all(isinstance(d, int) and d >= 0 for d in shape) and 0 <= begin <= end
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise LoadError(f"{name}: tensor {key!r} has a malformed entry in the header.", hint=hint)
        if end - begin != tensor_nbytes(code, shape):
            raise LoadError(f"{name}: tensor {key!r} claims {end - begin} bytes, but a {code} tensor of shape "
                            f"{shape} has {tensor_nbytes(code, shape)}.", hint=hint)
        spans.append((begin, end, key))
    spans.sort()
    for (_, end, key), (begin, _, other) in zip(spans, spans[1:]):
        if begin < end:
            raise LoadError(f"{name}: tensors {key!r} and {other!r} overlap in the file.", hint=hint)
    header[_EXTENT] = (8 + length + (spans[-1][1] if spans else 0), spans[-1][2] if spans else "")
    return header


def local_headers(shards: list[Path]) -> HeaderInfo:
    """Headers of local shard files (reads only their first bytes)."""

    def read(path: Path) -> tuple[str, dict]:
        name, size = Path(path).name, os.path.getsize(path)
        with open(path, "rb") as handle:
            length = _header_length(name, handle.read(8), size)
            return name, _parse(name, handle.read(length), length)

    return _tally(map(read, shards))


def tensor_nbytes(dtype_code: str, shape) -> int:
    """Bytes of a tensor of safetensors dtype ``dtype_code`` and ``shape``."""
    return numel(shape) * ITEMSIZE.get(dtype_code, 4)


def _tally(headers) -> HeaderInfo:
    counts: dict[str, int] = {}
    tensors: dict[str, dict[str, tuple[str, int]]] = {}
    extents: dict[str, tuple[int, str]] = {}
    for name, header in headers:
        header.pop("__metadata__", None)
        extents[name] = header.pop(_EXTENT)
        shard = tensors[name] = {}
        for key, tensor in header.items():
            counts[tensor["dtype"]] = counts.get(tensor["dtype"], 0) + numel(tensor["shape"])
            shard[key] = (tensor["dtype"], tensor_nbytes(tensor["dtype"], tensor["shape"]))
    return HeaderInfo(counts, tensors, extents)
