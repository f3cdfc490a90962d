"""Sizes, counts and device names: the one place each is spelled.

``parse_size``/``format_bytes`` for bytes, ``numel`` for element counts, ``parse_device``
(what the user typed -> accelerate's key: ``0``, ``"cpu"``, ``"disk"``) and ``device_name``
(any device -> the label we show and key totals by: ``"cuda:0"``, ``"cpu"``, ``"disk"``).
No torch import at module level.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Optional, Union

from .errors import OptionError

Device = Union[int, str]

MAX_SIZE = 2**60  # an exabyte: anything larger is a typo
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """``"20GiB"`` -> bytes; a bare number is bytes. Decimal (GB) and binary (GiB) units."""
    match = _SIZE.match(str(text))
    if not match:
        raise OptionError(f"Cannot read {text!r} as a size.", hint="Write sizes like 20GiB, 512MB or 1000000 (bytes).")
    number, unit = match.groups()
    value = float(number) * _UNITS[(unit or "b").lower()]
    if not value < MAX_SIZE:
        raise OptionError(f"{text!r} is larger than any machine's memory or disk.",
                          hint="Write sizes like 20GiB, 512MB or 1000000 (bytes).")
    return int(value)


def format_bytes(n: Optional[float]) -> str:
    """Decimal units, as the Hub shows file sizes: ``512 B``, ``12.3 MB``, ``1.50 GB``."""
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            break
        n /= 1000
    if unit == "B":
        return f"{int(n)} B"
    return f"{n:.2f} {unit}" if abs(n) < 10 else f"{n:.1f} {unit}"


def numel(shape: Iterable[int]) -> int:
    """Elements of a tensor of ``shape`` (1 for a scalar)."""
    return math.prod(shape)


def parse_device(text: Any) -> Device:
    """A device as accelerate keys it: GPU ``N`` as int, else ``cpu``/``disk``/``mps``/``meta``.

    Takes what users type (``0``, ``cuda:1``, ``cuda``, ``CPU``) and ``torch.device`` objects.
    """
    if isinstance(text, bool):
        raise OptionError(f"Unknown device {text!r}.", hint="Use a GPU number (0, cuda:1), cpu or disk.")
    if isinstance(text, int):
        if text < 0:
            raise OptionError(f"Unknown device {text!r}.", hint="GPU numbers start at 0; or use cpu or disk.")
        return text
    if type(text).__name__ == "device" and hasattr(text, "type"):  # torch.device, without importing torch
        return text.index or 0 if text.type == "cuda" else text.type
    name = str(text).strip().lower()
    if re.fullmatch(r"\d+", name):
        return int(name)
    if re.fullmatch(r"cuda:\d+", name):
        return int(name.split(":")[1])
    if name == "cuda":
        return 0
    if name in ("cpu", "disk", "mps", "meta"):
        return name
    raise OptionError(f"Unknown device {text!r}.", hint="Use a GPU number (0, cuda:1), cpu or disk.")


def device_name(device: Any) -> str:
    """``0`` -> ``"cuda:0"``, ``torch.device("cpu")`` -> ``"cpu"``: the label devices are keyed by."""
    key = parse_device(device)
    return f"cuda:{key}" if isinstance(key, int) else key


def device_sort_key(device: str) -> tuple:
    """Accelerators first (by index), then ``cpu``, ``disk``, ``meta``."""
    kind, _, index = device.partition(":")
    rank = {"cpu": 1, "disk": 2, "meta": 3}.get(kind, 0)
    return (rank, kind, int(index) if index.isdigit() else -1)


DISK_MARGIN = 16 * 2**20  # room kept free beside what a write needs: file system blocks, metadata, a manifest


def disk_needed(nbytes: int) -> int:
    """What writing ``nbytes`` needs free: the bytes, 2% for blocks and metadata, and 16 MiB to spare."""
    return int(nbytes * 1.02) + DISK_MARGIN


def disk_shortfall(what: str, nbytes: int, free: int, where: str) -> str:
    """``Moving ... writes 10.5 MB (with room for the file system, 26.9 MB), but only 21.0 MB is free in /tmp.``"""
    return (f"{what} writes {format_bytes(nbytes)} (with room kept for the file system, 2% + 16 MiB: "
            f"{format_bytes(disk_needed(nbytes))}), but only {format_bytes(free)} is free in {where}.")
