"""File I/O on a few cores at once, where one thread cannot keep up: a big read into fresh memory
(its page faults) is split in parts read side by side, and files written one after another are
written a few at a time (the page cache takes them in parallel; parts of one file would contend
on its inode). One small shared pool, started on first use.

Whatever the caller's fate (an error, Ctrl-C), no worker is left touching memory or files: every
call waits for the work it started before it returns or raises.
"""

from __future__ import annotations

import io
import itertools
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Optional

SPLIT_MIN = 2**20  # bytes: a read below twice this is not split
MAX_WORKERS = 4

_pool: Optional[ThreadPoolExecutor] = None
_lock = threading.Lock()


def workers() -> int:
    """Threads used at once: the cores this process may run on, at most :data:`MAX_WORKERS`."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


def _shared_pool() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="hf_notebook-io")
        return _pool


def _forget_pool() -> None:
    """In a forked child: the parent's threads are not there (work given to them would wait forever)."""
    global _pool, _lock
    _pool, _lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def settle(futures: list[Future]) -> None:
    """Wait until every one of ``futures`` is done, through Ctrl-C too (re-raised once all are done)."""
    interrupted = None
    while True:
        try:
            wait(futures)
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


class _Skipped(Exception):
    """A call its group was closed to before it started: it did nothing."""


class _Group:
    """Calls to the shared pool, tracked from inside the workers. A Ctrl-C can land between ``submit``
    returning a future and the caller keeping it: that call is still waited for by :meth:`close` if it
    runs, and does nothing if it starts after. ``completed`` lists ``(args, result)`` of every call that
    finished, so a caller can undo the effect of one whose future it lost."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._closed = False
        self._submitted = itertools.count()
        self.completed: list[tuple[int, tuple, Any]] = []  # (order of submission, args, result)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return _shared_pool().submit(self._run, next(self._submitted), fn, args)

    def _run(self, order: int, fn: Callable[..., Any], args: tuple) -> Any:
        with self._cond:
            if self._closed:
                raise _Skipped()
            self._active += 1
        try:
            result = fn(*args)
            with self._cond:
                self.completed.append((order, args, result))
            return result
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def close(self) -> None:
        """No call of this group starts from now on; wait (through Ctrl-C, re-raised after) for those running."""
        interrupted = None
        with self._cond:
            self._closed = True
        while True:
            try:
                with self._cond:
                    self._cond.wait_for(lambda: self._active == 0)
                break
            except KeyboardInterrupt as exc:
                interrupted = exc
        if interrupted is not None:
            raise interrupted


def read_into(fd: int, view: memoryview, offset: int) -> None:
    """Fill ``view`` (bytes) from file ``fd`` at ``offset``; a big one in parts, one per worker."""
    if not hasattr(os, "preadv"):  # no positioned reads here: one part, from a file position
        os.lseek(fd, offset, os.SEEK_SET)
        _read_all(io.FileIO(fd, closefd=False).readinto, view)
        return
    parts = min(workers(), len(view) // SPLIT_MIN) or 1
    per_part = -(-len(view) // parts)
    step = -(-per_part // 4096) * 4096  # whole pages each
    bounds = [(a, min(a + step, len(view))) for a in range(0, len(view), step)] or [(0, 0)]
    futures: list[Future] = []
    group = _Group()
    try:
        for a, b in bounds[1:]:
            futures.append(group.submit(_pread_all, fd, view[a:b], offset + a))
        _pread_all(fd, view[: bounds[0][1]], offset)
    except BaseException:
        group.close()  # the workers write into ``view`` and read ``fd``: never leave while one does
        settle(futures)
        raise
    settle(futures)
    for future in futures:
        future.result()


def _pread_all(fd: int, view: memoryview, offset: int) -> None:
    _read_all(lambda part: os.preadv(fd, [part], offset + (len(view) - len(part))), view)


def _read_all(read: Callable[[memoryview], int], view: memoryview) -> None:
    while view:
        got = read(view)
        if not got:
            raise EOFError(f"the file ends {len(view)} bytes early")
        view = view[got:]


class InOrder:
    """``fn(item)`` for items given one by one, :func:`workers` calls in flight; each result is handed
    to ``done(item, result)`` in the items' order, in the caller's thread, as soon as it and every
    earlier one are ready (:meth:`add` and :meth:`finish` do it).

    Used as a context manager: leaving it by an exception cancels the calls not started, waits for
    the running ones, and still hands over each result that came back, so the caller knows of every
    effect (a file written) it has to undo. An error of a call is raised in the caller's thread.
    """

    def __init__(self, fn: Callable[[Any], Any], done: Callable[[Any, Any], None]):
        self.fn, self.done = fn, done
        self.window = workers()
        self.pending: deque[tuple[Any, Future]] = deque()
        self.group = _Group()
        self.handed: set[int] = set()  # id() of the items whose result was handed over

    def add(self, item: Any) -> None:
        self.pending.append((item, self.group.submit(self.fn, item)))
        while len(self.pending) > self.window or (self.pending and self.pending[0][1].done()):
            self._hand_over_first()

    def finish(self) -> None:
        while self.pending:
            self._hand_over_first()

    def _hand_over_first(self) -> None:
        item, future = self.pending[0]
        result = future.result()
        self.pending.popleft()
        self.handed.add(id(item))
        self.done(item, result)

    def __enter__(self) -> "InOrder":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            try:
                self.finish()
                return
            except BaseException:
                self._abandon()
                raise
        self._abandon()

    def _abandon(self) -> None:
        """Cancel what has not started, wait for what runs (a call whose future a Ctrl-C lost included), hand
        over every result that came back."""
        for _, future in self.pending:
            future.cancel()
        try:
            self.group.close()
            settle([future for _, future in self.pending])
        finally:
            self.pending.clear()
            for _, (item,), result in sorted(self.group.completed, key=lambda done: done[0]):
                if id(item) in self.handed:
                    continue
                self.handed.add(id(item))
                try:
                    self.done(item, result)
                except Exception:
                    pass  # the caller is already failing with its own error; the next one still counts
