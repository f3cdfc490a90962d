"""Weights an offload hook keeps off the model: which hooks, and where each tensor's bytes are.

accelerate's ``AlignDevicesHook`` holds a weights map (a ``PrefixedDataset`` over an
``OffloadedWeightsLoader``): tensors kept in cpu memory (its ``state_dict``) or on disk (its
``index``: a checkpoint's safetensors file read in place, or a file of the offload folder).
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Optional


def offload_hooks(module: Any) -> Iterator[Any]:
    """The offloading ``AlignDevicesHook``s on ``module`` (inside a ``SequentialHook`` too)."""
    hook = getattr(module, "_hf_hook", None)
    hooks = getattr(hook, "hooks", None) or ([hook] if hook is not None else [])
    for h in hooks:
        if getattr(h, "offload", False) and getattr(h, "weights_map", None) is not None:
            yield h


def unwrap(weights_map: Any, key: str) -> tuple[Any, str]:
    """Follow ``PrefixedDataset`` layers down to the real map; never loads a tensor."""
    while hasattr(weights_map, "dataset") and hasattr(weights_map, "prefix"):
        key = f"{weights_map.prefix}{key}"
        weights_map = weights_map.dataset
    return weights_map, key


def disk_sources(model: Any) -> dict[str, dict]:
    """Index entries of the tensors an offload hook reads from disk (meta tensors), by full name."""
    found: dict[str, dict] = {}
    for mod_name, module in model.named_modules():
        for hook in offload_hooks(module):
            store, prefix = unwrap(hook.weights_map, "")
            index = getattr(store, "index", None) or {}
            state = getattr(store, "state_dict", None) or {}
            for local, tensor in [*module.named_parameters(), *module.named_buffers()]:
                key = prefix + local
                full = f"{mod_name}.{local}" if mod_name else local
                if tensor is not None and tensor.device.type == "meta" and key in index and key not in state:
                    found[full] = _absolute(index[key], key, getattr(store, "save_folder", None))
    return found


def _absolute(info: dict, key: str, folder: Optional[str]) -> dict:
    """An index entry that names its file by absolute path (accelerate's ``.dat`` entries don't)."""
    if info.get("safetensors_file"):
        return dict(info)
    return dict(info, dat_file=os.path.join(folder or "", f"{key}.dat"))


def rewrites_weights(class_name: str, model_type: str) -> bool:
    """Whether transformers rewrites this model's weights as it loads them (weight converters: fused
    experts, ...): such weights are written to the offload folder instead of read in place."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    from transformers.core_model_loading import WeightConverter

    mapping = get_checkpoint_conversion_mapping(class_name) or get_checkpoint_conversion_mapping(model_type) or []
    return any(isinstance(step, WeightConverter) for step in mapping)
