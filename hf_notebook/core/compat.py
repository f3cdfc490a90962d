"""The one place that touches names our dependencies do not document as public.

Each helper says which version it was written against and degrades to doing nothing (never to a
crash) when the name is gone, so a newer huggingface_hub or httpx at worst makes a Ctrl-C slower.
Tested with huggingface_hub 2.4.0, hf_xet 1.8.0, httpx2 2.17.0 and transformers 5.25.0. What a load or a
plan cannot do without (transformers' device-map and class-picking internals) is probed: a missing name
raises :class:`~.errors.IncompatibleVersion` naming it and the version found.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import socket
import threading
from typing import Any, Callable, Iterator, Optional

from .errors import IncompatibleVersion

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
    return stream_socket(getattr(response, "extensions", {}).get("network_stream"))


def stream_socket(stream: Any) -> Optional[socket.socket]:
    """The socket under an httpcore network stream, or None."""
    try:
        sock = stream.get_extra_info("socket") if stream is not None else None
    except Exception:
        return None
    return sock if isinstance(sock, socket.socket) else None


def trace_request(request: Any, trace: Callable[[str, dict], None]) -> None:
    """Have httpcore report each step of ``request`` to ``trace(event, info)`` (its documented ``trace``
    request extension), after any trace already set; what ``trace`` raises ends the request. A redirect's
    request carries the extensions of the first: ``trace`` is not set twice."""
    earlier = request.extensions.get("trace")
    if earlier == trace or getattr(earlier, "after", None) == trace:
        return

    def both(event: str, info: dict) -> None:
        earlier(event, info)
        trace(event, info)

    both.after = trace
    request.extensions = {**request.extensions, "trace": both if earlier is not None else trace}


def module_slots(module: Any) -> tuple[Any, Any]:
    """A torch module's own parameter and buffer slots, name -> tensor or None (``_parameters`` / ``_buffers``,
    written against torch 2.13): read directly, a walk over a big model's modules costs half what
    ``named_parameters(recurse=False)`` does. Without them, the public calls' answers."""
    try:
        return module._parameters, module._buffers
    except AttributeError:
        return dict(module.named_parameters(recurse=False)), dict(module.named_buffers(recurse=False))


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


# -- transformers (written against 5.25) -----------------------------------------------------------
_TESTED = "Install the versions hf_notebook was tested with (constraints.txt), e.g. pip install -c constraints.txt ."


def _private(module: str, name: str, package: str = "transformers") -> Any:
    import importlib
    from importlib.metadata import version

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise IncompatibleVersion(f"{package} {version(package)} has no {module}.{name}, which hf_notebook uses.",
                                  hint=_TESTED) from None


def auto_class_pick(config: Any, auto_class: Any) -> Any:
    """The model class an Auto class (``AutoModelForCausalLM``) picks for ``config``
    (``auto_factory._get_model_class``)."""
    pick = _private("transformers.models.auto.auto_factory", "_get_model_class")
    return pick(config, auto_class._model_mapping)


def init_contexts(cls: Any, dtype: Any, quantized: bool) -> list:
    """The contexts ``from_pretrained`` builds a model in (``PreTrainedModel.get_init_context``, positional:
    dtype, is_quantized, _is_ds_init_called, allow_all_kernels)."""
    if not hasattr(cls, "get_init_context"):
        raise IncompatibleVersion(f"{cls.__name__} has no get_init_context: this transformers builds models "
                                  "another way than hf_notebook knows.", hint=_TESTED)
    return cls.get_init_context(dtype, quantized, False, None)


def skipped_init() -> Any:
    """transformers' ``initialization.no_init_weights``, for a model that stays on the meta device: torch's
    init functions do nothing while it is built (its values do not exist; they were ~40% of a llama's build).
    It swaps module attributes for the whole process while it is active, as transformers does under DeepSpeed;
    a null context where the name is gone."""
    import contextlib

    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        return contextlib.nullcontext()
    return no_init_weights()


def device_map_for(model: Any, device_map: Any, max_memory: Any, hf_quantizer: Any) -> dict:
    """The device map ``from_pretrained`` would compute (``integrations.accelerate._get_device_map``)."""
    compute = _private("transformers.integrations.accelerate", "_get_device_map")
    return compute(model, device_map, max_memory, hf_quantizer)


# -- huggingface_hub (written against 2.4) ---------------------------------------------------------
def xet_available() -> bool:
    """Whether uploads and downloads go through Xet (hf_xet installed, HF_HUB_DISABLE_XET unset):
    ``huggingface_hub.utils._runtime.is_xet_available``; False where that name is gone."""
    try:
        from huggingface_hub.utils._runtime import is_xet_available
    except ImportError:
        return False
    return bool(is_xet_available())


_XET_REPORT: contextvars.ContextVar[Optional[Callable]] = contextvars.ContextVar("hf_notebook_xet", default=None)


@contextlib.contextmanager
def xet_upload_reports(report: Callable[[Any, Any], None]) -> Iterator[None]:
    """While open, every upload commit of huggingface_hub's Xet session (``utils._xet.get_xet_session``) also
    calls ``report(group, items)`` with each file's progress; without that name, uploads run unreported."""
    try:
        from huggingface_hub.utils import _xet
    except ImportError:
        yield
        return
    from .quiet import shared_setting

    def wrap() -> None:
        _xet.get_xet_session = _ReportingSessions(_xet.get_xet_session)

    reset = _XET_REPORT.set(report)
    try:
        with shared_setting("xet-session", lambda: _xet.get_xet_session, wrap,
                            lambda saved: setattr(_xet, "get_xet_session", saved)):
            yield
    finally:
        _XET_REPORT.reset(reset)


class _ReportingSessions:
    """``get_xet_session`` whose sessions give each upload commit our report too."""

    def __init__(self, get: Callable):
        self._get = get

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _ReportingSession(self._get(*args, **kwargs))


class _ReportingSession:
    def __init__(self, session: Any):
        self._session = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def new_upload_commit(self, *args: Any, progress_callback: Optional[Callable] = None, **kwargs: Any) -> Any:
        ours, theirs = _XET_REPORT.get(), progress_callback

        def both(group: Any, items: Any) -> None:
            ours(group, items)
            if theirs is not None:
                theirs(group, items)

        return self._session.new_upload_commit(*args, progress_callback=both if ours else theirs, **kwargs)


# -- transformers.modeling_utils, patched while we load or save -------------------------------------
PATCH_LOCK = threading.RLock()  # one at a time, loads and saves alike: the names are the module's, shared


def modeling_utils_name(name: str) -> Any:
    """A name of ``transformers.modeling_utils`` we replace for a while (probed)."""
    return _private("transformers.modeling_utils", name)


@contextlib.contextmanager
def patched_modeling_utils(**replacements: Any) -> Iterator[None]:
    """``transformers.modeling_utils`` with ``replacements`` (name -> object) for the block, under one lock;
    every name is probed first, and the originals are back afterwards, whatever happens."""
    with _patched("transformers.modeling_utils", replacements):
        yield


@contextlib.contextmanager
def loader_pools() -> Iterator[list]:
    """The thread pools transformers' weight loader starts in the block (``core_model_loading``'s
    ``ThreadPoolExecutor``), listed as they start. Its loader shuts a pool down without waiting, so after
    an error or a Ctrl-C a worker still converts the tensor in hand; a caller joins them with this list."""
    base = _private("transformers.core_model_loading", "ThreadPoolExecutor")
    pools: list = []

    class Recorded(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            pools.append(self)

    with _patched("transformers.core_model_loading", {"ThreadPoolExecutor": Recorded}):
        yield pools


@contextlib.contextmanager
def _patched(module: str, replacements: dict) -> Iterator[None]:
    import importlib

    target = importlib.import_module(module)
    saved = {name: _private(module, name) for name in replacements}
    with PATCH_LOCK:
        try:
            for name, value in replacements.items():
                setattr(target, name, value)
            yield
        finally:
            for name, value in saved.items():
                setattr(target, name, value)


_KEYWORDS: Optional[frozenset] = None


def from_pretrained_keywords() -> frozenset:
    """Every keyword ``PreTrainedModel.from_pretrained`` takes: its signature, and the ``kwargs.pop("...")``
    in its source (transformers documents them there, not in the signature)."""
    global _KEYWORDS
    if _KEYWORDS is None:
        import inspect
        import re

        from transformers import PreTrainedModel

        method = PreTrainedModel.from_pretrained
        found = set(inspect.signature(method).parameters) - {"cls", "args", "kwargs", "model_args"}
        found |= set(re.findall(r"kwargs\.pop\(\s*[\"'](\w+)[\"']", inspect.getsource(method)))
        _KEYWORDS = frozenset(found)
    return _KEYWORDS


def cache_step(model: Any, input_ids: Any, cache: Any = None, **kwargs: Any) -> tuple[Any, Any]:
    """One forward that fills a KV cache: ``(output, cache)``. transformers 5.25 renamed ``past_key_values`` to
    ``cache`` (the old name warns there); older releases know only the old one."""
    import inspect

    keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    output = model(input_ids=input_ids, use_cache=True, **({keyword: cache} if cache is not None else {}), **kwargs)
    return output, getattr(output, keyword)
