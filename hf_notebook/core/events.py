"""Typed progress events emitted by the core; renderers (widgets, text) consume them.

The core never prints: every stage reports through an ``on_event`` callback taking one of
the dataclasses below. ``emit`` is the null-safe way to call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union


@dataclass(frozen=True)
class StageStarted:
    """A pipeline stage began: ``resolve``, ``fetch``, ``plan``, ``load``, ``save``, ``push``."""

    stage: str
    detail: str = ""


@dataclass(frozen=True)
class Resolved:
    """A revision was pinned to a commit sha."""

    repo_id: str
    revision: Optional[str]  # what the user asked for (None: the default branch)
    sha: str
    kind: str  # "branch" | "tag" | "pr" | "sha" | "local" | "ref" (a name resolved offline)

    @property
    def pinned_spec(self) -> str:
        return f"{self.repo_id}@{self.sha}"

    @property
    def was_floating(self) -> bool:
        """True when the user's revision can move (a branch, a pull request, or none given)."""
        return self.kind in ("branch", "ref", "pr")


@dataclass(frozen=True)
class FileProgress:
    """Bytes of one file downloaded so far (``done == total`` when finished)."""

    filename: str
    done: int
    total: Optional[int]
    cached: bool = False  # already in the cache: no bytes were transferred
    transferred: Optional[int] = None  # bytes over the network so far (fewer with Xet's deduplication); None: done


@dataclass(frozen=True)
class FetchPlanned:
    """The files a fetch brings, before its first byte: every name with its size (None: unknown) and the
    names already in the cache, so a progress total is whole from the start."""

    sizes: tuple[tuple[str, Optional[int]], ...]
    cached: frozenset = frozenset()


@dataclass(frozen=True)
class ShardProgress:
    """Tensors of one checkpoint shard materialized so far."""

    shard: str
    index: int  # 0-based position among ``count`` shards
    count: int
    tensors_done: int
    tensors_total: int
    bytes_done: int
    bytes_total: int


@dataclass(frozen=True)
class StageDone:
    """A stage finished; ``result`` is the stage's summary object, ``seconds`` its wall time."""

    stage: str
    seconds: float
    result: Any = None


@dataclass(frozen=True)
class Failed:
    """The action failed (red) or was cancelled (``error`` is a ``KeyboardInterrupt``)."""

    stage: str
    error: BaseException


Event = Union[StageStarted, Resolved, FetchPlanned, FileProgress, ShardProgress, StageDone, Failed]
OnEvent = Callable[[Event], None]


def emit(on_event: Optional[OnEvent], event: Event) -> None:
    """Send ``event`` to ``on_event`` if there is one."""
    if on_event is not None:
        on_event(event)
