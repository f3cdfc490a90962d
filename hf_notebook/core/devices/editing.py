"""Editing a device map: placement units, checked assignments, totals against budgets.

A :class:`MapEditor` holds a draft map over a model's structure (a :class:`~.plan.Plan`'s
``module_bytes``, ``blocks``, ``no_split`` and ``tied``). Every change goes through
:meth:`MapEditor.assign`, which checks the change as a whole (known modules, ranges in
bounds, devices on offer, no-split modules kept whole, tied weights kept together) and either
applies it as one undoable step or raises :class:`~.errors.MapError` leaving the draft as it
was. Budgets are soft: an over-budget draft is kept, so an editor can show it, and
:meth:`MapEditor.problems` says why it cannot be applied yet. No torch, no widgets.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

from ..errors import MapError, OptionError
from ..units import Device, device_name, device_sort_key, parse_device
from .placement import Placement, planned_placement, runs_on

_RANGE = re.compile(r"^(.+)\.(\d+)-(\d+)$")


@dataclass(frozen=True)
class Unit:
    """One row of the editor: a module placed as a whole, with its bytes."""

    name: str
    device: Device
    nbytes: int


@dataclass(frozen=True)
class Problem:
    """Why a draft cannot be applied: ``device`` holds ``nbytes`` against a ``budget``."""

    kind: str  # "over-budget"
    device: str
    nbytes: int
    budget: int

    @property
    def over(self) -> int:
        return self.nbytes - self.budget


@dataclass(frozen=True)
class Change:
    """One applied step: what was asked, and which modules followed (tied weights)."""

    asked: dict[str, Device]
    followed: dict[str, str] = field(default_factory=dict)  # module that moved along -> module it follows
    reset: Optional[str] = None  # a reset: to "initial" or to a strategy's map


def parse_assignment(text: str) -> tuple[str, Device]:
    """``"model.layers.20-39=cpu"`` -> ``("model.layers.20-39", "cpu")``."""
    modules, sep, device = str(text).strip().rpartition("=")
    if not sep or not modules.strip() or not device.strip():
        raise MapError(f"Cannot read --set {text!r}.",
                       hint="Write MODULES=DEVICE, e.g. --set model.layers.20-39=cpu or --set lm_head=disk")
    try:
        return modules.strip(), parse_device(device)
    except OptionError as exc:
        raise MapError(f"--set {text!r}: unknown device {device.strip()!r}.", hint=exc.hint) from None


class Structure:
    """A model's module tree as the editor needs it: order, bytes, children, what must stay whole."""

    def __init__(self, module_bytes: Mapping[str, tuple[int, int]], blocks: Iterable[str] = (),
                 no_split: Iterable[str] = (), tied: Optional[Mapping[str, str]] = None,
                 direct: Optional[Mapping[str, Mapping[str, int]]] = None):
        self.bytes = {name: p + b for name, (p, b) in module_bytes.items()}
        self.buffers = {name: b for name, (_, b) in module_bytes.items()}
        self.order = {name: i for i, name in enumerate(module_bytes)}
        self.blocks = tuple(blocks)
        self.no_split = frozenset(no_split)
        self.tied = dict(tied or {})
        self.children: dict[str, list[str]] = {}
        for name in module_bytes:
            if name:
                self.children.setdefault(parent(name), []).append(name)
        for module, tensors in (direct or {}).items():  # a split module's own tensors get entries of their own
            for tensor, nbytes in tensors.items():
                self.bytes[tensor] = nbytes
                self.children.setdefault(module, []).append(tensor)
        # modules holding a tied tensor: its bytes count at its partner (a tied lm_head weighs 0 B), but it must be placed
        self.tied_holders = {m for pair in self.tied.items() for t in pair for m in ancestors(t)}

    def holds(self, name: str) -> bool:
        """Whether module ``name`` holds a tensor a map must place: bytes of its own, or a tied tensor."""
        return bool(self.bytes.get(name, 0)) or name in self.tied_holders

    def partner(self, name: str) -> Optional[str]:
        """For a module whose only tensors are tied ones: a tensor they share, held outside it (else None)."""
        if self.bytes.get(name, 0):
            return None
        for target, source in self.tied.items():
            for mine, other in ((target, source), (source, target)):
                if _within(mine, name) and not _within(other, name):
                    return other
        return None

    @classmethod
    def of(cls, plan: Any) -> "Structure":
        return cls(plan.module_bytes, plan.blocks, plan.no_split, plan.tied, plan.direct)

    def position(self, key: str) -> int:
        """Where ``key`` (a module, or a parameter-level map key) comes in module order."""
        while key not in self.order and "." in key:
            key = parent(key)
        return self.order.get(key, len(self.order))

    def expand(self, text: str) -> list[str]:
        """Module names for ``text``: one module, or a range over numbered children (``model.layers.1-2``)."""
        if text in self.order:
            return [text]
        m = _RANGE.match(text)
        if m is None:
            raise MapError(f"The model has no module {text!r}.", hint=self._close(text))
        prefix, first, last = m.group(1), int(m.group(2)), int(m.group(3))
        numbered = sorted(int(c.rsplit(".", 1)[1]) for c in self.children.get(prefix, [])
                          if c.rsplit(".", 1)[1].isdigit())
        if prefix not in self.order or not numbered:
            raise MapError(f"{prefix!r} is not a module with numbered children, so {text!r} is not a range.",
                           hint=self._close(prefix))
        if first > last or first < numbered[0] or last > numbered[-1]:
            raise MapError(f"{text!r} is out of range: {prefix} has {numbered[0]}-{numbered[-1]}.",
                           hint=f"Pick a range within {prefix}.{numbered[0]}-{numbered[-1]}.")
        return [f"{prefix}.{i}" for i in range(first, last + 1)]

    def whole(self, name: str) -> Optional[str]:
        """The outermost no-split module strictly containing ``name`` (it must move as a whole), or None."""
        found = None
        for ancestor in ancestors(name):
            if ancestor in self.no_split:
                found = ancestor
        return found

    def _close(self, text: str) -> str:
        import difflib

        matches = difflib.get_close_matches(text, [n for n in self.order if n], n=3, cutoff=0.6)
        names = ", ".join(matches) if matches else ", ".join(self.blocks[:4]) + (" ..." if len(self.blocks) > 4 else "")
        return f"Module names are as in named_modules() / hf_device_map, e.g. {names}."


class MapEditor:
    """A draft device map with undo, checked edits and totals per device against budgets.

    ``devices`` are the devices on offer (labels as ``device_name`` gives them); ``budget`` the
    bytes each may hold (missing: no limit); ``strategies`` computes the map of a named
    strategy ("auto", "balanced", ...) for :meth:`reset`; ``room`` gives, for a map, what a plan's
    ``--context`` needs per device beside the weights (KV cache and one step), counted against budgets.
    """

    def __init__(self, structure: Structure, device_map: Mapping[str, Any], *, devices: Iterable[str],
                 budget: Optional[Mapping[str, int]] = None,
                 strategies: Optional[Mapping[str, Callable[[], Mapping[str, Any]]]] = None,
                 room: Optional[Callable[[Mapping[str, Any]], Mapping[str, int]]] = None):
        self.structure = structure
        self.room_of = room
        self.devices = tuple(sorted({device_name(d) for d in devices}, key=device_sort_key))
        self.budget = {device_name(d): int(b) for d, b in (budget or {}).items() if b is not None}
        self.strategies = dict(strategies or {})
        self.initial = self._ordered(place_tied({k: parse_device(v) for k, v in device_map.items()}, structure))
        self.map = dict(self.initial)
        self.history: list[tuple[dict, Change]] = []  # (map before, change) for undo

    # -- reading -------------------------------------------------------------------------
    def units(self) -> list[Unit]:
        """Rows in module order: each block, or the map entries inside it where the map splits it."""
        s = self.structure
        if not s.blocks:
            return [Unit(k, v, s.bytes.get(k, 0)) for k, v in self.map.items()]
        units, inner = [], _inside_blocks(self.map, s.blocks)
        for block in s.blocks:
            if block in inner:
                units += [Unit(k, self.map[k], s.bytes.get(k, 0)) for k in inner[block]]
            else:
                units.append(Unit(block, self.device_of(block), s.bytes.get(block, 0)))
        return units

    def moves(self) -> list[tuple[str, str, str, int]]:
        """What applying the draft would move: ``(unit, from, to, bytes)`` in module order."""
        found = []
        for unit in self.units():
            before = next((self.initial[k] for k in [unit.name, *ancestors(unit.name)] if k in self.initial), None)
            if before is not None and device_name(before) != device_name(unit.device):
                found.append((unit.name, device_name(before), device_name(unit.device), unit.nbytes))
        return found

    def device_of(self, name: str) -> Device:
        """The device the most specific entry covering ``name`` gives it."""
        for key in [name, *ancestors(name)]:
            if key in self.map:
                return self.map[key]
        raise MapError(f"The device map does not place {name!r}.",
                       hint=f"Place it: --set {name}=DEVICE (or reset the map: editor.reset()).")

    def totals(self) -> dict[str, int]:
        """Bytes per device label, every offered device listed (accelerators first); an offloaded module's
        buffers count where it runs, as accelerate keeps them (the record measures the same)."""
        units = self.units()
        main, offloaded = runs_on(u.device for u in units)
        totals = dict.fromkeys(self.devices, 0)
        for unit in units:
            label = device_name(unit.device)
            buffers = self.structure.buffers.get(unit.name, 0) if label in offloaded else 0
            totals[label] = totals.get(label, 0) + unit.nbytes - buffers
            totals[main] = totals.get(main, 0) + buffers
        return dict(sorted(totals.items(), key=lambda kv: device_sort_key(kv[0])))

    def room(self) -> dict[str, int]:
        """Per device, the KV cache and step the plan's ``--context`` needs there under the draft (empty without)."""
        return dict(self.room_of(self.map)) if self.room_of is not None else {}

    def problems(self) -> list[Problem]:
        """What stops the draft from being applied (empty: it may be applied): weights, and the KV cache and step
        of a ``--context`` plan, beyond a device's budget."""
        room = self.room()
        return [Problem("over-budget", d, n + room.get(d, 0), self.budget[d]) for d, n in self.totals().items()
                if d in self.budget and n + room.get(d, 0) > self.budget[d]]

    def placement(self) -> Placement:
        """The draft as a planned :class:`Placement` (groups in module order, totals per device)."""
        s = self.structure
        rows = {u.name: u.device for u in self.units()}
        _, offloaded = runs_on(rows.values())
        return planned_placement(rows, {n: (s.bytes.get(n, 0) - s.buffers.get(n, 0), s.buffers.get(n, 0))
                                        for n in rows}, offloaded)

    @property
    def changed(self) -> bool:
        return self.map != self.initial

    def to_json(self, path: str | Path | None = None) -> str:
        """The draft as JSON (``--device-map @file`` reads it back); written to ``path`` if given."""
        text = json.dumps(self.map, indent=1)
        if path is not None:
            Path(path).expanduser().write_text(text + "\n")
        return text

    # -- layers on the fastest device (the "n layers on GPU" slider) -----------------------
    @property
    def layers(self) -> list[str]:
        """The decoder layers in order: the longest numbered run among the blocks (``model.layers.N``)."""
        runs: dict[str, list[str]] = {}
        for block in self.structure.blocks:
            prefix, _, index = block.rpartition(".")
            if prefix and index.isdigit():
                runs.setdefault(prefix, []).append(block)
        return max(runs.values(), key=len, default=[])

    @property
    def fastest(self) -> str:
        """The device the slider fills: the first accelerator on offer, else cpu (the rest going to disk)."""
        return self.devices[0]

    @property
    def slower(self) -> Optional[str]:
        """Where the layers beyond the slider's count go: the next device on offer (cpu, or disk)."""
        return self.devices[1] if len(self.devices) > 1 else None

    def layers_on_fastest(self) -> int:
        """How many of the first layers, in order, are on :attr:`fastest` now."""
        count = 0
        for layer in self.layers:
            if device_name(self.device_of(layer)) != self.fastest:
                break
            count += 1
        return count

    def put_layers(self, count: int) -> Change:
        """The first ``count`` layers on :attr:`fastest`, the rest on :attr:`slower`, as one undoable step."""
        layers = self.layers
        if not layers or self.slower is None:
            raise MapError("There are no numbered layers to spread, or only one device on offer.",
                           hint="Move modules with the selectors instead.")
        if not 0 <= int(count) <= len(layers):
            raise MapError(f"--layers {count}: the model has {len(layers)} numbered layers.",
                           hint=f"Give 0 to {len(layers)}, or --layers max (the most that fit).")
        count = int(count)
        edits = [(layer, self.fastest) for layer in layers[:count]] + [(layer, self.slower) for layer in layers[count:]]
        return self.assign(edits)

    def most_layers_that_fit(self) -> int:
        """The most first layers :attr:`fastest` takes with every budget kept (the rest on :attr:`slower`)."""
        saved = (self.map, list(self.history))
        try:
            for count in range(len(self.layers), -1, -1):
                self.put_layers(count)
                fits = not self.problems()
                self.map, self.history = saved[0], list(saved[1])
                if fits:
                    return count
            return 0
        finally:
            self.map, self.history = saved

    # -- editing -------------------------------------------------------------------------
    def assign(self, edits: Iterable[tuple[str, Any]]) -> Change:
        """Put each ``(modules, device)`` of ``edits`` there, checked together, as one undoable step."""
        asked = self._asked(edits)
        new = dict(self.map)
        for name in sorted(asked, key=lambda n: n.count(".") + bool(n)):  # parents first, children override
            _put(new, name, asked[name], self.structure)
        followed = self._keep_tied_together(new, asked)
        change = Change(asked, followed)
        self.history.append((self.map, change))
        self.map = self._ordered(new)
        return change

    def set(self, text: str, device: Any) -> Change:
        """One assignment: ``editor.set("model.layers.20-39", "cpu")``."""
        return self.assign([(text, device)])

    def undo(self) -> Optional[Change]:
        """Go back one step; returns the step undone (None when there is nothing to undo)."""
        if not self.history:
            return None
        self.map, change = self.history.pop()
        return change

    def reset(self, strategy: Optional[str] = None) -> Change:
        """Back to the initial map, or to a strategy's map; undoable."""
        if strategy is None:
            target = dict(self.initial)
        elif strategy in self.strategies:
            target = {k: parse_device(v) for k, v in self.strategies[strategy]().items()}
        else:
            offered = ", ".join(self.strategies) or "none here"
            raise MapError(f"Unknown reset strategy {strategy!r}.", hint=f"Strategies on offer: {offered}.")
        change = Change({}, reset=strategy or "initial")
        self.history.append((self.map, change))
        self.map = self._ordered(target)
        return change

    # -- checks ----------------------------------------------------------------------------
    def _asked(self, edits: Iterable[tuple[str, Any]]) -> dict[str, Device]:
        asked: dict[str, Device] = {}
        for text, device in edits:
            device = parse_device(device)
            label = device_name(device)
            if label not in self.devices:
                raise MapError(f"{label} is not a device on offer here.",
                               hint=f"Devices: {', '.join(self.devices)}.")
            for name in self.structure.expand(str(text).strip()):
                whole = self.structure.whole(name)
                if whole is not None:
                    raise MapError(f"{name!r} lies inside {whole!r}, which must stay whole on one device "
                                   "(the model's _no_split_modules).",
                                   hint=f"Move {whole} as a whole.")
                if name in asked and asked[name] != device:
                    raise MapError(f"{name!r} is asked to go to both {device_name(asked[name])} and {label}.",
                                   hint="Give each module one device.")
                asked[name] = device
        if not asked:
            raise MapError("Nothing to change: name at least one module.", hint="For example model.layers.0=cpu")
        return asked

    def _keep_tied_together(self, new: dict, asked: dict[str, Device]) -> dict[str, str]:
        """Tied weights are one tensor: the partner of a moved tied weight follows it, unless it was
        explicitly sent elsewhere (then: MapError)."""
        followed: dict[str, str] = {}
        s = self.structure
        leaders = dict(asked)  # what was asked, and what has followed it so far (chains: T5's shared embedding)
        for _ in range(len(s.tied) + 1):
            moved = False
            for target, source in s.tied.items():
                a, b = module_of(target), module_of(source)
                da, db = _covering(new, target), _covering(new, source)
                if da == db:
                    continue
                a_asked, b_asked = _asked_for(a, leaders), _asked_for(b, leaders)
                if not (a_asked or b_asked):  # split before this change: not ours to mend
                    continue
                if _asked_for(a, asked) and _asked_for(b, asked):
                    raise MapError(f"{target} and {source} are one tensor (tied weights), but {a or 'the model'} "
                                   f"would be on {device_name(da)} and {b or 'the model'} on {device_name(db)}.",
                                   hint=f"Put {a} and {b} on the same device.")
                leader, follower, device = (a, b, da) if a_asked else (b, a, db)
                follower = s.whole(follower) or follower
                _put(new, follower, device, s)
                followed[follower] = leader
                leaders[follower] = device
                moved = True
            if not moved:
                return followed
        return followed

    def _ordered(self, mapping: Mapping[str, Device]) -> dict[str, Device]:
        return dict(sorted(mapping.items(), key=lambda kv: self.structure.position(kv[0])))


def parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def ancestors(name: str) -> list[str]:
    """Strict ancestors of ``name``, innermost first, ending with the root ``""``."""
    found = []
    while name:
        name = parent(name)
        found.append(name)
    return found


def module_of(param: str) -> str:
    return parent(param)


def _covering(mapping: Mapping[str, Device], name: str) -> Optional[Device]:
    for key in [name, *ancestors(name)]:
        if key in mapping:
            return mapping[key]
    return None


def _asked_for(name: str, asked: Mapping[str, Device]) -> bool:
    """Was ``name`` (or a module holding it, or one inside it) named in this change?"""
    return any(a == name or name.startswith(a + ".") or a == "" or a.startswith(name + ".") for a in asked)


def _put(mapping: dict, name: str, device: Device, structure: Structure) -> None:
    """Place module ``name`` on ``device``: entries inside it go, an entry holding it is split."""
    for key in [k for k in mapping if k == name or k.startswith(name + ".") or name == ""]:
        del mapping[key]
    holder = next((a for a in ancestors(name) if a in mapping), None) if name else None
    if holder is not None:
        if mapping[holder] == device:
            return
        old = mapping.pop(holder)
        path = [name, *ancestors(name)]
        for node in reversed(path[: path.index(holder)]):  # from just below the holder down to name
            for sibling in structure.children.get(parent(node), []):
                if sibling != node and structure.holds(sibling):  # modules without tensors need no entry
                    mapping[sibling] = old
    mapping[name] = device


def unplaced(mapping: Mapping[str, Any], structure: Structure) -> list[str]:
    """The outermost modules holding tensors (or tied ones) that no entry of ``mapping`` places: neither an entry
    for them or a module holding them, nor entries inside them."""
    found: list[str] = []

    def visit(name: str) -> None:
        if _covering(mapping, name) is not None or not structure.holds(name):
            return
        if not any(name == "" or k.startswith(name + ".") for k in mapping):
            found.append(name)
            return
        for child in structure.children.get(name, []):
            visit(child)

    visit("")
    return found


def place_tied(mapping: Mapping[str, Any], structure: Structure) -> dict:
    """``mapping`` with each unplaced module whose only tensors are tied ones (a tied ``lm_head``) placed with
    the tensor it shares, as accelerate keeps tied weights together. Other unplaced modules stay unplaced."""
    placed = dict(mapping)
    for name in unplaced(placed, structure):
        partner = structure.partner(name)
        device = _covering(placed, partner) if partner is not None else None
        if device is not None:
            placed[name] = device
    return placed


def _within(tensor: str, module: str) -> bool:
    return module == "" or tensor == module or tensor.startswith(module + ".")


def _inside_blocks(mapping: Mapping[str, Device], blocks: tuple[str, ...]) -> dict[str, list[str]]:
    """Block -> the map entries strictly inside it (where the map is finer than the block)."""
    block_set = set(blocks)
    inner: dict[str, list[str]] = {}
    for key in mapping:
        for ancestor in ancestors(key):
            if ancestor in block_set:
                inner.setdefault(ancestor, []).append(key)
                break
    return inner


