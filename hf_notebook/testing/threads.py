"""Which of our I/O pool threads are running a call now (not waiting for work): for tests that check
nothing is still writing once an action has returned, without sleeping and hoping."""

from __future__ import annotations

import os
import sys
import threading

_CORE = f"{os.sep}hf_notebook{os.sep}core{os.sep}"


def busy_io_threads(*also: str) -> list[str]:
    """Names of ``hf_notebook-io`` threads with a frame of our core, or of the files ``also`` (a test's own
    calls), on their stack."""
    frames = sys._current_frames()
    busy = []
    for thread in threading.enumerate():
        if not thread.name.startswith("hf_notebook-io"):
            continue
        frame = frames.get(thread.ident)
        while frame is not None:
            name = frame.f_code.co_filename
            if _CORE in name or name in also:
                busy.append(thread.name)
                break
            frame = frame.f_back
    return busy
