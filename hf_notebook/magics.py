"""IPython magics: parse arguments, call the core, show the result. No logic lives here.

The magics class is also the traitlets configurable ``HFNotebook``, so defaults can be set
with ``%config HFNotebook.cache_dir = "/data/hf"`` or in an IPython profile.
"""

from __future__ import annotations

import keyword

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Bool, CaselessStrEnum, Unicode

from .core.errors import HfNotebookError


@magics_class
class HFNotebook(Magics):
    """Load Hugging Face models into the notebook, pinned and placed."""

    cache_dir = Unicode(None, allow_none=True, config=True,
                        help="Hub cache folder (default: huggingface_hub's, from HF_HOME / HF_HUB_CACHE).")
    dtype = Unicode("auto", config=True, help="Default --dtype: auto, float32, bfloat16 or float16.")
    device_map = Unicode("auto", config=True, help="Default --device-map (a strategy or a device).")
    max_memory = Unicode("", config=True, help="Default --max-memory, e.g. '0=20GiB,cpu=30GiB'.")
    offload_folder = Unicode(None, allow_none=True, config=True,
                             help="Where disk-offloaded weights go (default: a fresh temporary folder).")
    offline = Bool(False, config=True, help="Never touch the network (HF_HUB_OFFLINE=1 does the same).")
    display = CaselessStrEnum(("auto", "widget", "text"), "auto", config=True,
                              help="Progress display: widgets in Jupyter, text in a terminal (auto), or forced.")

    @magic_arguments()
    @argument("spec", help="org/name, org/name@REV (branch, tag, commit sha, refs/pr/N) or a local folder.")
    @argument("--as", dest="name", default="model", help="Notebook variable to bind the model to (default: model).")
    @argument("--class", dest="class_name", default=None,
              help="Model class, e.g. AutoModelForCausalLM (default: from the config's architectures).")
    @argument("--dtype", default=None, help="auto | float32 | bfloat16 | float16 (default: auto, the checkpoint's).")
    @argument("--device-map", default=None,
              help="auto | balanced | balanced_low_0 | sequential | cpu | cuda:N | @map.json | JSON dict.")
    @argument("--max-memory", default=None, help="Budget per device, e.g. 0=20GiB,cpu=30GiB.")
    @argument("--offload-folder", default=None, help="Folder for weights placed on disk.")
    @argument("--cache-dir", default=None, help="Hub cache folder for this load.")
    @argument("--offline", action="store_true", help="Load from the cache only; fail clearly if files are missing.")
    @argument("--force-download", action="store_true", help="Download again even if the files are cached.")
    @argument("--no-offload", action="store_true", help="Fail instead of spilling to CPU or disk when it does not fit.")
    @argument("--trust-remote-code", action="store_true", help="Allow the repo's own Python code to run.")
    @line_magic
    def load_model(self, line: str):
        """Resolve, download, place and load a Hugging Face model, then bind it to a variable."""
        from .core.api import load_model

        args = parse_argstring(self.load_model, line)
        name = _check_name(args.name)
        renderer = self._renderer()
        try:
            result = load_model(
                args.spec, class_name=args.class_name, dtype=args.dtype or self.dtype,
                device_map=args.device_map or self.device_map, max_memory=args.max_memory or self.max_memory or None,
                offload_folder=args.offload_folder or self.offload_folder, cache_dir=args.cache_dir or self.cache_dir,
                offline=args.offline or self.offline, force_download=args.force_download, no_offload=args.no_offload,
                trust_remote_code=args.trust_remote_code, name=name, on_event=renderer)
        except HfNotebookError as exc:
            raise UsageError(str(exc)) from None
        finally:
            renderer.close()
        self.shell.user_ns[name] = result.model
        from .core.registry import registry

        registry().add(name, result)

    def _renderer(self):
        from .ui import make_renderer

        renderer = make_renderer(self.shell, mode=self.display)
        renderer.display()
        return renderer


def _check_name(name: str) -> str:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise UsageError(f"--as {name!r} is not a valid Python variable name.")
    return name


def register(shell) -> None:
    """Register the magics (and so the ``HFNotebook`` configurable) with ``shell``."""
    shell.register_magics(HFNotebook(shell=shell))


def unregister(shell) -> None:
    """Remove the magics and the configurable again."""
    line_magics = shell.magics_manager.magics["line"]
    for instance in [c for c in shell.configurables if isinstance(c, HFNotebook)]:
        shell.configurables.remove(instance)
        for name in instance.magics["line"]:
            line_magics.pop(name, None)
