"""Where a model's modules are (measured) or would be (planned), as structure.

A :class:`Placement` is a list of :class:`PlacementGroup`\\ s in module order: each names its
device, its member modules (device-map entries; consecutive numbered siblings on one device
share a group, so ``model.layers.0`` .. ``model.layers.15`` are one group), and its bytes by
kind (parameters, buffers) and whether they are *offloaded* (kept on cpu or disk behind an
accelerate hook and brought in at each forward) or resident where they run. Totals per device
are :class:`DeviceBytes`. Renderers (``hf_notebook.ui``) write the words; nothing here does.

Measured counts come from the tensors themselves, not ``get_memory_footprint()``: each
resident param/buffer is charged to the device of its storage, shared storages (tied weights,
views) once; modules that accelerate offloaded (meta params behind an ``_hf_hook`` whose
``weights_map`` holds the real weights) are charged to ``cpu`` or ``disk`` by where that map
keeps them. torch is never imported here.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from ..compat import module_slots
from ..dtypes import itemsize
from ..units import device_name, device_sort_key, numel
from .offloaded import offload_hooks, unwrap

_NUMBERED = re.compile(r"^(.*)\.(\d+)$")


@dataclass(frozen=True)
class PlacementGroup:
    """Consecutive modules on one device, with their bytes by kind."""

    device: str  # "cuda:0", "cpu", "disk"
    members: tuple[str, ...]  # device-map entries in module order ("" is the whole model)
    param_bytes: int = 0
    buffer_bytes: int = 0
    offloaded: bool = False  # behind an offload hook: stored on ``device``, computed elsewhere
    buffers_on: str = ""  # where its buffers are, when not on ``device``: accelerate keeps an offloaded
    #                       module's buffers on the device that runs it (``offload_buffers=False``)

    @property
    def nbytes(self) -> int:
        return self.param_bytes + self.buffer_bytes

    @property
    def label(self) -> str:
        """A name for the group: its member, or a numbered range ``model.layers.0-15``."""
        if len(self.members) == 1:
            return self.members[0] or "(whole model)"
        prefix, first = _NUMBERED.match(self.members[0]).groups()
        return f"{prefix}.{first}-{_NUMBERED.match(self.members[-1]).group(2)}"


@dataclass(frozen=True)
class DeviceBytes:
    """One device's share of a placement."""

    device: str
    param_bytes: int = 0
    buffer_bytes: int = 0
    offloaded_bytes: int = 0  # the part kept here only as offload storage

    @property
    def nbytes(self) -> int:
        return self.param_bytes + self.buffer_bytes

    @property
    def resident_bytes(self) -> int:
        return self.nbytes - self.offloaded_bytes


@dataclass(frozen=True)
class Placement:
    """Groups in module order and totals per device (accelerators first)."""

    groups: tuple[PlacementGroup, ...]
    devices: dict[str, DeviceBytes] = field(default_factory=dict)
    measured: bool = True  # False: a plan's estimate
    kv_by_device: dict[str, int] = field(default_factory=dict)  # a --context plan's KV cache per device
    step_by_device: dict[str, int] = field(default_factory=dict)  # ... and one step's activations and logits

    @property
    def bytes_by_device(self) -> dict[str, int]:
        return {d: b.nbytes for d, b in self.devices.items()}

    @property
    def param_bytes_by_device(self) -> dict[str, int]:
        return {d: b.param_bytes for d, b in self.devices.items() if b.param_bytes}

    @property
    def buffer_bytes_by_device(self) -> dict[str, int]:
        return {d: b.buffer_bytes for d, b in self.devices.items() if b.buffer_bytes}

    @property
    def total_bytes(self) -> int:
        return sum(b.nbytes for b in self.devices.values())

    def group_of(self, module: str) -> Optional[PlacementGroup]:
        """The group holding device-map entry ``module``."""
        return next((g for g in self.groups if module in g.members), None)


# -- building placements -------------------------------------------------------------------
@dataclass
class _Row:
    name: str
    device: str
    params: int = 0
    buffers: int = 0
    offloaded: bool = False
    buffers_on: str = ""


def runs_on(devices) -> tuple[str, frozenset]:
    """Accelerate's main device for a map's devices (its first accelerator, else cpu) and the devices that only
    store weights for it (disk; cpu too behind an accelerator), as device names."""
    names = [device_name(d) for d in devices]
    main = next((d for d in names if d not in ("cpu", "disk")), "cpu")
    return main, frozenset({"disk"} | ({"cpu"} if main != "cpu" else set()))


def _group(rows: list[_Row]) -> tuple[PlacementGroup, ...]:
    """Merge runs of consecutively numbered siblings on one device (and offload state)."""
    groups: list[PlacementGroup] = []
    run: list[_Row] = []

    def flush() -> None:
        if run:
            groups.append(PlacementGroup(run[0].device, tuple(r.name for r in run), sum(r.params for r in run),
                                         sum(r.buffers for r in run), run[0].offloaded,
                                         next((r.buffers_on for r in run if r.buffers_on and r.buffers), "")))
            run.clear()

    for row in rows:
        m = _NUMBERED.match(row.name)
        if m and run:
            prev = _NUMBERED.match(run[-1].name)
            if (prev and prev.group(1) == m.group(1) and int(m.group(2)) == int(prev.group(2)) + 1
                    and (run[-1].device, run[-1].offloaded) == (row.device, row.offloaded)):
                run.append(row)
                continue
        flush()
        run.append(row)
        if not m:
            flush()
    flush()
    return tuple(groups)


def _totals(rows: list[_Row], measured: bool, totals: Optional[dict] = None) -> Placement:
    """Group ``rows``; device totals are ``totals`` (device -> [params, buffers, offloaded]) or the rows' sums."""
    if totals is None:
        totals = {}
        for r in rows:
            t = totals.setdefault(r.device, [0, 0, 0])
            t[0] += r.params
            t[2] += r.params if r.offloaded else 0
            home = totals.setdefault(r.buffers_on or r.device, [0, 0, 0])
            home[1] += r.buffers
            home[2] += r.buffers if r.offloaded and not r.buffers_on else 0
    devices = {d: DeviceBytes(d, *totals[d]) for d in sorted(totals, key=device_sort_key) if sum(totals[d][:2])}
    return Placement(_group(rows), devices, measured)


def spread_one_device(device_map: Mapping[str, Any], members) -> Mapping[str, Any]:
    """A one-device map ``{"": device}`` as one entry per member (a plan's blocks: embeddings, each layer,
    head), so it still reads layer by layer; any other map (or no members) as it is."""
    if list(device_map) == [""] and members:
        return {member: device_map[""] for member in members}
    return device_map


def planned_placement(device_map: Mapping[str, Any], entry_bytes: Mapping[str, tuple[int, int]],
                      offloaded: frozenset = frozenset()) -> Placement:
    """A plan's placement: ``entry_bytes`` gives (param, buffer) bytes per device-map entry.

    ``offloaded`` names the devices that only store weights (disk; cpu behind a GPU).
    """
    main, _ = runs_on(device_map.values())
    rows = []
    for name, device in device_map.items():
        label = device_name(device)
        params, buffers = entry_bytes.get(name, (0, 0))
        away = label in offloaded and label != main
        rows.append(_Row(name, label, params, buffers, label in offloaded, main if away else ""))
    return _totals(rows, measured=False)


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


def _resident(tensor: Any, ledger: _Ledger) -> tuple[str, int]:
    """(device, new bytes) of a materialized or meta tensor, quantized ones counted as really held:
    a tensor subclass (torchao) by its inner tensors, a bitsandbytes weight with its quantization
    state (absmax blocks, row scales)."""
    device = _device_label(tensor.device)
    inner = _inner_tensors(tensor)
    if inner is not None:
        return device, sum(_resident(part, ledger)[1] for part in inner)
    nbytes = _storage_bytes(tensor, device, ledger)
    return device, nbytes + sum(_resident(extra, ledger)[1] for extra in _quantization_state(tensor))


@functools.lru_cache(maxsize=64)
def _device_label(device: Any) -> str:
    """``device_name`` of a ``torch.device``, asked once per device rather than once per tensor."""
    return device_name(device)


def _storage_bytes(tensor: Any, device: str, ledger: _Ledger) -> int:
    size = tensor.element_size()
    if tensor.device.type == "meta":
        return ledger.charge(("meta", id(tensor)), 0, tensor.numel() * size)
    try:
        storage = tensor.untyped_storage()
        key = (device, storage.data_ptr())
        if tensor.numel() == 0:
            return 0
        span = sum((s - 1) * st for s, st in zip(tensor.shape, tensor.stride())) + 1
        start = tensor.storage_offset() * size
        return ledger.charge(key, start, start + span * size)
    except (RuntimeError, NotImplementedError, TypeError):  # tensor subclasses without storage
        return ledger.charge((device, "id", id(tensor)), 0, tensor.numel() * size)


def _inner_tensors(tensor: Any) -> Optional[list]:
    """The tensors a wrapper subclass (torchao's quantized weights) is made of, or None."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None or type(tensor).__name__ in ("Parameter", "Tensor"):
        return None
    try:
        names, _ = flatten()
    except (TypeError, RuntimeError, NotImplementedError):
        return None
    return [getattr(tensor, n) for n in names if getattr(tensor, n, None) is not None]


def _quantization_state(tensor: Any) -> list:
    """Tensors bitsandbytes keeps beside a quantized weight: 8-bit row scales (``SCB``), 4-bit
    ``quant_state`` (absmax, code, offset, and the nested state of double quantization)."""
    found = [getattr(tensor, "SCB", None)]
    state = getattr(tensor, "quant_state", None)
    while state is not None:
        found += [getattr(state, "absmax", None), getattr(state, "code", None), getattr(state, "offset", None)]
        state = getattr(state, "state2", None)
    return [t for t in found if t is not None and hasattr(t, "untyped_storage")]


def _offloaded(tensor: Any, name: str, owners: list[tuple[str, Any]], ledger: _Ledger) -> Optional[tuple[str, int]]:
    """(device, new bytes) for a meta tensor whose weights an offload hook keeps, else None."""
    for owner_name, owner in owners:  # innermost first
        rel = name[len(owner_name) + 1 :] if owner_name else name
        for hook in offload_hooks(owner):
            store, key = unwrap(hook.weights_map, rel)
            state_dict = getattr(store, "state_dict", None)
            index = getattr(store, "index", None)
            if isinstance(state_dict, Mapping) and key in state_dict:  # accelerate's cpu offload
                return _resident(state_dict[key], ledger)
            if isinstance(index, Mapping) and key in index:  # disk: the index, never the data
                info = index[key]
                count = numel(info["shape"]) if "shape" in info else tensor.numel()
                if info.get("safetensors_file"):
                    ident = ("disk", info["safetensors_file"], info.get("weight_name", key))
                else:
                    ident = ("disk", getattr(store, "save_folder", None), key)
                return "disk", ledger.charge(ident, 0, count * itemsize(info.get("dtype"), fallback=tensor.dtype))
            if state_dict is None and index is None and isinstance(store, dict) and key in store:
                return _resident(store[key], ledger)  # hook-built map: plain dict of cpu tensors
    return None


def _owner(name: str, keys: Mapping[str, Any]) -> Optional[str]:
    """The most specific device-map key that is ``name`` or one of its ancestors."""
    while name not in keys:
        if not name:
            return None
        name = name.rpartition(".")[0]
    return name


def own_tensors(module: Any) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """A module's own ``(name, tensor)`` parameters and buffers, as ``named_parameters(recurse=False)`` and
    ``named_buffers(recurse=False)`` give them: without empty slots, and a tensor held under two names once."""
    return tuple(_distinct(slots) for slots in module_slots(module))


def _distinct(slots: Mapping[str, Any]) -> list[tuple[str, Any]]:
    seen: set = set()
    return [(k, t) for k, t in slots.items() if t is not None and not (id(t) in seen or seen.add(id(t)))]


def measure_placement(model: Any, device_map: Optional[Mapping[str, Any]] = None) -> Placement:
    """Measure where ``model``'s params and buffers live; see the module docstring.

    ``device_map`` defaults to ``model.hf_device_map``; its entries are the group members.
    Without one (or with only ``{"": device}``) the members are the top-level children.
    """
    if device_map is None:
        device_map = getattr(model, "hf_device_map", None)
    declared = {k: device_name(v) for k, v in (device_map or {}).items()}
    if set(declared) <= {""}:
        fallback = declared.get("", "")
        declared = {"": ""} | {name: fallback for name, _ in model.named_children()}
    ledger = _Ledger()
    units: dict[str, dict[tuple[str, bool], list[int]]] = {}  # unit -> (device, offloaded) -> [params, buffers]
    modules = dict(model.named_modules())
    for mod_name, module in modules.items():
        params, buffers = own_tensors(module)
        tensors = [(0, n, t) for n, t in params] + [(1, n, t) for n, t in buffers]
        for kind, local, tensor in tensors:
            full = f"{mod_name}.{local}" if mod_name else local
            on_meta = tensor.device.type == "meta"  # offloaded: its owners' hooks say where it is
            placed = _offloaded(tensor, full, _ancestors(mod_name, modules), ledger) if on_meta else None
            device, nbytes = placed or _resident(tensor, ledger)
            unit = _owner(full, declared) or ""
            slot = units.setdefault(unit, {}).setdefault((device, placed is not None), [0, 0])
            slot[kind] += nbytes
    order = {name: i for i, name in enumerate(modules)}
    totals: dict[str, list[int]] = {}
    for slots in units.values():
        for (device, offloaded), (params, buffers) in slots.items():
            t = totals.setdefault(device, [0, 0, 0])
            t[0], t[1], t[2] = t[0] + params, t[1] + buffers, t[2] + (params + buffers if offloaded else 0)
    return _totals(_measured_rows(declared, units, order), measured=True, totals=totals)


def _measured_rows(declared: dict[str, str], units: dict, order: dict[str, int]) -> list[_Row]:
    """One row per unit in module order, on the device (and offload state) holding most of its bytes."""
    names = [k for k in declared if k in units or declared[k]] + [k for k in units if k not in declared]
    names.sort(key=lambda k: _module_order(k, order))
    rows = []
    for unit in names:
        slots = units.get(unit, {})
        nonzero = {key: sum(v) for key, v in slots.items() if sum(v)}
        if not nonzero:  # declared or seen, but every byte counted elsewhere (tied to another entry)
            device = declared.get(unit) or next((dev for dev, _ in slots), "")
            if unit and device:
                rows.append(_Row(unit, device))
            continue
        device, offloaded = max(nonzero, key=lambda key: (nonzero[key], key[0] == declared.get(unit)))
        params = sum(v[0] for v in slots.values())
        buffers = sum(v[1] for v in slots.values())
        buffers_on = ""
        mapped = declared.get(unit)
        if mapped and mapped != device and not slots.get((device, offloaded), [0, 0])[0]:
            # only buffers where it runs: its place is the map's (an offloaded module keeps its buffers there)
            device, offloaded, buffers_on = mapped, True, device
        rows.append(_Row(unit, device, params, buffers, offloaded, buffers_on))
    return rows


def _ancestors(name: str, modules: dict[str, Any]) -> list[tuple[str, Any]]:
    """``name`` and its ancestors up to the root, innermost first."""
    parts = name.split(".") if name else []
    names = [".".join(parts[:i]) for i in range(len(parts), 0, -1)] + [""]
    return [(n, modules[n]) for n in names if n in modules]


def _module_order(name: str, order: dict[str, int]) -> int:
    """Position of ``name`` (or, for a parameter-level key, of its module) in ``named_modules``."""
    while name not in order and "." in name:
        name = name.rsplit(".", 1)[0]
    return order.get(name, len(order))
