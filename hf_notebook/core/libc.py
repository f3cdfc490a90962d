"""glibc calls that give memory back to the OS, and what /proc says of our pages (Linux only;
no-ops or "don't know" elsewhere)."""

from __future__ import annotations

import bisect
import ctypes
import functools
import mmap
import sys
from typing import Optional

_MADV_DONTNEED = 4
_M_MMAP_THRESHOLD = -3
_FILE_PAGE, _SWAPPED, _PRESENT = 61, 62, 63  # /proc/self/pagemap bits (Documentation/admin-guide/mm/pagemap.rst)


@functools.cache
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        return libc
    except (OSError, AttributeError):
        return None


def dontneed(address: int, length: int) -> None:
    """``madvise(MADV_DONTNEED)`` on the whole pages inside ``[address, address + length)``."""
    page = mmap.PAGESIZE
    start, end = -(-address // page) * page, (address + length) // page * page
    libc = _libc()
    if end > start and libc is not None:
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


def drop_clean_file_pages(address: int, length: int) -> int:
    """Give back the pages of ``[address, address + length)`` that are unmodified pages of a file
    mapping (a memory-mapped checkpoint); return how many bytes were dropped.

    Such a page is read again from the file if touched, so dropping it is always safe, whoever
    still refers to it. Pages written since mapping (copy-on-write copies: a weight changed in
    place) and anonymous memory are kept: ``/proc/self/pagemap`` tells them apart.
    """
    libc = _libc()
    if libc is None or length <= 0:
        return 0
    import numpy as np

    entries = _pagemap(address, length)
    if entries is None:
        return 0
    page, first = mmap.PAGESIZE, address // mmap.PAGESIZE
    clean = _bit(entries, _FILE_PAGE) & _bit(entries, _PRESENT)
    dropped = 0
    edges = np.flatnonzero(np.diff(np.concatenate(([0], clean.astype(np.int8), [0]))))
    for start, stop in zip(edges[::2], edges[1::2]):  # runs of clean file pages
        libc.madvise(ctypes.c_void_p((first + int(start)) * page), ctypes.c_size_t(int(stop - start) * page),
                     _MADV_DONTNEED)
        dropped += int(stop - start) * page
    return dropped


def _pagemap(address: int, length: int):
    """The pagemap entries (uint64) of the pages holding ``[address, address + length)``; None if unreadable."""
    import numpy as np

    page = mmap.PAGESIZE
    first, last = address // page, -(-(address + length) // page)
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(first * 8)
            return np.frombuffer(f.read((last - first) * 8), dtype=np.uint64)
    except OSError:
        return None


def _bit(entries, bit: int):
    import numpy as np

    return ((entries >> np.uint64(bit)) & np.uint64(1)).astype(bool)


def file_region(address: int, length: int) -> Optional[tuple[str, int]]:
    """(file, offset) whose bytes ``[address, address + length)`` of our memory are, unchanged: a
    memory-mapped file (a checkpoint loaded in place) none of whose pages there were written since
    (a written page of a private mapping is a copy: anonymous, or swapped out). None otherwise."""
    return file_regions([(address, length)])[0]


def file_regions(spans: list[tuple[int, int]]) -> list[Optional[tuple[str, int]]]:
    """:func:`file_region` of each ``(address, length)``, reading the process's mappings once."""
    if not spans or not sys.platform.startswith("linux"):
        return [None] * len(spans)
    try:
        with open("/proc/self/maps") as f:
            maps = [line.split(maxsplit=5) for line in f]
    except OSError:
        return [None] * len(spans)
    starts = sorted((int(m[0].split("-")[0], 16), i) for i, m in enumerate(maps))
    keys = [a for a, _ in starts]
    return [_region(maps, starts, keys, address, length) for address, length in spans]


def _region(maps: list, starts: list, keys: list, address: int, length: int) -> Optional[tuple[str, int]]:
    at = bisect.bisect_right(keys, address) - 1
    if length <= 0 or at < 0:
        return None
    span, perms, offset, _, inode, *path = maps[starts[at][1]]
    start, end = (int(x, 16) for x in span.split("-"))
    name = path[0].rstrip("\n") if path else ""
    if not start <= address < end or address + length > end or "r" not in perms or inode == "0" \
            or not name.startswith("/") or name.endswith(" (deleted)"):
        return None
    entries = _pagemap(address, length)
    if entries is None or len(entries) == 0:
        return None
    changed = _bit(entries, _SWAPPED) | (_bit(entries, _PRESENT) & ~_bit(entries, _FILE_PAGE))
    return None if changed.any() else (name, int(offset, 16) + address - start)


def pin_mmap_threshold() -> None:
    """Pin glibc's mmap threshold at its 128 KiB default (idempotent).

    glibc raises the threshold after freeing large blocks, so later tensors (converted in
    transformers' worker threads) land in per-thread heaps that are never given back:
    unloading a model then leaves its memory in the process. A fixed threshold keeps every
    large tensor in its own mapping, returned to the OS when freed.
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


def malloc_trim() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def reset_peak_rss() -> bool:
    """Start the kernel's peak-resident-set count (``VmHWM``) again from now; False where it cannot be."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def memory_status() -> dict[str, int]:
    """``/proc/self/status``'s memory lines in bytes (``VmHWM``, ``VmRSS``, ``RssFile``, ...); empty elsewhere."""
    found = {}
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if value.strip().endswith(" kB"):
                    found[name] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return found

