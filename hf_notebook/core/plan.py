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


def device_label(device: Device) -> str:
    """``0`` -> ``"cuda:0"``; names stay names."""
    return f"cuda:{device}" if isinstance(device, int) else str(device)


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
                   no_offload: bool = False) -> Plan:
    """Compute the device map ``from_pretrained`` would use for these options, without weights."""
    from transformers.integrations.accelerate import _get_device_map, compute_module_sizes

    cls = model_class_for(config, class_name)
    model = build_meta_model(cls, config, dtype)
    resolved = _get_device_map(model, device_map, max_memory, None)
    resolved = {name: _norm(device) for name, device in resolved.items()}
    sizes, _ = compute_module_sizes(model)
    plan = Plan(model_class=cls.__name__, dtype=dtype, device_map=resolved, max_memory=max_memory,
                module_sizes={name: int(sizes.get(name, 0)) for name in resolved},
                tied=dict(getattr(model, "all_tied_weights_keys", None) or {}))
    spilled = spilled_devices(plan.device_map)
    if no_offload and spilled:
        raise PlanError(_spill_message(plan, spilled),
                        hint="Raise --max-memory, pick a smaller --dtype, or drop --no-offload to accept it.")
    return plan


def spilled_devices(device_map: dict) -> list[str]:
    """Devices that hold what did not fit on a faster one: disk always, cpu behind an accelerator."""
    labels = {device_label(d) for d in device_map.values()}
    spilled = labels & {"disk"}
    if "cpu" in labels and any(isinstance(d, int) or d == "mps" for d in device_map.values()):
        spilled.add("cpu")
    return sorted(spilled)


def _spill_message(plan: Plan, spilled: list[str]) -> str:
    sizes = plan.bytes_by_device
    parts = ", ".join(f"{sizes.get(name, 0) / 2**20:.1f} MiB to {name}" for name in spilled)
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
