"""hf_notebook: load, place, inspect, save and publish Hugging Face models from a notebook.

``%load_ext hf_notebook`` registers the magics. From Python, ``hf_notebook.Session()`` does what the
magics do (lock file included). Importing this package is cheap: torch, transformers and accelerate
are imported only when an action needs them.
"""

from ._version import __version__  # noqa: F401


def __getattr__(name):
    """``Session`` and ``Settings``, imported on first use."""
    if name in ("Session", "Settings"):
        from .core import session

        return getattr(session, name)
    raise AttributeError(f"module 'hf_notebook' has no attribute {name!r}")


def edit_device_map(target, *, name=None):
    """The device-map editor on a loaded model or a plan from Python (see :func:`hf_notebook.ui.editor.edit_device_map`)."""
    from .ui.editor import edit_device_map as editor

    return editor(target, name=name)


def load_ipython_extension(ipython):
    """Register the magics and the ``HFNotebook`` configurable with ``ipython``."""
    from .magics import register

    register(ipython)


def unload_ipython_extension(ipython):
    """Undo :func:`load_ipython_extension`."""
    from .magics import unregister

    unregister(ipython)
