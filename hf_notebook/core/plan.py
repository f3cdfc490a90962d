"""Placement before loading: a meta-device model, its sizes, and the device map.

The map comes from transformers' own ``_get_device_map`` on a model built the way
``from_pretrained`` builds it, so a plan and the load that follows agree exactly.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import DeviceError, LoadError, PlanError
from .headers import HeaderInfo
from .placement import format_bytes
from .placement import normalize_device as device_label
from .options import Device, DeviceMap

# Default class per task when the config names none we know (order matters: first match wins).
_AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModelForMaskedLM", "AutoModel")


@dataclass(frozen=True)
class Plan:
    """Where every module of a model would go, and what it would weigh there."""

    model_class: str
    dtype: str
    device_map: dict[str, Device]
    max_memory: Optional[dict] = None
    module_sizes: dict[str, int] = field(default_factory=dict)  # per device-map entry, in bytes
    tied: dict[str, str] = field(default_factory=dict)  # tied parameter -> the parameter it shares
    budget: dict[str, int] = field(default_factory=dict)  # device label -> bytes it may take
    param_bytes: dict[str, int] = field(default_factory=dict)  # device label -> parameter bytes
    buffer_bytes: dict[str, int] = field(default_factory=dict)  # device label -> buffer bytes
    blocks: dict[str, int] = field(default_factory=dict)  # top-level blocks (layers expanded) -> bytes
    headers: Optional[HeaderInfo] = None  # what the checkpoint's headers say (None: not read)
    source: str = ""  # "org/name@sha" or a folder

    @property
    def spilled(self) -> list[str]:
        return spilled_devices(self.device_map)

    def explain(self) -> list[str]:
        """Plain sentences: does it fit, what spills where and why, what would make it fit."""
        return explain(self)

    def placement(self):
        """The plan as a :class:`~hf_notebook.core.placement.Placement` (estimated bytes)."""
        from .placement import planned_placement

        return planned_placement(self.device_map, self.module_sizes, self.param_bytes, self.buffer_bytes,
                                 self.blocks)

    def to_text(self) -> str:
        """Placement, totals against the budget, and the explanation, as plain text."""
        lines = [f"plan for {self.source} ({self.model_class}, {self.dtype})"] if self.source else []
        if self.headers is not None and self.headers.param_counts:
            counts = ", ".join(f"{n / 1e6:,.1f}M {code}" for code, n in self.headers.param_counts.items())
            lines.append(f"parameters: {counts}")
        lines.append(self.placement().to_text())
        lines += self.explain()
        return "\n".join(lines)

    @property
    def bytes_by_device(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for name, device in self.device_map.items():
            key = device_label(device)
            totals[key] = totals.get(key, 0) + self.module_sizes.get(name, 0)
        return totals

    @property
    def devices(self) -> set:
        return set(self.device_map.values())

    def to_json(self, path: str | Path | None = None) -> str:
        """The device map as JSON, readable by ``--device-map @file``; written to ``path`` if given."""
        text = json.dumps(self.device_map, indent=1)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def model_class_for(config, class_name: Optional[str] = None):
    """The concrete model class: ``--class`` (an Auto class or a model class) or the config's ``architectures``."""
    import transformers
    from transformers.models.auto.auto_factory import _get_model_class

    if class_name:
        cls = getattr(transformers, class_name, None)
        if cls is None:
            raise LoadError(f"transformers has no class {class_name!r}.",
                            hint="Use an Auto class (AutoModelForCausalLM, AutoModel, ...) or a model class name.")
        if class_name.startswith("Auto"):
            try:
                return _get_model_class(config, cls._model_mapping)
            except (KeyError, ValueError):
                raise LoadError(f"{class_name} does not support model type {config.model_type!r}.",
                                hint="Pick another --class, or leave it out to use the config's architectures.") from None
        return cls
    for arch in getattr(config, "architectures", None) or []:
        if hasattr(transformers, arch):
            return getattr(transformers, arch)
    for auto_name in _AUTO_CLASSES:
        with contextlib.suppress(KeyError, ValueError):
            return _get_model_class(config, getattr(transformers, auto_name)._model_mapping)
    raise LoadError(f"No transformers class knows model type {config.model_type!r}.",
                    hint="Upgrade transformers, or pass --class. Models with custom code are not supported yet.")


def build_meta_model(cls, config, dtype: str):
    """Instantiate ``cls(config)`` on the meta device exactly as ``from_pretrained`` does."""
    from transformers.utils.generic import ContextManagers

    contexts = cls.get_init_context(torch_dtype(dtype), False, False, None)
    with ContextManagers(contexts):
        return cls(copy.deepcopy(config))


def plan_placement(config, *, class_name: Optional[str] = None, dtype: str = "float32",
                   device_map: DeviceMap = "auto", max_memory: Optional[dict] = None,
                   no_offload: bool = False, headers: Optional[HeaderInfo] = None, source: str = "") -> Plan:
    """Compute the device map ``from_pretrained`` would use for these options, without weights.

    ``max_memory`` may name devices this machine lacks: planning for a target machine is fine
    (``check_devices_exist`` is what a load adds).
    """
    from transformers.integrations.accelerate import _get_device_map, compute_module_sizes, get_max_memory

    cls = model_class_for(config, class_name)
    model = build_meta_model(cls, config, dtype)
    with _quiet_accelerate():
        resolved = _get_device_map(model, device_map, max_memory, None)
        budget = {device_label(_norm(k)): int(v) for k, v in get_max_memory(max_memory).items()}
    resolved = {name: _norm(device) for name, device in resolved.items()}
    sizes, _ = compute_module_sizes(model)
    params, buffers = _bytes_by_kind(model, resolved)
    plan = Plan(model_class=cls.__name__, dtype=dtype, device_map=resolved, max_memory=max_memory,
                module_sizes={name: int(sizes.get(name, 0)) for name in resolved},
                tied=dict(getattr(model, "all_tied_weights_keys", None) or {}), budget=budget,
                param_bytes=params, buffer_bytes=buffers, blocks=_blocks(model, sizes), headers=headers,
                source=source)
    spilled = plan.spilled
    if no_offload and spilled:
        raise PlanError(_spill_message(plan, spilled),
                        hint="Raise --max-memory, pick a smaller --dtype, or drop --no-offload to accept it.")
    return plan


@contextlib.contextmanager
def _quiet_accelerate():
    """accelerate logs a warning per absent device in a budget; planning for another machine is normal."""
    import logging

    loggers = [logging.getLogger(n) for n in ("accelerate.utils.modeling", "transformers.integrations.accelerate")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _entry_for(name: str, device_map: dict) -> Optional[str]:
    """The device-map entry that holds tensor ``name`` (its longest prefix in the map)."""
    parts = name.split(".")
    for cut in range(len(parts), -1, -1):
        prefix = ".".join(parts[:cut])
        if prefix in device_map:
            return prefix
    return None


def _bytes_by_kind(model, device_map: dict) -> tuple[dict[str, int], dict[str, int]]:
    """Parameter and buffer bytes per device; tied copies (untied on the meta model) count once."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    params: dict[str, int] = {}
    buffers: dict[str, int] = {}
    for totals, tensors in ((params, model.named_parameters()), (buffers, model.named_buffers())):
        for name, tensor in tensors:
            if name in tied:
                continue
            entry = _entry_for(name, device_map)
            label = device_label(device_map[entry]) if entry is not None else "cpu"
            totals[label] = totals.get(label, 0) + tensor.numel() * tensor.element_size()
    return params, buffers


def _blocks(model, sizes: dict) -> dict[str, int]:
    """Top-level children, one level deeper for containers, numbered layers expanded."""
    from torch import nn

    no_split = set(getattr(model, "_no_split_modules", None) or [])
    blocks: dict[str, int] = {}
    for name, child in model.named_children():
        grandchildren = list(child.named_children())
        if not grandchildren or type(child).__name__ in no_split:
            blocks[name] = int(sizes.get(name, 0))
            continue
        for sub, module in grandchildren:
            if isinstance(module, nn.ModuleList):
                for index in range(len(module)):
                    blocks[f"{name}.{sub}.{index}"] = int(sizes.get(f"{name}.{sub}.{index}", 0))
            else:
                blocks[f"{name}.{sub}"] = int(sizes.get(f"{name}.{sub}", 0))
    return {name: size for name, size in blocks.items() if size}


def explain(plan: Plan) -> list[str]:
    """Sentences for a person: where it goes, what filled up, and what would make it fit."""
    used = plan.bytes_by_device
    total = sum(used.values())
    spilled = plan.spilled
    if not spilled:
        where = ", ".join(f"{d} ({format_bytes(b)})" for d, b in used.items())
        return [f"Fits without offloading: {where}."]
    candidates = [d for d in plan.budget if d != "disk"] + list(used)
    fast = [d for d in dict.fromkeys(candidates) if d not in spilled]
    lines = []
    for device in fast:
        budget = plan.budget.get(device)
        of = f" of its {format_bytes(budget)} budget" if budget else ""
        lines.append(f"{device} filled up: {format_bytes(used.get(device, 0))} planned{of}; the next block did not fit.")
    for device in spilled:
        lines.append(f"{format_bytes(used.get(device, 0))} spill to {device}"
                     + (" (slow: read from disk at every forward pass)." if device == "disk" else " (slower)."))
    target = fast[0] if fast else "cpu"
    need = total * 1.1  # accelerate keeps headroom for the largest layer and activations
    key = target.removeprefix("cuda:")
    lines.append(f"To fit on {target} alone it needs about {format_bytes(need)}: --max-memory {key}={_gib_arg(need)}.")
    if plan.dtype == "float32":
        lines.append(f"In bfloat16 it would need about {format_bytes(need / 2)}: --dtype bfloat16.")
    return lines


def _gib_arg(nbytes: float) -> str:
    return f"{-(-nbytes // 2**30):.0f}GiB" if nbytes >= 2**30 else f"{-(-nbytes // 2**20):.0f}MiB"


def spilled_devices(device_map: dict) -> list[str]:
    """Devices that hold what did not fit on a faster one: disk always, cpu behind an accelerator."""
    labels = {device_label(d) for d in device_map.values()}
    spilled = labels & {"disk"}
    if "cpu" in labels and any(isinstance(d, int) or d == "mps" for d in device_map.values()):
        spilled.add("cpu")
    return sorted(spilled)


def _spill_message(plan: Plan, spilled: list[str]) -> str:
    sizes = plan.bytes_by_device
    parts = ", ".join(f"{format_bytes(sizes.get(name, 0))} to {name}" for name in spilled)
    return f"The model does not fit on the fastest device: {parts} would be offloaded, and --no-offload forbids it."


def _norm(device: Any) -> Device:
    import torch

    if isinstance(device, torch.device):
        return device.index if device.type == "cuda" else device.type
    if isinstance(device, str) and device.startswith("cuda:"):
        return int(device.split(":")[1])
    return device


def check_devices_exist(device_map: dict) -> None:
    """Refuse a map that names a GPU (or mps) this machine does not have."""
    import torch

    count = torch.cuda.device_count()
    for name, device in device_map.items():
        if isinstance(device, int) and device >= count:
            have = f"GPUs 0-{count - 1}" if count else "no GPU"
            raise DeviceError(f"The device map puts {name or 'the model'!r} on cuda:{device}, but this machine has {have}.",
                              hint="Use --device-map auto (or cpu), or edit the map to devices that exist.")
        if device == "mps" and not torch.backends.mps.is_available():
            raise DeviceError("The device map names mps, which is not available here.", hint="Use cpu or auto.")
