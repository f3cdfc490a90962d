"""The models one shell has loaded, by the variable they are bound to.

A :class:`Registry` belongs to its owner (the ``HFNotebook`` configurable of one shell), never
to the module: two shells, or two tests, never share models. In a notebook it does not keep a model
alive (``LoadResult.hold_weakly``): once a model's last name is deleted, its entry goes too.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class Registry:
    """An ordered name -> LoadResult map; the notebook namespace holds the model itself."""

    def __init__(self):
        self._entries: "OrderedDict[str, Any]" = OrderedDict()
        self._freed: set[str] = set()  # names whose model went with its last name (del model)
        self._new: list[str] = []  # of those, the ones take_freed has not given yet

    def add(self, name: str, result: Any) -> None:
        self._entries.pop(name, None)
        self._entries[name] = result
        self._freed.discard(name)

    def get(self, name: str) -> Any:
        self._prune()
        return self._entries.get(name)

    def pop(self, name: str) -> Any:
        self._freed.discard(name)
        return self._entries.pop(name, None)

    def items(self):
        self._prune()
        return list(self._entries.items())

    def names(self) -> list[str]:
        self._prune()
        return list(self._entries)

    def rename(self, old: str, new: str) -> None:
        """Keep ``old``'s entry under ``new`` (the name that holds its model now), in its place in the order."""
        self._entries = OrderedDict((new if n == old else n, r) for n, r in self._entries.items())

    def was_freed(self, name: str) -> bool:
        """``name``'s model was freed when the notebook let go of it (not by :meth:`pop`)."""
        self._prune()
        return name in self._freed

    def take_freed(self) -> list[str]:
        """The names whose model was freed since the last call (each named once)."""
        self._prune()
        names, self._new = self._new, []
        return names

    def clear(self) -> None:
        self._entries.clear()
        self._freed.clear()
        self._new = []

    def _prune(self) -> None:
        for name in [n for n, r in self._entries.items() if getattr(r, "freed", False)]:
            del self._entries[name]
            self._freed.add(name)
            self._new.append(name)
