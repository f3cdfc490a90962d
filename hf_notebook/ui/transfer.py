"""Progress of a line magic that moves files (``%push_model``): one bar over every file, then the result.

In a kernel, a live bar (bytes of all files, files done) in an output that the result's static record
replaces when the work ends, so a saved notebook keeps the record and no widget; failed or cancelled,
the bar's output says so in plain HTML. In a terminal, a line per finished file. Only draws events.
"""

from __future__ import annotations

import threading
import time
from html import escape
from typing import Any, Optional

from hf_notebook.core.events import FileProgress
from hf_notebook.core.units import format_bytes
from hf_notebook.ui.style import DANGER, WARN


class TransferProgress:
    """``__call__(event)`` from any thread; ``finish(result)`` or ``fail(error)`` once, in the cell's thread."""

    def __init__(self, verb: str, *, widget: bool, min_interval: float = 0.1, stream: Any = None, title: str = ""):
        self.verb, self.min_interval, self.title = verb, min_interval, title or "transfer"
        self.files: dict[str, tuple[int, Optional[int]]] = {}
        self._lock, self._last, self._said = threading.Lock(), 0.0, set()
        self._stream, self._handle, self._bar, self._label = stream, None, None, None
        if widget:
            import ipywidgets as W

            self._bar = W.FloatProgress(min=0.0, max=1.0, value=0.0, layout=W.Layout(flex="1 1 12em"))
            self._label = W.HTML(f"{escape(verb)}…")
            self.widget = W.HBox([self._label, self._bar], layout=W.Layout(flex_flow="row wrap"))

    def display(self) -> None:
        if self._bar is not None:
            from hf_notebook.ui.record import show_panel

            self._handle = show_panel(self.widget, f"{self.verb}…",
                                      "This transfer was still running when the notebook was saved.")

    def __call__(self, event: Any) -> None:
        if not isinstance(event, FileProgress):
            return
        with self._lock:
            self.files[event.filename] = (event.done, event.total)
            finished = event.total is not None and event.done >= event.total
            if self._bar is None:
                if finished and event.filename not in self._said:
                    self._said.add(event.filename)
                    print(f"  {self.verb} {event.filename} ({format_bytes(event.done)})", file=self._stream, flush=True)
                return
            now = time.monotonic()
            if finished or now - self._last >= self.min_interval:
                self._last = now
                self._draw()

    def totals(self) -> tuple[int, int, int]:
        """(bytes done, bytes known, files finished)."""
        done = sum(d for d, _ in self.files.values())
        total = sum(t if t is not None else d for d, t in self.files.values())
        finished = sum(1 for d, t in self.files.values() if t is not None and d >= t)
        return done, total, finished

    def _draw(self) -> None:
        done, total, finished = self.totals()
        self._bar.max = float(total or 1)
        self._bar.value = float(min(done, total))
        self._label.value = escape(f"{self.verb} {format_bytes(done)} / {format_bytes(total)}  "
                                   f"{finished}/{len(self.files)} files")

    def finish(self, result: Any) -> None:
        """Show ``result``: in the bar's place (the bar is closed: no widget stays in the notebook)."""
        if self._handle is None:
            from IPython.display import display

            display(result)
            return
        self._end(result)

    def fail(self, error: BaseException) -> None:
        """Show what was done before ``error`` stopped the work, in the bar's place (or printed): a static record
        whose text and HTML say the same. The reason is the error's own, shown once, by the error that follows."""
        self._end(self.stopped_record(error))

    def stopped_record(self, error: BaseException) -> Any:
        """The record of a transfer that failed or was cancelled: how far it got; a commit that was made
        (``error.pushed``: only a step after it failed, e.g. the tag) with its own record first."""
        from hf_notebook.ui.record import Record, _box, _facts_html, _text_facts, html_text, record_of
        from hf_notebook.ui.style import RULE_DANGER, RULE_WARN

        made = getattr(error, "pushed", None)
        if made is not None:
            tag = getattr(error, "tag", None)
            head = (f"tag {tag!r} not made" if tag else "the last step failed") + ": the commit above stands"
            shown = record_of(made)
            return Record(shown.html + _box(f"<b style='{DANGER}'>✗ {html_text(head)}</b>", "", border=RULE_DANGER),
                          f"{shown.text}\n✗ {head}")
        cancelled = isinstance(error, KeyboardInterrupt)
        head = f"{self.title} {'cancelled' if cancelled else 'failed'}"
        done, total, finished = self.totals()
        facts = [(self.verb, f"{format_bytes(done)} of {format_bytes(total)}, {finished} of {len(self.files)} "
                             f"file{'s' * (len(self.files) != 1)} complete")] if self.files else []
        if not facts:
            head += f" before anything was {self.verb}"
        mark, style = ("■", WARN) if cancelled else ("✗", DANGER)
        html = _box(f"<b style='{style}'>{mark} {html_text(head)}</b>",
                    _facts_html([(k, html_text(v)) for k, v in facts]) if facts else "",
                    border=RULE_WARN if cancelled else RULE_DANGER)
        return Record(html, "\n".join([f"{mark} {head}"] + _text_facts(facts)))

    def _end(self, shown: Any) -> None:
        if self._handle is not None:
            from hf_notebook.ui.style import close_all

            self._handle.update(shown)
            close_all(self.widget)  # the bar and its label too: no comm is left behind
        else:
            print(repr(shown), file=self._stream, flush=True)
