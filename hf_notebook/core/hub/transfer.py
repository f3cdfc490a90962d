"""The downloads of one call: progress as events, a Ctrl-C that stops them at once, retries, our errors.

huggingface_hub fetches a file either over HTTP (``http_get``, reading it in chunks) or through
Xet storage (``xet_get``: hf_xet, a Rust client with threads of its own). Both drive a tqdm-like
progress object; neither stops early when asked, and an exception raised in hf_xet's progress
callback is printed and ignored. So :class:`Downloads` stops them from outside: a cancelled call
aborts hf_xet's session and shuts down the socket of every HTTP connection its threads have used
(hooks on huggingface_hub's shared client and httpcore's ``trace`` extension, active only for
threads of ours), and those threads end with :class:`Cancelled` at once, whatever the link speed.
A cut connection's error becomes :class:`Cancelled` where it is raised: huggingface_hub would
otherwise take it for a network failure, sleep a second and try again.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Callable, Optional

from .. import compat
from ..errors import RETRY_STATUSES, HubError, status_of
from ..events import FileProgress, OnEvent, emit
from ..quiet import interrupts_kept, shared_setting

log = logging.getLogger(__name__)
JOIN_AFTER_CANCEL = 0.7  # seconds a Ctrl-C waits for download threads before handing control back


class Cancelled(BaseException):
    """Raised inside a download thread once its call was cancelled (a BaseException: nothing may swallow it)."""


_WATCHED: dict[int, "Downloads"] = {}  # thread ident -> the call whose download that thread runs
_WATCHED_LOCK = threading.Lock()


class Downloads:
    """One call's downloads: the switch that cancels them, and the sockets they read."""

    def __init__(self):
        self.cancelled = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def running(self):
        """Around one download in a worker thread: its requests are watched, and refused once cancelled."""
        me = threading.get_ident()
        with _hooks_installed():
            with _WATCHED_LOCK:
                _WATCHED[me] = self
            try:
                if self.cancelled.is_set():
                    raise Cancelled()
                yield
            except BaseException as exc:
                # What a cut socket or an aborted Xet session raises (hf_xet's abort raises KeyboardInterrupt in
                # the threads waiting for it): a cancel's echo, not the user's Ctrl-C, which reaches the main thread.
                if self.cancelled.is_set() and not isinstance(exc, Cancelled):
                    raise Cancelled() from exc
                raise
            finally:
                with _WATCHED_LOCK:
                    _WATCHED.pop(me, None)

    def cancel(self) -> None:
        """Stop every download of this call now: Xet transfers aborted, HTTP responses cut."""
        self.cancelled.set()
        compat.abort_xet_downloads()
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def wait(self, seconds: float) -> None:
        """Sleep that a cancel ends early (then raising :class:`Cancelled`)."""
        if self.cancelled.wait(seconds):
            raise Cancelled()

    def _watch(self, sock: Optional[socket.socket]) -> None:
        if sock is not None:
            with self._lock:
                self._sockets.add(sock)

    def _opened(self, response: Any) -> None:
        self._watch(compat.response_socket(response))
        self._check()  # after the watch: a cancel in between still cuts this socket
        compat.wrap_response_stream(response, self._check)

    def _trace(self, event: str, info: dict) -> None:
        """httpcore's report on one step of a request: new connections are watched, and once cancelled, a
        step that starts or fails raises :class:`Cancelled` (a request waiting on a cut connection, or about to
        start one). Closing steps are left alone: httpcore must put its connection pool in order. Not covered:
        a connection another thread opened (the pool hands it to ours; no step names it) is not cut while our
        request waits on it for the server's first byte; its answer then raises :class:`Cancelled`."""
        if event.endswith(("connect_tcp.complete", "start_tls.complete")):  # TLS wraps (and detaches) the socket
            self._watch(compat.stream_socket(info.get("return_value")))
        if not self.cancelled.is_set() or "close" in event:
            return
        failure = info.get("exception")
        # A stream closed early (GeneratorExit) is a close too. Before a TLS handshake httpcore holds a bare socket
        # it would not close: the next step raises instead, on a connection httpcore closes.
        started = event.endswith(".started") and "start_tls" not in event
        if started or (event.endswith(".failed") and isinstance(failure, Exception)):
            raise Cancelled() from failure

    def _check(self, failure: Optional[BaseException] = None) -> None:
        if self.cancelled.is_set():
            raise Cancelled() from failure


def _on_request(request: Any) -> None:
    downloads = _WATCHED.get(threading.get_ident())
    if downloads is not None:
        downloads._check()
        compat.trace_request(request, downloads._trace)


def _on_response(response: Any) -> None:
    downloads = _WATCHED.get(threading.get_ident())
    if downloads is not None:
        downloads._opened(response)


@contextlib.contextmanager
def _hooks_installed():
    """Our two hooks on huggingface_hub's shared HTTP client while any download of ours runs."""
    client = compat.hub_http_client()

    def add():
        hooks = client.event_hooks
        hooks["request"].append(_on_request)
        hooks["response"].append(_on_response)

    def remove(_):
        hooks = client.event_hooks
        for kind, hook in (("request", _on_request), ("response", _on_response)):
            with contextlib.suppress(ValueError):
                hooks[kind].remove(hook)

    with shared_setting(f"hub-hooks:{id(client)}", lambda: None, add, remove):
        yield


def in_parallel(get: Callable[[str], Any], names: list[str], downloads: Downloads, max_workers: int = 4) -> list:
    """``get(name)`` for every name in worker threads, results in order. The first failure, or a Ctrl-C,
    cancels the rest at once; a Ctrl-C hands control back within about a second."""
    if not names:
        return []

    def run(name):
        with downloads.running():
            return get(name)

    with interrupts_kept():  # the pool's weakref callbacks, run when it is freed, would swallow a Ctrl-C
        pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(names))),
                                  thread_name_prefix="hf_notebook-fetch")
        try:
            return _results(pool, [pool.submit(run, name) for name in names], downloads)
        except BaseException:
            downloads.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            _join(pool, JOIN_AFTER_CANCEL)
            raise
        finally:
            pool = None  # freed here, inside the block


def _results(pool: ThreadPoolExecutor, futures: list, downloads: Downloads) -> list:
    """Every result in order; on the first failure the others are cancelled and the real error raised."""
    wait(futures, return_when=FIRST_EXCEPTION)
    failed = next((f for f in futures if f.done() and f.exception() is not None), None)
    if failed is not None:
        downloads.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
        raise next((e for e in errors if not isinstance(e, (Cancelled, KeyboardInterrupt))), failed.exception())
    results = [f.result() for f in futures]
    pool.shutdown(wait=True)
    return results


def _join(pool: ThreadPoolExecutor, seconds: float) -> None:
    import time

    deadline = time.monotonic() + seconds
    for thread in list(getattr(pool, "_threads", ())):
        thread.join(max(0.0, deadline - time.monotonic()))


def retrying(call: Callable[[], Any], downloads: Downloads) -> Any:
    """``call()`` (one file's download), again after a 5xx or 429 answer to its own request (huggingface_hub 2.4
    retries a file GET on 408 and 429 only), with backoff and ``Retry-After``; a cancel ends the wait."""
    from .resolve import with_retries as retried

    return retried(call, transient=_retry_download, sleep=downloads.wait)


def _retry_download(exc: BaseException) -> bool:
    """A file request (``/resolve/``) answered 408, 429 or 5xx. Xet token routes are retried by huggingface_hub
    itself (five times, with backoff): retrying those again would multiply the wait."""
    status = status_of(exc)
    url = str(getattr(getattr(getattr(exc, "response", None), "request", None), "url", ""))
    return status in RETRY_STATUSES and "/resolve/" in url


_XET_HTTP = re.compile(r"\((\d{3}) ([^)]*)\), domain: (https?://[^/\s]+)")


def xet_failure(exc: BaseException, what: str, endpoint: str) -> Optional[HubError]:
    """Our error for a failure inside hf_xet (the Rust client reports plain ``RuntimeError`` texts), else None:
    the storage server and its answer when the text names them, the file, and what to do."""
    kind = type(exc)
    if not (kind.__module__.startswith("hf_xet") or "Xet" in kind.__name__ or str(exc).startswith("Task error")):
        return None
    http = _XET_HTTP.search(str(exc))
    if http:
        status, reason, server = http.groups()
        message = f"The Hub's Xet storage at {server} answered {status} {reason} for {what}."
        status_code = int(status)
    else:
        first = (str(exc).strip().splitlines() or [kind.__name__])[0]
        message = f"The Hub's Xet storage (reached through {endpoint}) could not deliver {what}: {first}."
        status_code = None
    if status_code == 404:
        hint = ("Its content is missing from the Hub's storage: tell the repo's owners. HF_HUB_DISABLE_XET=1 "
                "fetches it over plain HTTPS instead.")
    else:
        hint = ("Run the cell again: files already complete are kept. If it keeps failing, HF_HUB_DISABLE_XET=1 "
                "fetches over plain HTTPS instead; if the model is in the cache, add --offline.")
    return HubError(message, hint=hint, status=status_code)


def progress_class(name: str, size: Optional[int], on_event: Optional[OnEvent]):
    """A tqdm stand-in for one file, driven by huggingface_hub's ``http_get`` and by hf_xet's progress reporter:
    bytes of the file so far (``update``) and bytes over the network (``update_transfer``; fewer than the file's
    when Xet found chunks it already had) become :class:`FileProgress` events. It never raises: an exception in
    hf_xet's callback would be printed and end its reports."""

    class _Progress:
        bars: list = []  # every bar made for this file (huggingface_hub makes one per download attempt)

        def __init__(self, *_, total=None, initial=0, **__):
            type(self).bars.append(self)
            self.total = total or size
            self.n = self._network = initial or 0
            self._reported = False  # hf_xet reports network bytes apart; over plain HTTP they are the file's
            self.format_dict = {"rate": None}
            self._emit()

        @property
        def transferred(self) -> int:
            """Bytes that crossed the network for this file."""
            return self._network if self._reported else self.n

        def update(self, n=1):
            self.n += n or 0
            self._emit()

        def update_transfer(self, n=1):
            self._reported = True
            self._network += n or 0
            if self._network > self.n:  # hf_xet writes a file's bytes late: show what has arrived meanwhile
                self._emit()

        def _emit(self):
            try:
                done = min(max(self.n, self.transferred), self.total or max(self.n, self.transferred))
                emit(on_event, FileProgress(name, done, self.total, transferred=self.transferred))
            except Exception:  # a renderer's bug must not stop a download, nor print inside hf_xet
                log.exception("progress report for %s failed", name)

        def set_postfix_str(self, *_, **__):
            pass

        set_transfer_postfix_str = set_description = set_postfix = refresh = clear = close = set_postfix_str

        def __enter__(self):
            return self

        def __exit__(self, *_):
            pass

    return _Progress
