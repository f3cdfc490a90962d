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


#: The core's results and the record that shows each: registered with IPython's display formatter by type name,
#: so the core returns data and imports nothing of the UI (nor is anything imported before a result is shown).
#: A record is a function of ``ui/record.py``, or ``"module:function"`` for one in another module of ``ui/``.
RECORDS = {
    ("hf_notebook.core.api", "LoadResult"): "load_record",
    ("hf_notebook.core.devices.plan", "Plan"): "plan_record",
    ("hf_notebook.core.unload", "UnloadReport"): "unload_record",
    ("hf_notebook.core.hub.push", "PushResult"): "push_record",
    ("hf_notebook.core.hub.bundle", "ExportResult"): "export_record",
    ("hf_notebook.core.weights.save", "SaveResult"): "save_record",
    ("hf_notebook.core.devices.measure", "Measurement"): "measure_record",
    ("hf_notebook.core.distributed.ranks", "RankPlan"): "hf_notebook.ui.distributed:rank_plan_record",
    ("hf_notebook.core.distributed.launch", "Launch"): "hf_notebook.ui.distributed:launch_record",
    ("hf_notebook.core.distributed.run", "RunResult"): "hf_notebook.ui.distributed:run_record",
}


def register_renderers(shell: Any) -> None:
    """Show each core result as its record (``text/html`` + ``text/plain``) in ``shell``'s outputs."""
    formatter = shell.display_formatter.mimebundle_formatter
    for (module, name), record in RECORDS.items():
        formatter.for_type_by_name(module, name, _shown_as(record))


def unregister_renderers(shell: Any) -> None:
    formatter = shell.display_formatter.mimebundle_formatter
    for module, name in RECORDS:
        formatter.deferred_printers.pop((module, name), None)
        for cls in [c for c in formatter.type_printers if (c.__module__, c.__qualname__) == (module, name)]:
            formatter.type_printers.pop(cls)


def record_function(record_name: str):
    """The function a :data:`RECORDS` entry names (imported on first use)."""
    import importlib

    module, _, name = record_name.rpartition(":")
    return getattr(importlib.import_module(module or "hf_notebook.ui.record"), name)


def _shown_as(record_name: str):
    def bundle(obj: Any, include: Any = None, exclude: Any = None) -> dict:
        return record_function(record_name)(obj).bundle()

    return bundle


__all__ = ["make_renderer", "register_renderers", "unregister_renderers"]
