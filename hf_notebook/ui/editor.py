"""The device-map editor: rows with device selectors, live totals, Apply / Undo / Reset / Export.

Only draws and forwards: the draft map, its checks and totals are a core
:class:`~hf_notebook.core.devices.editing.MapEditor`; Apply is ``core.api.apply_device_map`` (in-place
re-dispatch for a loaded model, the plan's map for a plan). Rows are the draft's placement
groups: consecutive numbered layers on one device collapse into a range
(``model.layers.0-39``) whose selector moves the whole range and which expands to one row per
layer. Standard ipywidgets only. Beside the live widget the editor keeps a static record
output (display id), updated on Apply and Export, so a saved notebook shows the result.
"""

from __future__ import annotations

import time
from html import escape
from pathlib import Path
from typing import Any, Optional

import ipywidgets as W

from hf_notebook.core.errors import HfNotebookError
from hf_notebook.core.units import device_name, format_bytes
from hf_notebook.ui import words
from hf_notebook.ui.record import end_panel, wrappable_name
from hf_notebook.ui.style import ANYWHERE, DANGER, MONO, MUTED, OK, PANEL_BORDER, WARN, close_all, set_changed


class _Row:
    """One group: [toggle] name  bytes  [device ▾]; a range expands to one row per member.

    The row never wraps: the dropdown stays beside its module's name at any width. Name and bytes share a
    wrapping box between the toggle and the dropdown, so a narrow row grows taller (the bytes go under the name,
    right-aligned as beside it; the name wraps at its ``/ . - _``) instead of putting the dropdown under the next
    module's name.

    Rows are pooled: a change rebinds existing rows to the new groups rather than building
    widgets (each widget is a front-end comm, and building them is what a change would cost).
    """

    def __init__(self, editor: "DeviceMapEditor", nested: bool = False):
        self.editor, self.nested = editor, nested
        self.members: tuple[str, ...] = ()
        self.label = ""
        # narrower (down to what "CPU RAM (cpu)" needs) only where the row has no room for its full width
        self.select = W.Dropdown(options=editor.options, layout=W.Layout(width="10.5em", flex="0 1 10.5em",
                                                                         min_width="10em"))
        self.select.observe(self._picked, names="value")
        self.name = W.HTML(layout=W.Layout(flex="1 1 auto", min_width="5em"))
        # at the right end of its line, beside the name or under it: sizes line up on their right edges
        self.size = W.HTML(layout=W.Layout(flex="0 0 auto", margin="0 0 0 auto"))
        self.toggle = W.Button(icon="caret-right", layout=W.Layout(width="28px", min_width="28px", padding="0",
                                                                   visibility="hidden"))
        self.toggle.on_click(lambda _: self.expand(self.box.layout.display == "none"))
        self.pool: list[_Row] = []  # member rows, built on first expand
        self.children: list[_Row] = []  # the member rows in use
        self.box = W.VBox(layout=W.Layout(display="none", margin="0 0 0 28px"))
        name_and_size = W.Box([self.name, self.size], layout=W.Layout(
            flex="1 1 8em", min_width="0", flex_flow="row wrap", align_items="baseline", overflow="visible"))
        self.widget = W.VBox([W.HBox([self.toggle, name_and_size, self.select],
                                     layout=W.Layout(flex_flow="row nowrap", align_items="flex-start")), self.box])

    def bind(self, members: tuple[str, ...], label: str) -> None:
        """Make this row stand for ``members``; a row that now stands for other modules is collapsed."""
        if members == self.members:
            return
        self.members, self.label = members, label
        ranged = len(members) > 1 and not self.nested
        set_changed(self.toggle.layout, visibility="visible" if ranged else "hidden")
        set_changed(self.toggle, tooltip=f"one row per module ({len(members)})" if ranged else "")
        self.expand(False)
        self.children = []

    def show(self, device: Any, nbytes: int, moved: bool = False) -> None:
        count = f" <span style='{MUTED}'>({len(self.members)} modules)</span>" if len(self.members) > 1 else ""
        mark = f"<b style='{WARN}' title='Apply moves it'>● </b>" if moved else ""  # changed since the last Apply
        set_changed(self.name, value=f"{mark}<code style='{MONO};white-space:normal;{ANYWHERE}'>"
                              f"{wrappable_name(self.label, whole_below=0)}</code>{count}")
        set_changed(self.size, value=f"<span style='{MONO}'>{escape(format_bytes(nbytes))}</span>")
        with self.editor.quiet():
            set_changed(self.select, value=device_name(device))
        moving = self.editor.moving
        for child in self.children:
            child.show(self.editor.draft.device_of(child.members[0]), self.editor.bytes_of(child.members),
                       any(m in moving for m in child.members))

    def expand(self, show: bool = True) -> None:
        if show and not self.children:
            while len(self.pool) < len(self.members):
                self.pool.append(_Row(self.editor, nested=True))
            self.children = self.pool[:len(self.members)]
            for child, member in zip(self.children, self.members):
                child.bind((member,), member)
                child.show(self.editor.draft.device_of(member), self.editor.bytes_of((member,)))
            self.box.children = tuple(c.widget for c in self.children)
        set_changed(self.box.layout, display="flex" if show else "none")
        set_changed(self.toggle, icon="caret-down" if show else "caret-right")

    def close(self) -> None:
        for row in self.pool:
            row.close()
        close_all(self.widget)

    def _picked(self, change: dict) -> None:
        if not self.editor.syncing:
            self.editor.move([(m, change["new"]) for m in self.members])


def edit_device_map(target: Any, *, name: Optional[str] = None) -> "DeviceMapEditor":
    """The interactive device-map editor on a loaded model (``LoadResult``: Apply re-dispatches it in place) or
    on a ``Plan`` (Apply updates the plan's map, so the next load of it uses the edit)."""
    return DeviceMapEditor(target, name=name)


class DeviceMapEditor:
    """Edit the device map of a loaded model (``LoadResult``) or of a ``Plan``; see the module docstring."""

    def __init__(self, target: Any, *, name: Optional[str] = None, export_path: str = "device_map.json"):
        from hf_notebook.core.api import LoadResult, device_map_editor

        self.target = target
        self.loaded = isinstance(target, LoadResult)
        self.name = name or getattr(target, "name", None) or ("model" if self.loaded else "plan")
        self.draft = device_map_editor(target)
        self.options = [(words.device_title(d), d) for d in self.draft.devices]
        self.syncing = False
        self.rows: dict[tuple[str, ...], _Row] = {}  # the rows shown, by the modules they stand for
        self.pool: list[_Row] = []
        self.record_handle = None
        self.moving: set = set()  # modules Apply would move (their rows are marked)
        self.widget_handle = None
        self.applied = 0  # changes applied from this editor
        self.closed = False
        self.last_note = ""
        self.exported: Optional[tuple[str, str]] = None  # (file, the line that loads it) of the last Export

        self.title = W.HTML(f"<b>Device map</b> · {escape(self._subject())}")
        self.rows_box = W.VBox(layout=W.Layout(max_height="32em", overflow="auto"))
        self.range_text = W.Text(placeholder=_range_example(self.draft.structure.blocks), description="Move",
                                 layout=W.Layout(flex="1 1 14em", min_width="10em"))
        self.range_device = W.Dropdown(options=self.options, value=self.options[-1][1], description="to",
                                       layout=W.Layout(width="17em"))
        self.range_button = W.Button(description="Move", tooltip="move these modules to that device")
        self.range_button.on_click(lambda _: self.move_range(self.range_text.value, self.range_device.value))
        self.totals = W.HTML()
        self.slider = W.IntSlider(min=0, max=len(self.draft.layers), value=self.draft.layers_on_fastest(),
                                  continuous_update=False, description="layers on",
                                  style={"description_width": "initial"},
                                  layout=W.Layout(flex="1 1 16em", min_width="12em"))
        self.slider.observe(self._slid, names="value")
        self.slider_note = W.HTML(layout=W.Layout(flex="1 1 14em"))
        self.fit_button = W.Button(description="Most that fit", tooltip="the most layers the budgets allow there")
        self.fit_button.on_click(lambda _: self.put_layers(self.draft.most_layers_that_fit()))
        self.status = W.HTML()
        self.apply_button = W.Button(description="Apply", button_style="primary", icon="check")
        self.undo_button = W.Button(description="Undo", icon="undo")
        self.reset_choice = W.Dropdown(options=list(self.draft.strategies), value="auto",
                                       layout=W.Layout(width="9em",
                                                       display="flex" if len(self.draft.strategies) > 1 else "none"))
        self.reset_button = W.Button(description="Reset", icon="refresh", tooltip="back to the automatic plan")
        self.export_path = W.Text(value=export_path, layout=W.Layout(flex="1 1 12em", min_width="8em"))
        self.export_button = W.Button(description="Export", icon="download",
                                      tooltip="write the map as JSON and show the %load_model line that uses it")
        self.export_line = W.HTML()
        self.done_button = W.Button(description="Done", icon="check",
                                    tooltip="close the editor: the record of the map stays, so a saved notebook shows it")
        self.done_button.on_click(lambda _: self.done())
        self.apply_button.on_click(lambda _: self.apply())
        self.undo_button.on_click(lambda _: self.undo())
        self.reset_button.on_click(lambda _: self.reset(self.reset_choice.value))
        self.export_button.on_click(lambda _: self.export(self.export_path.value))
        self.widget = W.VBox([
            self.title, self.rows_box,
            W.HBox([self.range_text, self.range_device, self.range_button], layout=W.Layout(flex_flow="row wrap")),
            W.HBox([self.slider, self.fit_button, self.slider_note], layout=W.Layout(
                flex_flow="row wrap", align_items="center",
                display="flex" if self.draft.layers and self.draft.slower else "none")),
            self.totals,
            W.HBox([self.apply_button, self.undo_button, self.reset_choice, self.reset_button, self.done_button,
                    self.status],
                   layout=W.Layout(flex_flow="row wrap", align_items="center")),
            W.HBox([self.export_path, self.export_button], layout=W.Layout(flex_flow="row wrap")),
            self.export_line,
        ], layout=W.Layout(border=PANEL_BORDER, padding="6px", max_width="100%"))
        self.refresh()

    # -- what the buttons do (callable from Python: tests and scripts drive these) --------
    def move(self, edits: list[tuple[str, Any]]) -> bool:
        """Assign ``(modules, device)`` pairs as one step; a refused edit shows its reason and changes nothing."""
        try:
            change = self.draft.assign(edits)
        except HfNotebookError as exc:
            self.last_note = f"<span style='{DANGER}'>{escape(exc.message)}</span>"
            self.refresh()
            return False
        self.last_note = "".join(
            f"<span style='{MUTED}'>{escape(f)} follows {escape(lead)} (tied weights).</span> "
            for f, lead in change.followed.items())
        self.refresh()
        return True

    def move_range(self, modules: str, device: Any) -> bool:
        return self.move([(modules.strip(), device)])

    def put_layers(self, count: int) -> None:
        """The first ``count`` layers on the fastest device, the rest on the next (the slider does this)."""
        try:
            self.draft.put_layers(count)
            self.last_note = ""
        except HfNotebookError as exc:
            self.last_note = f"<span style='{DANGER}'>{escape(exc.message)}</span>"
        self.refresh()

    def _slid(self, change: dict) -> None:
        if not self.syncing and change["new"] != self.draft.layers_on_fastest():
            self.put_layers(change["new"])

    def undo(self) -> None:
        self.last_note = "" if self.draft.undo() else f"<span style='{MUTED}'>Nothing to undo.</span>"
        self.refresh()

    def reset(self, strategy: str = "auto") -> None:
        try:
            self.draft.reset(strategy)
            self.last_note = ""
        except HfNotebookError as exc:
            self.last_note = f"<span style='{DANGER}'>{escape(exc.message)}</span>"
        self.refresh()

    def apply(self) -> bool:
        """Re-dispatch the model (or update the plan) to the draft; returns whether it was applied."""
        from hf_notebook.core.api import apply_device_map, device_map_editor

        if self.draft.problems():
            self.refresh()
            return False
        try:
            self.draft = _on_current_map(self.draft, self.target)
        except HfNotebookError as exc:
            self.last_note = (f"<span style='{DANGER}'>The map changed since this editor opened, and these edits "
                              f"no longer apply to it: {escape(exc.message)} Reset, or open the editor again.</span>")
            self.refresh()
            return False
        self.last_note = f"<span style='{MUTED}'>applying…</span>"
        set_changed(self.apply_button, disabled=True)
        set_changed(self.status, value=self.last_note)
        try:
            moved = apply_device_map(self.target, self.draft.map)
        except HfNotebookError as exc:
            self.last_note = f"<span style='{DANGER}'>Not applied: {escape(exc.message)}</span>"
            self.refresh()
            return False
        self.draft = device_map_editor(self.target)  # the applied map is the new starting point
        self.applied += 1
        self.last_note = f"<span style='{OK}'>✓ {escape(words.applied_text(moved))}</span>"
        self.refresh()
        self.update_record()
        if self.widget_handle is not None:  # the text beside the widget (what viewers show) is the applied map
            self._show_panel()
        return True

    def export(self, path: str) -> Optional[str]:
        """Write the draft map as JSON; show (and return) the ``%load_model`` line that loads it."""
        try:
            target = Path(path).expanduser()
            self.draft.to_json(target)
        except OSError as exc:  # said where Export is, in place of the last export's line
            set_changed(self.export_line, value=f"<span style='{DANGER}'>Not exported: cannot write {escape(path)}: "
                                                f"{escape(exc.strerror or str(exc))}</span>")
            return None
        line = words.map_load_line(self.target, f"@{path}", name=self.name)
        if self.loaded and not self.draft.changed:
            self.target.map_file = path
        from hf_notebook.ui.record import copy_line_html

        set_changed(self.export_line, value=f"<div style='{MUTED}'>wrote {escape(str(target))}; load it with:</div>"
                                     + copy_line_html(line))
        self.exported = (str(target), line)  # the record beside the editor keeps it, with a Copy button there
        self.update_record()
        return line

    # -- drawing -----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Sync rows, totals and the Apply state from the draft."""
        t0 = time.perf_counter()
        groups = self.draft.placement().groups
        moves = self.draft.moves()
        self.moving = {name for name, *_ in moves}
        kept = {members: row for members, row in self.rows.items() if any(g.members == members for g in groups)}
        spare = [row for row in self.pool if row not in kept.values()]
        rows = {}
        for group in groups:  # a group still shown keeps its row (and whether it is expanded)
            row = kept.get(group.members) or (spare.pop(0) if spare else self._new_row())
            row.bind(group.members, group.label)
            row.show(group.device, group.nbytes, any(m in self.moving for m in group.members))
            rows[group.members] = row
        shown = tuple(r.widget for r in rows.values())
        if self.rows_box.children != shown:
            self.rows_box.children = shown
        self.rows = rows
        problems = self.draft.problems()
        set_changed(self.totals, value=self._totals_html({p.device for p in problems}))
        self._sync_slider(problems)
        reason = "; ".join(words.problem_text(p) for p in problems)
        set_changed(self.apply_button, disabled=bool(problems) or not self.draft.changed)
        set_changed(self.undo_button, disabled=not self.draft.history)
        status = f"<span style='{DANGER}'>{escape(reason)}</span>" if reason else self.last_note
        if not reason and moves:
            status = f"<span style='{MUTED}'>{escape(_moves_text(moves))}</span>" + (f" {self.last_note}"
                                                                                     if self.last_note else "")
        elif not reason and not self.draft.changed and not self.last_note:
            status = f"<span style='{MUTED}'>no changes yet</span>"
        set_changed(self.status, value=status)
        self.seconds = time.perf_counter() - t0

    def _sync_slider(self, problems: list) -> None:
        """The slider shows the draft's count of first layers on the fastest device, and whether it fits."""
        draft = self.draft
        if not draft.layers or draft.slower is None:
            return
        count = draft.layers_on_fastest()
        self.syncing = True
        try:
            set_changed(self.slider, value=count, description=f"layers on {draft.fastest}")
        finally:
            self.syncing = False
        over = [p for p in problems if p.device in (draft.fastest, draft.slower)]
        text = f"{count} of {len(draft.layers)} layers on {words.device_title(draft.fastest)}, the rest on " \
               f"{words.device_title(draft.slower)}"
        note = (f"<span style='{DANGER}'>{escape(text)}: {escape(words.problem_text(over[0]))}</span>" if over
                else f"<span style='{MUTED}'>{escape(text)}: fits</span>")
        set_changed(self.slider_note, value=note)

    def _new_row(self) -> _Row:
        row = _Row(self)
        self.pool.append(row)
        return row

    def close(self) -> None:
        """Close every widget of the editor (a kernel holds one comm per widget until then)."""
        for row in self.pool:
            row.close()
        close_all(self.widget)

    def _totals_html(self, over: set) -> str:
        cells = []
        room = self.draft.room()
        for device, nbytes in self.draft.totals().items():
            budget = self.draft.budget.get(device)
            amount = format_bytes(nbytes) + (f" + KV and step {format_bytes(room[device])}" if room.get(device) else "")
            amount += f" of {format_bytes(budget)}" if budget is not None else ""
            style = DANGER + ";font-weight:bold" if device in over else ""
            cells.append(f"<span style='margin-right:1.5em;display:inline-block'>{escape(words.device_title(device))}:"
                         f" <span style='{style}'>{escape(amount)}</span></span>")
        return f"<div style='margin:4px 0'>{''.join(cells)}</div>"

    def _subject(self, text: bool = False) -> str:
        """What is edited, and what applying does: by the Apply button, or (``text``: no buttons there) by the
        magic line that does it."""
        how = f"%edit_device_map {self.name} --set MODULES=DEVICE" if text else "Apply"
        if self.loaded:
            pin = self.target.pin
            return f"{self.name} = {words.pinned_name(pin.repo_id, pin.sha)} (loaded: {how} moves it in place)"
        return f"plan for {self.target.source or self.target.model_class} ({how} updates the plan)"

    def bytes_of(self, members: tuple[str, ...]) -> int:
        return sum(self.draft.structure.bytes.get(m, 0) for m in members)

    def quiet(self):
        editor = self

        class _Quiet:
            def __enter__(self):
                editor.syncing = True

            def __exit__(self, *exc):
                editor.syncing = False

        return _Quiet()

    # -- output ------------------------------------------------------------------------------
    def record(self):
        """The static record of the target as it is now (a load record or a plan record)."""
        from hf_notebook.ui.record import Record, export_map_record, load_record, plan_record

        record = load_record(self.target) if self.loaded else plan_record(self.target)
        if self.exported is None:
            return record
        exported = export_map_record(*self.exported)
        return Record(record.html + exported.html, f"{record.text}\n{exported.text}")

    def display(self) -> None:
        """Show the live editor and, beside it, the static record that Apply and Export update."""
        from IPython.display import display

        self._show_panel()
        self.record_handle = display(self.record(), display_id=True)

    def _show_panel(self) -> None:
        """The widget, the map as text for viewers that cannot draw it, the line a notebook saved open shows."""
        from hf_notebook.ui.record import show_panel

        self.widget_handle = show_panel(self.widget, self.to_text(), f"Device-map editor on {self.name}: open when "
                                        f"this notebook was saved. %edit_device_map {self.name} opens it again.",
                                        handle=self.widget_handle)

    def done(self) -> None:
        """Close the editor: its output becomes one static line (a saved notebook shows no widget there), the
        record of the map stays below it."""
        if self.closed:
            return
        self.closed = True
        end_panel(self.widget_handle, self.widget, self.closed_text())

    def closed_text(self) -> str:
        changes = f"{self.applied} change{'s' * (self.applied != 1)} applied" if self.applied else "nothing applied"
        return f"Device-map editor on {self.name}: closed, {changes}. %edit_device_map {self.name} opens it again."

    def update_record(self) -> None:
        if self.record_handle is not None:
            self.record_handle.update(self.record())

    def to_text(self) -> str:
        """The draft as text: one line per group, totals per device, what blocks Apply."""
        groups = self.draft.placement().groups
        width = max((len(g.label) for g in groups), default=0)
        lines = [f"Device map · {self._subject(text=True)}"]
        lines += [f"  {g.label.ljust(width)}  {format_bytes(g.nbytes):>9}  {g.device}" for g in groups]
        room = self.draft.room()
        lines.append("  " + " · ".join(f"{d}: {format_bytes(n)}"
                                       + (f" + KV and step {format_bytes(room[d])}" if room.get(d) else "")
                                       + (f" of {format_bytes(self.draft.budget[d])}" if d in self.draft.budget else "")
                                       for d, n in self.draft.totals().items()))
        lines += [f"  cannot apply: {words.problem_text(p)}" for p in self.draft.problems()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.to_text()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        bundle = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        bundle["text/plain"] = self.to_text()
        return bundle



def _on_current_map(draft: Any, target: Any) -> Any:
    """``draft``, or, when the target's map was changed elsewhere since the draft began (another cell),
    the draft's own steps replayed on the current map: Apply never undoes a move it did not make."""
    from hf_notebook.core.api import device_map_editor
    from hf_notebook.core.units import parse_device

    current = {k: parse_device(v) for k, v in target.device_map.items()}
    if current == draft.initial:
        return draft
    fresh = device_map_editor(target)
    for _, change in draft.history:
        if change.reset is not None:
            fresh.reset(None if change.reset == "initial" else change.reset)
        else:
            fresh.assign(list(change.asked.items()))
    return fresh



def _moves_text(moves: list) -> str:
    """``Apply moves model.layers.1 (148.0 kB) cpu → disk, lm_head (65.5 kB) cpu → disk``: the first few."""
    shown = [f"{name} ({format_bytes(n)}) {a} → {b}" for name, a, b, n in moves[:4]]
    more = f", and {len(moves) - 4} more" if len(moves) > 4 else ""
    return f"Apply moves {', '.join(shown)}{more}."


def _range_example(blocks: tuple) -> str:
    """A range this model has (its second half of layers), for the Move field's placeholder."""
    import re

    runs: dict[str, list[int]] = {}
    for block in blocks:
        found = re.fullmatch(r"(.+)\.(\d+)", block)
        if found:
            runs.setdefault(found.group(1), []).append(int(found.group(2)))
    if not runs:
        return "module.name"
    prefix, numbers = max(runs.items(), key=lambda item: len(item[1]))
    last = max(numbers)
    start = (last + 1) // 2
    return f"{prefix}.{start}-{last}" if start < last else f"{prefix}.{last}"
