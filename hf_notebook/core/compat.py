"""The one place that touches names our dependencies do not document as public.

Each helper says which version it was written against and degrades to doing nothing (never to a
crash) when the name is gone, so a newer huggingface_hub or httpx at worst makes a Ctrl-C slower.
Tested with huggingface_hub 2.4.0, hf_xet 1.8.0 and httpx2 2.17.0.
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Optional

log = logging.getLogger(__name__)


def abort_xet_downloads() -> None:
    """Stop every running Xet transfer of this process (``huggingface_hub.utils._xet.abort_xet_session``:
    hf_xet's session is aborted and the next call makes a fresh one, as huggingface_hub does on Ctrl-C)."""
    try:
        from huggingface_hub.utils._xet import abort_xet_session
    except ImportError:  # no hf_xet path in this huggingface_hub
        return
    try:
        abort_xet_session()
    except Exception as exc:  # an abort must not turn a Ctrl-C into another error
        log.debug("aborting the Xet session failed: %r", exc)


def response_socket(response: Any) -> Optional[socket.socket]:
    """The socket an httpx response is read from (httpcore's ``network_stream`` extension), or None."""
    stream = getattr(response, "extensions", {}).get("network_stream")
    try:
        sock = stream.get_extra_info("socket") if stream is not None else None
    except Exception:
        return None
    return sock if isinstance(sock, socket.socket) else None


def hub_http_client() -> Any:
    """huggingface_hub's shared HTTP client (public: ``huggingface_hub.get_session``)."""
    from huggingface_hub import get_session

    return get_session()


def wrap_response_stream(response: Any, check) -> None:
    """Let ``check(failure=None)`` run before each piece of a response body is handed on, and when reading it
    fails (a socket we shut down): it may raise instead. httpx checks that a body is its ``SyncByteStream``, so
    the wrapper is one of the client library's own (httpx2 for huggingface_hub 2.x, httpx before)."""
    import importlib

    inner = getattr(response, "stream", None)
    try:
        base = importlib.import_module(type(response).__module__.split(".")[0]).SyncByteStream
    except (ImportError, AttributeError):
        return
    if inner is None or not isinstance(inner, base):
        return

    class Checked(base):
        def __iter__(self):
            try:
                for piece in inner:
                    check()
                    yield piece
            except Exception as exc:
                check(exc)
                raise

        def close(self):
            inner.close()

    response.stream = Checked()
