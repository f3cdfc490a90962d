"""The models one shell has loaded, by the variable they are bound to.

A :class:`Registry` belongs to its owner (the ``HFNotebook`` configurable of one shell), never
to the module: two shells, or two tests, never share models.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class Registry:
    """An ordered name -> LoadResult map; the notebook namespace holds the model itself."""

    def __init__(self):
        self._entries: "OrderedDict[str, Any]" = OrderedDict()

    def add(self, name: str, result: Any) -> None:
        self._entries.pop(name, None)
        self._entries[name] = result

    def get(self, name: str) -> Any:
        return self._entries.get(name)

    def pop(self, name: str) -> Any:
        return self._entries.pop(name, None)

    def items(self):
        return list(self._entries.items())

    def names(self) -> list[str]:
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()
