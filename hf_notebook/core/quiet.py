"""Silence what the libraries print for themselves while our calls run: our events and records say it.

The switches are process-wide (a logger's level, huggingface_hub's and transformers' bar flags),
so nested and concurrent calls share one silence: the first in saves the settings, the last out
restores exactly them.
"""

from __future__ import annotations

import contextlib
import logging
import threading

_LOCK = threading.Lock()
_USERS: dict[str, int] = {}
_SAVED: dict[str, object] = {}


@contextlib.contextmanager
def _shared(key: str, save, silence, restore):
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
    """Raise these loggers to ERROR: warnings we report ourselves (absent devices, offloaded weights)."""
    with contextlib.ExitStack() as stack:
        for name in names:
            logger = logging.getLogger(name)
            stack.enter_context(_shared(f"log:{name}", lambda lg=logger: lg.level,
                                        lambda lg=logger: lg.setLevel(logging.ERROR),
                                        lambda level, lg=logger: lg.setLevel(level)))
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

    with _shared("bars", save, silence, restore):
        yield
