"""``LoadPanel``: the live ipywidgets panel of a load while it works.

The panel only draws: events are folded into a :class:`LoadState` and the widgets are synced
from it, at most every ``min_interval`` seconds for plain progress and at once for anything
that ends (a file, a shard, a stage, a failure). Safe to call from loader threads. It is
displayed with a display id; :meth:`LoadPanel.finish` replaces it with the static record of
the outcome (``hf_notebook.ui.record``) and closes the widgets, so a saved notebook keeps the
record and never a stale bar. Standard ipywidgets only (no custom front-end code).

Narrow outputs (JupyterLab beside its file browser): a row is name, bar and numbers that wrap onto
further lines rather than cut anything; a file name is never clipped (it wraps inside its box),
and a size never breaks between its number and its unit.
"""

from __future__ import annotations

import threading
import time
from html import escape
from typing import Any, Callable, Optional

import ipywidgets as W

from hf_notebook.core.events import Failed, StageDone
from hf_notebook.ui.cancel import CancelButton
from hf_notebook.ui.record import html_text as _h  # sizes as ``cached (717 B)``, never split over two lines
from hf_notebook.ui.state import LoadState
from hf_notebook.ui.style import ANYWHERE, MUTED, close_all, set_changed


def _bar_row(label: str) -> tuple[W.HBox, W.HTML, W.FloatProgress, W.HTML]:
    """Name, bar, numbers; each part keeps a useful width and the row wraps when they do not fit side by side."""
    name = W.HTML(f"<span style='{ANYWHERE}'>{escape(label)}</span>",
                  layout=W.Layout(flex="1 1 14em", min_width="0", margin="0 8px 0 0"))
    bar = W.FloatProgress(min=0.0, max=1.0, value=0.0,
                          layout=W.Layout(flex="1 1 10em", min_width="6em", width="auto"))
    info = W.HTML(layout=W.Layout(flex="1 1 12em", min_width="0", margin="0 0 0 8px"))
    return W.HBox([name, bar, info], layout=W.Layout(flex_flow="row wrap", align_items="center")), name, bar, info


def _fill(bar: W.FloatProgress, value: float, total: Optional[float]) -> None:
    """Set a bar; an unknown total shows a full 'info' bar (as tqdm does)."""
    if total is None:
        set_changed(bar, max=1.0, value=1.0, bar_style="info")
    elif value >= total:
        top = float(total) if total > 0 else 1.0
        set_changed(bar, max=top)
        set_changed(bar, value=top, bar_style="success")
    else:
        set_changed(bar, max=float(total))
        set_changed(bar, value=float(value), bar_style="")


class LoadPanel:
    """Renderer for one load: ``panel(event)`` from any thread, ``display()``, then ``finish(record)``."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, min_interval: float = 0.1):
        self.state = LoadState(clock)
        self.redraws = 0
        self.final: Any = None  # the record that replaced the panel
        self._clock = clock
        self._min_interval = min_interval
        self._lock = threading.RLock()
        self._last_draw = float("-inf")
        self._dirty = False
        self._handle: Any = None
        self._file_rows: dict[str, tuple[W.HBox, W.HTML, W.FloatProgress, W.HTML]] = {}

        self.header = W.HTML()
        self.stages = W.HTML()
        self.files = W.VBox()
        self.download_row, _, self.download_bar, self.download_info = _bar_row("download")
        self.load_row, _, self.load_bar, self.load_info = _bar_row("load")
        self.cancel = CancelButton()  # no widget where a click could not reach the running cell
        top = W.HBox([self.header, self.cancel.widget], layout=W.Layout(flex_flow="row wrap", align_items="center",
                                                                       justify_content="space-between")) \
            if self.cancel.widget is not None else self.header
        self.widget = W.VBox([top, self.stages, self.files, self.download_row, self.load_row],
                             layout=W.Layout(padding="2px 4px"))
        self._draw()

    # -- renderer protocol ------------------------------------------------------------
    def __call__(self, event: Any) -> None:
        with self._lock:
            if self.final is not None:
                return
            if isinstance(event, Failed):
                self.cancel.close()  # the load is over
            elif isinstance(event, StageDone) and event.stage == "load":
                self.cancel.disarm()  # the model is whole: nothing left to cancel
            urgent = self.state.apply(event)
            now = self._clock()
            if urgent or now - self._last_draw >= self._min_interval:
                self._last_draw = now
                self._draw()
            else:
                self._dirty = True

    def display(self) -> None:
        from hf_notebook.ui.record import show_panel

        self._handle = show_panel(self.widget, "\n".join(self.state.text_lines()) or "loading…",
                                  "This load was still running when the notebook was saved.")
        self.cancel.arm()

    def finish(self, record: Any) -> None:
        """Replace the live panel by ``record`` (a static output) and close the widgets."""
        self.cancel.close()
        with self._lock:
            self.final = record
            if self._handle is not None:
                self._handle.update(record)
            close_all(self.widget)

    def __repr__(self) -> str:
        with self._lock:
            return repr(self.final) if self.final is not None else "\n".join(self.state.text_lines())

    # -- drawing --------------------------------------------------------------------
    def _draw(self) -> None:
        self.redraws += 1
        self._dirty = False
        s = self.state
        set_changed(self.header, value=self._header_html())
        stages = "  ·  ".join(_h(st.text()) for st in s.stages.values())
        set_changed(self.stages, value=f"<span style='{MUTED}'>{stages}</span>" if stages else "")
        self._draw_files()
        if s.shards:
            _fill(self.load_bar, s.load_fraction(), float(s.shard_count))
            set_changed(self.load_info, value=_h(s.load_text()))
        set_changed(self.load_row.layout, display="flex" if s.shards else "none")

    def _header_html(self) -> str:
        s = self.state
        html = f"<b style='{ANYWHERE}'>{escape(s.header_text())}</b>"
        if s.pinned_text():
            html += f"<br><span style='{MUTED};{ANYWHERE}'>{escape(s.pinned_text())}</span>"
        return html

    def _draw_files(self) -> None:
        """A row per file being downloaded; finished and cached files fold into the download row's count."""
        s = self.state
        fetch = s.stages.get("fetch")
        fetched = fetch is not None and fetch.seconds is not None  # sizes that never came are done now
        active = [f for f in s.files.values() if not f.pending and not f.finished and not fetched]
        for f in active:
            row = self._file_rows.get(f.filename) or self._file_rows.setdefault(f.filename, _bar_row(f.filename))
            _fill(row[2], f.done, f.total)
            set_changed(row[3], value=_h(f.progress_text()))
        shown = tuple(self._file_rows[f.filename][0] for f in active)
        if self.files.children != shown:
            self.files.children = shown
        weights = s.weight_files()
        if weights:
            done, total, _ = s.download_totals()
            _fill(self.download_bar, done, total if total is not None or not fetched else done)
            set_changed(self.download_info, value=_h(s.download_text()))
        set_changed(self.download_row.layout, display="flex" if weights else "none")
