"""The machines a parallel plan is made for: ``2x8xH100`` (nodes x GPUs per node x card), or numbers given.

A card's memory is the number it is sold by, read in binary units: an "80GB" H100 is 80 GiB here, as
accelerate users write ``max_memory={0: "80GiB"}``. The usable memory is a little less (torch reports about
79.1 GiB on an H100 80GB HBM3, and the CUDA context takes some): ask :func:`target_from` for the exact budget.
``cpu`` is this machine's total RAM, shared by the processes (ranks) of one node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import OptionError, PlanError
from ..units import parse_size

_GiB = 2**30
#: Card name -> memory per device in bytes (the vendor's "GB" read as GiB).
CARDS = {"H100": 80 * _GiB, "H200": 141 * _GiB, "A100-80GB": 80 * _GiB, "A100-40GB": 40 * _GiB,
         "L4": 24 * _GiB, "RTX4090": 24 * _GiB, "MI300X": 192 * _GiB}
_ALIASES = {"A100": "A100-80GB", "4090": "RTX4090"}
_TARGET = re.compile(r"^\s*(?:(\d+)\s*x\s*)?(?:(\d+)\s*x\s*)?([a-z0-9][a-z0-9_-]*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Target:
    """``nodes`` machines of ``gpus_per_node`` devices, each ``memory`` bytes (a ``cpu`` rank: its share of RAM)."""

    nodes: int
    gpus_per_node: int
    card: str
    memory: int
    kind: str = "cuda"  # "cuda" (ROCm too) or "cpu"

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    def device(self, local_rank: int) -> str:
        """The device a rank with this ``local_rank`` runs on: ``cuda:N`` (torchrun's LOCAL_RANK) or ``cpu``."""
        return "cpu" if self.kind == "cpu" else f"{self.kind}:{local_rank}"

    def __str__(self) -> str:
        return f"{self.nodes}x{self.gpus_per_node}x{self.card}"


def known_cards() -> str:
    """The card names :func:`parse_target` knows, for messages."""
    return ", ".join([*CARDS, *(f"{a} ({c})" for a, c in _ALIASES.items()), "cpu"])


def parse_target(text: str) -> Target:
    """``"2x8xH100"`` (2 nodes of 8), ``"8xH100"`` (one node), ``"H100"`` or ``"1x2xcpu"``; any case."""
    match = _TARGET.match(str(text))
    if not match:
        raise PlanError(f"Cannot read {text!r} as a target.",
                        hint=f"Write NODESxGPUSxCARD, e.g. 2x8xH100 or 8xH100; cards: {known_cards()}.")
    first, second, name = match.groups()
    nodes, gpus = (int(first), int(second)) if second else (1, int(first or 1))
    if nodes < 1 or gpus < 1:
        raise PlanError(f"Target {text!r} has no devices.", hint="Counts start at 1, e.g. 1x8xH100.")
    card = _card(name)
    if card == "cpu":
        return Target(nodes, gpus, "cpu", _ram() // gpus, "cpu")
    return Target(nodes, gpus, card, CARDS[card])


def target_from(gpus: int, gpu_memory: int | str, nodes: int = 1, *, card: str = "GPU", kind: str = "cuda") -> Target:
    """A target of ``nodes`` x ``gpus`` devices of ``gpu_memory`` each (bytes, or a size like ``"80GiB"``)."""
    try:
        memory = gpu_memory if isinstance(gpu_memory, int) else parse_size(gpu_memory)
    except OptionError as exc:
        raise PlanError(exc.message, hint=exc.hint) from None
    if isinstance(gpus, bool) or int(gpus) < 1 or int(nodes) < 1 or memory <= 0:
        raise PlanError(f"A target needs at least one node, one device and some memory; got nodes={nodes}, "
                        f"gpus={gpus}, gpu_memory={gpu_memory!r}.", hint="e.g. target_from(8, '80GiB', nodes=2).")
    if kind not in ("cuda", "cpu"):
        raise PlanError(f"Unknown device kind {kind!r}.", hint="Use cuda (NVIDIA or ROCm GPUs) or cpu.")
    return Target(int(nodes), int(gpus), card, memory, kind)


def _card(name: str) -> str:
    key = _normal(name)
    if key == "CPU":
        return "cpu"
    found = {_normal(c): c for c in CARDS} | {_normal(a): c for a, c in _ALIASES.items()}
    if key not in found:
        raise PlanError(f"Unknown card {name!r}.",
                        hint=f"Known cards: {known_cards()}. For another, use target_from(gpus, gpu_memory, nodes).")
    return found[key]


def _normal(name: str) -> str:
    return re.sub(r"[\s_-]", "", name).upper()


def _ram() -> int:
    """This machine's total RAM in bytes."""
    import psutil

    return int(psutil.virtual_memory().total)
