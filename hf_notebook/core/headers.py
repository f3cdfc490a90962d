"""Safetensors headers only: parameter counts by dtype and bytes per shard, no weight bytes read.

Remote headers come through two HTTP Range requests per shard (length, then header);
local ones from the files' first bytes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .dtypes import FLOAT_NAMES, ITEMSIZE
from .errors import LoadError
from .units import numel


@dataclass(frozen=True)
class HeaderInfo:
    """What a checkpoint's headers say."""

    param_counts: dict[str, int] = field(default_factory=dict)  # safetensors dtype code -> parameters
    tensors: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)  # shard -> tensor -> (code, bytes)

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


def remote_headers(repo_id: str, sha: str, shard_names: list[str], *, token=None, max_workers: int = 8) -> HeaderInfo:
    """Headers of ``shard_names`` at ``sha``: two Range requests per shard, so no weight byte moves.

    (huggingface_hub's ``get_safetensors_metadata`` fetches a first 100 kB per shard to save a
    round trip; that is weight bytes on most shards, and the whole of small ones.)
    """
    from concurrent.futures import ThreadPoolExecutor

    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    auth = build_hf_headers(token=token)

    def read(name: str) -> tuple[str, dict]:
        url = hf_hub_url(repo_id, name, revision=sha)
        (length,) = struct.unpack("<Q", _get_range(url, auth, 0, 7))
        if length > MAX_HEADER:
            raise LoadError(f"{name} declares a {length}-byte header: not a valid safetensors file.",
                            hint="The checkpoint looks corrupt; check the repo's files.")
        return name, json.loads(_get_range(url, auth, 8, 8 + length - 1))

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(shard_names)))) as pool:
        return _tally(pool.map(read, shard_names))


def _get_range(url: str, headers: dict, first: int, last: int) -> bytes:
    from huggingface_hub.utils import get_session, hf_raise_for_status

    response = get_session().get(url, headers={**headers, "Range": f"bytes={first}-{last}"}, follow_redirects=True)
    hf_raise_for_status(response)
    return response.content[: last - first + 1]


def local_headers(shards: list[Path]) -> HeaderInfo:
    """Headers of local shard files (reads only their first bytes)."""

    def read(path: Path) -> tuple[str, dict]:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            return Path(path).name, json.loads(handle.read(length))

    return _tally(map(read, shards))


def tensor_nbytes(dtype_code: str, shape) -> int:
    """Bytes of a tensor of safetensors dtype ``dtype_code`` and ``shape``."""
    return numel(shape) * ITEMSIZE.get(dtype_code, 4)


def _tally(headers) -> HeaderInfo:
    counts: dict[str, int] = {}
    tensors: dict[str, dict[str, tuple[str, int]]] = {}
    for name, header in headers:
        header.pop("__metadata__", None)
        shard = tensors[name] = {}
        for key, tensor in header.items():
            counts[tensor["dtype"]] = counts.get(tensor["dtype"], 0) + numel(tensor["shape"])
            shard[key] = (tensor["dtype"], tensor_nbytes(tensor["dtype"], tensor["shape"]))
    return HeaderInfo(counts, tensors)
