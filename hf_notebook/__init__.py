"""hf_notebook: load, place, inspect, save and publish Hugging Face models from a notebook.

``%load_ext hf_notebook`` registers the magics. Importing this package is cheap: torch,
transformers and accelerate are imported only when a magic needs them.
"""

__version__ = "0.1.0"


def load_ipython_extension(ipython):
    """Register the magics and the ``HFNotebook`` configurable with ``ipython``."""
    from .magics import register

    register(ipython)


def unload_ipython_extension(ipython):
    """Undo :func:`load_ipython_extension`."""
    from .magics import unregister

    unregister(ipython)
