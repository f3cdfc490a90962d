"""The memory one generation step holds beside the weights and the KV cache, traced from the model's own forward.

The forward runs on the meta device (no compute, no bytes) under a dispatch mode that notes every tensor an op
creates and when it dies; replaying those notes gives the most bytes alive while each block ran, the cache's own
tensors left out (the KV cache is planned on its own). Nothing is guessed per architecture: the model's code says
what it allocates. Two things follow what the real kernels do rather than the meta ones: attention runs as the
fused kernels of cpu and cuda do (their output only, never the context x context score matrix), and the step is
the one ``generate`` takes: a prefill that keeps the logits of the last position only (``logits_to_keep=1``), then
``generate``'s float32 copy of them. Traced against a real cpu forward, the tensors counted agree to the byte.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import PlanError


@dataclass(frozen=True)
class StepMemory:
    """What a prefill of ``context`` tokens for ``batch`` sequences holds beside weights and cache.

    ``by_block`` maps each traced block (``model.layers.3``, ``lm_head``; ``""`` for work done between blocks) to
    the most bytes alive while it ran, what it received included; ``logits`` is generate's float32 copy of the
    last logits, held on the device that computes ``lm_head``.
    """

    context: int
    batch: int
    by_block: dict[str, int] = field(default_factory=dict)
    logits: int = 0
    head: str = ""  # the block that computes the logits

    def by_device(self, device_of: Mapping[str, Any], main_device: Any) -> dict[Any, int]:
        """Device -> the most any of its blocks holds at once (``device_of``: block -> where it computes)."""
        found: dict[Any, int] = {}
        for block, nbytes in self.by_block.items():
            where = device_of.get(block, main_device)
            nbytes += self.logits if block == self.head else 0
            found[where] = max(found.get(where, 0), nbytes)
        return found


def trace_step(model: Any, blocks: list[str], *, context: int, batch: int = 1) -> StepMemory:
    """Run ``model`` (built on the meta device) on ``batch`` x ``context`` token ids and note its memory."""
    import torch

    from ..compat import cache_step

    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    ids = torch.zeros((batch, context), dtype=torch.long, device="meta")
    if getattr(model.config, "is_encoder_decoder", False):  # the encoder reads the context; the decoder starts
        keep["decoder_input_ids"] = torch.zeros((batch, 1), dtype=torch.long, device="meta")
    known = {_key(t) for t in (*model.parameters(), *model.buffers(), ids, *keep.values()) if hasattr(t, "untyped_storage")}
    notes = _Notes(known)
    hooks = _mark_blocks(model, blocks, notes.events)
    try:
        with torch.no_grad(), _FusedAttention(), notes:
            output, cache = cache_step(model, ids, **keep)
    except (RuntimeError, NotImplementedError, TypeError, ValueError, AttributeError) as exc:
        raise PlanError(f"{type(model).__name__}'s forward cannot be traced on the meta device, to size one step: "
                        f"{str(exc).splitlines()[0][:200]}", hint="Plan without --context.") from None
    finally:
        for hook in hooks:
            hook.remove()
    cached = {notes.alive.get(_key(t)) for t in _cache_tensors(cache)}
    logits = getattr(output, "logits", None)
    vocab = logits.shape[-1] if logits is not None else 0
    head = _head_block(model, blocks)
    by_block = _replay(notes.events, cached - {None})
    del output, cache
    return StepMemory(context, batch, by_block, batch * vocab * 4 if logits is not None else 0, head)


def _key(tensor: Any) -> int:
    return tensor.untyped_storage()._cdata


class _Notes:
    """A dispatch mode noting each new storage (a serial number and its bytes) and, through a weak reference,
    its death; ``known`` storages (weights, inputs) are not counted."""

    def __init__(self, known: set):
        from torch.utils._python_dispatch import TorchDispatchMode

        notes = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                notes.note(out)
                return out

        self.mode, self.known = Mode(), known
        self.alive: dict[int, int] = {}  # storage key -> serial of the live storage at that key
        self.events: list[tuple] = []  # (serial, +bytes), (serial, -bytes), ("enter" | "exit", block)

    def note(self, out: Any) -> None:
        import torch
        from torch.utils._pytree import tree_leaves

        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key in self.alive or key in self.known:
                continue
            serial, nbytes = len(self.events), storage.nbytes()
            self.alive[key] = serial
            self.events.append((serial, nbytes))
            weakref.finalize(storage, self._died, key, serial, nbytes)

    def _died(self, key: int, serial: int, nbytes: int) -> None:
        if self.alive.get(key) == serial:
            del self.alive[key]
        self.events.append((serial, -nbytes))

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


class _FusedAttention:
    """``scaled_dot_product_attention`` as the fused cpu and cuda kernels run it: an output the shape of the
    queries (with the values' head size), and no score matrix."""

    def __enter__(self):
        import torch.nn.functional as F
        from torch.overrides import TorchFunctionMode

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if func is F.scaled_dot_product_attention:
                    query, value = args[0], args[2] if len(args) > 2 else kwargs["value"]
                    return query.new_empty((*query.shape[:-1], value.shape[-1]))
                return func(*args, **(kwargs or {}))

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


def _mark_blocks(model: Any, blocks: list[str], events: list) -> list:
    hooks = []
    for name in blocks:
        module = model.get_submodule(name)
        hooks.append(module.register_forward_pre_hook(lambda *_, n=name: events.append(("enter", n))))
        hooks.append(module.register_forward_hook(lambda *_, n=name: events.append(("exit", n))))
    return hooks


def _replay(events: list, cached: set) -> dict[str, int]:
    """Block -> the most bytes alive (cache left out) between its entry and exit; ``""`` for the rest."""
    live, peaks, inside = 0, {"": 0}, [""]
    for what, value in events:
        if what == "enter":
            inside.append(value)
            peaks[value] = max(peaks.get(value, 0), live)
        elif what == "exit":
            inside.pop()
        elif what not in cached:
            live += value
            peaks[inside[-1]] = max(peaks.get(inside[-1], 0), live)
    return peaks


def _cache_tensors(cache: Any) -> list:
    """The key and value tensors of a cache (an encoder-decoder's: of both its caches)."""
    found = []
    caches = [getattr(cache, "self_attention_cache", None), getattr(cache, "cross_attention_cache", None)]
    for layer in [l for c in (caches if caches[0] is not None else [cache]) for l in getattr(c, "layers", None) or []]:
        found += [t for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None]
    return found


def _head_block(model: Any, blocks: list[str]) -> str:
    """The block holding the output embeddings (``lm_head``), or the last block."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    for name in blocks:
        if head is not None and model.get_submodule(name) is head:
            return name
    return blocks[-1] if blocks else ""


def block_devices(blocks: list[str], device_map: Mapping[str, Any], main_device: Any) -> dict[str, Any]:
    """Block -> where it computes: its mapped device, or ``main_device`` for one whose weights are offloaded."""
    from .kv_cache import layer_devices, runs_at

    return {name: main_device if device is None else runs_at(device, main_device)
            for name, device in zip(blocks, layer_devices(device_map, blocks))}

