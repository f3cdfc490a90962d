"""Where a loaded model really lives: bytes per module group and per device, measured.

Counts come from the tensors themselves, not ``get_memory_footprint()``: each resident
param/buffer is charged to the device of its storage, shared storages (tied weights, views)
once; modules that accelerate offloaded (meta params behind an ``_hf_hook`` whose
``weights_map`` holds the real weights) are charged to ``cpu`` or ``disk`` by where that
map keeps them. torch is imported lazily.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional

_NUMBERED = re.compile(r"^(.*)\.(\d+)$")


@dataclass(frozen=True)
class PlacementGroup:
    """Consecutive modules on one device: ``model.layers.0-15 -> cuda:0``."""

    label: str
    device: str
    nbytes: int


@dataclass(frozen=True)
class Placement:
    """Measured placement of a model: groups in module order and bytes per device."""

    groups: list[PlacementGroup]
    bytes_by_device: dict[str, int]
    param_bytes_by_device: dict[str, int] = field(default_factory=dict)
    buffer_bytes_by_device: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_device.values())

    def to_text(self) -> str:
        """Concise multi-line summary: one line per group, then the totals per device."""
        width = max((len(g.label) for g in self.groups), default=0)
        dev_width = max((len(g.device) for g in self.groups), default=0)
        lines = [
            f"{g.label.ljust(width)}  -> {g.device.ljust(dev_width)}  {format_bytes(g.nbytes):>9}"
            for g in self.groups
        ]
        totals = ", ".join(f"{d} {format_bytes(n)}" for d, n in self.bytes_by_device.items())
        lines.append(f"total: {totals or '0 B'}")
        return "\n".join(lines)


def format_bytes(n: Optional[float]) -> str:
    """Decimal units, as the Hub shows file sizes: ``512 B``, ``12.3 MB``, ``1.50 GB``."""
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            break
        n /= 1000
    if unit == "B":
        return f"{int(n)} B"
    return f"{n:.2f} {unit}" if abs(n) < 10 else f"{n:.1f} {unit}"


def normalize_device(device: Any) -> str:
    """``0`` -> ``"cuda:0"``, ``torch.device("cpu")`` -> ``"cpu"``; strings pass through."""
    if isinstance(device, bool):
        raise TypeError(f"not a device: {device!r}")
    if isinstance(device, int):
        return f"cuda:{device}"
    return str(device)


def device_sort_key(device: str) -> tuple:
    """Accelerators first (by index), then ``cpu``, ``disk``, ``meta``."""
    kind, _, index = device.partition(":")
    rank = {"cpu": 1, "disk": 2, "meta": 3}.get(kind, 0)
    return (rank, kind, int(index) if index.isdigit() else -1)


def collapse_device_map(device_map: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Ordered ``(label, device)``; ``x.0`` .. ``x.15`` on one device become ``x.0-15``."""
    rows = [(name, normalize_device(dev), 0) for name, dev in device_map.items()]
    return [(g.label, g.device) for g in _collapse(rows)]


def _collapse(rows: list[tuple[str, str, int]]) -> list[PlacementGroup]:
    """Merge runs of consecutively numbered siblings (same prefix, same device)."""
    groups: list[PlacementGroup] = []
    run: Optional[tuple[str, int, int, str, int]] = None  # prefix, first, last, device, bytes

    def flush() -> None:
        if run is not None:
            prefix, first, last, device, nbytes = run
            label = f"{prefix}.{first}" if first == last else f"{prefix}.{first}-{last}"
            groups.append(PlacementGroup(label, device, nbytes))

    for name, device, nbytes in rows:
        m = _NUMBERED.match(name)
        if m and run and run[0] == m.group(1) and run[3] == device and int(m.group(2)) == run[2] + 1:
            run = (run[0], run[1], run[2] + 1, device, run[4] + nbytes)
            continue
        flush()
        run = None
        if m:
            run = (m.group(1), int(m.group(2)), int(m.group(2)), device, nbytes)
        else:
            groups.append(PlacementGroup(name, device, nbytes))
    flush()
    return groups


class _Ledger:
    """Charges bytes once per memory range: overlapping views and tied tensors count once."""

    def __init__(self) -> None:
        self._covered: dict[tuple, list[tuple[int, int]]] = {}

    def charge(self, key: tuple, start: int, end: int) -> int:
        """Mark ``[start, end)`` of ``key`` as counted; return how many bytes were new."""
        spans = self._covered.setdefault(key, [])
        new = end - start
        for a, b in spans:
            new -= max(0, min(b, end) - max(a, start))
        spans.append((start, end))
        if len(spans) > 1:  # keep the list disjoint so the subtraction above stays exact
            spans.sort()
            merged = [spans[0]]
            for a, b in spans[1:]:
                if a <= merged[-1][1]:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], b))
                else:
                    merged.append((a, b))
            spans[:] = merged
        return max(new, 0)


def _dtype_size(dtype: Any, fallback: Any = None) -> int:
    """Bytes per element of a torch dtype or its name (``"bfloat16"``, ``"torch.float32"``)."""
    import torch

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        dtype = fallback
    return dtype.itemsize


def _resident(tensor: Any, ledger: _Ledger) -> tuple[str, int]:
    """(device, new bytes) of a materialized or meta tensor."""
    device = str(tensor.device)
    size = _dtype_size(tensor.dtype)
    if tensor.device.type == "meta":
        return device, ledger.charge(("meta", id(tensor)), 0, tensor.numel() * size)
    try:
        storage = tensor.untyped_storage()
        key = (device, storage.data_ptr())
        if tensor.numel() == 0:
            return device, 0
        span = sum((s - 1) * st for s, st in zip(tensor.shape, tensor.stride())) + 1
        start = tensor.storage_offset() * size
        return device, ledger.charge(key, start, start + span * size)
    except (RuntimeError, NotImplementedError, TypeError):  # tensor subclasses without storage
        return device, ledger.charge((device, "id", id(tensor)), 0, tensor.numel() * size)


def _offload_hooks(module: Any) -> Iterator[Any]:
    """The offloading ``AlignDevicesHook``s on ``module`` (inside a ``SequentialHook`` too)."""
    hook = getattr(module, "_hf_hook", None)
    hooks = getattr(hook, "hooks", None) or ([hook] if hook is not None else [])
    for h in hooks:
        if getattr(h, "offload", False) and getattr(h, "weights_map", None) is not None:
            yield h


def _unwrap(weights_map: Any, key: str) -> tuple[Any, str]:
    """Follow ``PrefixedDataset`` layers down to the real map; never loads a tensor."""
    while hasattr(weights_map, "dataset") and hasattr(weights_map, "prefix"):
        key = f"{weights_map.prefix}{key}"
        weights_map = weights_map.dataset
    return weights_map, key


def _offloaded(tensor: Any, name: str, owners: list[tuple[str, Any]], ledger: _Ledger) -> Optional[tuple[str, int]]:
    """(device, new bytes) for a meta tensor whose weights an offload hook keeps, else None."""
    for owner_name, owner in owners:  # innermost first
        rel = name[len(owner_name) + 1 :] if owner_name else name
        for hook in _offload_hooks(owner):
            store, key = _unwrap(hook.weights_map, rel)
            state_dict = getattr(store, "state_dict", None)
            index = getattr(store, "index", None)
            if isinstance(state_dict, Mapping) and key in state_dict:  # accelerate's cpu offload
                return _resident(state_dict[key], ledger)
            if isinstance(index, Mapping) and key in index:  # disk: the index, never the data
                info = index[key]
                size = _dtype_size(info.get("dtype"), fallback=tensor.dtype)
                numel = tensor.numel()
                if "shape" in info:
                    numel = 1
                    for s in info["shape"]:
                        numel *= s
                if info.get("safetensors_file"):
                    ident = ("disk", info["safetensors_file"], info.get("weight_name", key))
                else:
                    ident = ("disk", getattr(store, "save_folder", None), key)
                return "disk", ledger.charge(ident, 0, numel * size)
            if state_dict is None and index is None and isinstance(store, dict) and key in store:
                return _resident(store[key], ledger)  # hook-built map: plain dict of cpu tensors
    return None


def _owner(name: str, keys: list[str]) -> Optional[str]:
    """The most specific device-map key that is ``name`` or one of its ancestors."""
    for key in keys:  # sorted most specific first
        if key == "" or name == key or name.startswith(key + "."):
            return key
    return None


def measure_placement(model: Any, device_map: Optional[Mapping[str, Any]] = None) -> Placement:
    """Measure where ``model``'s params and buffers live; see the module docstring.

    ``device_map`` defaults to ``model.hf_device_map``; groups are its keys, collapsed.
    Without one (or with only ``{"": device}``) groups are the top-level children.
    """
    if device_map is None:
        device_map = getattr(model, "hf_device_map", None)
    declared = {k: normalize_device(v) for k, v in (device_map or {}).items()}
    if set(declared) <= {""}:
        fallback = declared.get("", "")
        declared = {"": ""} | {name: fallback for name, _ in model.named_children()}
    by_specificity = sorted(declared, key=lambda k: (k.count(".") + bool(k), len(k)), reverse=True)

    ledger = _Ledger()
    unit_bytes: dict[str, dict[str, int]] = {}
    kinds: dict[str, dict[str, int]] = {"param": {}, "buffer": {}}
    modules = dict(model.named_modules())
    order = {name: i for i, name in enumerate(modules)}
    for mod_name, module in modules.items():
        owners = _ancestors(mod_name, modules)
        tensors = [("param", n, t) for n, t in module.named_parameters(recurse=False)]
        tensors += [("buffer", n, t) for n, t in module.named_buffers(recurse=False) if t is not None]
        for kind, local, tensor in tensors:
            full = f"{mod_name}.{local}" if mod_name else local
            placed = None
            if tensor.device.type == "meta":
                placed = _offloaded(tensor, full, owners, ledger)
            device, nbytes = placed or _resident(tensor, ledger)
            unit = _owner(full, by_specificity)
            unit = "" if unit is None else unit
            per_dev = unit_bytes.setdefault(unit, {})
            per_dev[device] = per_dev.get(device, 0) + nbytes
            kinds[kind][device] = kinds[kind].get(device, 0) + nbytes
    return _assemble(declared, unit_bytes, kinds, order)


def _ancestors(name: str, modules: dict[str, Any]) -> list[tuple[str, Any]]:
    """``name`` and its ancestors up to the root, innermost first."""
    parts = name.split(".") if name else []
    names = [".".join(parts[:i]) for i in range(len(parts), 0, -1)] + [""]
    return [(n, modules[n]) for n in names if n in modules]


def _assemble(declared: dict[str, str], unit_bytes: dict, kinds: dict, order: dict[str, int]) -> Placement:
    """Groups in module order (device = where most of a unit's bytes are) and totals."""
    units = [k for k in declared if k in unit_bytes or declared[k]]
    units += [k for k in unit_bytes if k not in declared]
    units.sort(key=lambda k: _module_order(k, order))
    rows = []
    for unit in units:
        per_dev = unit_bytes.get(unit, {})
        nonzero = {d: n for d, n in per_dev.items() if n}
        if nonzero:
            device = max(nonzero, key=lambda d: (nonzero[d], d == declared.get(unit)))
        else:
            device = declared.get(unit) or next(iter(per_dev), "")
        if not device or (not unit and not nonzero and unit not in declared):
            continue  # no tensors and no declared device, or only tied copies counted elsewhere
        rows.append((unit or "(root)", device, sum(per_dev.values())))
    totals: dict[str, int] = {}
    for kind in kinds.values():
        for d, n in kind.items():
            totals[d] = totals.get(d, 0) + n
    return Placement(
        groups=_collapse(rows),
        bytes_by_device=_sorted_nonzero(totals),
        param_bytes_by_device=_sorted_nonzero(kinds["param"]),
        buffer_bytes_by_device=_sorted_nonzero(kinds["buffer"]),
    )


def _module_order(name: str, order: dict[str, int]) -> int:
    """Position of ``name`` (or, for a parameter-level key, of its module) in ``named_modules``."""
    while name not in order and "." in name:
        name = name.rsplit(".", 1)[0]
    return order.get(name, len(order))


def _sorted_nonzero(d: dict[str, int]) -> dict[str, int]:
    return {k: d[k] for k in sorted(d, key=device_sort_key) if d[k]}


def planned_placement(device_map: Mapping[str, Any], module_sizes: Mapping[str, int],
                      param_bytes: Optional[dict] = None, buffer_bytes: Optional[dict] = None,
                      blocks: Optional[Mapping[str, int]] = None) -> Placement:
    """A :class:`Placement` from a plan's estimates (sizes per map entry) instead of tensors.

    A one-device map (``{"": "cpu"}``) is shown by ``blocks`` so it still reads layer by layer.
    """
    if list(device_map) == [""] and blocks:
        device = normalize_device(device_map[""])
        rows = [(name, device, int(size)) for name, size in blocks.items()]
    else:
        rows = [(name, normalize_device(dev), int(module_sizes.get(name, 0))) for name, dev in device_map.items()]
    groups = _collapse(rows)
    totals: dict[str, int] = {}
    for group in groups:
        totals[group.device] = totals.get(group.device, 0) + group.nbytes
    return Placement(groups, totals, dict(param_bytes or {}), dict(buffer_bytes or {}))
