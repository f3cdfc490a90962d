"""``TextRenderer``: a load's progress as plain lines, for terminal IPython and logs.

On a TTY one line is rewritten in place with ``\\r`` (rate-limited); everywhere else only
lines for things that finished are written, so captured output is short and the same for
the same events: one per finished file or shard, one per stage, the pin, the summary.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from typing import Any, Callable, Optional, TextIO

from hf_notebook.core.events import FileProgress, Resolved, ShardProgress, StageDone, StageStarted
from hf_notebook.core.units import format_bytes
from hf_notebook.ui.state import LoadState, transfer_note
from hf_notebook.ui.words import format_seconds, pin_note


class TextRenderer:
    """Renderer for one load: ``renderer(event)`` from any thread, then ``renderer.finish(record)``."""

    def __init__(
        self,
        stream: Optional[TextIO] = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = 0.1,
    ):
        self.stream = stream if stream is not None else sys.stdout
        self.state = LoadState(clock)
        self.redraws = 0
        self._clock = clock
        self._min_interval = min_interval
        self._lock = threading.RLock()
        self._last_draw = float("-inf")
        self._live = ""  # the line currently shown under the cursor (TTY only)
        self._done_files: set[str] = set()
        self._done_shards: set[int] = set()
        self.final: Any = None
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False

    # -- renderer protocol ------------------------------------------------------------
    def __call__(self, event: Any) -> None:
        with self._lock:
            self.state.apply(event)
            for line in self._lines_for(event):
                self._println(line)
            if self.tty:
                self._live_update(event)
            self.stream.flush()

    def finish(self, record: Any) -> None:
        """End the in-place line, then print the outcome's record."""
        with self._lock:
            self._clear_live()
            self.final = record
            self.stream.write(f"{record.text}\n")
            self.stream.flush()

    def display(self) -> None:
        """Nothing to show before the first event."""

    def __repr__(self) -> str:
        return repr(self.final) if self.final is not None else "\n".join(self.state.text_lines())

    # -- lines ----------------------------------------------------------------------
    def _lines_for(self, event: Any) -> list[str]:
        s = self.state
        if isinstance(event, Resolved):
            lines = [f"resolved {s.header_text()}"]
            if event.was_floating:
                lines.append(f"pinned: {event.pinned_spec} ({pin_note(event)})")
            return lines
        if isinstance(event, FileProgress):
            return self._finished_files(only=event.filename)
        if isinstance(event, ShardProgress):
            if event.tensors_done < event.tensors_total or event.index in self._done_shards:
                return []
            self._done_shards.add(event.index)
            return [
                f"  loaded shard {event.index + 1}/{event.count} {event.shard}"
                f" ({event.tensors_total} tensor{'s' * (event.tensors_total != 1)}, {format_bytes(event.bytes_total)})"
            ]
        if isinstance(event, StageDone):
            lines = self._finished_files(only=None) if event.stage == "fetch" else []
            return lines + [f"{event.stage} done in {format_seconds(event.seconds)}"]
        return []

    def _finished_files(self, only: Optional[str]) -> list[str]:
        """One line per file finished since last time; ``only=None`` also flushes unknown sizes."""
        lines = []
        for name, f in self.state.files.items():
            if name in self._done_files or (only is not None and name != only):
                continue
            if not f.finished and (only is not None or f.total is not None):
                continue
            self._done_files.add(name)
            verb = "cached" if f.cached else "fetched"
            size = format_bytes(f.total if f.cached and f.total is not None else f.done)
            if not f.cached:
                size += transfer_note(f.done, f.transferred)
            lines.append(f"  {verb} {name} ({size})")
        return lines

    # -- the in-place line (TTY) ----------------------------------------------------
    def _live_update(self, event: Any) -> None:
        s = self.state
        text = ""
        if isinstance(event, FileProgress) and event.filename not in self._done_files:
            text = f"  {s.files[event.filename].text()}"
        elif isinstance(event, ShardProgress) and event.index not in self._done_shards:
            text = f"  load {s.load_text()}"
        elif isinstance(event, StageStarted):
            text = f"{event.stage}… {event.detail}".rstrip()
        if not text:
            return
        now = self._clock()
        if now - self._last_draw < self._min_interval and not isinstance(event, StageStarted):
            return
        self._last_draw = now
        self.redraws += 1
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        text = text[:width]
        self.stream.write("\r" + text.ljust(len(self._live)))
        self._live = text

    def _clear_live(self) -> None:
        if self._live:
            self.stream.write("\r" + " " * len(self._live) + "\r")
            self._live = ""

    def _println(self, line: str) -> None:
        self._clear_live()
        self.stream.write(line + "\n")
