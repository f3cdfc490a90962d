"""``@file`` option values (``--device-map @map.json``, ``--quantization-config @q.json``): read safely."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import OptionError

OPTION_FILE_LIMIT = 16 * 2**20  # a device map of a 1000-layer model is well under 1 MB


def read_option_file(path: Path, flag: str, example: str) -> str:
    """The text of an ``@file`` option: a regular file under 16 MiB (never a FIFO, a device or a huge file,
    which would block or fill memory), read as UTF-8."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise OptionError(f"{flag} @{path} is not a regular file.", hint=f"Give a JSON file: {example}")
        if st.st_size > OPTION_FILE_LIMIT:
            raise OptionError(f"{flag} @{path} has {st.st_size} bytes; a JSON option file is far smaller.",
                              hint=f"Give the JSON file meant: {example}")
        with open(path, "rb") as handle:
            return handle.read(OPTION_FILE_LIMIT + 1).decode("utf-8")
    except OSError as exc:
        raise OptionError(f"Cannot read {flag} file {str(path)!r}: {exc.strerror}.",
                          hint=f"Give an existing JSON file: {example}") from None
    except UnicodeDecodeError:
        raise OptionError(f"{flag} @{path} is not text (UTF-8 JSON).", hint=f"Give a JSON file: {example}") from None
