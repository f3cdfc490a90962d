"""The safetensors file format, for the few places that stream it: a header as safetensors writes
it (same order, same bytes), one tensor read into fresh memory, a small file written directly.

Used where going through ``safetensors`` itself would cost memory (a whole shard dict), a mapping
(``get_tensor`` maps the file: it is read only when touched, and a deleted file stays on disk
while mapped) or speed (its serializer copies everything once more).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Iterable, Optional

from .dtypes import code_of, torch_dtype_of_code
from .io_threads import read_into


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


def read_header(path: str) -> tuple[int, dict]:
    """(where the data starts, the header) of a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return 8 + n, json.loads(f.read(n))


def name_at(path: str, offset: int, tensor: Any, headers: Optional[dict] = None) -> Optional[str]:
    """The name under which ``path`` stores ``tensor``'s bytes at file ``offset`` (same dtype, shape
    and extent), or None (not a safetensors file, or not there). ``path`` may have any name (the
    Hub cache's blobs have none). ``headers`` (path -> header or None) saves reading one twice."""
    headers = {} if headers is None else headers
    if path not in headers:
        headers[path] = _header_if_safetensors(path)
    if headers[path] is None:
        return None
    start, head = headers[path]
    code, shape = code_of(tensor.dtype), list(tensor.shape)
    for name, entry in head.items():
        if name != "__metadata__" and isinstance(entry, dict) and entry.get("dtype") == code \
                and entry.get("shape") == shape and start + (entry.get("data_offsets") or [-1])[0] == offset:
            return name
    return None


def _header_if_safetensors(path: str) -> Optional[tuple[int, dict]]:
    """:func:`read_header` of a file that is safetensors by its content, else None (read nothing big)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if not 2 <= n <= min(os.fstat(f.fileno()).st_size - 8, 100 * 2**20):
                return None
            head = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return None
    return (8 + n, head) if isinstance(head, dict) else None


def read_tensor(path: str, name: str) -> Any:
    """Tensor ``name`` of ``path``, read into fresh memory (only its own bytes are read)."""
    import torch

    start, head = read_header(path)
    entry = head[name]
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


def write_file(path: str, tensors: dict, metadata: Optional[dict] = None) -> None:
    """Write cpu ``tensors`` as one safetensors file, their bytes straight from memory."""
    import torch

    entries = order((name, t.dtype) for name, t in tensors.items())
    head, _ = header([(name, dtype, tuple(tensors[name].shape)) for name, dtype in entries], metadata)
    with open(path, "wb", buffering=0) as f:
        write_all(f, head)
        for name, _ in entries:
            t = tensors[name].detach().contiguous()
            if t.numel():
                write_all(f, t.reshape(-1).view(torch.uint8).numpy())
