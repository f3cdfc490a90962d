"""``TextRenderer``: a load's progress as plain lines, for terminal IPython and logs.

On a TTY one line is rewritten in place with ``\\r`` (rate-limited): the whole download (bytes of the
total, speed, time left, files) or the whole load. Everywhere a line is written only when something
ends, so captured output is short and the same for the same events, whatever the number of shards:
the pin, per stage its files (one line) or its shards (one line) and its time, then the record.
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
        self.final: Any = None
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False

    # -- renderer protocol ------------------------------------------------------------
    def __call__(self, event: Any) -> None:
        with self._lock:
            ends = self.state.apply(event)
            for line in self._lines_for(event):
                self._println(line)
            if self.tty:
                self._live_update(event, ends)
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
        if isinstance(event, StageDone):
            lines = self._files_line(event.stage)
            if event.stage == "load" and s.shards:
                _, count, _, nbytes = s.load_totals()
                tensors = sum(sh.tensors_total for sh in s.shards.values())
                lines.append(f"  loaded {count} shard{'s' * (count != 1)} ({tensors} tensor{'s' * (tensors != 1)}, "
                             f"{format_bytes(nbytes)})")
            return lines + [f"{event.stage} done in {format_seconds(event.seconds)}"]
        return []

    def _files_line(self, stage: str) -> list[str]:
        """One line for the files a stage brought: how many came over the network (bytes), how many were cached."""
        s = self.state
        files = s.weight_files() if stage == "fetch" else [f for f in s.files.values() if f.stage == stage]
        files = [f for f in files if f.filename not in self._done_files]
        self._done_files.update(f.filename for f in files)
        if not files:
            return []
        fetched, cached = [f for f in files if not f.cached], [f for f in files if f.cached]
        parts = []
        if fetched:
            nbytes = sum(f.done for f in fetched)
            sent = [f.transferred for f in fetched]
            note = transfer_note(nbytes, sum(sent)) if all(t is not None for t in sent) else ""
            parts.append(f"fetched {_files(fetched)} ({format_bytes(nbytes)}{note})")
        if cached:
            parts.append(f"cached {_files(cached)} ({format_bytes(sum(f.total or f.done for f in cached))})")
        return ["  " + ", ".join(parts)]

    # -- the in-place line (TTY) ----------------------------------------------------
    def _live_update(self, event: Any, ends: bool) -> None:
        s = self.state
        text = ""
        if isinstance(event, FileProgress) and event.filename in s.files:
            f = s.files[event.filename]
            text = f"  download {s.download_text()}" if f.planned or f.stage == "fetch" else f"  {f.text()}"
        elif isinstance(event, ShardProgress):
            text = f"  load {s.load_text()}"
        elif isinstance(event, StageStarted):
            text = f"{event.stage}… {event.detail}".rstrip()
        if not text:
            return
        now = self._clock()
        if now - self._last_draw < self._min_interval and not ends:  # an ending (a file, a stage) shows at once
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


def _files(files: list) -> str:
    """``model.safetensors`` for one file, ``16 files`` for more."""
    return files[0].filename if len(files) == 1 else f"{len(files)} files"
