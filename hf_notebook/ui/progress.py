"""``LoadPanel``: one ipywidgets panel that shows a load's progress and, at the end, its placement.

The panel only draws: events are folded into a :class:`LoadState` and the widgets are
synced from it, at most every ``min_interval`` seconds for plain progress and at once for
anything that ends (a file, a shard, a stage, a failure). Safe to call from loader threads.
Like ``tqdm.notebook`` it turns red on failure instead of vanishing, and its ``repr`` is
the text form, so a console still shows something useful.
"""

from __future__ import annotations

import threading
import time
from html import escape
from typing import Any, Callable

import ipywidgets as W

from hf_notebook.ui.formatting import (
    LoadState,
    device_label,
    error_text,
    format_bytes,
    is_commit,
    message_text,
    revision_text,
    short_sha,
)

_MUTED = "color:var(--jp-ui-font-color2,#666)"
_WARN = "color:#c35a00"
_ERROR_BOX = (
    "background:#fdecea;border:1px solid #d32f2f;color:#b71c1c;padding:4px 8px;"
    "margin-top:4px;white-space:pre-wrap;font-family:var(--jp-code-font-family,monospace)"
)


def _bar_row(label: str) -> tuple[W.HBox, W.HTML, W.FloatProgress, W.HTML]:
    name = W.HTML(escape(label), layout=W.Layout(width="34%", overflow="hidden"))
    bar = W.FloatProgress(min=0.0, max=1.0, value=0.0, layout=W.Layout(width="36%"))
    info = W.HTML(layout=W.Layout(width="30%"))
    return W.HBox([name, bar, info]), name, bar, info


def _walk(widget: Any):
    """A widget and all its descendants."""
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _walk(child)


def _set(widget: Any, **traits: Any) -> None:
    """Assign traits that changed (no comm message for unchanged values)."""
    for key, value in traits.items():
        if getattr(widget, key) != value:
            setattr(widget, key, value)


def _fill(bar: W.FloatProgress, value: float, total: float | None) -> None:
    """Set a bar; an unknown total shows a full 'info' bar (as tqdm does). Red stays red."""
    if bar.bar_style == "danger":
        return
    if total is None:
        _set(bar, max=1.0, value=1.0, bar_style="info")
    elif value >= total:
        top = float(total) if total > 0 else 1.0
        _set(bar, max=top)
        _set(bar, value=top, bar_style="success")
    else:
        _set(bar, max=float(total))
        _set(bar, value=float(value), bar_style="")


class LoadPanel:
    """Renderer for one load: ``panel(event)`` from any thread, ``panel.display()``, ``panel.close()``."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, min_interval: float = 0.1):
        self.state = LoadState(clock)
        self.redraws = 0
        self._clock = clock
        self._min_interval = min_interval
        self._lock = threading.RLock()
        self._last_draw = float("-inf")
        self._dirty = False
        self._file_rows: dict[str, tuple[W.HBox, W.HTML, W.FloatProgress, W.HTML]] = {}

        self.header = W.HTML()
        self.stages = W.HTML()
        self.files = W.VBox()
        self.download_row, _, self.download_bar, self.download_info = _bar_row("download")
        self.load_row, _, self.load_bar, self.load_info = _bar_row("load")
        self.messages = W.HTML()
        self.summary = W.HTML()
        self.error = W.HTML()
        self.widget = W.VBox(
            [self.header, self.stages, self.files, self.download_row, self.load_row,
             self.messages, self.summary, self.error],
            layout=W.Layout(padding="2px 4px"),
        )
        self._draw()

    # -- renderer protocol ------------------------------------------------------------
    def __call__(self, event: Any) -> None:
        with self._lock:
            urgent = self.state.apply(event)
            now = self._clock()
            if urgent or now - self._last_draw >= self._min_interval:
                self._last_draw = now
                self._draw()
            else:
                self._dirty = True

    def close(self) -> None:
        """Draw whatever the rate limit held back, then resend every widget's full state.

        Progress arrives from transformers' loading threads; their updates can reach the
        front end out of order, and a redraw that changes no value sends nothing. Resending
        from the caller's thread at the end leaves the browser showing the final state.
        """
        with self._lock:
            if self._dirty:
                self._draw()
            for widget in _walk(self.widget):
                widget.send_state()

    def display(self) -> None:
        from IPython.display import display

        display(self.widget)

    def __repr__(self) -> str:
        with self._lock:
            return "\n".join(self.state.text_lines())

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        """The widget view for Jupyter, the text form for everything else."""
        widget_repr = getattr(self.widget, "_repr_mimebundle_", None)  # None once closed
        bundle = dict((widget_repr(**kwargs) or {}) if callable(widget_repr) else {})
        bundle["text/plain"] = repr(self)
        return bundle

    # -- drawing --------------------------------------------------------------------
    def _draw(self) -> None:
        self.redraws += 1
        self._dirty = False
        s = self.state
        _set(self.header, value=self._header_html())
        stages = "  ·  ".join(escape(st.text()) for st in s.stages.values())
        _set(self.stages, value=f"<span style='{_MUTED}'>{stages}</span>" if stages else "")
        self._draw_files()
        self._draw_load()
        _set(self.messages, value="".join(
            f"<div style='{_WARN if m.level == 'warning' else _MUTED}'>{escape(message_text(m))}</div>"
            for m in s.messages
        ))
        _set(self.summary, value=self._summary_html())
        if s.failed is not None:
            self._draw_failed()

    def _header_html(self) -> str:
        s = self.state
        r = s.resolved
        if r is None:
            return f"<b>{escape(s.header_text())}</b>"
        html = f"<b>{escape(r.repo_id)}</b> {escape(revision_text(r))}"
        if is_commit(r.sha):
            html += f" → <code>{escape(short_sha(r.sha))}</code>"
        if r.was_floating:
            html += (
                f"<br><span style='{_MUTED}'>{escape(r.revision or 'the default branch')} can move; "
                f"pinned: <code>{escape(r.pinned_spec)}</code></span>"
            )
        return html

    def _draw_files(self) -> None:
        s = self.state
        fetch = s.stages.get("fetch")
        fetched = fetch is not None and fetch.seconds is not None
        for name, f in s.files.items():
            row = self._file_rows.get(name)
            if row is None:
                row = self._file_rows[name] = _bar_row(name)
                self.files.children = tuple(r[0] for r in self._file_rows.values())
            _, _, bar, info = row
            if f.cached:
                _set(bar.layout, visibility="hidden")
                _set(info, value=f"<span style='{_MUTED}'>{escape(f.progress_text())}</span>")
                continue
            _fill(bar, f.done, f.total if f.total is not None or not fetched else f.done)
            _set(info, value=escape(f.progress_text()))
        if s.files:
            done, total, _ = s.download_totals()
            _fill(self.download_bar, done, total if total is not None or not fetched else done)
            _set(self.download_info, value=escape(s.download_text()))
        _set(self.download_row.layout, display="flex" if s.files else "none")

    def _draw_load(self) -> None:
        s = self.state
        if s.shards:
            _fill(self.load_bar, s.load_fraction(), float(s.shard_count))
            _set(self.load_info, value=escape(s.load_text()))
        _set(self.load_row.layout, display="flex" if s.shards else "none")

    def _summary_html(self) -> str:
        s = self.state
        lines = s.summary_lines()
        if not lines:
            return ""
        rows = "".join(
            f"<tr><td><code>{escape(g.label)}</code></td><td>{escape(g.device)}</td>"
            f"<td style='text-align:right'>{escape(format_bytes(g.nbytes))}</td></tr>"
            for g in s.result.placement.groups
        )
        totals = "  ·  ".join(f"{escape(device_label(d))}: {escape(format_bytes(n))}" for d, n in s.devices())
        return (
            f"<div><b>{escape(lines[0])}</b></div>"
            f"<table style='font-size:90%;border-collapse:collapse'>{rows}</table>"
            f"<div>{totals}</div>"
        )

    def _draw_failed(self) -> None:
        s = self.state
        bars = [row[2] for row in self._file_rows.values()] + [self.download_bar, self.load_bar]
        for bar in bars:  # what finished stays green; everything else turns red
            if bar.bar_style != "success":
                bar.bar_style = "danger"
        _set(self.widget.layout, border="1px solid #d32f2f")
        _set(self.error, value=(
            f"<div style='{_ERROR_BOX}'><b>failed during {escape(s.failed.stage)}</b>\n"
            f"{escape(error_text(s.failed.error))}</div>"
        ))
