"""Materialize a checkpoint onto its planned devices, tensor by tensor, with shard progress.

transformers' ``from_pretrained`` does the model work (renames, fused experts, tied
weights, disk offload); we hand it lazy tensors through its ``state_dict`` argument, so we
see each tensor as it is read (progress) and choose how it is read: memory-mapped views
when the dtype is kept (zero copy, as ``from_pretrained``), ``pread`` into fresh memory when
it is converted, so the source pages never pile up in RSS.
"""

from __future__ import annotations

import gc
import threading
from pathlib import Path
from typing import Optional

from .events import OnEvent, ShardProgress, emit
from .fetch import Checkpoint
from .headers import ITEMSIZE, TORCH_NAMES
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


class _LazyTensor:
    """A safetensors slice that reports when ``tensor[...]`` materializes it."""

    __slots__ = ("_slice", "_nbytes", "_counter")

    def __init__(self, tensor_slice, nbytes: int, counter: Optional[_ShardCounter]):
        self._slice, self._nbytes, self._counter = tensor_slice, nbytes, counter

    def __getitem__(self, index):
        tensor = self._slice[index]
        if self._counter is not None:
            self._counter.add(self._nbytes)
        return tensor

    def uncounted(self) -> "_LazyTensor":
        """The same tensor, read without counting it again (for tied aliases)."""
        return _LazyTensor(self._slice, self._nbytes, None)

    def get_dtype(self):
        return self._slice.get_dtype()

    def get_shape(self):
        return self._slice.get_shape()


def materialize(checkpoint: Checkpoint, config, plan: Plan, *, offload_folder: str | Path | None = None,
                name_or_path: Optional[str] = None, on_event: OnEvent | None = None):
    """Build the model of ``plan`` from ``checkpoint``; the result equals ``from_pretrained``'s."""
    cls = model_class_for(config, plan.model_class)
    dtype = torch_dtype(plan.dtype)
    handles: list = []
    try:
        state_dict = _lazy_state_dict(checkpoint, dtype, handles, on_event)
        if "disk" in plan.devices:
            _alias_tied(state_dict, plan.tied)
        model = cls.from_pretrained(None, config=config, state_dict=state_dict, dtype=dtype,
                                    device_map=dict(plan.device_map), offload_folder=offload_folder)
    except BaseException:
        state_dict = None
        _release()
        raise
    finally:
        for handle in handles:
            handle.__exit__(None, None, None)
    if not hasattr(model, "hf_device_map"):
        model.hf_device_map = dict(plan.device_map)
    if checkpoint.generation_config_file is not None and getattr(model, "generation_config", None) is not None:
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(checkpoint.folder)
    if name_or_path:
        model.config._name_or_path = name_or_path
    return model


def _lazy_state_dict(checkpoint: Checkpoint, dtype, handles: list, on_event: OnEvent | None) -> dict:
    from safetensors import safe_open

    state_dict = {}
    count = len(checkpoint.shards)
    target = str(dtype).removeprefix("torch.")
    for index, path in enumerate(checkpoint.shards):
        mapped = safe_open(path, framework="pt")
        handles.append(mapped)
        converting = any(_converts(mapped.get_slice(k).get_dtype(), target) for k in mapped.keys())
        reader = mapped
        if converting:  # read converted tensors with pread: no source page stays resident
            reader = safe_open(path, framework="pt", backend="pread")
            handles.append(reader)
        slices = {key: reader.get_slice(key) for key in mapped.keys()}
        sizes = {key: _nbytes(s) for key, s in slices.items()}
        counter = _ShardCounter(Path(path).name, index, count, sizes, on_event)
        emit(on_event, ShardProgress(counter.name, index, count, 0, counter.tensors_total, 0, counter.bytes_total))
        for key, tensor_slice in slices.items():
            state_dict[key] = _LazyTensor(tensor_slice, sizes[key], counter)
    return state_dict


def _alias_tied(state_dict: dict, tied: dict[str, str]) -> None:
    """Give tied parameters their source's tensor, so disk offload indexes them too.

    transformers builds the offload index of a ``state_dict`` load from the keys it sees; a
    tied key (``lm_head.weight``) is absent from checkpoints and would be missing there.
    """
    for target, source in tied.items():
        if target not in state_dict and source in state_dict:
            state_dict[target] = state_dict[source].uncounted()


def _converts(code: str, target: str) -> bool:
    """A floating tensor stored in another dtype than the target (fp8 included: never kept as is)."""
    return (code in TORCH_NAMES or code.startswith("F8")) and TORCH_NAMES.get(code) != target


def _nbytes(tensor_slice) -> int:
    numel = 1
    for dim in tensor_slice.get_shape():
        numel *= dim
    return numel * ITEMSIZE.get(tensor_slice.get_dtype(), 4)


def _release() -> None:
    """Give back what a failed load allocated."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
