"""Models loaded by the extension in this process, by the variable they are bound to."""

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

    def clear(self) -> None:
        self._entries.clear()


_REGISTRY = Registry()


def registry() -> Registry:
    """The process-wide registry."""
    return _REGISTRY
