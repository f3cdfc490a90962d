"""Views of where a model goes: device map, memory per device, a matplotlib figure, reports, models table.

Every view draws what the core computed (a ``Placement``, a plan's ``budget``, its
``module_sizes``/``blocks``); the only arithmetic here is summing those numbers and parsing
a collapsed label (``model.layers.0-15``) back into its member names. Each view has a
``.widget`` for Jupyter and ``to_text()`` for terminals; its ``repr`` is the text form.
matplotlib is imported only by :func:`memory_figure`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape
from typing import Any, Iterable, Mapping, Optional

import ipywidgets as W

from hf_notebook.core.placement import device_sort_key
from hf_notebook.ui.formatting import device_label, format_bytes, format_seconds, pinned_name

__all__ = [
    "EMPTY_REGISTRY",
    "DeviceMapView",
    "DeviceSection",
    "DeviceUsage",
    "GroupRow",
    "MemoryView",
    "ModelsTable",
    "PlanReport",
    "ResultReport",
    "device_title",
    "device_usage",
    "member_names",
    "memory_figure",
]

_RANGE = re.compile(r"^(.*)\.(\d+)-(\d+)$")
_MUTED = "color:var(--jp-ui-font-color2,#666)"
_WARN = "color:#c35a00"
_DANGER = "color:#b71c1c"
_MONO = "font-family:var(--jp-code-font-family,monospace)"
EMPTY_REGISTRY = "No models loaded by hf_notebook in this kernel."


# -- shared pieces ------------------------------------------------------------------------
def member_names(label: str) -> list[str]:
    """``model.layers.0-15`` -> ``model.layers.0`` .. ``model.layers.15``; any other label -> ``[]``."""
    m = _RANGE.match(label)
    if not m or int(m.group(2)) >= int(m.group(3)):
        return []
    return [f"{m.group(1)}.{i}" for i in range(int(m.group(2)), int(m.group(3)) + 1)]


def device_title(device: str) -> str:
    """``GPU 0 (cuda:0)``, ``CPU RAM (cpu)``, ``disk (offload)``: the user's word and the map's."""
    label = device_label(device)
    return label if label.startswith(device) else f"{label} ({device})"


@dataclass(frozen=True)
class DeviceUsage:
    """One device's bytes against its budget (``None``: no budget, as for disk)."""

    device: str
    nbytes: int
    buffer_bytes: int = 0
    budget: Optional[int] = None

    @property
    def param_bytes(self) -> int:
        """The device total less its buffers, so the two segments always add up to the total."""
        return self.nbytes - self.buffer_bytes

    @property
    def over(self) -> int:
        """Bytes beyond the budget (0 when within it or without one)."""
        return max(0, self.nbytes - self.budget) if self.budget is not None else 0

    def amount_text(self) -> str:
        """``12.3 GB of 80.0 GB (15%)``, ``90.0 GB of 80.0 GB, 10.0 GB over budget``, or ``148.0 kB``."""
        if self.budget is None:
            return format_bytes(self.nbytes)
        text = f"{format_bytes(self.nbytes)} of {format_bytes(self.budget)}"
        if self.over:
            return f"{text}, {format_bytes(self.over)} over budget"
        return f"{text} ({self.nbytes / self.budget:.0%})" if self.budget else text

    def split_text(self) -> str:
        return f"params {format_bytes(self.param_bytes)} · buffers {format_bytes(self.buffer_bytes)}"


def device_usage(placement: Any, budget: Optional[Mapping[str, int]] = None) -> list[DeviceUsage]:
    """Per device, accelerators first: every device the placement uses or the budget names (disk: no budget)."""
    budget = {d: int(b) for d, b in (budget or {}).items() if d != "disk"}
    used = placement.bytes_by_device
    buffers = placement.buffer_bytes_by_device
    devices = sorted(set(used) | set(budget), key=device_sort_key)
    return [DeviceUsage(d, int(used.get(d, 0)), min(int(buffers.get(d, 0)), int(used.get(d, 0))), budget.get(d))
            for d in devices]


def _plan_sizes(plan: Any) -> dict[str, int]:
    """Bytes per module name the plan knows: its top-level blocks and its device-map entries."""
    sizes = {**plan.blocks, **plan.module_sizes}
    sizes.pop("", None)
    return sizes


def _set(widget: Any, **traits: Any) -> None:
    for key, value in traits.items():
        if getattr(widget, key) != value:
            setattr(widget, key, value)


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
        self.members: list[tuple[str, Optional[int]]] = [(n, sizes.get(n)) for n in member_names(group.label)]
        self.member_box = W.VBox(layout=W.Layout(display="none", margin="0 0 0 28px"))
        self.toggle: Optional[W.Button] = None
        lead: Any = W.HTML(layout=W.Layout(width="28px"))
        if self.members:
            self.toggle = lead = W.Button(icon="caret-right", tooltip=f"show the {len(self.members)} modules",
                                          layout=W.Layout(width="28px", padding="0"))
            self.toggle.on_click(lambda _: self.expand(not self.expanded))
        count = f" <span style='{_MUTED}'>({len(self.members)} modules)</span>" if self.members else ""
        self.name = W.HTML(f"<code>{escape(group.label)}</code>{count}", layout=W.Layout(width="60%"))
        self.size = W.HTML(f"<span style='{_MONO}'>{escape(format_bytes(group.nbytes))}</span>")
        self.widget = W.VBox([W.HBox([lead, self.name, self.size]), self.member_box])

    @property
    def expanded(self) -> bool:
        return self.member_box.layout.display != "none"

    def expand(self, show: bool = True) -> None:
        """Show (build on first use) or hide the member rows."""
        if show and not self.member_box.children:
            self.member_box.children = tuple(
                W.HBox([W.HTML(f"<code>{escape(name)}</code>", layout=W.Layout(width="60%")),
                        W.HTML(f"<span style='{_MONO}'>{escape(self.member_size_text(nbytes))}</span>")])
                for name, nbytes in self.members
            )
        _set(self.member_box.layout, display="flex" if show else "none")
        if self.toggle is not None:
            _set(self.toggle, icon="caret-down" if show else "caret-right")

    def member_size_text(self, nbytes: Optional[int]) -> str:
        if nbytes is None:
            return "size unknown"
        return f"≈ {format_bytes(nbytes)} (planned)" if self.estimated else format_bytes(nbytes)


class DeviceSection:
    """A device's header and its groups, in module order."""

    def __init__(self, usage: DeviceUsage, rows: list[GroupRow]):
        self.usage, self.device, self.rows = usage, usage.device, rows
        style = _DANGER if usage.over else ""
        self.header = W.HTML(
            f"<b>{escape(device_title(self.device))}</b> <span style='{style}'>{escape(usage.amount_text())}</span>"
            f" <span style='{_MUTED}'>· {len(rows)} group{'s' * (len(rows) != 1)}</span>"
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
        return cls(plan.placement(), plan.budget, title, sizes=_plan_sizes(plan))

    @classmethod
    def from_result(cls, result: Any, title: str = "Device map (measured after loading)") -> "DeviceMapView":
        """Measured groups; member sizes are the plan's estimates and say so."""
        return cls(result.placement, result.plan.budget, title, sizes=_plan_sizes(result.plan), estimated=True)

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
                 kind: str = "planned"):
        if kind not in self.KINDS:
            raise ValueError(f"kind must be 'planned' or 'resident', not {kind!r}")
        self.kind = kind
        self.title = title or f"Memory per device ({self.KINDS[kind]})"
        self.usage = device_usage(placement, budget)
        self.bars: dict[str, W.FloatProgress] = {}
        self.labels: dict[str, W.HTML] = {}
        rows = [W.HTML(f"<b>{escape(self.title)}</b>")]
        for u in self.usage:
            rows.append(self._row(u))
        self.widget = W.VBox(rows)

    def _row(self, u: DeviceUsage) -> W.HBox:
        top = float(u.budget) if u.budget else 1.0
        bar = W.FloatProgress(min=0.0, max=top, value=min(float(u.nbytes), top),
                              bar_style="danger" if u.over else "",
                              layout=W.Layout(width="40%", visibility="visible" if u.budget is not None else "hidden"))
        style = _DANGER if u.over else ""
        label = W.HTML(f"<span style='{style}'>{escape(u.amount_text())}</span>"
                       f"<br><span style='{_MUTED};font-size:90%'>{escape(u.split_text())}</span>",
                       layout=W.Layout(width="40%"))
        self.bars[u.device], self.labels[u.device] = bar, label
        return W.HBox([W.HTML(escape(device_title(u.device)), layout=W.Layout(width="20%")), bar, label])

    @classmethod
    def from_plan(cls, plan: Any, title: str = "") -> "MemoryView":
        return cls(plan.placement(), plan.budget, title, kind="planned")

    @classmethod
    def from_result(cls, result: Any, title: str = "") -> "MemoryView":
        return cls(result.placement, result.plan.budget, title, kind="resident")

    def to_text(self) -> str:
        width = max((len(device_title(u.device)) for u in self.usage), default=0)
        lines = [self.title]
        for u in self.usage:
            flag = "  OVER BUDGET" if u.over else ""
            lines.append(f"  {device_title(u.device).ljust(width)}  {u.amount_text()}  [{u.split_text()}]{flag}")
        return "\n".join(lines)


# -- matplotlib -----------------------------------------------------------------------------
_UNITS = (("B", 1), ("kB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12))


def memory_figure(placement: Any, budget: Optional[Mapping[str, int]] = None, title: str = ""):
    """A static ``Figure``: per device a params+buffers bar, the budget as a dashed mark, red when over.

    Built with matplotlib's object API (no pyplot), so it needs no GUI backend and keeps no
    global state; ``fig.savefig(...)`` works anywhere.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    usage = device_usage(placement, budget)
    top = max([u.nbytes for u in usage] + [u.budget or 0 for u in usage] + [1])
    unit, scale = next((n, s) for n, s in reversed(_UNITS) if top >= s or s == 1)
    fig = Figure(figsize=(8, 1.5 + 0.6 * max(len(usage), 1)), layout="constrained")
    ax = fig.add_subplot()
    ys = range(len(usage))
    colors = [("#d62728", "#ff9896") if u.over else ("#1f77b4", "#aec7e8") for u in usage]
    ax.barh(ys, [u.param_bytes / scale for u in usage], color=[c[0] for c in colors], height=0.6)
    ax.barh(ys, [u.buffer_bytes / scale for u in usage], left=[u.param_bytes / scale for u in usage],
            color=[c[1] for c in colors], height=0.6)
    for y, u in zip(ys, usage):
        if u.budget is not None:
            ax.vlines(u.budget / scale, y - 0.4, y + 0.4, colors="black", linestyles="--", linewidth=1.5)
        ax.text(max(u.nbytes, u.budget or 0) / scale + top / scale * 0.01, y, u.amount_text(), va="center",
                fontsize=9, color="#b71c1c" if u.over else "black")
    ax.set_yticks(list(ys), [device_title(u.device) for u in usage])
    ax.invert_yaxis()
    ax.set_xlim(0, top / scale * 1.45)  # room for the labels right of the bars
    ax.set_xlabel(f"memory ({unit})")
    ax.set_title(title or "Memory per device")
    handles = [Patch(color="#1f77b4", label="parameters"), Patch(color="#aec7e8", label="buffers")]
    handles += [Patch(color="#d62728", label="over budget")] if any(u.over for u in usage) else []
    handles += [Line2D([], [], color="black", linestyle="--", label="budget")] if any(u.budget for u in usage) else []
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    return fig


# -- reports --------------------------------------------------------------------------------
def _count(n: int) -> str:
    """``70.6B``, ``106.8K``: parameter counts as people say them."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _plan_facts(plan: Any) -> list[str]:
    """Class and dtype, then what the checkpoint headers say (when they were read)."""
    facts = [f"{plan.model_class} · {plan.dtype}"]
    h = plan.headers
    if h is not None and h.param_counts:
        counts = " · ".join(f"{_count(n)} {code}" for code, n in h.param_counts.items())
        shards = len(h.shard_bytes)
        facts.append(f"{_count(h.total_params)} parameters ({counts}); checkpoint {format_bytes(h.total_bytes)}"
                     f" in {shards} shard{'s' * (shards != 1)}")
    return facts


def _sentence_style(plan: Any, sentence: str) -> str:
    """Red for what spills to disk, orange for what spills elsewhere."""
    for device in plan.spilled:
        if f"spill to {device}" in sentence:
            return _DANGER if device == "disk" else _WARN
    return ""


class PlanReport(_View):
    """A plan at a glance: source and checkpoint facts, the explanation, device map and memory views."""

    def __init__(self, plan: Any):
        self.plan = plan
        self.device_map = DeviceMapView.from_plan(plan)
        self.memory = MemoryView.from_plan(plan)
        self.explanation = plan.explain()
        facts = "".join(f"<div style='{_MUTED}'>{escape(f)}</div>" for f in _plan_facts(plan))
        self.header = W.HTML(f"<b>Plan for <code>{escape(plan.source or plan.model_class)}</code></b>{facts}")
        self.explain_html = W.HTML("".join(
            f"<div style='{_sentence_style(plan, s)}'>{escape(s)}</div>" for s in self.explanation))
        self.widget = W.VBox([self.header, self.explain_html, self.device_map.widget, self.memory.widget],
                             layout=W.Layout(padding="2px 4px"))

    def to_text(self) -> str:
        lines = [f"Plan for {self.plan.source or self.plan.model_class}"] + [f"  {f}" for f in _plan_facts(self.plan)]
        return "\n".join(lines + self.explanation + ["", self.device_map.to_text(), "", self.memory.to_text()])


class ResultReport(_View):
    """A loaded model: what was bound, then its measured device map and resident memory."""

    def __init__(self, result: Any):
        self.result = result
        self.device_map = DeviceMapView.from_result(result)
        self.memory = MemoryView.from_result(result)
        self.header = W.HTML(f"<b>{escape(self._title())}</b>"
                             + "".join(f"<div style='{_MUTED}'>{escape(f)}</div>" for f in self._facts()))
        self.widget = W.VBox([self.header, self.device_map.widget, self.memory.widget],
                             layout=W.Layout(padding="2px 4px"))

    def _title(self) -> str:
        r = self.result
        what = pinned_name(r.pin.repo_id, r.pin.sha)
        return f"{r.name} = {what}" if r.name else f"loaded {what}"

    def _facts(self) -> list[str]:
        r = self.result
        facts = [f"{r.plan.model_class} · {r.plan.dtype} · loaded in {format_seconds(r.seconds)}"]
        if "disk" in r.placement.bytes_by_device and r.offload_folder:
            facts.append(f"offloaded to disk in {r.offload_folder}")
        return facts

    def to_text(self) -> str:
        lines = [self._title()] + [f"  {f}" for f in self._facts()]
        return "\n".join(lines + ["", self.device_map.to_text(), "", self.memory.to_text()])


# -- %models ---------------------------------------------------------------------------------
class ModelsTable:
    """The registry's ``(name, LoadResult)`` pairs as a table: an escaped HTML table, aligned text."""

    COLUMNS = ("name", "model", "class", "dtype")

    def __init__(self, entries: Iterable[tuple[str, Any]]):
        self.entries = list(entries)
        self.devices = sorted({d for _, r in self.entries for d in r.placement.bytes_by_device}, key=device_sort_key)
        self.rows = [self._row(name, r) for name, r in self.entries]
        self._widget: Optional[W.HTML] = None

    def _row(self, name: str, r: Any) -> list[str]:
        by_dev = r.placement.bytes_by_device
        return [str(name), pinned_name(r.pin.repo_id, r.pin.sha), r.plan.model_class, r.plan.dtype] + [
            format_bytes(by_dev[d]) if by_dev.get(d) else "" for d in self.devices]

    @property
    def header(self) -> list[str]:
        return list(self.COLUMNS) + self.devices

    @property
    def widget(self) -> W.HTML:
        if self._widget is None:
            self._widget = W.HTML(self.to_html())
        return self._widget

    def to_html(self) -> str:
        if not self.rows:
            return f"<i>{escape(EMPTY_REGISTRY)}</i>"
        right = len(self.COLUMNS)
        head = "".join(f"<th style='text-align:{'right' if i >= right else 'left'}'>{escape(h)}</th>"
                       for i, h in enumerate(self.header))
        body = "".join(
            "<tr>" + "".join(
                f"<td style='text-align:right'>{escape(c)}</td>" if i >= right
                else f"<td><code>{escape(c)}</code></td>" if i == 1 else f"<td>{escape(c)}</td>"
                for i, c in enumerate(row)) + "</tr>"
            for row in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def to_text(self) -> str:
        if not self.rows:
            return EMPTY_REGISTRY
        table = [self.header] + self.rows
        widths = [max(len(row[i]) for row in table) for i in range(len(self.header))]
        right = len(self.COLUMNS)
        return "\n".join(
            "  ".join(c.rjust(w) if i >= right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in table
        )

    def __repr__(self) -> str:
        return self.to_text()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        """Static HTML (survives export and nbval) and the text form."""
        return {"text/html": self.to_html(), "text/plain": self.to_text()}
