"""Renderers: ipywidgets panels with a plain-text fallback for terminal IPython."""

from __future__ import annotations

from typing import Any


def _in_kernel(shell: Any) -> bool:
    """True inside a Jupyter kernel (ipykernel's ``ZMQInteractiveShell``), where widgets can show."""
    if shell is None:
        return False
    if any(cls.__name__ == "ZMQInteractiveShell" for cls in type(shell).__mro__):
        return True
    return getattr(shell, "kernel", None) is not None


def make_renderer(shell: Any = None, mode: str = "auto", **kwargs: Any) -> Any:
    """A ``LoadPanel`` in a Jupyter kernel with ipywidgets, else a ``TextRenderer``.

    ``mode``: ``"auto"`` (by ``shell``, default the running IPython), ``"widget"`` or
    ``"text"`` to force one (``"widget"`` still falls back to text without ipywidgets).
    ``kwargs`` go to the renderer (``clock``, ``min_interval``).
    """
    mode = (mode or "auto").lower()
    if mode not in ("auto", "widget", "text"):
        raise ValueError(f"mode must be 'auto', 'widget' or 'text', not {mode!r}")
    if shell is None and mode == "auto":
        try:
            from IPython import get_ipython

            shell = get_ipython()
        except ImportError:
            shell = None
    if mode == "widget" or (mode == "auto" and _in_kernel(shell)):
        try:
            from hf_notebook.ui.progress import LoadPanel
        except ImportError:  # ipywidgets missing: fall back to text
            pass
        else:
            return LoadPanel(**kwargs)
    from hf_notebook.ui.text import TextRenderer

    return TextRenderer(**kwargs)


__all__ = ["make_renderer"]
