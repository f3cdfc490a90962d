"""The safetensors file format, the one place it is parsed: a header's length (under one size limit),
its JSON checked (known dtypes, offsets that match each tensor and do not overlap, string metadata),
a header as safetensors writes it (same order, same bytes), one tensor read, a small file written.

The header parser takes bytes, so a header fetched by HTTP Range requests (``hub/headers.py``) is checked
by the same code as a local file's. The rest is used where going through ``safetensors`` itself would
cost memory (a whole shard dict), a mapping (``get_tensor`` maps the file: it is read only when
touched, and a deleted file stays on disk while mapped) or speed (its serializer copies everything
once more).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from .dtypes import ITEMSIZE, code_of, torch_dtype_of_code
from .errors import LoadError
from .io_threads import read_into
from .units import numel

MAX_HEADER = 100 * 2**20  # safetensors' own limit on a header's size
_SUB_BYTE = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}  # safetensors' packed codes -> bits per element
_DAMAGED = "The file is damaged or not safetensors; download it again (--force-download)."


@dataclass(frozen=True)
class Header:
    """A checked safetensors header."""

    tensors: dict[str, dict] = field(default_factory=dict)  # name -> {"dtype", "shape", "data_offsets"}
    metadata: dict[str, str] = field(default_factory=dict)  # ``__metadata__``
    start: int = 8  # where the data starts: 8 + the header's length
    end: int = 8  # bytes the file must have: the data's end
    last: str = ""  # the tensor whose bytes end last

    def check_size(self, name: str, size: int) -> None:
        """Refuse a file of ``size`` bytes that ends before its last tensor does."""
        check_extent(name, size, self.end, self.last)


def tensor_nbytes(dtype_code: str, shape) -> int:
    """Bytes of a tensor of safetensors dtype ``dtype_code`` and ``shape`` (sub-byte codes packed)."""
    if dtype_code in _SUB_BYTE:
        return (numel(shape) * _SUB_BYTE[dtype_code] + 7) // 8
    return numel(shape) * ITEMSIZE.get(dtype_code, 4)


def header_length(name: str, prefix: bytes, size: Optional[int] = None) -> int:
    """The header length that a file's first 8 bytes declare, refused over :data:`MAX_HEADER` or past
    the end of a ``size``-byte file (so a lying length allocates nothing)."""
    if len(prefix) < 8:
        raise LoadError(f"{name} is {len(prefix)} bytes long: too short for a safetensors file.",
                        hint="The file is truncated; download it again (--force-download).")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > MAX_HEADER or (size is not None and 8 + length > size):
        raise LoadError(f"{name} declares a {length}-byte header"
                        + (f" in a {size}-byte file" if size is not None else "") + ": not a valid safetensors file.",
                        hint=_DAMAGED)
    return length


def parse_header(name: str, raw: bytes, length: int) -> Header:
    """The ``length``-byte header JSON ``raw``, checked: dtypes safetensors knows, offsets that match each
    tensor's dtype and shape and do not overlap, ``__metadata__`` a map of strings.

    Whether the data fits the file needs the file's size: :meth:`Header.check_size`."""
    if len(raw) < length:
        raise LoadError(f"{name} ends inside its header ({len(raw)} of {length} bytes).", hint=_DAMAGED)
    try:
        entries = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise LoadError(f"{name}: its header is not valid JSON.", hint=_DAMAGED) from None
    if not isinstance(entries, dict):
        raise LoadError(f"{name}: its header is not a JSON object.", hint=_DAMAGED)
    metadata = entries.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise LoadError(f"{name}: its __metadata__ is not a map of strings.", hint=_DAMAGED)
    spans = []
    for key, tensor in entries.items():
        try:
            code, shape, (begin, end) = tensor["dtype"], tensor["shape"], tensor["data_offsets"]
            ok = (code in ITEMSIZE or code in _SUB_BYTE) and all(isinstance(d, int) and d >= 0 for d in shape) \
                and isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise LoadError(f"{name}: tensor {key!r} has a malformed entry in the header.", hint=_DAMAGED)
        if end - begin != tensor_nbytes(code, shape):
            raise LoadError(f"{name}: tensor {key!r} claims {end - begin} bytes, but a {code} tensor of shape "
                            f"{shape} has {tensor_nbytes(code, shape)}.", hint=_DAMAGED)
        spans.append((begin, end, key))
    spans.sort()
    for (_, end, key), (begin, _, other) in zip(spans, spans[1:]):
        if begin < end:
            raise LoadError(f"{name}: tensors {key!r} and {other!r} overlap in the file.", hint=_DAMAGED)
    end, last = (spans[-1][1], spans[-1][2]) if spans else (0, "")
    return Header(entries, metadata, 8 + length, 8 + length + end, last)


def check_extent(name: str, size: int, end: int, last: str) -> None:
    """Refuse a ``size``-byte file whose header says its data runs to byte ``end`` (tensor ``last``)."""
    if size < end:
        raise LoadError(f"{name}: tensor {last!r} lies past the end of the {size}-byte file ({end} bytes expected).",
                        hint="The file is truncated or damaged; download it again (--force-download).")


def read_header(path: str, *, data: bool = True) -> Header:
    """The checked header of a local safetensors file (only its first bytes are read). ``data``: refuse a
    file shorter than its tensors too (a plan may read header-only files, and passes False)."""
    name = os.path.basename(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        length = header_length(name, f.read(8), size)
        found = parse_header(name, f.read(length), length)
    if data:
        found.check_size(name, size)
    return found


def order(entries: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``(name, dtype)`` pairs in the order safetensors lays tensors out: larger items first, then by name."""
    return sorted(entries, key=lambda kv: (-kv[1].itemsize, kv[0]))


def header(entries: Iterable[tuple[str, Any, tuple]], metadata: Optional[dict] = None) -> tuple[bytes, int]:
    """The 8-byte length and JSON header for ``(name, dtype, shape)`` entries already in layout order,
    padded with spaces to a multiple of 8 as safetensors pads it; and the size of the data after it."""
    head, offset = ({"__metadata__": dict(metadata)} if metadata else {}), 0
    for name, dtype, shape in entries:
        count = 1
        for n in shape:
            count *= n
        head[name] = {"dtype": code_of(dtype), "shape": list(shape), "data_offsets": [offset, offset + count * dtype.itemsize]}
        offset += count * dtype.itemsize
    text = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text, offset


def write_all(f, data) -> None:
    """Write all of ``data`` to an unbuffered file (``FileIO.write`` may write only part of it)."""
    view = memoryview(data).cast("B")
    while view:
        view = view[f.write(view):]


def name_at(path: str, offset: int, tensor: Any, headers: Optional[dict] = None) -> Optional[str]:
    """The name under which ``path`` stores ``tensor``'s bytes at file ``offset`` (same dtype, shape
    and extent), or None (not a safetensors file, or not there). ``path`` may have any name (the
    Hub cache's blobs have none). ``headers`` (path -> header or None) saves reading one twice."""
    headers = {} if headers is None else headers
    if path not in headers:
        headers[path] = _header_if_safetensors(path)
    if headers[path] is None:
        return None
    found: Header = headers[path]
    code, shape = code_of(tensor.dtype), list(tensor.shape)
    for name, entry in found.tensors.items():
        if entry["dtype"] == code and entry["shape"] == shape and found.start + entry["data_offsets"][0] == offset:
            return name
    return None


def _header_if_safetensors(path: str) -> Optional[Header]:
    """:func:`read_header` of a file that is a sound safetensors file by its content, else None."""
    try:
        return read_header(path)
    except (OSError, LoadError):
        return None


def read_tensor(path: str, name: str) -> Any:
    """Tensor ``name`` of ``path``, read into fresh memory (only its own bytes are read)."""
    import torch

    found = read_header(path)
    entry, start = found.tensors[name], found.start
    first, last = entry["data_offsets"]
    tensor = torch.empty(entry["shape"], dtype=torch_dtype_of_code(entry["dtype"]))
    if last > first:
        with open(path, "rb", buffering=0) as f:  # straight into the tensor (Python's buffered reads of big
            # chunks ran at a third of the disk's speed here), a big one on a few cores (its page faults)
            try:
                read_into(f.fileno(), memoryview(tensor.reshape(-1).view(torch.uint8).numpy()), start + first)
            except EOFError:
                raise EOFError(f"{path} ends inside tensor {name}") from None
    return tensor


def write_file(path: str, tensors: dict, metadata: Optional[dict] = None, *, exclusive: bool = False) -> None:
    """Write cpu ``tensors`` as one safetensors file, their bytes straight from memory. ``exclusive``: the file
    must be new (``FileExistsError`` if ``path`` exists, and nothing is touched)."""
    import torch

    entries = order((name, t.dtype) for name, t in tensors.items())
    head, _ = header([(name, dtype, tuple(tensors[name].shape)) for name, dtype in entries], metadata)
    with open(path, "xb" if exclusive else "wb", buffering=0) as f:
        write_all(f, head)
        for name, _ in entries:
            t = tensors[name].detach().contiguous()
            if t.numel():
                write_all(f, t.reshape(-1).view(torch.uint8).numpy())
