"""glibc calls that give memory back to the OS (Linux only; no-ops elsewhere)."""

from __future__ import annotations

import ctypes
import functools
import mmap
import sys

_MADV_DONTNEED = 4
_M_MMAP_THRESHOLD = -3


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
    place) and anonymous memory are kept: ``/proc/self/pagemap`` tells them apart (bit 61, file
    page; bit 63, present).
    """
    libc = _libc()
    if libc is None or length <= 0:
        return 0
    import numpy as np

    page = mmap.PAGESIZE
    first, last = address // page, -(-(address + length) // page)
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(first * 8)
            entries = np.frombuffer(f.read((last - first) * 8), dtype=np.uint64)
    except OSError:
        return 0
    clean = ((entries >> np.uint64(61)) & np.uint64(1)).astype(bool) & ((entries >> np.uint64(63)) & np.uint64(1)).astype(bool)
    dropped = 0
    edges = np.flatnonzero(np.diff(np.concatenate(([0], clean.astype(np.int8), [0]))))
    for start, stop in zip(edges[::2], edges[1::2]):  # runs of clean file pages
        libc.madvise(ctypes.c_void_p((first + int(start)) * page), ctypes.c_size_t(int(stop - start) * page),
                     _MADV_DONTNEED)
        dropped += int(stop - start) * page
    return dropped


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
