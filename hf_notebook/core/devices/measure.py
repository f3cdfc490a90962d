"""Planned against measured: one prefill and a few decode steps on random token ids with a loaded model.

The step is the one ``generate`` takes (the prefill keeps the logits of the last position only), after a short
warm-up step that starts thread pools and kernels and brings the weights' pages in. The KV cache
is measured from the cache object itself (the bytes of its key and value tensors, by device); the peak is what
the step adds over the memory held before it: ``torch.cuda.max_memory_allocated`` per GPU, and on cpu the
kernel's count of the process's peak resident set, with glibc's mmap threshold pinned so that a freed tensor
leaves the resident set. Both are set beside the plan's own figure for the step: its KV cache plus the
activations traced from the model's forward.
"""

from __future__ import annotations

import inspect
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import PlanError
from ..units import device_name


@dataclass(frozen=True)
class Measurement:
    """What one prefill of ``context`` tokens for ``batch`` sequences, then ``steps`` decode steps, used."""

    name: str
    context: int
    batch: int
    steps: int
    planned_kv: dict[str, int] = field(default_factory=dict)  # device -> KV-cache bytes the plan gives
    measured_kv: dict[str, int] = field(default_factory=dict)  # device -> bytes of the cache's tensors
    peak: dict[str, int] = field(default_factory=dict)  # device -> the most the step added over what was held
    seconds: float = 0.0
    planned_peak: dict[str, int] = field(default_factory=dict)  # device -> planned KV cache + step activations
    cpu_sampled: bool = False  # the cpu peak was sampled (a floor), the kernel's count being out of reach

    @property
    def devices(self) -> list[str]:
        return sorted(set(self.planned_kv) | set(self.measured_kv) | set(self.peak) | set(self.planned_peak))

    def peak_difference(self, device: str) -> Optional[float]:
        """Measured peak against planned, in percent (None where either is missing)."""
        planned, got = self.planned_peak.get(device), self.peak.get(device)
        return None if not planned or got is None else 100.0 * (got - planned) / planned


def measure(result: Any, *, context: int, batch: int = 1, steps: int = 4, name: str = "") -> Measurement:
    """Run one prefill and ``steps`` decode steps on ``result.model``; compare the cache with the plan's."""
    import torch

    from ..compat import cache_step
    from .kv_cache import by_device, kv_cache, layer_devices, main_device

    model, plan = result.model, result.plan
    if model is None:
        raise PlanError(f"{name or 'The model'} was unloaded: there is nothing to measure.",
                        hint="Load it again with %load_model.")
    kv_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    planned = kv_cache(plan.config, context=context + steps, batch=batch,
                       dtype=kv_dtype if kv_dtype in ("bfloat16", "float16", "float32") else "bfloat16")
    layers = list(plan.layer_names) or _layer_names(plan, len(planned.layers))
    placed = result.device_map  # where the layers are now (edits applied since the load included)
    planned_kv = {device_name(d): n for d, n in by_device(planned, layer_devices(placed, layers),
                                                         main_device(placed)).items()}
    planned_peak = dict(planned_kv)
    for device, nbytes in _planned_step(plan, placed, context, batch).items():
        planned_peak[device] = planned_peak.get(device, 0) + nbytes
    vocab = plan.config.get_text_config(decoder=True).vocab_size
    device = _input_device(model)
    ids = torch.randint(0, vocab, (batch, context), device=device)
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    with torch.no_grad():  # a short warm-up: thread pools, kernels and the weights' pages are then in place
        cache_step(model, ids[:, : min(context, 16)], **keep)
    sampler = _Peak()
    t0 = time.perf_counter()
    with torch.no_grad(), sampler:
        out, cache = cache_step(model, ids, **keep)
        for _ in range(steps):
            logits = out.logits[:, -1, :].to(copy=True, dtype=torch.float32)  # as generate keeps them
            out, cache = cache_step(model, logits.argmax(-1, keepdim=True).to(device), cache, **keep)
    seconds = time.perf_counter() - t0
    measured = _cache_bytes(cache)
    del out, cache, logits
    return Measurement(name, context, batch, steps, planned_kv, measured, sampler.peak, seconds, planned_peak,
                       sampler._thread is not None)


def _planned_step(plan: Any, placed: dict, context: int, batch: int) -> dict[str, int]:
    """Device -> the activations of this step, traced on a meta twin of the model (as the plan traces them)."""
    from .plan import _step_by_device, build_meta_model
    from .step_memory import trace_step

    step = trace_step(build_meta_model(plan.model_cls, plan.config, plan.dtype), list(plan.blocks), context=context,
                      batch=batch)
    return {device_name(d): n for d, n in _step_by_device(step, plan.blocks, placed).items()}


def _layer_names(plan: Any, count: int) -> list[str]:
    from .plan import _layer_names as names

    return list(names(list(plan.blocks), count))


def _input_device(model: Any) -> Any:
    """Where the input ids go: the embeddings' execution device (accelerate moves them on from there)."""
    embed = model.get_input_embeddings()
    hook = getattr(embed, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return device
    weight = getattr(embed, "weight", None)
    return weight.device if weight is not None and weight.device.type != "meta" else "cpu"


def _cache_bytes(cache: Any) -> dict[str, int]:
    found: dict[str, int] = {}
    for layer in getattr(cache, "layers", []):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is not None and hasattr(tensor, "element_size"):
                key = device_name(tensor.device)
                found[key] = found.get(key, 0) + tensor.numel() * tensor.element_size()
    return found


class _Peak:
    """The most memory a block adds: per GPU from torch's allocator; on cpu the kernel's peak resident set
    (``VmHWM``, restarted at entry) over the resident set at entry, less the checkpoint's file pages the block
    touched (weights, not the step's). Where the kernel's count cannot be restarted, the anonymous resident set is
    sampled instead (a floor: a peak between samples is missed)."""

    def __init__(self, every: float = 0.001):
        self.every, self.peak = every, {}
        self._stop = threading.Event()

    def __enter__(self) -> "_Peak":
        import gc

        import torch

        from ..libc import malloc_trim, memory_status, pin_mmap_threshold, reset_peak_rss
        from ..unload import anonymous_rss

        pin_mmap_threshold()  # a freed tensor leaves the resident set at once
        self._gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        self._gpu_before = {}
        for i in self._gpus:
            torch.cuda.synchronize(i)
            torch.cuda.reset_peak_memory_stats(i)
            self._gpu_before[i] = torch.cuda.memory_allocated(i)
        gc.collect()
        malloc_trim()  # free heap pages reused by the step would otherwise not show in the resident set
        self._kernel = reset_peak_rss()
        self._before = memory_status()
        self._thread = None
        if not self._kernel:
            self._rss_before = self._rss_top = anonymous_rss()
            self._thread = threading.Thread(target=self._sample, name="hf_notebook-measure", daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        from ..unload import anonymous_rss

        while not self._stop.wait(self.every):
            self._rss_top = max(self._rss_top, anonymous_rss())

    def __exit__(self, *exc: Any) -> None:
        import torch

        from ..libc import memory_status

        if self._kernel:
            after, before = memory_status(), self._before
            touched = max(0, after.get("RssFile", 0) - before.get("RssFile", 0))
            self.peak["cpu"] = max(0, after.get("VmHWM", 0) - before.get("VmRSS", 0) - touched)
        else:
            from ..unload import anonymous_rss

            self._stop.set()
            self._thread.join()
            self.peak["cpu"] = max(0, max(self._rss_top, anonymous_rss()) - self._rss_before)
        for i in self._gpus:
            torch.cuda.synchronize(i)
            self.peak[device_name(i)] = max(0, torch.cuda.max_memory_allocated(i) - self._gpu_before[i])
