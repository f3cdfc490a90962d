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

    def __init__(self, verb: str, *, widget: bool, min_interval: float = 0.1, stream: Any = None):
        self.verb, self.min_interval = verb, min_interval
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
        self._end(result)

    def fail(self, error: BaseException) -> None:
        from IPython.display import HTML

        word = "cancelled" if isinstance(error, KeyboardInterrupt) else "failed"
        done, total, finished = self.totals()
        text = f"{self.verb} {word} after {format_bytes(done)} of {format_bytes(total)} ({finished} files complete)"
        style = WARN if word == "cancelled" else DANGER
        self._end(HTML(f"<div style='{style}'>{escape(text)}</div>") if self._bar is not None else None, text)

    def _end(self, shown: Any, text: str = "") -> None:
        if self._handle is not None:
            self._handle.update(shown)
            self.widget.close()
        elif text:
            print(text, file=self._stream, flush=True)
