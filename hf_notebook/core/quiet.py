"""Process-wide library settings we change while our calls run, shared and restored exactly.

Mostly silence (a logger's level, huggingface_hub's and transformers' own bars: our events and
records say it), plus huggingface_hub's download chunk size. These switches are process-wide, so
nested and concurrent calls share one change: the first in saves the setting, the last out
restores exactly it.
"""

from __future__ import annotations

import contextlib
import logging
import threading

_LOCK = threading.Lock()
_USERS: dict[str, int] = {}
_SAVED: dict[str, object] = {}


@contextlib.contextmanager
def shared_setting(key: str, save, silence, restore):
    with _LOCK:
        if _USERS.get(key, 0) == 0:
            _SAVED[key] = save()
            silence()
        _USERS[key] = _USERS.get(key, 0) + 1
    try:
        yield
    finally:
        with _LOCK:
            _USERS[key] -= 1
            if _USERS[key] == 0:
                restore(_SAVED.pop(key))


@contextlib.contextmanager
def quiet_loggers(*names: str):
    """Raise these loggers (and so their children) to ERROR: a library's chatter at import."""
    with contextlib.ExitStack() as stack:
        for name in names:
            logger = logging.getLogger(name)
            stack.enter_context(shared_setting(f"log:{name}", lambda lg=logger: lg.level,
                                               lambda lg=logger: lg.setLevel(logging.ERROR),
                                               lambda level, lg=logger: lg.setLevel(level)))
        yield


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


_ERRORS_ONLY = _ErrorsOnly()


@contextlib.contextmanager
def only_errors_from(*names: str):
    """Let only errors through these modules' own loggers: warnings we report ourselves (absent devices,
    offloaded weights). A filter on each, which sees the records that logger makes, not its children's: the
    cheap way for a call made on every load, as ``setLevel`` (``quiet_loggers``) clears the cache of every logger
    in the process (some 450 once transformers is imported), about 0.2 ms each time."""
    with contextlib.ExitStack() as stack:
        for name in names:
            logger = logging.getLogger(name)
            stack.enter_context(shared_setting(f"filter:{name}", lambda: None,
                                               lambda lg=logger: lg.addFilter(_ERRORS_ONLY),
                                               lambda _, lg=logger: lg.removeFilter(_ERRORS_ONLY)))
        yield


@contextlib.contextmanager
def library_bars_off():
    """huggingface_hub's and transformers' own tqdm bars off: our events carry that progress."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as tf_logging

    def save():
        return are_progress_bars_disabled(), tf_logging.is_progress_bar_enabled()

    def silence():
        disable_progress_bars()
        tf_logging.disable_progress_bar()

    def restore(saved):
        hub_was_off, tf_was_on = saved
        if not hub_was_off:
            enable_progress_bars()
        if tf_was_on:
            tf_logging.enable_progress_bar()

    with shared_setting("bars", save, silence, restore):
        yield


DOWNLOAD_CHUNK = 64 * 2**10


@contextlib.contextmanager
def small_download_chunks():
    """huggingface_hub reads an HTTP download in 10 MB chunks and reports (and resumes a dropped
    connection) only per chunk: on a 20 kB/s link a panel would stay at 0 for minutes. 64 kB chunks
    report every few seconds there, and cost well under a second per GB on a fast link."""
    from huggingface_hub import constants

    def apply():
        constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, DOWNLOAD_CHUNK)

    def restore(saved):
        constants.DOWNLOAD_CHUNK_SIZE = saved

    with shared_setting("chunks", lambda: constants.DOWNLOAD_CHUNK_SIZE, apply, restore):
        yield


@contextlib.contextmanager
def gc_paused():
    """Let Python's cyclic garbage collector run less often while a load runs.

    Loading creates hundreds of thousands of small objects (modules, parameters, hooks), and at
    the default threshold the collector walks them some 400 times, about 30% of a first load.
    Switching it off entirely would keep cyclic garbage (which can hold whole float32 tensors)
    until the end: a 4 GB load then peaked at 2x its result. A high first-generation threshold
    keeps most of the speed and still collects. Restored exactly when the last call ends.
    """
    import gc

    def apply():
        first, second, third = gc.get_threshold()
        gc.set_threshold(max(first, GC_THRESHOLD), second, third)

    def restore(saved):
        gc.set_threshold(*saved)

    with shared_setting("gc", gc.get_threshold, apply, restore):
        yield


@contextlib.contextmanager
def interrupts_held():
    """Hold back a Ctrl-C until the block ends, for a step that must not stop halfway (binding a loaded model:
    the variable, the registry, the model it replaces). Yields a list that gets an entry per Ctrl-C held; the
    caller says what became of it. Only the main thread gets Ctrl-C; elsewhere, or where SIGINT is not Python's
    to handle, nothing is held."""
    import signal

    held: list = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):  # ignored, or not installed from Python
        yield held
        return
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield held
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def interrupts_kept():
    """Keep a Ctrl-C that Python would drop, and raise it when the block ends.

    A KeyboardInterrupt that arrives while the main thread runs a finalizer (a weakref callback or
    ``__del__``: transformers' loader frees a ThreadPoolExecutor as it returns, and its callbacks run
    then) is printed as "Exception ignored in ..." and lost: about 1 press in 100 during a load.
    Only the main thread gets Ctrl-C, so only a block there keeps one; each block keeps its own.
    """
    import sys

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kept: list = []
    previous = sys.unraisablehook

    def hook(unraisable):
        if issubclass(unraisable.exc_type, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
            kept.append(unraisable.exc_value)
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        if sys.unraisablehook is hook:
            sys.unraisablehook = previous
    if kept:
        raise KeyboardInterrupt


GC_THRESHOLD = 20_000  # allocations between first-generation collections (Python's default: 700 or 2000)


def import_transformers() -> None:
    """Import transformers' model code once, without the chatter of optional backends: torchao, found
    installed, logs each CUDA kernel library it cannot load on a CPU machine, and torch warns about
    torchao's enum registrations. Expected and harmless; other warnings stay visible."""
    import sys

    if "transformers.modeling_utils" in sys.modules:
        return
    with quiet_loggers("torchao", "torch.utils._pytree"):
        import transformers.modeling_utils  # noqa: F401
