"""Temporary folders we made for a model live exactly as long as the model.

``remove_with(model, folder)`` removes ``folder`` when ``model`` is garbage collected, or at interpreter
exit (``weakref.finalize``), whichever comes first. Nothing else (a registry, an ``atexit`` list)
holds the model for that, so dropping every name of a model frees its memory and its folder.
"""

from __future__ import annotations

import shutil
import weakref
from typing import Any


def remove_with(model: Any, folder: str) -> None:
    """Remove ``folder`` (a temporary folder of ours) once ``model`` is gone, or at exit."""
    weakref.finalize(model, shutil.rmtree, folder, True)
