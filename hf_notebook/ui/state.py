"""A load's progress as display state, folded from the core's events; shared by both renderers.

``LoadState.apply`` is monotonic by construction: a shard's counts never go back (events from
loader threads may arrive out of order), a file only restarts when a download restarts. The
live panel and the text renderer draw from it while the work runs; the finished output is a
static record built from the final facts (``hf_notebook.ui.record``), not from this state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from hf_notebook.core.events import (Failed, FetchPlanned, FileProgress, Resolved, ShardProgress, StageDone,
                                     StageStarted)
from hf_notebook.core.spec import is_commit_sha
from hf_notebook.core.units import format_bytes
from hf_notebook.ui.words import format_rate, format_seconds, moving_text, revision_text, short_sha


@dataclass
class FileState:
    """One file's download as last reported."""

    filename: str
    done: int = 0
    total: Optional[int] = None
    cached: bool = False
    started: float = 0.0
    first_done: int = 0
    rate: Optional[float] = None  # bytes/s since the first event of this file
    stage: str = ""  # the stage that asked for it: "config" (config, index) or "fetch" (weights)
    transferred: Optional[int] = None  # bytes over the network, when fewer than ``done`` (Xet deduplication)
    pending: bool = False  # announced by the fetch's plan, not started yet
    planned: bool = False  # one of the files the fetch announced (the checkpoint's: what the record counts)

    @property
    def finished(self) -> bool:
        return self.cached or (self.total is not None and self.done >= self.total)

    def progress_text(self, with_rate: bool = True) -> str:
        """``cached (1.2 kB)``, ``1.2 kB``, ``1.2 kB, deduplicated: 0 B downloaded`` or
        ``12.0 MB / 40.0 MB  5.1 MB/s`` while running."""
        if self.cached:
            return f"cached ({format_bytes(self.total if self.total is not None else self.done)})"
        if self.finished:
            return format_bytes(self.done) + transfer_note(self.done, self.transferred)
        rate = format_rate(self.rate) if with_rate else ""
        return "  ".join(p for p in (f"{format_bytes(self.done)} / {format_bytes(self.total)}", rate) if p)

    def text(self, with_rate: bool = True) -> str:
        return f"{self.filename}  {self.progress_text(with_rate)}"


def transfer_note(size: int, transferred: Optional[int]) -> str:
    """``, deduplicated: 0 B downloaded`` when the cache's shared store had the file; ``, 7.7 MB downloaded`` when
    Xet sent fewer bytes than the file has (compressed, or partly deduplicated); else nothing."""
    if transferred is None or transferred >= size:
        return ""
    return ", deduplicated: 0 B downloaded" if transferred == 0 else f", {format_bytes(transferred)} downloaded"


@dataclass
class StageState:
    stage: str
    detail: str = ""
    seconds: Optional[float] = None  # None while running
    failed: bool = False

    def text(self) -> str:
        if self.failed:
            return f"{self.stage} stopped"
        if self.seconds is None:
            return f"{self.stage}…" + (f" {self.detail}" if self.detail else "")
        return f"{self.stage} ✓ {format_seconds(self.seconds)}"


class LoadState:
    """The load as far as the events tell; ``apply`` says whether an event must show now."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.resolved: Optional[Resolved] = None
        self.files: dict[str, FileState] = {}
        self.shards: dict[int, ShardProgress] = {}
        self.shard_count = 0
        self.stages: dict[str, StageState] = {}
        self.current_stage = ""
        self.failed: Optional[Failed] = None
        self.result: Any = None
        self.fetch_started: Optional[float] = None  # when the fetch announced its files (its rate counts from here)
        self.spec: Optional[str] = None  # what was asked for: the header before the revision is resolved

    # -- folding events -------------------------------------------------------------
    def apply(self, event: Any) -> bool:
        """Update from ``event``; True when it ends something (show it without delay)."""
        if isinstance(event, FileProgress):
            return self._file(event)
        if isinstance(event, ShardProgress):
            return self._shard(event)
        if isinstance(event, StageStarted):
            self.stages[event.stage] = StageState(event.stage, event.detail)
            self.current_stage = event.stage
        elif isinstance(event, StageDone):
            self.stages.setdefault(event.stage, StageState(event.stage)).seconds = event.seconds
            if event.stage == "load" and event.result is not None:
                self.result = event.result
        elif isinstance(event, FetchPlanned):
            self._planned(event)
        elif isinstance(event, Resolved):
            self.resolved = event
        elif isinstance(event, Failed):
            self.failed = event
            self.stages.setdefault(event.stage, StageState(event.stage)).failed = True
        return True

    def _shard(self, event: ShardProgress) -> bool:
        old = self.shards.get(event.index)
        if old is not None and event.tensors_done <= old.tensors_done:
            return False  # an older event, overtaken on its way here
        self.shards = dict(sorted({**self.shards, event.index: event}.items()))
        self.shard_count = max(self.shard_count, event.count)
        return event.tensors_done >= event.tensors_total

    def _planned(self, event: FetchPlanned) -> None:
        """Every file of the fetch, with its size, before the first byte: totals are whole from the start."""
        self.fetch_started = self.clock()
        for name, size in event.sizes:
            if name not in self.files:
                cached = name in event.cached
                self.files[name] = FileState(name, done=(size or 0) if cached else 0, total=size, cached=cached,
                                             stage=self.current_stage, pending=True, planned=True)

    def _file(self, event: FileProgress) -> bool:
        now = self.clock()
        f = self.files.get(event.filename)
        if f is not None and f.pending:  # its first report: its own rate counts from now
            f.pending, f.started, f.first_done, f.done = False, now, event.done, 0 if not event.cached else f.done
        new = f is None or (event.done < f.done and not event.cached)  # new, or a restarted download
        if new:
            f = self.files[event.filename] = FileState(event.filename, started=now, first_done=event.done,
                                                       stage=self.current_stage)
        was_finished = f.finished and not new
        f.done, f.total, f.cached, f.transferred = event.done, event.total, event.cached, event.transferred
        if now > f.started and f.done > f.first_done:
            f.rate = (f.done - f.first_done) / (now - f.started)
        return new or (f.finished and not was_finished)

    # -- derived values -------------------------------------------------------------
    def weight_files(self) -> list[FileState]:
        """The checkpoint's files (weights, generation config) as the fetch announced them, the same files the
        record counts; without an announcement, the files the fetch stage asked for. The shard index comes
        before the announcement (it names the shards): it shows as a row of its own, never as the total."""
        planned = [f for f in self.files.values() if f.planned]
        return planned or [f for f in self.files.values()
                           if f.stage == "fetch" and not f.filename.endswith(".index.json")]

    def finished_files(self) -> list[str]:
        return [f.filename for f in self.files.values() if f.finished]

    def download_totals(self) -> tuple[int, Optional[int], int]:
        """(done, total or None when a size is unknown, cached count) over the fetch stage's files."""
        files = self.weight_files()
        fetched = [f for f in files if not f.cached]
        done = sum(f.done for f in fetched)
        total = None if any(f.total is None for f in fetched) else sum(f.total or 0 for f in fetched)
        return done, total, len(files) - len(fetched)

    def download_count(self) -> tuple[int, int]:
        """(files finished, files) of the fetch stage's downloads (cached files not counted)."""
        fetched = [f for f in self.weight_files() if not f.cached]
        return sum(f.finished for f in fetched), len(fetched)

    def download_rate(self) -> Optional[float]:
        """Bytes per second over the whole download so far (None in its first half second)."""
        if self.fetch_started is None:
            return None
        elapsed = self.clock() - self.fetch_started
        done = self.download_totals()[0]
        return done / elapsed if elapsed >= 0.5 and done else None

    def load_fraction(self) -> float:
        """Shards loaded, counting each by its tensors: 0 .. ``shard_count``."""
        return sum(min(1.0, s.tensors_done / s.tensors_total) if s.tensors_total else 1.0 for s in self.shards.values())

    def load_totals(self) -> tuple[int, int, int, int]:
        """(shards done, shards, bytes done, bytes) over every shard."""
        done = sum(1 for s in self.shards.values() if s.tensors_done >= s.tensors_total)
        return (done, self.shard_count, sum(s.bytes_done for s in self.shards.values()),
                sum(s.bytes_total for s in self.shards.values()))

    # -- words ----------------------------------------------------------------------
    def header_text(self) -> str:
        r = self.resolved
        if r is None:
            start = self.stages.get("resolve")
            if start is not None:
                return f"resolving {start.detail}".rstrip()
            return f"loading {self.spec}" if self.spec else "loading"
        arrow = f" -> {short_sha(r.sha)}" if is_commit_sha(r.sha) else ""
        return f"{r.repo_id} {revision_text(r)}{arrow}"

    def pinned_text(self) -> str:
        return moving_text(self.resolved) if self.resolved is not None else ""

    def load_text(self) -> str:
        """``3/5 shards  1.2 MB / 2.0 MB``: the whole load, not one shard."""
        if not self.shards:
            return ""
        done, count, nbytes, total = self.load_totals()
        return f"{done}/{count} shard{'s' * (count != 1)}  {format_bytes(nbytes)} / {format_bytes(total)}"

    def download_text(self) -> str:
        """``12.0 MB / 42.1 MB  5.1 MB/s  6.0 s left  3/16 files  2 cached``: the whole download, every file
        counted from the start."""
        done, total, cached = self.download_totals()
        finished, count = self.download_count()
        parts = [f"{format_bytes(done)} / {format_bytes(total)}" if total != done else format_bytes(done)]
        rate = self.download_rate()
        if rate and total and done < total:
            parts += [format_rate(rate), f"{format_seconds((total - done) / rate)} left"]
        parts.append(f"{finished}/{count} files" if finished < count else f"{count} file{'s' * (count != 1)}")
        if cached:
            parts.append(f"{cached} cached")
        return "  ".join(parts)

    def text_lines(self) -> list[str]:
        """The live state as plain lines: the console form of a panel while it works."""
        lines = [self.header_text()]
        if self.pinned_text():
            lines.append(self.pinned_text())
        if self.stages:
            lines.append("  ".join(s.text() for s in self.stages.values()))
        if self.weight_files():
            lines.append(f"download: {self.download_text()}")
        if self.shards:
            lines.append(f"load: {self.load_text()}")
        return lines
