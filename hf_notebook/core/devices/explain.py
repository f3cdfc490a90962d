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
    option: str = ""  # the flag that changes this, e.g. "--max-memory 0=20GiB"
    by_device: tuple[tuple[str, int], ...] = ()


def explain(used: dict[str, int], budget: dict[str, int], spilled: list[str], dtype: str) -> list[Finding]:
    """Findings for a plan that puts ``used`` bytes per device, with ``budget`` and ``spilled`` devices."""
    if not spilled:
        return [Finding(FITS, "ok", nbytes=sum(used.values()), by_device=tuple(used.items()))]
    candidates = [d for d in budget if d != "disk"] + list(used)
    fast = [d for d in dict.fromkeys(candidates) if d not in spilled]
    findings = [Finding(FILLED, "info", device=d, nbytes=used.get(d, 0), budget=budget.get(d)) for d in fast]
    findings += [Finding(SPILL, "danger" if d == "disk" else "warning", device=d, nbytes=used.get(d, 0))
                 for d in spilled]
    target = fast[0] if fast else "cpu"
    need = int(sum(used.values()) * HEADROOM)
    key = target.removeprefix("cuda:")
    findings.append(Finding(NEEDS, "info", device=target, nbytes=need, option=f"--max-memory {key}={_gib_arg(need)}"))
    if dtype == "float32":
        findings.append(Finding(SMALLER_DTYPE, "info", nbytes=need // 2, dtype="bfloat16", option="--dtype bfloat16"))
    return findings


def _gib_arg(nbytes: float) -> str:
    return f"{-(-nbytes // 2**30):.0f}GiB" if nbytes >= 2**30 else f"{-(-nbytes // 2**20):.0f}MiB"
