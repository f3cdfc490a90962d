"""``--fit``: the placement that streams the fewest bytes, and ``--context max``: the longest context that fits.

What a placement costs is the weights a step must bring from slower storage: bytes on disk first, then bytes kept
on cpu behind an accelerator (accelerate copies an offloaded block to the device that runs it, every step). The
best placement keeps everything on the accelerators when it can, else the least off them. Its needs, per device:

- a device that runs blocks (an accelerator; cpu when there is none) holds their weights, the KV cache of their
  layers and the most any of them holds during the step (the logits copy with ``lm_head``);
- the main device (the first that runs) also runs every offloaded block: their KV cache and activations, and
  the largest of them while it is copied in;
- cpu behind an accelerator, and disk, only store weights; disk has no budget.

Blocks are the plan's (embeddings, each layer, norm, head); tied blocks move together. Identical blocks (the
layers of one kind) are interchangeable, so the search tries every place for the few odd blocks and, for each,
the most layers that fit, from the fastest device down; with up to :data:`EXHAUSTIVE` placements in all it tries
them all.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from ..errors import PlanError
from ..units import format_bytes

#: Try every placement when there are at most this many.
EXHAUSTIVE = 20_000


@dataclass(frozen=True)
class Room:
    """What a placement is chosen from: units (tied blocks together) in module order, and the devices' budgets."""

    units: tuple[tuple[str, ...], ...]
    weights: tuple[int, ...]  # per unit
    kv: tuple[int, ...] = ()  # per unit: the KV cache of its layers
    act: tuple[int, ...] = ()  # per unit: the most it holds during the step (the logits copy included)
    budgets: dict = field(default_factory=dict)  # device -> bytes, fastest first; disk is never listed
    offload: bool = True  # may blocks go to storage (cpu behind an accelerator, disk)

    @property
    def runners(self) -> list:
        """Devices that run blocks: the accelerators, else cpu."""
        accelerators = [d for d in self.budgets if d != "cpu"]
        return accelerators or ["cpu"]

    @property
    def places(self) -> list:
        """Where a unit may go, fastest first."""
        found = list(self.runners)
        if self.offload:
            found += [d for d in self.budgets if d not in found] + ["disk"]
        return found

    def needs(self, where: Iterable) -> dict:
        """Bytes per device for units placed at ``where`` (one device per unit)."""
        main = self.runners[0]
        need: dict = {}
        act: dict = {}
        stream = 0
        for i, device in enumerate(where):
            need[device] = need.get(device, 0) + self.weights[i]
            runs = device if device in self.runners else main
            if runs is not device:
                stream = max(stream, self.weights[i])
            need[runs] = need.get(runs, 0) + self.kv[i]
            act[runs] = max(act.get(runs, 0), self.act[i])
        for device, nbytes in act.items():
            need[device] = need.get(device, 0) + nbytes
        need[main] = need.get(main, 0) + stream
        need.pop("disk", None)
        return need

    def fits(self, where: list) -> bool:
        return all(n <= self.budgets.get(d, 0) for d, n in self.needs(where).items())

    def cost(self, where: list) -> tuple:
        """(bytes on disk, bytes stored off the runners, device changes along module order): lower is better."""
        disk = sum(w for w, d in zip(self.weights, where) if d == "disk")
        stored = sum(w for w, d in zip(self.weights, where) if d not in self.runners)
        return disk, stored, sum(a != b for a, b in zip(where, where[1:]))


def best_placement(room: Room, exhaustive: int = EXHAUSTIVE) -> list:
    """The placement of ``room``'s units that fits at the least cost (a device per unit)."""
    places = room.places
    if len(places) ** len(room.units) <= exhaustive:
        candidates = itertools.product(places, repeat=len(room.units))
    else:
        candidates = _by_kind(room, places)
    best, best_cost = None, None
    for where in candidates:
        where = list(where)
        if room.fits(where):
            cost = room.cost(where)
            if best_cost is None or cost < best_cost:
                best, best_cost = where, cost
    if best is None:
        raise PlanError(_no_fit(room), hint="Raise --max-memory, lower --reserve, --context or --batch, or drop "
                        "--no-offload.")
    return best


def _by_kind(room: Room, places: list):
    """Placements to try: every place for each odd unit and, for each, the most identical units (one kind of
    layer) the runners keep (counting down from what their budgets could hold by weight alone: keeping more
    never costs more), filled fastest device first."""
    kinds: dict = {}
    for i in range(len(room.units)):
        kinds.setdefault((room.weights[i], room.kv[i], room.act[i]), []).append(i)
    layers = max(kinds.values(), key=len)
    odd = [i for i in range(len(room.units)) if i not in set(layers)]
    weight = room.weights[layers[0]]
    most = len(layers) if not weight else min(len(layers), sum(room.budgets.get(d, 0) for d in room.runners) // weight)
    fewest = len(layers) if len(places) == len(room.runners) else 0  # nowhere else to go: all on the runners
    for odd_places in itertools.product(places, repeat=len(odd)):
        where = [None] * len(room.units)
        for i, device in zip(odd, odd_places):
            where[i] = device
        for order in _orders(room.runners):
            for kept in range(max(most, fewest), fewest - 1, -1):
                trial = _fill(room, where, layers, kept, places, order)
                if room.fits(trial):
                    yield trial
                    break


def _orders(runners: list) -> list:
    """The orders the runners are filled in: fastest first, and (with several) the main device last, which
    leaves it room for what it runs of the offloaded blocks."""
    return [runners] if len(runners) == 1 else [runners, runners[1:] + runners[:1]]


def _fill(room: Room, where: list, layers: list, kept: int, places: list, runners: list) -> list:
    """``where`` with ``kept`` of the identical ``layers`` on the runners (as many as fit on each, fastest
    first) and the rest on the fastest store with room, in module order."""
    where = list(where)
    stores = [p for p in places if p not in runners]
    state = _State(room)
    for i, device in enumerate(where):
        if device is not None:
            state.add(i, device)
    placed = 0
    for i in layers:
        for device in (runners if placed < kept else []) + stores:
            if state.try_add(i, device):
                where[i] = device
                placed += device in runners
                break
        else:
            where[i] = stores[-1] if stores else runners[-1]
            state.add(i, where[i])
    return where


class _State:
    """A placement's needs, kept up to date unit by unit (what :meth:`Room.needs` computes at once)."""

    def __init__(self, room: Room):
        self.room, self.main = room, room.runners[0]
        self.need: dict = {}
        self.act: dict = {}
        self.stream = 0

    def add(self, i: int, device: Any) -> tuple:
        room = self.room
        runs = device if device in room.runners else self.main
        saved = (dict(self.need), dict(self.act), self.stream)
        self.need[device] = self.need.get(device, 0) + room.weights[i]
        self.need[runs] = self.need.get(runs, 0) + room.kv[i]
        self.act[runs] = max(self.act.get(runs, 0), room.act[i])
        if runs is not device:
            self.stream = max(self.stream, room.weights[i])
        return saved

    def try_add(self, i: int, device: Any) -> bool:
        saved = self.add(i, device)
        touched = {device, self.main} if device in self.room.runners else {device, self.main}
        if all(d == "disk" or self._total(d) <= self.room.budgets.get(d, 0) for d in touched):
            return True
        self.need, self.act, self.stream = saved
        return False

    def _total(self, device: Any) -> int:
        return (self.need.get(device, 0) + self.act.get(device, 0) + (self.stream if device == self.main else 0))


def _no_fit(room: Room) -> str:
    total = sum(room.weights) + sum(room.kv) + max(room.act, default=0)
    have = ", ".join(f"{d} {format_bytes(b)}" for d, b in room.budgets.items())
    where = "anywhere" if room.offload else "on the devices that run it (--no-offload)"
    return f"Nothing fits {where}: weights, KV cache and step need {format_bytes(total)}; the budgets are {have}."


def room_of(blocks: list[str], sizes: dict, tied: dict, *, kv: Any = None, layer_names: tuple = (), step: Any = None,
            budgets: dict, offload: bool = True) -> Room:
    """The units of a plan's ``blocks`` (tied blocks together) with their bytes (``sizes``), the KV cache of their
    layers and what each holds during ``step``, under ``budgets`` (device -> bytes, fastest first)."""
    units = _units(list(blocks), tied)
    kv_of = dict(zip(layer_names, kv.layers)) if kv is not None else {}
    act_of = {}
    if step is not None:
        act_of = {b: n + (step.logits if b == step.head else 0) for b, n in step.by_block.items()}
    return Room(tuple(units), tuple(sum(sizes.get(b, 0) for b in u) for u in units),
                tuple(sum(kv_of.get(b, 0) for b in u) for u in units),
                tuple(max((act_of.get(b, 0) for b in u), default=0) for u in units), dict(budgets), offload)


def placed(room: Room, device_map: dict) -> list:
    """Each unit's device under ``device_map`` (a block's own entry or its nearest mapped parent)."""
    from .kv_cache import layer_devices

    return layer_devices(device_map, [unit[0] for unit in room.units])


def _units(blocks: list[str], tied: dict) -> list[tuple[str, ...]]:
    """Blocks in module order, a block sharing a tied tensor with an earlier one joined to it."""
    def block_of(param: str) -> Optional[str]:
        return next((b for b in blocks if param == b or param.startswith(b + ".")), None)

    joined = {}
    for param, source in tied.items():
        a, b = block_of(param), block_of(source)
        if a and b and a != b:
            joined[max(a, b, key=blocks.index)] = min(a, b, key=blocks.index)
    units: dict[str, list[str]] = {}
    for block in blocks:
        root = block
        while root in joined:
            root = joined[root]
        units.setdefault(root, []).append(block)
    return [tuple(members) for members in units.values()]


def fitted_map(room: Room, where: list) -> dict:
    """The device map of a placement: every block of a unit on the unit's device."""
    return {block: device for unit, device in zip(room.units, where) for block in unit}


def longest_context(fits_at, most: int) -> int:
    """The longest context in ``1..most`` for which ``fits_at(context)`` holds (it holds for every shorter one);
    0 when not even one token fits. Bisection: about log2(most) calls."""
    if not fits_at(1):
        return 0
    low, high = 1, most
    while low < high:
        middle = (low + high + 1) // 2
        if fits_at(middle):
            low = middle
        else:
            high = middle - 1
    return low

