"""IPython magics: parse arguments, call the core, show the result.

The load and plan options come from one table (``core/option_table.py``): a new option is a row
there, not an ``argument`` here. A new action is a core function that returns a result, a record
for it in ``ui/record.py`` (registered in ``ui/__init__.py``), and a magic here that parses, calls
and displays, decorated with ``@_usage_errors``. The magics class is also the traitlets
configurable ``HFNotebook``, so defaults can be set with ``%config HFNotebook.cache_dir =
"/data/hf"`` or in an IPython profile. Lock drift checks and the save guard still live here.
"""

from __future__ import annotations

import functools
import gc
import keyword
import os

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, argument_group, magic_arguments, parse_argstring
from traitlets import Bool, CaselessStrEnum, TraitError, Unicode, validate

from .core.errors import HfNotebookError

_SPEC_HELP = ("org/name, org/name@REV (branch, tag, commit sha, refs/pr/N), a local folder, or (for %%load_model) "
              "a plan bound by %%plan_model --as NAME, loaded with its (edited) map.")

def _option_args(load: bool):
    """The table's options as magic arguments, in their help groups (``load``: with the load-only ones)."""
    from .core.option_table import OPTIONS

    decorators, group = [], None
    for option in OPTIONS:
        if option.load_only and not load:
            continue
        if option.group != group:
            group = option.group
            decorators.append(argument_group(f"options: {group}"))
        kwargs = {"action": "append", "default": []} if option.repeat else \
            {"action": "store_true"} if option.switch else {"default": None}
        if option.choices:
            kwargs["choices"] = option.choices
        if option.metavar:
            kwargs["metavar"] = option.metavar
        decorators.append(argument(option.flag, dest=option.dest, help=option.help.replace("%", "%%"), **kwargs))

    def apply(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def _usage_errors(method):
    """Our errors reach the user as a ``UsageError``: what went wrong and what to do, no traceback. With
    ``%config HFNotebook.debug = True`` they are raised as they are, with their cause chain, for a bug report
    (our messages carry no token either way)."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except HfNotebookError as exc:
            if self.debug:
                raise
            raise UsageError(str(exc)) from None

    return run


def _parse(magic, line: str):
    """``parse_argstring``, then one pair of matching outer quotes off every string value.

    IPython splits magic lines without shell rules, so ``--device-map '{"a": 0}'`` arrives
    with its quotes; users write them to keep spaces together, as in a shell.
    """
    try:
        args = parse_argstring(magic, line)
    except ValueError as exc:  # the line splitter: an unterminated quote
        raise UsageError(f"Cannot read the line: {exc}. Close every quote you open.") from None
    for key, value in vars(args).items():
        if isinstance(value, list):  # repeatable options (--set, --kw): each item as a single value
            setattr(args, key, [_unquoted(v) for v in value])
        else:
            setattr(args, key, _unquoted(value))
    return args


def _unquoted(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


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
    lock_file = Unicode("hf_notebook.lock.json", config=True,
                        help="Lock file recording each Hub model loaded (repo, revision, sha, files with sizes and "
                             "sha256), relative to the working directory; empty: no lock file.")
    debug = Bool(False, config=True, help="Raise errors as they are, with their cause chain (for a bug report), "
                                          "instead of a one-line UsageError.")
    display = CaselessStrEnum(("auto", "widget", "text"), "auto", config=True,
                              help="Progress display: widgets in Jupyter, text in a terminal (auto), or forced.")

    @validate("dtype", "device_map", "max_memory")
    def _check_default(self, proposal):
        """``%config HFNotebook.dtype = 'bf17'`` is refused when it is set (the value stays as it was, and
        ``%config`` shows why), not at the next call."""
        from .core.options import parse_device_map, parse_dtype, parse_max_memory

        check = {"dtype": parse_dtype, "device_map": parse_device_map, "max_memory": parse_max_memory}
        name, value = proposal["trait"].name, proposal["value"]
        try:
            check[name](value or None) if name == "max_memory" else check[name](value)
        except HfNotebookError as exc:
            raise TraitError(f"HFNotebook.{name} = {value!r} is refused: {exc}") from None  # %config logs it
        return value

    def __init__(self, shell=None, **kwargs):
        super().__init__(shell=shell, **kwargs)
        from .core.registry import Registry

        self.registry = Registry()  # this shell's loaded models

    @magic_arguments()
    @argument("spec", help=_SPEC_HELP)
    @argument("--as", dest="name", default=None,
              help="Notebook variable to bind the model to (default: model; with --plan-only, the plan, if given).")
    @argument("--plan-only", action="store_true", help="Only plan (like %%plan_model): download no weights.")
    @argument("--tokenizer", nargs="?", const="", default=None, metavar="VAR",
              help="Also load the tokenizer from the same pinned commit, bound to VAR (default: NAME_tokenizer).")
    @argument("--locked", action="store_true",
              help="Load the commit the lock file pins for this repo@revision; refuse if the revision has moved.")
    @argument("--update", action="store_true", help="Load the revision as it is now and move its lock entry there.")
    @_option_args(load=True)
    @line_magic
    @_usage_errors
    def load_model(self, line: str):
        """Resolve, download, place and load a Hugging Face model, then bind it to a variable."""
        args = _parse(self.load_model, line)
        _from_plan(self.load_model, args, self.shell.user_ns.get(args.spec))
        if args.plan_only:
            return self._plan(args, plot=False)
        name = _check_name(args.name or "model", self.shell)
        tokenizer_name = _check_name(args.tokenizer or f"{name}_tokenizer", self.shell) if args.tokenizer is not None else None
        options = self._options(args, offload_folder=args.offload_folder or self.offload_folder,
                                tokenizer=tokenizer_name is not None)
        spec, key = self._lock_spec(args, options)
        result, error = self._load(spec, options, name)
        if error is not None:  # raised here, out of the frames that held the half-built model and the failure
            raise error
        previous = self.registry.get(name)
        self.shell.user_ns[name] = result.model
        if tokenizer_name is not None:
            self.shell.user_ns[tokenizer_name] = result.tokenizer
        self.registry.add(name, result)
        if previous is not None:
            self._release(previous)
        self._record_lock(result, key, update=args.update or args.locked)

    # -- the lock file ---------------------------------------------------------------------------
    def _lock_path(self):
        from pathlib import Path

        return Path(self.lock_file).expanduser() if self.lock_file else None

    def _lock_spec(self, args, options):
        """The spec to load and the lock key: with --locked, the locked sha (after checking for drift)."""
        from .core.hub import lock
        from .core.spec import parse_spec

        if args.locked and args.update:
            raise UsageError("--locked loads the locked commit and --update moves it: give one of them.")
        spec = parse_spec(args.spec)
        if spec.is_local:
            if args.locked or args.update:
                raise UsageError("A local folder has no Hub revision to lock; --locked and --update are for Hub models.")
            return args.spec, None
        key = lock.key_of(spec.repo_id, spec.revision)
        path = self._lock_path()
        entry = lock.read(path).get(key) if path else None  # a damaged lock file is named before the load, not after
        if not args.locked:
            return args.spec, key
        if entry is None:
            raise UsageError(f"The lock file {path} has no entry for {key}. Load it once without --locked "
                             "(or with --update) to record it.")
        _check_locked_kernel(key, entry, options.attn_implementation)
        if not options.offline:
            from .core.hub.resolve import resolve

            now = resolve(spec, token=options.token).pin.sha
            if now != entry["sha"]:
                raise UsageError(f"{key} has moved on the Hub: the lock file pins {entry['sha']}, the Hub now has "
                                 f"{now}. Load the locked commit with %load_model {spec.repo_id}@{entry['sha']}, "
                                 "or take the new one with --update.")
        return f"{spec.repo_id}@{entry['sha']}", key

    def _record_lock(self, result, key, update: bool) -> None:
        """Record a Hub load in the lock file; an existing entry moves only with --update (else: a note). The
        model is bound already: a lock file that cannot be written is a warning, not a lost load."""
        from .core.hub import lock

        path = self._lock_path()
        if path is None or key is None or result.pin.kind == "local":
            return

        def make(old):
            new = lock.entry_for(result, old)
            new["revision"] = key.rsplit("@", 1)[1]
            return None if old is not None and old["sha"] != new["sha"] and not update else new

        try:
            old, new = lock.update(path, key, make)
        except (OSError, HfNotebookError) as exc:
            reason = exc.message if isinstance(exc, HfNotebookError) else (exc.strerror or str(exc))
            print(f"Warning: the lock file {path} was not updated ({reason}); the model is loaded and bound.")
            return
        if new is None:
            print(f"Note: the lock file pins {key} to {old['sha'][:12]}; this load used {result.pin.sha[:12]} "
                  f"({key.rsplit('@', 1)[1]} moved). --update moves the lock; --locked loads the locked commit.")
        elif old is not None and old != new:
            print(f"Lock file {path}: {key} updated: " + "; ".join(lock.changes(old, new)))

    @magic_arguments()
    @argument("--check", action="store_true",
              help="Check every entry against the Hub (has its revision moved?) and the local cache "
                   "(files present, sizes, hashes).")
    @line_magic
    @_usage_errors
    def lock(self, line: str = ""):
        """Show the lock file's entries: repo@revision, pinned sha, class, dtype, files."""
        from IPython.display import display

        from .core.hub import lock as L
        from .core.api import _hub_offline
        from .ui.record import lock_check_record, lock_record

        args = _parse(self.lock, line)
        path = self._lock_path()
        if path is None:
            raise UsageError("The lock file is off (%config HFNotebook.lock_file = ''). Set a path to use one.")
        entries = L.read(path)
        if not args.check:
            return display(lock_record(path, entries))
        offline = self.offline or _hub_offline()
        display(lock_check_record(path, L.check(entries, offline=offline, cache_dir=self.cache_dir)))

    def _load(self, spec: str, options, name: str):
        """Run the load with a live panel that ends in its record; return ``(result, None)`` or
        ``(None, error to raise)``.

        The error returned is a fresh one: IPython keeps the last error it showed (and, in
        ``%xmode Verbose``, prints the locals of its frames); chained to the original it would keep
        the half-built model alive, and show frames whose locals may hold a token.
        """
        from .core.api import load_model
        from .ui.record import load_record, stopped_record

        renderer = self._renderer()
        try:
            result = load_model(spec, options, name=name, on_event=renderer)
        except BaseException as exc:
            if renderer.state.failed is not None:
                renderer.finish(stopped_record(renderer.state))
            if isinstance(exc, HfNotebookError):
                return None, UsageError(str(exc))
            if isinstance(exc, KeyboardInterrupt):
                return None, KeyboardInterrupt()
            raise
        renderer.finish(load_record(result))
        return result, None

    @magic_arguments()
    @argument("spec", help=_SPEC_HELP)
    @argument("--as", dest="name", default=None, help="Bind the Plan object to this variable.")
    @argument("--plot", action="store_true", help="Also draw the memory per device as a static figure.")
    @_option_args(load=False)
    @line_magic
    @_usage_errors
    def plan_model(self, line: str):
        """Where would this model go, and will it fit? From config and safetensors headers only."""
        args = _parse(self.plan_model, line)
        return self._plan(args, plot=args.plot)

    @magic_arguments()
    @argument("name", nargs="?", default=None, help="Show where this model's blocks are and the memory per device.")
    @line_magic
    @_usage_errors
    def models(self, line: str = ""):
        """List the models loaded by hf_notebook in this kernel (name, repo@sha, class, dtype, bytes per device);
        with a NAME, show that model's record: pin, device map and memory per device, measured from its tensors."""
        from IPython.display import display

        from .ui.record import load_record, models_record

        name = _parse(self.models, line).name
        if name is None:
            return display(models_record(self.registry.items()))
        result = self.registry.get(name)
        if result is None:
            raise UsageError(f"No model named {name!r} was loaded by hf_notebook. See %models.")
        display(load_record(result))

    @magic_arguments()
    @argument("name", help="The variable a model was loaded into (see %%models).")
    @line_magic
    @_usage_errors
    def unload_model(self, line: str):
        """Remove a model's hooks and references, free its memory, and report what came back."""
        from IPython.display import display

        from .core.unload import unload

        name = _parse(self.unload_model, line).name
        result = self.registry.pop(name)
        if result is None:
            loaded = ", ".join(self.registry.names()) or "none"
            raise UsageError(f"No model named {name!r} was loaded by hf_notebook (loaded: {loaded}). See %models.")
        display(unload(name, result, [self.shell.user_ns]))

    @magic_arguments()
    @argument("name", help="A model loaded by %%load_model (its variable), or a plan bound by %%plan_model --as NAME.")
    @argument("--set", dest="sets", action="append", default=[], metavar="MODULES=DEVICE",
              help="Move modules without the widget: MODULES is a module name (as in hf_device_map) or a range of "
              "numbered children (model.layers.20-39); DEVICE is cpu, disk, cuda:N or N. Repeatable; all --set are "
              "checked together and applied as one change.")
    @argument("--export", default=None, metavar="FILE.json",
              help="Write the (edited) map as JSON and put the %%load_model line that reads it in a new cell below.")
    @line_magic
    @_usage_errors
    def edit_device_map(self, line: str):
        """Edit where a model's modules live: a widget with one row per block (ranges of layers collapsed),
        live totals against the budget, Apply (re-dispatch in place, nothing downloaded), Undo, Reset and
        Export. With --set or --export it works without the widget (terminal, scripts)."""
        from IPython.display import display

        from .core.api import apply_device_map, device_map_editor
        from .core.devices.editing import parse_assignment
        from .ui import _in_kernel
        from .ui import words
        from .ui.editor import DeviceMapEditor

        args = _parse(self.edit_device_map, line)
        target = self._edit_target(args.name)
        if not args.sets and not args.export:
            editor = DeviceMapEditor(target, name=args.name)
            if self.display == "text" or (self.display == "auto" and not _in_kernel(self.shell)):
                print(editor.to_text())
                print(f"Change it with %edit_device_map {args.name} --set MODULES=DEVICE [--set ...]")
            else:
                editor.display()
            return
        try:
            draft = device_map_editor(target)
            if args.sets:
                draft.assign([parse_assignment(text) for text in args.sets])
                problems = draft.problems()
                if problems:
                    raise UsageError("The edited map does not fit: " + "; ".join(map(words.problem_text, problems))
                                     + ". Nothing was moved.\nMove less there, or raise --max-memory.")
                moved = apply_device_map(target, draft.map)
                print(words.applied_text(moved))
            if args.export:
                draft.to_json(args.export)
                if hasattr(target, "map_file"):
                    target.map_file = args.export
        except OSError as exc:
            raise UsageError(f"Cannot write {args.export!r}: {exc.strerror}. Give a writable path.") from None
        display(target)
        if args.export:
            load = words.map_load_line(target, f"@{args.export}", name=args.name)
            print(f"Wrote {args.export}; a new cell below loads it:\n  {load}")
            self.shell.set_next_input(load)

    @magic_arguments()
    @argument("name", help="The variable a model was loaded into by %%load_model.")
    @argument("folder", nargs="?", default=None,
              help="Folder to save into (written next to it first, then renamed into place). "
                   "Without it, the save and push panel opens.")
    @argument("--max-shard-size", default=None, help="Largest shard, e.g. 2GB (default: transformers' 50GB).")
    @argument("--dtype", default=None, help="Convert on the way out: float32 | bfloat16 | float16.")
    @argument("--overwrite", action="store_true",
              help="Replace an existing folder (only once the new one is complete).")
    @line_magic
    @_usage_errors
    def save_model(self, line: str):
        """Save a loaded model as a complete model folder (safetensors shards and index as transformers writes
        them, config, generation config, tokenizer files and a manifest of sha256 hashes), atomically and in
        bounded memory, also for offloaded models."""
        from IPython.display import display

        args = _parse(self.save_model, line)
        result = self._loaded(args.name)
        if args.folder is None:
            return self._save_panel(result, args)
        saved = self._save(result, args.folder, max_shard_size=args.max_shard_size, dtype=args.dtype,
                           overwrite=args.overwrite)
        display(saved)

    def _save(self, result, folder: str, **options):
        """Run a save with the shell's rules (never into a folder a loaded model reads from)."""
        from .core.dtypes import parse_dtype
        from .core.weights.save import parse_shard_size, save_model

        try:
            dtype = parse_dtype(options.get("dtype")) if options.get("dtype") else None
            shard = parse_shard_size(options.get("max_shard_size"))
            return save_model(result, folder, max_shard_size=shard, dtype=dtype, overwrite=options.get("overwrite"),
                              reads_from=self._folders_in_use(), on_event=options.get("on_event"))
        except KeyboardInterrupt:
            raise KeyboardInterrupt() from None
        except OSError as exc:
            raise UsageError(f"Saving into {folder} failed: {exc.strerror or exc}. The folder is as it was.") from None

    def _folders_in_use(self) -> tuple:
        """Folders loaded models read weights from: their source folders and offload folders."""
        found = []
        for _, r in self.registry.items():
            found += [f for f in (r.source_folder, r.offload_folder) if f]
        return tuple(found)

    def _loaded(self, name: str):
        result = self.registry.get(name)
        if result is None:
            loaded = ", ".join(self.registry.names()) or "none"
            raise UsageError(f"No model named {name!r} was loaded by hf_notebook (loaded: {loaded}). See %models.")
        return result

    @magic_arguments()
    @argument("name", nargs="?", default=None, help="A model loaded by %%load_model (saved first, then pushed).")
    @argument("repo_id", help="Where to push: owner/name (created if needed).")
    @argument("--from", dest="folder", default=None, help="Push this saved folder instead of a loaded model.")
    @argument("--private", action="store_true", help="Create the repo private.")
    @argument("--branch", default=None, help="Commit to this branch (created from main if needed).")
    @argument("--create-pr", action="store_true", help="Open a pull request instead of committing to the branch.")
    @argument("--message", default=None, help="The commit message.")
    @argument("--tag", default=None, help="Tag the new commit.")
    @argument("--max-shard-size", default=None, help="When saving a loaded model first: largest shard.")
    @argument("--dtype", default=None, help="When saving a loaded model first: convert on the way out.")
    @line_magic
    @_usage_errors
    def push_model(self, line: str):
        """Push a loaded model (saved to a temporary folder first) or a saved folder (--from DIR) to the Hub in one
        commit: weights through LFS/Xet, a model card when there is none, then the commit sha, its URL and the
        %load_model line that loads it back. The token comes from your login (hf auth login, HF_TOKEN)."""
        import tempfile

        args = _parse(self.push_model, line)
        if args.name and args.folder:
            raise UsageError("Give either a model NAME or --from DIR, not both.")
        if not args.name and not args.folder:
            raise UsageError("Name a loaded model (%push_model NAME owner/repo) or a folder (--from DIR).")
        if args.folder:
            self._push_showing(args.folder, args)
            return
        result = self._loaded(args.name)
        with tempfile.TemporaryDirectory(prefix="hf_notebook-push-") as tmp:
            self._save(result, os.path.join(tmp, "model"), max_shard_size=args.max_shard_size, dtype=args.dtype)
            self._push_showing(os.path.join(tmp, "model"), args)

    def _push_showing(self, folder: str, args) -> None:
        """A push with per-file upload progress (a bar in a kernel, a line per file in a terminal), then its record."""
        from .ui import _in_kernel
        from .ui.transfer import TransferProgress

        widget = self.display == "widget" or (self.display == "auto" and _in_kernel(self.shell))
        progress = TransferProgress("uploaded", widget=widget)
        progress.display()
        try:
            pushed = self._push(folder, args, on_event=progress)
        except BaseException as exc:
            progress.fail(exc)
            raise
        progress.finish(pushed)

    def _push(self, folder: str, args, token=None, on_event=None):
        from .core.hub.push import push_folder

        try:
            return push_folder(folder, args.repo_id, private=args.private, branch=args.branch,
                               create_pr=args.create_pr, message=args.message, tag=args.tag, token=token,
                               name=args.name, on_event=on_event)
        except KeyboardInterrupt:
            raise KeyboardInterrupt() from None

    def _save_panel(self, result, args):
        """``%save_model NAME``: the save and push panel (text in a terminal: it needs a folder)."""
        from .ui import _in_kernel
        from .ui.save_push import SavePushPanel

        if self.display == "text" or (self.display == "auto" and not _in_kernel(self.shell)):
            raise UsageError(f"Give a folder to save into: %save_model {args.name} FOLDER "
                             "(the save and push panel needs Jupyter).")
        panel = SavePushPanel(result, name=args.name, save=self._save, push=self._push_repo)
        panel.display()
        return None

    def _push_repo(self, folder: str, repo_id: str, *, token=None, on_event=None, **options):
        """The panel's push: the same rules as %push_model, without parsing a line."""
        from types import SimpleNamespace

        args = SimpleNamespace(repo_id=repo_id, private=options.get("private", False), branch=options.get("branch"),
                               create_pr=options.get("create_pr", False), message=options.get("message"),
                               tag=options.get("tag"), name=options.get("name"))
        return self._push(folder, args, token=token, on_event=on_event)

    @magic_arguments()
    @argument("spec", help="org/name or org/name@REV (pinned to its commit sha first).")
    @argument("--to", dest="folder", required=True, help="The folder to write (new or empty).")
    @argument("--layout", default="folder", choices=("folder", "hf-cache"),
              help="folder: the files with a manifest (load with %%load_model DIR); hf-cache: a Hub cache tree "
                   "that plain transformers loads with HF_HUB_CACHE=DIR HF_HUB_OFFLINE=1.")
    @argument("--cache-dir", default=None, help="Hub cache to copy from.")
    @argument("--offline", action="store_true", help="Copy from the cache only.")
    @line_magic
    @_usage_errors
    def export_model(self, line: str):
        """Write a pinned model's files into a folder to carry to a host without network: copied from the cache
        (only missing files are downloaded), with a manifest of sizes and sha256 and a BUNDLE.md on loading it."""
        from IPython.display import display

        from .core.api import _hub_offline
        from .core.hub.bundle import export_bundle

        args = _parse(self.export_model, line)
        result = export_bundle(args.spec, args.folder, layout=args.layout,
                               cache_dir=args.cache_dir or self.cache_dir,
                               offline=args.offline or self.offline or _hub_offline())
        display(result)

    def _edit_target(self, name: str):
        """The loaded model (its LoadResult) or the bound Plan called ``name``."""
        from .core.devices.plan import Plan

        result = self.registry.get(name)
        if result is not None:
            return result
        value = self.shell.user_ns.get(name)
        if isinstance(value, Plan):
            return value
        loaded = ", ".join(self.registry.names()) or "none"
        raise UsageError(f"{name!r} is neither a model loaded by hf_notebook (loaded: {loaded}) nor a plan. "
                         f"Load one with %load_model ... --as {name}, or plan one with %plan_model ... --as {name}.")

    def _release(self, result) -> None:
        """A model replaced by a new one under its name: its references go; its temporary offload folder goes
        with the model itself, once nothing else holds it (``core.owned``)."""
        result.model = None
        gc.collect()

    def _plan(self, args, plot: bool):
        from IPython.display import display

        from .core.api import plan_model

        name = _check_name(args.name, self.shell) if args.name else None
        plan = plan_model(args.spec, self._options(args))
        display(plan)
        if plot:
            self._show_figure(plan)
        if name:
            self.shell.user_ns[name] = plan

    def _show_figure(self, plan) -> None:
        """The memory figure: an image in Jupyter; in a terminal, a PNG file whose path is printed."""
        from IPython.display import display

        from .ui import _in_kernel

        image = _figure_image(plan)
        if self.display == "widget" or (self.display == "auto" and _in_kernel(self.shell)):
            display(image)
            return
        import tempfile

        handle, path = tempfile.mkstemp(prefix="hf_notebook-plan-", suffix=".png")
        with os.fdopen(handle, "wb") as f:
            f.write(image.data)
        print(f"Memory per device drawn to {path}")

    def _options(self, args, **load_only):
        """The table's options from the line, the configurable's defaults filled in, validated (HF_HUB_OFFLINE
        read now: it may have been set after import); ``load_only`` adds or replaces values."""
        from .core.api import _hub_offline
        from .core.option_table import OPTIONS
        from .core.options import LoadOptions

        given = {o.dest: getattr(args, o.dest) for o in OPTIONS if hasattr(args, o.dest)}
        given.update(dtype=args.dtype or self.dtype, device_map=args.device_map or self.device_map,
                     max_memory=args.max_memory or self.max_memory or None, cache_dir=args.cache_dir or self.cache_dir,
                     offline=args.offline or self.offline or _hub_offline())
        return LoadOptions.parse(**{**given, **load_only})

    def _renderer(self):
        from .ui import make_renderer

        renderer = make_renderer(self.shell, mode=self.display)
        renderer.display()
        return renderer


def _check_locked_kernel(key: str, entry: dict, asked) -> None:
    """Under ``--locked``, the Hub kernel on the line is the one the lock file recorded (or neither has one)."""
    from .core.hub.kernel import is_hub_kernel
    from .core.hub.lock import kernel_of

    locked = kernel_of(entry)
    asked = asked.split(":")[0] if is_hub_kernel(asked) else None
    if locked == asked:
        return
    if locked is None:
        raise UsageError(f"The lock file records {key} without a Hub kernel; this line asks for {asked}. "
                         "Leave --attn-implementation out, or record the kernel with --update.")
    raise UsageError(f"The lock file records {key} with the kernel {locked}; this line asks for "
                     f"{asked or 'none'}. Add --attn-implementation {locked} --trust-remote-code, "
                     "or record the change with --update.")


def _from_plan(magic, args, value) -> None:
    """``%load_model PLAN``: a bound (and perhaps edited) plan gives the source and every option it was made
    with, and its map; flags given on the line still win (switches add, ``--kw`` items come after the plan's)."""
    from .core.devices.plan import Plan
    from .core.option_table import OPTIONS
    from .ui.words import plan_line

    if not isinstance(value, Plan) or not value.source:
        return
    planned = _parse(magic, plan_line(value).removeprefix("%load_model "))
    for option in OPTIONS:
        mine = getattr(args, option.dest)
        if option.repeat:
            setattr(args, option.dest, getattr(planned, option.dest) + mine)
        elif mine is None or mine is False:
            setattr(args, option.dest, getattr(planned, option.dest))
    args.spec = value.source


def _figure_image(plan):
    """The memory figure as a PNG image: static, so it survives nbval and HTML export."""
    import io

    from IPython.display import Image

    from .ui.views import memory_figure

    buffer = io.BytesIO()
    memory_figure(plan.placement(), plan.budget, title=plan.source).savefig(buffer, format="png", dpi=96)
    return Image(data=buffer.getvalue(), format="png")


def _check_name(name: str, shell) -> str:
    """A variable a model may be bound to: an identifier that breaks nothing when rebound."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise UsageError(f"--as {name!r} is not a valid Python variable name.")
    if name.startswith("__") or name in shell.user_ns_hidden or name in ("In", "Out", "get_ipython", "exit", "quit"):
        raise UsageError(f"--as {name!r} would replace a name that Python or IPython needs. Pick another name.")
    return name


def instance(shell) -> HFNotebook:
    """The ``HFNotebook`` configurable registered with ``shell`` (its registry, its settings)."""
    found = next((c for c in shell.configurables if isinstance(c, HFNotebook)), None)
    if found is None:
        raise LookupError("hf_notebook is not loaded in this shell: run %load_ext hf_notebook")
    return found


def register(shell) -> None:
    """Register the magics (and so the ``HFNotebook`` configurable) and the core results' records with ``shell``."""
    from .ui import register_renderers

    shell.register_magics(HFNotebook(shell=shell))
    register_renderers(shell)


def unregister(shell) -> None:
    """Remove the magics, the configurable and the records again."""
    from .ui import unregister_renderers

    unregister_renderers(shell)
    line_magics = shell.magics_manager.magics["line"]
    for instance in [c for c in shell.configurables if isinstance(c, HFNotebook)]:
        shell.configurables.remove(instance)
        for name in instance.magics["line"]:
            line_magics.pop(name, None)
        shell.magics_manager.registry.pop(type(instance).__name__, None)
        for name in list(instance.registry.names()):  # the models go once the notebook's names go too
            instance.registry.pop(name)
