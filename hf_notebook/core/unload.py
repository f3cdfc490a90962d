"""Free a loaded model: hooks, references, offload folder, allocator caches; report what came back."""

from __future__ import annotations

import gc
import os
import weakref
from dataclasses import dataclass, field
from typing import Iterable

from .libc import malloc_trim
from .owned import remove_now


@dataclass(frozen=True)
class UnloadReport:
    """What unloading gave back, measured (process RSS, CUDA allocations) and what it held."""

    name: str
    pinned: str = ""  # "org/name@sha" of what was unloaded
    held: dict[str, int] = field(default_factory=dict)  # bytes per device while loaded
    rss_freed: int = 0
    cuda_freed: int = 0
    removed_names: tuple[str, ...] = ()
    still_referenced: bool = False


def unload(name: str, result, namespaces: Iterable[dict]) -> UnloadReport:
    """Drop every reference we know of to ``result.model`` and free its memory and its own offload folders
    (only folders that are still the ones made for it: ``core.owned``)."""
    model = result.model
    ref = weakref.ref(model)
    rss_before, cuda_before = process_rss(), _cuda_allocated()
    _remove_hooks(model)
    removed = _unbind(model, namespaces, first=name)
    remove_now(model)  # its hooks are gone: nothing reads its offloaded weights any more
    result.model = None
    del model
    release_memory()
    return UnloadReport(name=name, pinned=result.pin.pinned_spec if result.pin.kind != "local" else result.pin.repo_id,
                        held=dict(result.placement.bytes_by_device),
                        rss_freed=rss_before - process_rss(), cuda_freed=cuda_before - _cuda_allocated(),
                        removed_names=tuple(removed), still_referenced=ref() is not None)


def _remove_hooks(model) -> None:
    try:
        from accelerate.hooks import remove_hook_from_submodules
    except ImportError:  # pragma: no cover - accelerate is a dependency
        return
    remove_hook_from_submodules(model)


def _unbind(model, namespaces: Iterable[dict], first: str) -> list[str]:
    """Remove names bound to ``model`` (and IPython's output cache entries holding it)."""
    removed = []
    for namespace in namespaces:
        for key in [k for k, v in namespace.items() if v is model]:
            del namespace[key]
            removed.append(key)
        outputs = namespace.get("Out")
        if isinstance(outputs, dict):
            for key in [k for k, v in outputs.items() if v is model]:
                del outputs[key]
    return sorted(set(removed), key=lambda k: (k != first, k))


def release_memory() -> None:
    """Collect cyclic garbage (a model with accelerate hooks is a cycle), then give memory back: the CUDA
    cache, malloc's free pages."""
    gc.collect()
    if _cuda_ready():
        import torch

        torch.cuda.empty_cache()
    malloc_trim()


def _cuda_ready() -> bool:
    import sys

    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())


def _cuda_allocated() -> int:
    if not _cuda_ready():
        return 0
    import torch

    return sum(torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count()))


def anonymous_rss() -> int:
    """The resident bytes of this process that no file backs (tensors made at run time, not the pages of a
    memory-mapped checkpoint); Linux /proc, else the whole resident set."""
    try:
        with open("/proc/self/statm") as handle:
            fields = handle.read().split()
        return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return process_rss()


def process_rss() -> int:
    """Resident set size of this process in bytes (Linux /proc; psutil elsewhere; 0 if neither)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        try:
            import psutil

            return psutil.Process().memory_info().rss
        except ImportError:
            return 0
