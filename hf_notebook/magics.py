"""IPython magics: parse a line, call the shell's :class:`~.core.session.Session`, show the result.

The load and plan options come from one table (``core/option_table.py``): a new option is a row
there, not an ``argument`` here. A new action is a Session method that returns a result, a record
for it in ``ui/record.py`` or another module of ``ui/`` (registered in ``ui/__init__.py``), and a magic
here that parses, calls and displays, decorated with ``@_usage_errors``. The magics class is also the traitlets
configurable ``HFNotebook`` (the Session's settings), so defaults can be set with
``%config HFNotebook.cache_dir = "/data/hf"`` or in an IPython profile.
"""

from __future__ import annotations

import functools
import keyword
import os
import weakref

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, argument_group, magic_arguments, parse_argstring
from traitlets import Bool, CaselessStrEnum, TraitError, Unicode, validate

from .core.errors import HfNotebookError, redact

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


class _HelpShown(Exception):
    """``--help`` was given: the magic's help is printed and the magic does nothing else."""


class Cancelled(KeyboardInterrupt):
    """Ctrl-C (or the kernel's interrupt) ended an action: IPython shows this one line, no frames."""

    def _render_traceback_(self) -> list[str]:  # IPython's hook: these lines instead of a traceback
        return [f"KeyboardInterrupt: {self}"]


def _usage_errors(method):
    """Our errors reach the user as a ``UsageError``: what went wrong and what to do, no traceback; Ctrl-C as one
    ``Cancelled`` line. With ``%config HFNotebook.debug = True`` errors are raised as they are, with their cause
    chain, for a bug report (our messages carry no token either way)."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        interrupted = False
        try:
            return method(self, *args, **kwargs)
        except _HelpShown:
            return None
        except UsageError as exc:  # a check of the magic's own: it may quote what was typed
            raise UsageError(redact(str(exc))) from None
        except HfNotebookError as exc:
            if self.debug:
                raise
            raise UsageError(str(exc)) from None
        except Cancelled:
            raise
        except KeyboardInterrupt:
            interrupted = True  # raised below, outside this block: no reference to the frames it stopped
        if interrupted:
            from .ui.words import cancelled_text

            raise Cancelled(cancelled_text(f"%{method.__name__}"))

    return run


def _parse(magic, line: str):
    """``parse_argstring``, then one pair of matching outer quotes off every string value.

    IPython splits magic lines without shell rules, so ``--device-map '{"a": 0}'`` arrives
    with its quotes; users write them to keep spaces together, as in a shell.
    """
    from IPython.utils.process import arg_split  # IPython's own splitter, as parse_argstring's

    from .core.option_table import unquote

    name = f"%{magic.__name__}"
    try:
        words = arg_split(line, strict=False)
    except ValueError:
        words = line.split()
    if "--help" in words or "-h" in words:  # as for any command line (IPython's parser has no help flag)
        print(magic.parser.format_help().removeprefix("::\n\n  ").rstrip())  # the docstring's rst marker off
        raise _HelpShown()
    try:
        args = parse_argstring(magic, line)
    except ValueError as exc:  # the line splitter: an unterminated quote
        raise UsageError(redact(f"Cannot read the line: {exc}. Close every quote you open.")) from None
    except UsageError as exc:  # argparse's words, which may quote what was typed (a token in the wrong place)
        raise UsageError(redact(f"{exc}\nSee {name} --help.")) from None
    for key, value in vars(args).items():
        if isinstance(value, list):  # repeatable options (--set, --kw): each item as a single value
            setattr(args, key, [unquote(v) for v in value])
        else:
            setattr(args, key, unquote(value))
    return args


def _given(args) -> dict:
    """The table's options as the line gave them (None, False or [] where it did not)."""
    from .core.option_table import OPTIONS

    return {o.dest: getattr(args, o.dest) for o in OPTIONS if hasattr(args, o.dest)}


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

    @validate("dtype", "device_map", "max_memory", "cache_dir", "offload_folder", "lock_file")
    def _check_default(self, proposal):
        """``%config HFNotebook.dtype = 'bf17'`` is refused when it is set (the value stays as it was, and
        ``%config`` shows why), not at the next call."""
        from .core.folders import parse_folder
        from .core.hub.lock import check_lock_path
        from .core.options import parse_device_map, parse_dtype, parse_max_memory

        name, value = proposal["trait"].name, proposal["value"]
        check = {"dtype": parse_dtype, "device_map": parse_device_map,
                 "max_memory": lambda v: parse_max_memory(v or None),
                 "cache_dir": lambda v: parse_folder(v, f"HFNotebook.{name}"),
                 "offload_folder": lambda v: parse_folder(v, f"HFNotebook.{name}"),
                 "lock_file": lambda v: check_lock_path(v) if v else None}
        try:
            check[name](value)
        except HfNotebookError as exc:
            raise TraitError(redact(f"HFNotebook.{name} = {value!r} is refused: {exc}")) from None  # %config logs it
        return value

    def __init__(self, shell=None, **kwargs):
        super().__init__(shell=shell, **kwargs)
        from .core.session import Session

        self.session = Session(settings=self, namespace=shell.user_ns if shell is not None else None)

    @property
    def registry(self):
        """This shell's loaded models (the Session's)."""
        return self.session.registry

    def after_cell(self, result=None) -> None:
        """IPython's ``post_run_cell``: a model whose name a cell deleted or rebound gives its memory back now."""
        self.session.release_unbound()

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
        from .ui.words import lock_update_text, replaced_text

        args = _parse(self.load_model, line)
        if args.plan_only:
            return self._plan(args, plot=False)
        name = _check_name(args.name or "model", self.shell)
        tokenizer = _check_name(args.tokenizer or f"{name}_tokenizer", self.shell) if args.tokenizer is not None \
            else False
        request = self.session.request(args.spec, name=name, tokenizer=tokenizer, locked=args.locked,
                                       update=args.update, **_given(args))
        result, error = self._load(request)
        if error is not None:  # raised here, out of the frames that held the half-built model and the failure
            raise error
        for note in (replaced_text(result.replaced, name), lock_update_text(result.lock)):
            if note:
                print(note)

    @magic_arguments()
    @argument("--check", action="store_true",
              help="Check every entry against the Hub (has its revision moved?) and the local cache "
                   "(files present, sizes, hashes).")
    @line_magic
    @_usage_errors
    def lock(self, line: str = ""):
        """Show the lock file's entries: repo@revision, pinned sha, class, dtype, files."""
        from IPython.display import display

        from .ui.record import lock_check_record, lock_record

        args = _parse(self.lock, line)
        session = self.session
        if not args.check:
            return display(lock_record(session.lock_path, session.lock_entries()))
        display(lock_check_record(session.lock_path, session.lock_check()))

    def _load(self, request):
        """Run the load with a live panel that ends in its record; return ``(result, None)`` or
        ``(None, error to raise)``.

        The error returned is a fresh one: IPython keeps the last error it showed (and, in
        ``%xmode Verbose``, prints the locals of its frames); chained to the original it would keep
        the half-built model alive, and show frames whose locals may hold a token.
        """
        from .ui.record import load_record, stopped_record

        renderer = self._renderer()
        renderer.state.spec = request.spec
        try:
            result = self.session.run(request, on_event=renderer)
        except BaseException as exc:
            if renderer.state.failed is not None:
                renderer.finish(stopped_record(renderer.state))
            if isinstance(exc, HfNotebookError):
                return None, UsageError(str(exc))
            if isinstance(exc, KeyboardInterrupt):
                return None, Cancelled(_cancelled_load(request, renderer.state))
            raise
        renderer.finish(load_record(result))
        return result, None

    @magic_arguments()
    @argument("spec", help=_SPEC_HELP)
    @argument("--as", dest="name", default=None,
              help="Bind the Plan object to this variable (with --target: the RankPlan, for %%launch_model NAME).")
    @argument("--plot", nargs="?", const=True, default=None, metavar="FILE.png",
              help="Also draw the memory per device as a static figure (in Jupyter, shown; with FILE.png, also "
                   "written there; a terminal needs the FILE).")
    @_option_args(load=False)
    @argument_group("options: tensor/pipeline-parallel (a plan per rank, for %launch_model)")
    @argument("--target", default=None, metavar="NODESxGPUSxCARD",
              help="Plan for these machines instead of this one: 2x8xH100 (2 nodes of 8), 8xH100, 1x2xcpu (2 ranks "
                   "on this machine's CPU, which %%launch_model --run runs).")
    @argument("--gpus", type=int, default=None, metavar="N", help="Instead of --target: devices per node.")
    @argument("--gpu-memory", default=None, metavar="SIZE", help="With --gpus: memory per device, e.g. 80GiB.")
    @argument("--nodes", type=int, default=None, metavar="N", help="With --gpus: nodes (default 1).")
    @argument("--tp", type=int, default=None, metavar="N",
              help="Tensor-parallel ranks (default: with --pp, 1; without both, the smallest layout that fits).")
    @argument("--pp", type=int, default=None, metavar="N",
              help="Pipeline stages (default: with --tp, 1; without both, the smallest layout that fits).")
    @line_magic
    @_usage_errors
    def plan_model(self, line: str):
        """Where would this model go, and will it fit? From config and safetensors headers only. With --target
        (or --gpus --gpu-memory), each rank's share of a tensor/pipeline-parallel split instead, for
        %launch_model."""
        args = _parse(self.plan_model, line)
        return self._plan(args, plot=args.plot)

    @magic_arguments()
    @argument("name", help="A parallel plan bound by %%plan_model ... --target ... --as NAME.")
    @argument("--engine", default="transformers", choices=("transformers", "vllm", "sglang"),
              help="transformers (default): write run.py, launch.sh and README.md into --to DIR; vllm, sglang: "
                   "show the serve command per node. Every one is pinned to the plan's full commit sha.")
    @argument("--to", dest="folder", default=None, metavar="DIR",
              help="transformers: the folder to write (new, empty, or one %%launch_model wrote); with --run, "
                   "where the run's launch files go (default: a temporary folder).")
    @argument("--run", action="store_true",
              help="Run it here (transformers, a 1xNxcpu plan): one process per rank under torchrun, each rank's "
                   "state live, then its logits against one process and its parameter bytes against the plan. "
                   "Ctrl-C stops every rank.")
    @argument("--as", dest="as_name", default=None, metavar="VAR",
              help="Bind the result: with --run the RunResult (.command, .max_logit_diff, .rank_param_bytes, "
                   ".returncode), else the Launch (.commands, .files).")
    @argument("--memory-fraction", type=float, default=None, metavar="F",
              help="Share of each GPU the engine may take (vLLM --gpu-memory-utilization, SGLang "
                   "--mem-fraction-static; default 0.9 for them, none for transformers).")
    @argument("--master-addr", default=None, metavar="HOST",
              help="Several nodes: node 0's address (default: the placeholder MASTER_ADDR to fill in).")
    @argument("--master-port", type=int, default=None, metavar="PORT", help="Several nodes: node 0's port.")
    @argument("--timeout", type=float, default=600.0, metavar="SECONDS", help="--run: stop the ranks after this.")
    @line_magic
    @_usage_errors
    def launch_model(self, line: str):
        """Launch a parallel plan (%plan_model ... --target ... --as NAME) pinned to its commit sha: the files
        and commands for transformers (torchrun), vLLM or SGLang, one line per node; or, with --run, run it
        here and check it."""
        from IPython.display import display

        args = _parse(self.launch_model, line)
        name = _check_name(args.as_name, self.shell) if args.as_name else None
        plan = self.session.rank_plan(args.name)  # not a parallel plan: said before anything else
        if args.run:
            result = self._run_ranks(plan, args)
            if name:
                self.shell.user_ns[name] = result
            if result.returncode != 0 and not result.cancelled:
                raise UsageError(f"The run failed (exit {result.returncode}); each rank's last log lines are in the "
                                 f"record above{', its logs in ' + result.logs if result.logs else ''}.")
            return
        else:
            fraction = args.memory_fraction
            if fraction is None and args.engine != "transformers":
                fraction = 0.9
            result = self.session.launch(plan, engine=args.engine, folder=args.folder, memory_fraction=fraction,
                                         master_addr=args.master_addr, master_port=args.master_port)
            display(result)
        if name:
            self.shell.user_ns[name] = result

    def _run_ranks(self, plan, args):
        """``%launch_model NAME --run``: the run with a live panel per rank that ends in the run's record."""
        from .ui.distributed import RunPanel

        if args.engine != "transformers":
            raise UsageError(f"--run runs the transformers engine here; {args.engine} runs on your GPU servers. "
                             f"Show its command with %launch_model {args.name} --engine {args.engine}, or run with "
                             "--engine transformers.")
        if args.memory_fraction is not None or args.master_addr or args.master_port:
            raise UsageError("--run starts one node on this machine's CPU: leave out --memory-fraction, "
                             "--master-addr and --master-port.")
        if not plan.local:
            raise UsageError(f"--run starts the ranks on this machine's CPU, and {args.name} is planned for "
                             f"{plan.target}. Plan with --target 1x{plan.world_size}xcpu to run it here, or write "
                             f"the launch with %launch_model {args.name} --to DIR and run its launch.sh on the "
                             "cluster.")
        from .ui import _in_kernel

        widget = self.display == "widget" or (self.display == "auto" and _in_kernel(self.shell))
        panel = RunPanel(plan, widget=widget)
        panel.display()
        interrupted = False
        try:
            result = self.session.run_ranks(plan, folder=args.folder, on_event=panel, timeout_s=args.timeout)
        except KeyboardInterrupt:
            panel.fail(KeyboardInterrupt())
            interrupted = True  # raised below, outside this block: no reference to the frames it stopped
        except BaseException as exc:
            panel.fail(exc)
            raise
        if interrupted:
            from .ui.words import cancelled_text

            raise Cancelled(cancelled_text(f"The run of {plan.source}") + " Every rank was stopped.")
        panel.finish(result)
        return result

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
        display(load_record(self.session.get(name)))

    @magic_arguments()
    @argument("name", help="The variable a model was loaded into (see %%models).")
    @argument("--context", type=int, required=True, metavar="TOKENS", help="Tokens of the prefill.")
    @argument("--batch", type=int, default=1, metavar="N", help="Sequences at once (default 1).")
    @argument("--steps", type=int, default=4, metavar="N", help="Decode steps after the prefill (default 4).")
    @line_magic
    @_usage_errors
    def measure(self, line: str):
        """Run one prefill and a few decode steps on random token ids with a loaded model, and show per device
        the KV cache planned against the cache's own tensors, and the peak memory the step added."""
        from IPython.display import display

        args = _parse(self.measure, line)
        if min(args.context, args.batch) < 1 or args.steps < 0:
            raise UsageError("--context and --batch take whole numbers of at least 1, --steps of at least 0.")
        display(self.session.measure(args.name, context=args.context, batch=args.batch, steps=args.steps))

    @magic_arguments()
    @argument("name", help="The variable a model was loaded into (see %%models).")
    @line_magic
    @_usage_errors
    def unload_model(self, line: str):
        """Remove a model's hooks and references, free its memory, and report what came back."""
        from IPython.display import display

        display(self.session.unload(_parse(self.unload_model, line).name))

    @magic_arguments()
    @argument("name", help="A model loaded by %%load_model (its variable), or a plan bound by %%plan_model --as NAME.")
    @argument("--set", dest="sets", action="append", default=[], metavar="MODULES=DEVICE",
              help="Move modules without the widget: MODULES is a module name (as in hf_device_map) or a range of "
              "numbered children (model.layers.20-39); DEVICE is cpu, disk, cuda:N or N. Repeatable; all --set are "
              "checked together and applied as one change.")
    @argument("--layers", default=None, metavar="N|max",
              help="The first N layers on the fastest device on offer, the rest on the next one (the editor's "
                   "slider); max: the most that fit the budgets. Applied before any --set.")
    @argument("--export", default=None, metavar="FILE.json",
              help="Write the (edited) map as JSON and show the %%load_model line that reads it (in a terminal, "
                   "also at the next prompt).")
    @line_magic
    @_usage_errors
    def edit_device_map(self, line: str):
        """Edit where a model's modules live: a widget with one row per block (ranges of layers collapsed),
        live totals against the budget, Apply (re-dispatch in place, nothing downloaded), Undo, Reset and
        Export. With --set or --export it works without the widget (terminal, scripts)."""
        from IPython.display import display

        from .ui import _in_kernel
        from .ui import words
        from .ui.editor import DeviceMapEditor

        args = _parse(self.edit_device_map, line)
        target = self.session.target(args.name)
        if not args.sets and not args.export and args.layers is None:
            editor = DeviceMapEditor(target, name=args.name)
            if self.display == "text" or (self.display == "auto" and not _in_kernel(self.shell)):
                print(editor.to_text())
                print(f"Change it with %edit_device_map {args.name} --set MODULES=DEVICE [--set ...], or "
                      f"--layers N (the first N layers on the fastest device)")
            else:
                editor.display()
            return
        if args.sets or args.layers is not None:
            print(words.applied_text(self.session.edit(target, args.sets, layers=args.layers)))
        if args.export:
            self.session.export_map(target, args.export)
        display(target)
        if args.export:
            load = words.map_load_line(target, f"@{args.export}", name=args.name)
            print(f"Wrote {args.export}; this line loads it:\n  {load}")
            if not _in_kernel(self.shell):  # a terminal's next prompt; in Jupyter a new cell on every run would pile up
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
        if args.folder is None:
            return self._save_panel(args)
        display(self.session.save(args.name, args.folder, max_shard_size=args.max_shard_size, dtype=args.dtype,
                                  overwrite=args.overwrite))

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
        from .core.hub.push import check_push_words
        from .ui import _in_kernel
        from .ui.transfer import TransferProgress

        args = _parse(self.push_model, line)
        if args.name and args.folder:
            raise UsageError("Give either a model NAME or --from DIR, not both.")
        if not args.name and not args.folder:
            raise UsageError("Name a loaded model (%push_model NAME owner/repo) or a folder (--from DIR).")
        if args.name:
            self.session.get(args.name)  # a name that is not loaded: said before any panel shows
        check_push_words(args.repo_id, branch=args.branch, tag=args.tag, message=args.message)  # and bad words
        widget = self.display == "widget" or (self.display == "auto" and _in_kernel(self.shell))
        progress = TransferProgress("uploaded", widget=widget, title=f"push to {args.repo_id}")
        progress.display()
        try:
            pushed = self.session.push(args.repo_id, model=args.name, folder=args.folder, private=args.private,
                                       branch=args.branch, create_pr=args.create_pr, message=args.message,
                                       tag=args.tag, max_shard_size=args.max_shard_size, dtype=args.dtype,
                                       on_event=progress)
        except BaseException as exc:
            progress.fail(exc)
            raise
        progress.finish(pushed)

    def _save_panel(self, args):
        """``%save_model NAME``: the save and push panel (text in a terminal: it needs a folder)."""
        from .ui import _in_kernel
        from .ui.save_push import SavePushPanel

        self.session.get(args.name)  # a name that is not loaded: said first
        if self.display == "text" or (self.display == "auto" and not _in_kernel(self.shell)):
            raise UsageError(f"Give a folder to save into: %save_model {args.name} FOLDER "
                             "(the save and push panel needs Jupyter).")
        SavePushPanel(self.session, args.name).display()

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

        args = _parse(self.export_model, line)
        display(self.session.export(args.spec, args.folder, layout=args.layout, cache_dir=args.cache_dir,
                                    offline=args.offline))

    def _plan(self, args, plot: bool):
        from IPython.display import display

        name = _check_name(args.name, self.shell) if args.name else None
        parallel = {k: getattr(args, k, None) for k in _PARALLEL}
        if any(v is not None for v in parallel.values()):
            plan = self.session.plan_ranks(args.spec, name=name, **parallel, **_given(args))
            display(plan)
            if plot:
                self._show_figure(plan, plot)
            if name:
                self.shell.user_ns[name] = plan
            return
        plan = self.session.plan(args.spec, **_given(args))
        display(plan)
        if plot:
            self._show_figure(plan, plot)
        if name:
            self.shell.user_ns[name] = plan

    def _show_figure(self, plan, path) -> None:
        """The memory figure: an image in Jupyter; written to ``path`` when one is given (a terminal needs it)."""
        from IPython.display import display

        from .ui import _in_kernel

        shown = self.display == "widget" or (self.display == "auto" and _in_kernel(self.shell))
        if not shown and not isinstance(path, str):
            raise UsageError("A terminal cannot show the figure: give the file to draw it into, e.g. "
                             "--plot plan.png")
        image = _figure_image(plan)
        if shown:
            display(image)
        if isinstance(path, str):
            try:
                with open(os.path.expanduser(path), "wb") as f:
                    f.write(image.data)
            except OSError as exc:
                raise UsageError(f"Cannot write the figure to {path!r}: {exc.strerror}. Give a writable path.") from None
            print(f"Memory per {'rank' if hasattr(plan, 'ranks') else 'device'} drawn to {path}")

    def _renderer(self):
        from .ui import make_renderer

        renderer = make_renderer(self.shell, mode=self.display)
        renderer.display()
        return renderer


#: %plan_model's arguments of a tensor/pipeline-parallel plan (not load options: not in the option table).
_PARALLEL = ("target", "gpus", "gpu_memory", "nodes", "tp", "pp")


def _cancelled_load(request, state) -> str:
    """The one line a cancelled load ends with (the record above it has the details)."""
    from .ui.words import cancelled_text

    files = state.files.values()
    stage = state.failed.stage if state.failed is not None else None
    return cancelled_text(f"The load of {request.spec}", stage,
                          files=(sum(f.finished for f in files), sum(not f.finished for f in files)))


def _figure_image(plan):
    """The memory figure as a PNG image: static, so it survives nbval and HTML export."""
    import io

    from IPython.display import Image

    from .ui.views import memory_figure, rank_figure

    buffer = io.BytesIO()
    figure = rank_figure(plan) if hasattr(plan, "ranks") else memory_figure(plan.placement(), plan.budget,
                                                                             title=plan.source)
    figure.savefig(buffer, format="png", dpi=96, transparent=True)
    return Image(data=buffer.getvalue(), format="png")


def _check_name(name: str, shell) -> str:
    """A variable a model may be bound to: an identifier that breaks nothing when rebound."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise UsageError(f"--as {name!r} is not a valid Python variable name.")
    if name.startswith("__") or name in shell.user_ns_hidden or name in ("In", "Out", "get_ipython", "exit", "quit"):
        raise UsageError(f"--as {name!r} would replace a name that Python or IPython needs. Pick another name.")
    import builtins

    if hasattr(builtins, name):
        raise UsageError(f"--as {name!r} would hide Python's builtin {name}() in this notebook. Pick another name.")
    return name


# shell -> [(name, LoadResult)] of the registry an %unload_ext left, for the next %load_ext in that shell.
_KEPT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def instance(shell) -> HFNotebook:
    """The ``HFNotebook`` configurable registered with ``shell`` (its registry, its settings)."""
    found = next((c for c in shell.configurables if isinstance(c, HFNotebook)), None)
    if found is None:
        raise LookupError("hf_notebook is not loaded in this shell: run %load_ext hf_notebook")
    return found


def register(shell) -> None:
    """Register the magics (and so the ``HFNotebook`` configurable) and the core results' records with ``shell``;
    in a Jupyter kernel, start importing the libraries a first load needs in the background."""
    from .ui import _in_kernel, register_renderers

    magics = HFNotebook(shell=shell)
    for name, result in _KEPT.pop(shell, ()):  # %reload_ext: the models still bound to their names
        if name in shell.user_ns and not result.freed and shell.user_ns[name] is result.model:
            magics.registry.add(name, result)
    shell.register_magics(magics)
    shell.events.register("post_run_cell", magics.after_cell)
    register_renderers(shell)
    if _in_kernel(shell):
        import threading

        threading.Thread(target=_warm_imports, name="hf_notebook-warm-imports", daemon=True).start()


def _warm_imports() -> None:
    """Import torch, transformers, accelerate and huggingface_hub while the user reads and types: a first
    ``%load_model`` then starts at once (one that comes sooner waits for these imports in its ``import``
    stage, and a Ctrl-C there stops its wait, not the imports). Failures are left for that stage to report."""
    from .core.api import start_imports, wait_for

    try:
        wait_for(start_imports())
    except Exception:  # noqa: BLE001 - the load's own import stage tries again and reports it
        pass


def unregister(shell) -> None:
    """Remove the magics, the configurable and the records again."""
    from .ui import unregister_renderers

    unregister_renderers(shell)
    line_magics = shell.magics_manager.magics["line"]
    for instance in [c for c in shell.configurables if isinstance(c, HFNotebook)]:
        shell.configurables.remove(instance)
        if instance.after_cell in shell.events.callbacks["post_run_cell"]:
            shell.events.unregister("post_run_cell", instance.after_cell)
        for name in instance.magics["line"]:
            line_magics.pop(name, None)
        shell.magics_manager.registry.pop(type(instance).__name__, None)
        # Kept (weakly: the models go once the notebook's names go) for a %load_ext again, as %reload_ext does.
        _KEPT[shell] = instance.registry.items()
        instance.session.close()
