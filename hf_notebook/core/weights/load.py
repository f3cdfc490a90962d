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
import gc
import os
import threading
from pathlib import Path
from typing import Optional

from .. import libc
from ..compat import loader_pools
from ..devices.plan import Plan, model_class_for
from ..dtypes import converts, torch_dtype
from ..events import OnEvent, ShardProgress, emit
from ..hub.fetch import Checkpoint
from ..hub.headers import HeaderInfo, local_headers
from ..quiet import interrupts_kept, only_errors_from


class _ShardCounter:
    """Counts tensors read from one shard and reports it; shared by transformers' worker threads.

    Events are built and emitted under the lock, so a renderer sees each shard's counts rise
    monotonically whatever thread read the tensor.
    """

    def __init__(self, name: str, index: int, count: int, sizes: dict[str, tuple[str, int]],
                 on_event: OnEvent | None):
        self.name, self.index, self.count, self.on_event = name, index, count, on_event
        self.sizes = sizes  # tensor -> (safetensors dtype code, bytes), from the header
        self.tensors_total, self.bytes_total = len(sizes), sum(n for _, n in sizes.values())
        self.tensors_done = self.bytes_done = 0
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.tensors_done += 1
            self.bytes_done += nbytes
            emit(self.on_event, self._event())

    def announce(self) -> None:
        with self._lock:
            emit(self.on_event, self._event())

    def _event(self) -> ShardProgress:
        return ShardProgress(self.name, self.index, self.count, self.tensors_done, self.tensors_total,
                             self.bytes_done, self.bytes_total)


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
            libc.dontneed(*previous)

    def finish(self) -> None:
        with self._lock:
            spans, self._last = list(self._last.values()), {}
        for span in spans:
            libc.dontneed(*span)


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
        code, nbytes = self._counter.sizes.get(key, ("", 0))
        converted = converts(code, self._target)
        return _LazyTensor(tensor_slice, nbytes, self._counter, self._releaser if converted else None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)

    def __getattr__(self, name):  # keys, metadata, get_tensor, ...
        return getattr(self._handle, name)


@contextlib.contextmanager
def _observing(counters: dict[str, _ShardCounter], releaser: _PageReleaser, target: str):
    """Wrap transformers' ``safe_open`` for the files in ``counters`` (by real path) while loading."""
    from ..compat import modeling_utils_name, patched_modeling_utils

    original = modeling_utils_name("safe_open")

    def observed(path, *args, **kwargs):
        handle = original(path, *args, **kwargs)
        counter = counters.get(os.path.realpath(path))
        return handle if counter is None else _ObservedHandle(handle, counter, releaser, target)

    with patched_modeling_utils(safe_open=observed):
        yield


def _extra(plan: Plan, options, kw: Optional[dict]) -> dict:
    """The rest of from_pretrained's arguments: quantization, variant, attention, --kw."""
    extra = dict(kw or {})
    if plan.quantization is not None:
        extra["quantization_config"] = plan.quantization
    for name in ("variant", "attn_implementation"):
        if getattr(options, name, None):
            extra[name] = getattr(options, name)
    return extra


def materialize(checkpoint: Checkpoint, config, plan: Plan, *, offload_folder: str | Path | None = None,
                on_event: OnEvent | None = None, options=None, kw: Optional[dict] = None):
    """Load ``checkpoint`` as ``plan`` says, through ``from_pretrained``, reporting shard progress."""
    cls = plan.model_cls or model_class_for(config, plan.model_class)
    libc.pin_mmap_threshold()
    releaser = _PageReleaser()
    pickled = any(str(p).endswith(".bin") for p in checkpoint.shards)  # only with --allow-pickle: no progress
    counters = {} if pickled else _shard_counters(checkpoint, on_event)
    pools: list = []
    try:
        with _observing(counters, releaser, plan.dtype), loader_pools() as pools, \
                only_errors_from("accelerate.big_modeling"), interrupts_kept():
            model = cls.from_pretrained(str(checkpoint.folder), config=config, dtype=torch_dtype(plan.dtype),
                                        device_map=dict(plan.device_map), offload_folder=offload_folder,
                                        use_safetensors=not pickled, weights_only=True, local_files_only=True,
                                        **_extra(plan, options, kw))
    except BaseException:
        _drain(pools)
        _release()
        raise
    finally:
        releaser.finish()
    if not hasattr(model, "hf_device_map"):  # transformers sets none for a single device
        model.hf_device_map = dict(plan.device_map)
    return model


def _drain(pools: list) -> None:
    """After a failed or interrupted load: wait for transformers' loader threads to finish the tensor
    each has in hand (its pools are shut down without waiting), so their memory is free when the error
    reaches the user, not a moment later. A thread that has just taken its tensor counts too."""
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


def _shard_counters(checkpoint: Checkpoint, on_event: OnEvent | None) -> dict[str, _ShardCounter]:
    """A counter per shard (by real path), sized from the headers; announces each shard at 0."""
    headers: HeaderInfo = checkpoint.headers or local_headers(checkpoint.shards)
    headers.check_files(checkpoint.shards)
    counters = {}
    count = len(checkpoint.shards)
    for index, path in enumerate(checkpoint.shards):
        sizes = headers.tensors.get(Path(path).name, {})
        counter = _ShardCounter(Path(path).name, index, count, sizes, on_event)
        counters[os.path.realpath(path)] = counter
        counter.announce()
    return counters


def _release() -> None:
    """Give back what a failed load allocated."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc.malloc_trim()
