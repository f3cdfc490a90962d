"""Widget views of where a model goes: device map and memory per device, and a matplotlib figure.

Every view draws what the core computed: a ``Placement``'s groups (device, member modules,
bytes by kind) and a plan's ``budget`` and ``module_bytes``. Nothing here parses names or
sentences. Each view has a ``.widget`` for Jupyter and ``to_text()`` for terminals; its
``repr`` is the text form. These are the building blocks of the interactive panels (the
device-map editor); finished outputs are static records (``hf_notebook.ui.record``).
matplotlib is imported only by :func:`memory_figure`.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any, Mapping, Optional

import ipywidgets as W

from hf_notebook.core.units import device_sort_key, format_bytes
from hf_notebook.ui.record import html_text
from hf_notebook.ui.style import (ANYWHERE, DANGER, MONO, MUTED, PLOT_BUFFERS, PLOT_INK, PLOT_KV, PLOT_OVER,
                                  PLOT_OVER_BUFFERS, PLOT_OVER_KV, PLOT_OVER_STEP, PLOT_OVER_TEXT, PLOT_PARAMS,
                                  PLOT_STEP, set_changed)
from hf_notebook.ui.words import device_title

__all__ = [
    "DeviceMapView",
    "DeviceSection",
    "DeviceUsage",
    "GroupRow",
    "MemoryView",
    "device_usage",
    "memory_figure",
    "plan_room",
    "rank_figure",
    "rank_usage",
]

_SIZE = f"{MONO};white-space:nowrap"  # a size: number and unit together
# a row's name takes the room there is; its bytes sit at the right edge, where a member row's bytes line up too
_NAME = dict(flex="1 1 auto", min_width="0")
_BYTES = dict(flex="0 0 auto", margin="0 0 0 auto")


# -- shared pieces ------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceUsage:
    """One device's bytes against its budget (``None``: no budget, as for disk): weights (parameters and
    buffers) and, for a plan with ``--context``, the KV cache and one step's activations it keeps room for."""

    device: str
    nbytes: int
    buffer_bytes: int = 0
    budget: Optional[int] = None
    kv_bytes: int = 0
    step_bytes: int = 0

    @property
    def param_bytes(self) -> int:
        """The device's weights less its buffers, so the segments always add up to the total."""
        return self.nbytes - self.buffer_bytes

    @property
    def total(self) -> int:
        """Weights, KV cache and step: what the budget must hold."""
        return self.nbytes + self.kv_bytes + self.step_bytes

    @property
    def over(self) -> int:
        """Bytes beyond the budget (0 when within it or without one)."""
        return max(0, self.total - self.budget) if self.budget is not None else 0

    def amount_text(self) -> str:
        """``12.3 GB of 80.0 GB (15%)``, ``90.0 GB of 80.0 GB, 10.0 GB over budget``, or ``148.0 kB``."""
        if self.budget is None:
            return format_bytes(self.total)
        text = f"{format_bytes(self.total)} of {format_bytes(self.budget)}"
        if self.over:
            return f"{text}, {format_bytes(self.over)} over budget"
        return f"{text} ({self.total / self.budget:.0%})" if self.budget else text

    def split_text(self) -> str:
        parts = [f"params {format_bytes(self.param_bytes)}", f"buffers {format_bytes(self.buffer_bytes)}"]
        parts += [f"KV cache {format_bytes(self.kv_bytes)}"] if self.kv_bytes else []
        parts += [f"step {format_bytes(self.step_bytes)}"] if self.step_bytes else []
        return " · ".join(parts)


def device_usage(placement: Any, budget: Optional[Mapping[str, int]] = None, kv: Optional[Mapping[str, int]] = None,
                 step: Optional[Mapping[str, int]] = None) -> list[DeviceUsage]:
    """Per device, accelerators first: every device the placement uses or the budget names (disk: no budget);
    ``kv`` and ``step``: a ``--context`` plan's KV cache and step per device (default: the placement's own)."""
    budget = {d: int(b) for d, b in (budget or {}).items() if d != "disk"}
    kv = dict(kv if kv is not None else getattr(placement, "kv_by_device", {}))
    step = dict(step if step is not None else getattr(placement, "step_by_device", {}))
    used = placement.bytes_by_device
    buffers = placement.buffer_bytes_by_device
    devices = sorted(set(used) | set(budget) | set(kv) | set(step), key=device_sort_key)
    return [DeviceUsage(d, int(used.get(d, 0)), min(int(buffers.get(d, 0)), int(used.get(d, 0))), budget.get(d),
                        int(kv.get(d, 0)), int(step.get(d, 0))) for d in devices]


def plan_room(plan: Any, device_map: Optional[Mapping[str, Any]] = None) -> dict:
    """``kv=`` and ``step=`` for :func:`device_usage` from a plan (under ``device_map``, default its own)."""
    if getattr(plan, "kv", None) is None:
        return {}
    device_map = plan.device_map if device_map is None else device_map
    return {"kv": plan.kv_for(device_map), "step": plan.headroom_for(device_map)}


class _View:
    """``repr`` is the text form; Jupyter gets the widget, other frontends the text."""

    widget: Any

    def to_text(self) -> str:  # pragma: no cover - every view defines it
        raise NotImplementedError

    def display(self) -> None:
        from IPython.display import display

        display(self)

    def __repr__(self) -> str:
        return self.to_text()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        widget_repr = getattr(self.widget, "_repr_mimebundle_", None)  # None once closed
        bundle = dict((widget_repr(**kwargs) or {}) if callable(widget_repr) else {})
        bundle["text/plain"] = self.to_text()
        return bundle


# -- device map -----------------------------------------------------------------------------
class GroupRow:
    """One collapsed group (``model.layers.0-46``); a range expands to its member modules."""

    def __init__(self, group: Any, sizes: Mapping[str, int], estimated: bool = False):
        self.group = group
        self.estimated = estimated
        members = group.members if len(group.members) > 1 else ()
        self.members: list[tuple[str, Optional[int]]] = [(n, sizes.get(n)) for n in members]
        self.member_box = W.VBox(layout=W.Layout(display="none", margin="0 0 0 28px"))
        self.toggle: Optional[W.Button] = None
        lead: Any = W.HTML(layout=W.Layout(width="28px"))
        if self.members:
            self.toggle = lead = W.Button(icon="caret-right", tooltip=f"show the {len(self.members)} modules",
                                          layout=W.Layout(width="28px", padding="0"))
            self.toggle.on_click(lambda _: self.expand(not self.expanded))
        count = f" <span style='{MUTED}'>({len(self.members)} modules)</span>" if self.members else ""
        self.name = W.HTML(f"<code style='{ANYWHERE}'>{escape(group.label)}</code>{count}", layout=_NAME)
        self.size = W.HTML(f"<span style='{_SIZE}'>{escape(format_bytes(group.nbytes))}</span>", layout=_BYTES)
        self.widget = W.VBox([W.HBox([lead, self.name, self.size]), self.member_box])

    @property
    def expanded(self) -> bool:
        return self.member_box.layout.display != "none"

    def expand(self, show: bool = True) -> None:
        """Show (build on first use) or hide the member rows."""
        if show and not self.member_box.children:
            self.member_box.children = tuple(
                W.HBox([W.HTML(f"<code style='{ANYWHERE}'>{escape(name)}</code>", layout=_NAME),
                        W.HTML(f"<span style='{_SIZE}'>{escape(self.member_size_text(nbytes))}</span>",
                               layout=_BYTES)])
                for name, nbytes in self.members
            )
        set_changed(self.member_box.layout, display="flex" if show else "none")
        if self.toggle is not None:
            set_changed(self.toggle, icon="caret-down" if show else "caret-right")

    def member_size_text(self, nbytes: Optional[int]) -> str:
        if nbytes is None:
            return "size unknown"
        return f"≈ {format_bytes(nbytes)} (planned)" if self.estimated else format_bytes(nbytes)


class DeviceSection:
    """A device's header and its groups, in module order."""

    def __init__(self, usage: DeviceUsage, rows: list[GroupRow]):
        self.usage, self.device, self.rows = usage, usage.device, rows
        style = DANGER if usage.over else ""
        self.header = W.HTML(
            f"<b>{escape(device_title(self.device))}</b> <span style='{style}'>{html_text(usage.amount_text())}</span>"
            f" <span style='{MUTED};white-space:nowrap'>· {len(rows)} group{'s' * (len(rows) != 1)}</span>"
        )
        self.widget = W.VBox([self.header] + [r.widget for r in rows], layout=W.Layout(margin="4px 0"))

    def row(self, label: str) -> Optional[GroupRow]:
        return next((r for r in self.rows if r.group.label == label), None)


class DeviceMapView(_View):
    """Groups by device (GPUs, cpu, disk); ranges such as ``model.layers.0-15`` expand to their members.

    ``sizes`` gives member bytes by module name (a plan's ``module_sizes``/``blocks``);
    ``estimated`` marks them as planned next to measured group bytes.
    """

    def __init__(self, placement: Any, budget: Optional[Mapping[str, int]] = None, title: str = "",
                 sizes: Optional[Mapping[str, int]] = None, estimated: bool = False):
        self.placement, self.title = placement, title
        sizes = dict(sizes or {})
        usage = {u.device: u for u in device_usage(placement, budget)}
        devices = sorted({g.device for g in placement.groups}, key=device_sort_key)
        self.sections: dict[str, DeviceSection] = {
            d: DeviceSection(usage.get(d, DeviceUsage(d, 0)),
                             [GroupRow(g, sizes, estimated) for g in placement.groups if g.device == d])
            for d in devices
        }
        head = [W.HTML(f"<b>{escape(title)}</b>")] if title else []
        self.widget = W.VBox(head + [s.widget for s in self.sections.values()])

    @classmethod
    def from_plan(cls, plan: Any, title: str = "Device map (planned)") -> "DeviceMapView":
        return cls(plan.placement(), plan.budget, title, sizes=plan.module_sizes)

    @classmethod
    def from_result(cls, result: Any, title: str = "Device map (measured after loading)") -> "DeviceMapView":
        """Measured groups; member sizes are the plan's estimates and say so."""
        return cls(result.placement, result.plan.budget, title, sizes=result.plan.module_sizes, estimated=True)

    def row(self, label: str) -> Optional[GroupRow]:
        """The row of group ``label`` in whichever section holds it."""
        return next((r for s in self.sections.values() if (r := s.row(label)) is not None), None)

    def to_text(self, expand: bool = False) -> str:
        """One block per device; ``expand`` also lists each range's members."""
        lines = [self.title] if self.title else []
        width = max((len(g.label) for g in self.placement.groups), default=0)
        for section in self.sections.values():
            lines.append(f"{device_title(section.device)}: {section.usage.amount_text()}")
            for r in section.rows:
                count = f"  ({len(r.members)} modules)" if r.members else ""
                lines.append(f"  {r.group.label.ljust(width)}  {format_bytes(r.group.nbytes):>9}{count}")
                if expand:
                    lines += [f"    {name.ljust(width)}  {r.member_size_text(n)}" for name, n in r.members]
        return "\n".join(lines)


# -- memory per device ----------------------------------------------------------------------
class MemoryView(_View):
    """One bar per device: its bytes against its budget, red when over; disk shows only its bytes."""

    KINDS = {"planned": "planned", "resident": "resident, measured after loading"}

    def __init__(self, placement: Any, budget: Optional[Mapping[str, int]] = None, title: str = "",
                 kind: str = "planned", kv: Optional[Mapping[str, int]] = None, step: Optional[Mapping[str, int]] = None):
        if kind not in self.KINDS:
            raise ValueError(f"kind must be 'planned' or 'resident', not {kind!r}")
        self.kind = kind
        self.title = title or f"Memory per device ({self.KINDS[kind]})"
        self.usage = device_usage(placement, budget, kv, step)
        self.bars: dict[str, W.FloatProgress] = {}
        self.labels: dict[str, W.HTML] = {}
        rows = [W.HTML(f"<b>{escape(self.title)}</b>")]
        for u in self.usage:
            rows.append(self._row(u))
        self.widget = W.VBox(rows)

    def _row(self, u: DeviceUsage) -> W.HBox:
        top = float(u.budget) if u.budget else 1.0
        bar = W.FloatProgress(min=0.0, max=top, value=min(float(u.total), top),
                              bar_style="danger" if u.over else "",
                              layout=W.Layout(width="40%", visibility="visible" if u.budget is not None else "hidden"))
        style = DANGER if u.over else ""
        label = W.HTML(f"<span style='{style}'>{html_text(u.amount_text())}</span>"
                       f"<br><span style='{MUTED};font-size:90%'>{html_text(u.split_text())}</span>",
                       layout=W.Layout(width="40%"))
        self.bars[u.device], self.labels[u.device] = bar, label
        return W.HBox([W.HTML(escape(device_title(u.device)), layout=W.Layout(width="20%")), bar, label])

    @classmethod
    def from_plan(cls, plan: Any, title: str = "") -> "MemoryView":
        return cls(plan.placement(), plan.budget, title, kind="planned")

    @classmethod
    def from_result(cls, result: Any, title: str = "") -> "MemoryView":
        return cls(result.placement, result.plan.budget, title, kind="resident",
                   **plan_room(result.plan, result.device_map))

    def to_text(self) -> str:
        width = max((len(device_title(u.device)) for u in self.usage), default=0)
        lines = [self.title]
        for u in self.usage:
            flag = "  OVER BUDGET" if u.over else ""
            lines.append(f"  {device_title(u.device).ljust(width)}  {u.amount_text()}  [{u.split_text()}]{flag}")
        return "\n".join(lines)


# -- matplotlib -----------------------------------------------------------------------------
_UNITS = (("B", 1), ("kB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12))


def memory_figure(placement: Any, budget: Optional[Mapping[str, int]] = None, title: str = "",
                  kv: Optional[Mapping[str, int]] = None, step: Optional[Mapping[str, int]] = None):
    """A static ``Figure``: per device a bar of parameters, buffers and (``kv``, ``step``: a ``--context`` plan's)
    KV cache and step, the budget as a dashed mark, red when over.

    Built with matplotlib's object API (no pyplot), so it needs no GUI backend and keeps no
    global state; ``fig.savefig(...)`` works anywhere.
    """
    usage = device_usage(placement, budget, kv, step)
    return _usage_figure(usage, [device_title(u.device) for u in usage], title or "Memory per device")


def rank_usage(rank_plan: Any) -> list[DeviceUsage]:
    """A parallel plan's ranks as bars: each rank's weights and KV cache against its device's memory."""
    return [DeviceUsage(f"rank {r.rank}", r.weight_bytes, 0, r.budget, r.kv_bytes) for r in rank_plan.ranks]


def rank_figure(rank_plan: Any, title: str = ""):
    """A static ``Figure`` of a parallel plan: one bar per rank (weights, KV cache), its device's memory marked."""
    labels = [f"rank {r.rank} · node {r.node} · {r.device}" for r in rank_plan.ranks]
    return _usage_figure(rank_usage(rank_plan), labels, title or f"Memory per rank (tp={rank_plan.tp} x pp={rank_plan.pp})")


def _usage_figure(usage: list[DeviceUsage], labels: list[str], title: str):
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    top = max([u.total for u in usage] + [u.budget or 0 for u in usage] + [1])
    unit, scale = next((n, s) for n, s in reversed(_UNITS) if top >= s or s == 1)
    fig = Figure(figsize=(8, 1.5 + 0.6 * max(len(usage), 1)), layout="constrained")
    fig.patch.set_alpha(0)  # no white slab in a dark theme: the page shows through, ink is a mid grey
    ax = fig.add_subplot()
    ax.set_facecolor("none")
    for side in ax.spines.values():
        side.set_color(PLOT_INK)
    ax.tick_params(colors=PLOT_INK, labelcolor=PLOT_INK)
    ys = range(len(usage))
    left = [0.0] * len(usage)
    parts = [("param_bytes", PLOT_PARAMS, PLOT_OVER), ("buffer_bytes", PLOT_BUFFERS, PLOT_OVER_BUFFERS),
             ("kv_bytes", PLOT_KV, PLOT_OVER_KV), ("step_bytes", PLOT_STEP, PLOT_OVER_STEP)]
    for attr, colour, over_colour in parts:
        widths = [getattr(u, attr) / scale for u in usage]
        if attr != "param_bytes" and not any(widths):
            continue  # nothing of that kind (no buffers, no --context): no empty bars
        ax.barh(ys, widths, left=left, color=[over_colour if u.over else colour for u in usage], height=0.6)
        left = [a + b for a, b in zip(left, widths)]
    for y, u in zip(ys, usage):
        if u.budget is not None:
            ax.vlines(u.budget / scale, y - 0.4, y + 0.4, colors=PLOT_INK, linestyles="--", linewidth=1.5)
        ax.text(max(u.total, u.budget or 0) / scale + top / scale * 0.01, y, u.amount_text(), va="center",
                fontsize=9, color=PLOT_OVER_TEXT if u.over else PLOT_INK)
    ax.set_yticks(list(ys), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, top / scale * 1.45)  # room for the labels right of the bars
    ax.set_xlabel(f"memory ({unit})", color=PLOT_INK)
    ax.set_title(title, color=PLOT_INK)
    handles = [Patch(color=PLOT_PARAMS, label="parameters")]
    handles += [Patch(color=PLOT_BUFFERS, label="buffers")] if any(u.buffer_bytes for u in usage) else []
    handles += [Patch(color=PLOT_KV, label="KV cache")] if any(u.kv_bytes for u in usage) else []
    handles += [Patch(color=PLOT_STEP, label="step")] if any(u.step_bytes for u in usage) else []
    handles += [Patch(color=PLOT_OVER, label="over budget")] if any(u.over for u in usage) else []
    handles += [Line2D([], [], color=PLOT_INK, linestyle="--", label="budget")] if any(u.budget for u in usage) else []
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False,
               labelcolor=PLOT_INK)
    return fig
