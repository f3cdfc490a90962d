"""Why a plan looks the way it does, as records: each renderer writes its own words.

``explain`` turns a plan's numbers into :class:`Finding` records (kind, severity, the device
and the bytes involved, and the option that would change the outcome). The widget, the static
record and the text renderer word them (``hf_notebook.ui.words``); the editor can act on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

FITS = "fits"  # everything on fast devices: ``by_device``
FILLED = "filled"  # ``device`` is full: ``nbytes`` planned against its ``budget``
SPILL = "spill"  # ``nbytes`` go to ``device`` (cpu behind a GPU, or disk)
NEEDS = "needs"  # to fit on ``device`` alone it needs ``nbytes``: ``option`` asks for it
SMALLER_DTYPE = "smaller_dtype"  # in ``dtype`` it would need ``nbytes``: ``option``

HEADROOM = 1.1  # accelerate keeps room for the largest layer and activations


@dataclass(frozen=True)
class Finding:
    """One fact about a plan, with its numbers."""

    kind: str
    severity: str  # "ok" | "info" | "warning" (slower) | "danger" (much slower: disk)
    device: str = ""
    nbytes: int = 0
    budget: Optional[int] = None
    dtype: str = ""
    option: str = ""  # the flag that changes this, e.g. "--max-memory 0=20GB"
    by_device: tuple[tuple[str, int], ...] = ()
    reserved: int = 0  # FILLED: what accelerate keeps free on ``device`` for the largest layer (run there in turn)
    next_block: str = ""  # FILLED: the first block that did not fit, and its bytes
    next_bytes: int = 0
    room: int = 0  # the part of ``nbytes`` that is a --context plan's KV cache and step


def explain(used: dict[str, int], budget: dict[str, int], spilled: list[str], dtype: str, *, largest: int = 0,
            next_block: tuple[str, int] = ("", 0), room_by_device: Optional[dict[str, int]] = None,
            room: int = 0) -> list[Finding]:
    """Findings for a plan that puts ``used`` bytes of weights per device, with ``budget`` and ``spilled``
    devices; ``largest``: the largest block's bytes (accelerate keeps that much free on a device that offloads),
    ``next_block``: the first block placed on a spilled device (name, bytes). A ``--context`` plan also holds
    ``room_by_device`` (KV cache and step) and needs ``room`` beside the weights on one device alone."""
    extra = dict(room_by_device or {})
    if not spilled:
        return [Finding(FITS, "ok", nbytes=sum(used.values()) + sum(extra.values()),
                        by_device=tuple((d, n + extra.get(d, 0)) for d, n in used.items()),
                        room=sum(extra.values()))]
    candidates = [d for d in budget if d != "disk"] + list(used)
    fast = [d for d in dict.fromkeys(candidates) if d not in spilled]
    findings = [Finding(FILLED, "info", device=d, nbytes=used.get(d, 0) + extra.get(d, 0), budget=budget.get(d),
                        reserved=largest if budget.get(d) else 0, next_block=next_block[0], next_bytes=next_block[1],
                        room=extra.get(d, 0))
                for d in fast]
    findings += [Finding(SPILL, "danger" if d == "disk" else "warning", device=d, nbytes=used.get(d, 0))
                 for d in spilled]
    target = fast[0] if fast else "cpu"
    need = int(sum(used.values()) * HEADROOM) + room
    key = target.removeprefix("cuda:")
    findings.append(Finding(NEEDS, "info", device=target, nbytes=need, option=f"--max-memory {key}={_gib_arg(need)}",
                            room=room))
    if dtype == "float32":
        findings.append(Finding(SMALLER_DTYPE, "info", nbytes=int(sum(used.values()) * HEADROOM) // 2 + room,
                                dtype="bfloat16", option="--dtype bfloat16", room=room))
    return findings


def _gib_arg(nbytes: float) -> str:
    """A budget of at least ``nbytes`` in the units sizes are shown in (``46.3 MB`` needs ``47MB``)."""
    return f"{-(-nbytes // 10**9):.0f}GB" if nbytes >= 10**9 else f"{-(-nbytes // 10**6):.0f}MB"
