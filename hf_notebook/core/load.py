"""Materialize a checkpoint onto its planned devices, tensor by tensor, with shard progress.

The load IS transformers' ``from_pretrained`` on the local snapshot folder (renames, fused
experts, tied weights, disk offload, generation config: all theirs, so the result is the
same). We only observe it: while it runs, the ``safe_open`` it calls is wrapped for our
checkpoint's files, so we see each tensor as it is read (progress), and when a tensor's
dtype is converted, its memory-mapped source pages are dropped from the process
(``madvise(MADV_DONTNEED)``) as soon as the copy is made: a float32 -> bfloat16 load does
not keep every float32 page resident until the end. If transformers stops reading through
that name, loads stay correct and only the progress goes quiet.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import mmap
import os
import sys
import threading
from pathlib import Path
from typing import Optional

from .events import OnEvent, ShardProgress, emit
from .fetch import Checkpoint
from .headers import TORCH_NAMES, tensor_nbytes
from .plan import Plan, model_class_for, torch_dtype



class _ShardCounter:
    """Counts tensors read from one shard and reports it; shared by transformers' worker threads."""

    def __init__(self, name: str, index: int, count: int, sizes: dict[str, int], on_event: OnEvent | None):
        self.name, self.index, self.count, self.on_event = name, index, count, on_event
        self.tensors_total, self.bytes_total = len(sizes), sum(sizes.values())
        self.tensors_done = self.bytes_done = 0
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.tensors_done += 1
            self.bytes_done += nbytes
            event = ShardProgress(self.name, self.index, self.count, self.tensors_done,
                                  self.tensors_total, self.bytes_done, self.bytes_total)
        emit(self.on_event, event)


class _PageReleaser:
    """Drops the mapped pages of converted source tensors once their copy is done.

    transformers converts a tensor right after reading it, in the reading thread; so when a
    thread reads its next tensor, its previous one is converted and its source pages can go.
    Dropping clean pages of a read-only file mapping is always safe: touched again, they are
    faulted back in from the page cache.
    """

    def __init__(self):
        self._last: dict[int, tuple[int, int]] = {}  # thread id -> (address, length) not yet released
        self._lock = threading.Lock()

    def read(self, tensor) -> None:
        span = (tensor.data_ptr(), tensor.numel() * tensor.element_size())
        with self._lock:
            previous = self._last.get(threading.get_ident())
            self._last[threading.get_ident()] = span
        if previous is not None:
            _dontneed(*previous)

    def finish(self) -> None:
        with self._lock:
            spans, self._last = list(self._last.values()), {}
        for span in spans:
            _dontneed(*span)


def _dontneed(address: int, length: int) -> None:
    """``madvise(MADV_DONTNEED)`` on the whole pages inside ``[address, address + length)`` (Linux)."""
    page = mmap.PAGESIZE
    start, end = -(-address // page) * page, (address + length) // page * page
    if end > start and _LIBC is not None:
        _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), 4)  # 4: MADV_DONTNEED


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()
_M_MMAP_THRESHOLD = -3


def _fix_mmap_threshold() -> None:
    """Pin glibc's mmap threshold at its 128 KiB default (once per process).

    glibc raises the threshold after freeing large blocks, so later tensors (converted in
    transformers' worker threads) land in per-thread heaps that are never given back:
    unloading a model then leaves its memory in the process. A fixed threshold keeps every
    large tensor in its own mapping, returned to the OS when freed.
    """
    if _LIBC is not None and hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


class _LazyTensor:
    """A safetensors slice that reports when ``tensor[...]`` materializes it."""

    __slots__ = ("_slice", "_nbytes", "_counter", "_releaser")

    def __init__(self, tensor_slice, nbytes: int, counter: Optional[_ShardCounter],
                 releaser: Optional[_PageReleaser] = None):
        self._slice, self._nbytes, self._counter, self._releaser = tensor_slice, nbytes, counter, releaser

    def __getitem__(self, index):
        tensor = self._slice[index]
        if self._releaser is not None:
            self._releaser.read(tensor)
        if self._counter is not None:
            self._counter.add(self._nbytes)
        return tensor

    def __getattr__(self, name):  # get_dtype, get_shape, ... of the wrapped slice
        return getattr(self._slice, name)


class _ObservedHandle:
    """A ``safe_open`` handle whose slices report their reads."""

    def __init__(self, handle, counter: _ShardCounter, releaser: _PageReleaser, target: str):
        self._handle, self._counter, self._releaser, self._target = handle, counter, releaser, target

    def get_slice(self, key: str) -> _LazyTensor:
        tensor_slice = self._handle.get_slice(key)
        converted = _converts(tensor_slice.get_dtype(), self._target)
        return _LazyTensor(tensor_slice, _nbytes(tensor_slice), self._counter, self._releaser if converted else None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)

    def __getattr__(self, name):  # keys, metadata, get_tensor, ...
        return getattr(self._handle, name)


_PATCH_LOCK = threading.RLock()


@contextlib.contextmanager
def _observing(counters: dict[str, _ShardCounter], releaser: _PageReleaser, target: str):
    """Wrap transformers' ``safe_open`` for the files in ``counters`` (by real path) while loading."""
    from transformers import modeling_utils

    original = modeling_utils.safe_open

    def observed(path, *args, **kwargs):
        handle = original(path, *args, **kwargs)
        counter = counters.get(os.path.realpath(path))
        return handle if counter is None else _ObservedHandle(handle, counter, releaser, target)

    with _PATCH_LOCK:
        modeling_utils.safe_open = observed
        try:
            yield
        finally:
            modeling_utils.safe_open = original

    def get_dtype(self):
        return self._slice.get_dtype()

    def get_shape(self):
        return self._slice.get_shape()


def materialize(checkpoint: Checkpoint, config, plan: Plan, *, offload_folder: str | Path | None = None,
                on_event: OnEvent | None = None):
    """Load ``checkpoint`` as ``plan`` says, through ``from_pretrained``, reporting shard progress."""
    cls = model_class_for(config, plan.model_class)
    dtype = torch_dtype(plan.dtype)
    _fix_mmap_threshold()
    releaser = _PageReleaser()
    counters = _shard_counters(checkpoint, on_event)
    try:
        with _observing(counters, releaser, plan.dtype):
            model = cls.from_pretrained(str(checkpoint.folder), config=config, dtype=dtype,
                                        device_map=dict(plan.device_map), offload_folder=offload_folder,
                                        use_safetensors=True, local_files_only=True)
    except BaseException:
        _release()
        raise
    finally:
        releaser.finish()
    if not hasattr(model, "hf_device_map"):  # transformers sets none for a single device
        model.hf_device_map = dict(plan.device_map)
    return model


def _shard_counters(checkpoint: Checkpoint, on_event: OnEvent | None) -> dict[str, _ShardCounter]:
    """A counter per shard (by real path), sized from its header; announces each shard at 0."""
    from safetensors import safe_open

    counters = {}
    count = len(checkpoint.shards)
    for index, path in enumerate(checkpoint.shards):
        with safe_open(path, framework="pt") as handle:
            sizes = {key: _nbytes(handle.get_slice(key)) for key in handle.keys()}
        counter = _ShardCounter(Path(path).name, index, count, sizes, on_event)
        counters[os.path.realpath(path)] = counter
        emit(on_event, ShardProgress(counter.name, index, count, 0, counter.tensors_total, 0, counter.bytes_total))
    return counters


def _converts(code: str, target: str) -> bool:
    """A floating tensor stored in another dtype than the target (fp8 included: never kept as is)."""
    return (code in TORCH_NAMES or code.startswith("F8")) and TORCH_NAMES.get(code) != target


def _nbytes(tensor_slice) -> int:
    return tensor_nbytes(tensor_slice.get_dtype(), tensor_slice.get_shape())


def _release() -> None:
    """Give back what a failed load allocated."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
