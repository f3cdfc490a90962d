"""Shared by the widget panel and the text renderer: the load's display state and its words.

``LoadState`` folds the core's progress events into plain state (per file, per shard, per
stage); both renderers draw from it, so the widget and the text say the same things.
Nothing here imports ipywidgets or torch.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from hf_notebook.core.events import (
    Failed,
    FileProgress,
    Message,
    Resolved,
    ShardProgress,
    StageDone,
    StageStarted,
)
from hf_notebook.core.placement import device_sort_key, format_bytes

__all__ = [
    "FileState",
    "LoadState",
    "StageState",
    "device_label",
    "error_text",
    "format_bytes",
    "format_rate",
    "format_seconds",
    "is_commit",
    "pinned_name",
    "message_text",
    "redact",
    "revision_text",
    "short_sha",
]

_TOKEN = re.compile(r"\b(hf_[A-Za-z0-9]{8,}|api_org_[A-Za-z0-9]{8,})")


def redact(text: str) -> str:
    """Mask anything that looks like a Hugging Face token."""
    return _TOKEN.sub("hf_***", text)


def short_sha(sha: Optional[str]) -> str:
    return (sha or "")[:12]


def is_commit(sha: Optional[str]) -> bool:
    """A real commit id (local folders are pinned with a placeholder such as ``"local"``)."""
    return bool(sha) and re.fullmatch(r"[0-9a-f]{7,64}", sha) is not None


def pinned_name(repo_id: str, sha: Optional[str]) -> str:
    """``org/name@0123456789ab``, or just the name when there is no commit to show."""
    return f"{repo_id}@{short_sha(sha)}" if is_commit(sha) else repo_id


def revision_text(resolved: Resolved) -> str:
    """``@ main``, ``@ (default branch)``, or ``(local folder)``."""
    if resolved.kind == "local":
        return "(local folder)"
    return f"@ {resolved.revision if resolved.revision is not None else '(default branch)'}"


def format_rate(bytes_per_s: Optional[float]) -> str:
    return "" if not bytes_per_s else f"{format_bytes(bytes_per_s)}/s"


def format_seconds(seconds: Optional[float]) -> str:
    """``0.42 s``, ``12.3 s``, ``2 min 05 s``."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s"


def device_label(device: str) -> str:
    """What a user calls a device: ``GPU 0``, ``CPU RAM``, ``disk``."""
    kind, _, index = device.partition(":")
    if kind == "cuda":
        return f"GPU {index or 0}"
    return {"cpu": "CPU RAM", "disk": "disk (offload)", "meta": "meta (not loaded)"}.get(kind, device)


def message_text(message: Message) -> str:
    """``warning: ...`` or ``note: ...``, tokens masked."""
    return f"{'warning' if message.level == 'warning' else 'note'}: {redact(message.text)}"


def error_text(error: BaseException) -> str:
    """``TypeName: message`` with tokens masked."""
    message = str(error) or repr(error)
    return redact(f"{type(error).__name__}: {message}")


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

    @property
    def finished(self) -> bool:
        return self.cached or (self.total is not None and self.done >= self.total)

    def progress_text(self, with_rate: bool = True) -> str:
        """``cached (1.2 kB)``, ``1.2 kB``, or ``12.0 MB / 40.0 MB  5.1 MB/s`` while running."""
        if self.cached:
            return f"cached ({format_bytes(self.total if self.total is not None else self.done)})"
        if self.finished:
            return format_bytes(self.done)
        rate = format_rate(self.rate) if with_rate else ""
        return "  ".join(p for p in (f"{format_bytes(self.done)} / {format_bytes(self.total)}", rate) if p)

    def text(self, with_rate: bool = True) -> str:
        return f"{self.filename}  {self.progress_text(with_rate)}"


@dataclass
class StageState:
    stage: str
    detail: str = ""
    seconds: Optional[float] = None  # None while running
    failed: bool = False

    def text(self) -> str:
        if self.failed:
            return f"{self.stage} failed"
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
        self.messages: list[Message] = []
        self.failed: Optional[Failed] = None
        self.result: Any = None
        self.result_seconds: Optional[float] = None

    # -- folding events -------------------------------------------------------------
    def apply(self, event: Any) -> bool:
        """Update from ``event``; True when it ends something (show it without delay)."""
        if isinstance(event, FileProgress):
            return self._file(event)
        if isinstance(event, ShardProgress):
            self.shards[event.index] = event
            self.shard_count = max(self.shard_count, event.count)
            return event.tensors_done >= event.tensors_total
        if isinstance(event, StageStarted):
            self.stages[event.stage] = StageState(event.stage, event.detail)
        elif isinstance(event, StageDone):
            st = self.stages.setdefault(event.stage, StageState(event.stage))
            st.seconds = event.seconds
            if event.stage == "load" and event.result is not None:
                self.result, self.result_seconds = event.result, event.seconds
        elif isinstance(event, Resolved):
            self.resolved = event
        elif isinstance(event, Failed):
            self.failed = event
            self.stages.setdefault(event.stage, StageState(event.stage)).failed = True
        elif isinstance(event, Message):
            self.messages.append(event)
        return True

    def _file(self, event: FileProgress) -> bool:
        now = self.clock()
        f = self.files.get(event.filename)
        if f is None:  # bytes already there at the first event (a resumed download) are not rate
            f = self.files[event.filename] = FileState(event.filename, started=now, first_done=event.done)
        was_finished = f.finished
        f.done, f.total, f.cached = event.done, event.total, event.cached
        if now > f.started and f.done > f.first_done:
            f.rate = (f.done - f.first_done) / (now - f.started)
        return f.finished and not was_finished

    # -- derived values -------------------------------------------------------------
    def download_totals(self) -> tuple[int, Optional[int], int]:
        """(done, total or None when a size is unknown, cached count) over fetched files."""
        fetched = [f for f in self.files.values() if not f.cached]
        done = sum(f.done for f in fetched)
        total = None if any(f.total is None for f in fetched) else sum(f.total or 0 for f in fetched)
        return done, total, len(self.files) - len(fetched)

    def load_fraction(self) -> float:
        """Shards loaded, counting the current one by its tensors: 0 .. ``shard_count``."""
        return sum(min(1.0, s.tensors_done / s.tensors_total) if s.tensors_total else 1.0 for s in self.shards.values())

    def current_shard(self) -> Optional[ShardProgress]:
        live = [s for s in self.shards.values() if s.tensors_done < s.tensors_total]
        return min(live, key=lambda s: s.index) if live else (self.shards[max(self.shards)] if self.shards else None)

    # -- words ----------------------------------------------------------------------
    def header_text(self) -> str:
        r = self.resolved
        if r is None:
            start = self.stages.get("resolve")
            return f"resolving {start.detail}".rstrip() if start else "loading"
        arrow = f" -> {short_sha(r.sha)}" if is_commit(r.sha) else ""
        return f"{r.repo_id} {revision_text(r)}{arrow}"

    def pinned_text(self) -> str:
        r = self.resolved
        if r is None or not r.was_floating:
            return ""
        return f"{r.revision or 'the default branch'} can move; pinned: {r.pinned_spec}"

    def load_text(self) -> str:
        s = self.current_shard()
        if s is None:
            return ""
        return (
            f"shard {s.index + 1}/{s.count}  {s.tensors_done}/{s.tensors_total} tensors"
            f"  {format_bytes(s.bytes_done)} / {format_bytes(s.bytes_total)}"
        )

    def download_text(self) -> str:
        done, total, cached = self.download_totals()
        parts = [f"{format_bytes(done)} / {format_bytes(total)}" if total != done else format_bytes(done)]
        n = len(self.files) - cached
        parts.append(f"{n} file{'s' * (n != 1)}")
        if cached:
            parts.append(f"{cached} cached")
        return "  ".join(parts)

    def summary_lines(self) -> list[str]:
        """The load result: what was bound, then the measured placement."""
        res = self.result
        if res is None:
            return []
        name = getattr(res, "name", None)
        what = pinned_name(getattr(res, "repo_id", "model"), getattr(res, "sha", None))
        extra = ", ".join(p for p in (getattr(res, "dtype", None), format_seconds(self.result_seconds)) if p)
        head = f"{name} = {what}" if name else f"loaded {what}"
        lines = [f"{head} ({extra})" if extra else head]
        lines += res.placement.to_text().splitlines()
        return lines

    def devices(self) -> list[tuple[str, int]]:
        """(device, bytes) of the result, accelerators first."""
        if self.result is None:
            return []
        by_dev = self.result.placement.bytes_by_device
        return [(d, by_dev[d]) for d in sorted(by_dev, key=device_sort_key)]

    def text_lines(self) -> list[str]:
        """Everything as plain lines: the console form of a panel."""
        lines = [self.header_text()]
        if self.pinned_text():
            lines.append(self.pinned_text())
        if self.stages:
            lines.append("  ".join(s.text() for s in self.stages.values()))
        if self.files:
            lines.append(f"download: {self.download_text()}")
        if self.shards:
            lines.append(f"load: {self.load_text()}")
        lines += [message_text(m) for m in self.messages]
        lines += self.summary_lines()
        if self.failed is not None:
            lines.append(f"FAILED: {self.failed.stage}: {error_text(self.failed.error)}")
        return lines
