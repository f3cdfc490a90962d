"""Planned against measured: one prefill and a few decode steps on random token ids with a loaded model.

The KV cache is measured from the cache object itself (the bytes of its key and value tensors, by device);
the peak is what the step adds over the memory held before it: ``torch.cuda.max_memory_allocated`` per GPU,
and on cpu the process's resident set sampled while the step runs (a peak between two samples can be missed,
so the cpu figure is a floor).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

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

    @property
    def devices(self) -> list[str]:
        return sorted(set(self.planned_kv) | set(self.measured_kv) | set(self.peak))


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
    layers = list(plan.layer_names) or _layer_names(plan)
    placed = result.device_map  # where the layers are now (edits applied since the load included)
    planned_kv = {device_name(d): n for d, n in by_device(planned, layer_devices(placed, layers),
                                                         main_device(placed)).items()}
    vocab = plan.config.get_text_config(decoder=True).vocab_size
    device = _input_device(model)
    ids = torch.randint(0, vocab, (batch, context), device=device)
    sampler = _Peak()
    t0 = time.perf_counter()
    with torch.no_grad(), sampler:
        out, cache = cache_step(model, ids)
        for _ in range(steps):
            out, cache = cache_step(model, out.logits[:, -1:].argmax(-1).to(device), cache)
    seconds = time.perf_counter() - t0
    measured = _cache_bytes(cache)
    del out, cache
    return Measurement(name, context, batch, steps, planned_kv, measured, sampler.peak, seconds)


def _layer_names(plan: Any) -> list[str]:
    from .plan import _layer_names as names

    count = plan.config.get_text_config(decoder=True).num_hidden_layers
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
    """The most memory a block adds: per GPU from torch's allocator, on cpu by sampling the RSS."""

    def __init__(self, every: float = 0.001):
        self.every, self.peak = every, {}
        self._stop = threading.Event()

    def __enter__(self) -> "_Peak":
        import torch

        from ..unload import process_rss

        self._gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        self._gpu_before = {}
        for i in self._gpus:
            torch.cuda.synchronize(i)
            torch.cuda.reset_peak_memory_stats(i)
            self._gpu_before[i] = torch.cuda.memory_allocated(i)
        self._rss_before = self._rss_top = process_rss()
        self._thread = threading.Thread(target=self._sample, name="hf_notebook-measure", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        from ..unload import process_rss

        while not self._stop.wait(self.every):
            self._rss_top = max(self._rss_top, process_rss())

    def __exit__(self, *exc: Any) -> None:
        import torch

        from ..unload import process_rss

        self._stop.set()
        self._thread.join()
        self._rss_top = max(self._rss_top, process_rss())
        self.peak["cpu"] = max(0, self._rss_top - self._rss_before)
        for i in self._gpus:
            torch.cuda.synchronize(i)
            self.peak[device_name(i)] = max(0, torch.cuda.max_memory_allocated(i) - self._gpu_before[i])
