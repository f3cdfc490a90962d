"""One user's hf_notebook: the models loaded, the lock file and the defaults, one method per action.

The magics are a :class:`Session` with a parser in front and a display behind (one per shell); from
Python, ``hf_notebook.Session()`` is the same, lock file included. A new action is a method here that
checks its input, calls the core function that does the work and returns that function's result (data);
then a magic that parses, calls it and displays the result. A new option is a row of
``option_table.py``: :meth:`Session.options` takes it by name.
"""

from __future__ import annotations

import gc
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

from .errors import LockError, MapError, NotLoadedError, OptionError, SaveError
from .options import LoadOptions, parse_kw
from .registry import Registry


@dataclass
class Settings:
    """The defaults a call falls back to; the ``HFNotebook`` configurable has the same names (``%config``)."""

    cache_dir: Optional[str] = None
    dtype: str = "auto"
    device_map: str = "auto"
    max_memory: str = ""
    offload_folder: Optional[str] = None
    offline: bool = False
    lock_file: str = "hf_notebook.lock.json"  # relative to the working directory; "": no lock file


@dataclass(frozen=True)
class LoadRequest:
    """A load checked against the lock file and ready to run (:meth:`Session.request`, then :meth:`Session.run`)."""

    spec: str  # what to load: under --locked, repo@<the locked sha>
    options: LoadOptions
    name: str
    tokenizer_name: Optional[str]  # bind the tokenizer under this name too
    lock_key: Optional[str]  # repo@revision in the lock file; None: not recorded (a local folder)
    move_lock: bool  # --update / --locked: the entry follows this load


@dataclass(frozen=True)
class LockUpdate:
    """What a load did to the lock file: ``recorded``, ``updated`` (``changes``), ``unchanged``, ``kept`` (the
    entry pins another sha and was not moved) or ``failed`` (``reason``; the model is loaded all the same)."""

    path: str
    key: str
    outcome: str
    old_sha: Optional[str] = None
    sha: Optional[str] = None
    changes: tuple = ()  # ("sha", "0123456789ab → 89abcdef0123"), ("files", "2 changed"), ...
    reason: str = ""
    revision: str = ""


class Session:
    """The loaded models (``registry``), the lock file and the defaults (``settings``) of one user.

    ``namespace``: where models are bound by name (a notebook's ``user_ns``); without one, :meth:`load`
    only returns them. ``settings``: any object with :class:`Settings`' attributes, read at each call.
    """

    def __init__(self, settings: Any = None, namespace: Optional[dict] = None):
        self.settings = settings if settings is not None else Settings()
        self.namespace = namespace
        self.registry = Registry()

    # -- options ---------------------------------------------------------------------------------
    def options(self, *, load: bool = False, **given: Any) -> LoadOptions:
        """``LoadOptions`` from the options given (``None``/``False``/``[]``: not given), the settings filling
        the rest; ``HF_HUB_OFFLINE`` is read now (it may be set after import). ``load``: a load (its offload
        folder default too)."""
        from .hf_env import hub_offline

        s = self.settings
        raw = {k: v for k, v in given.items() if not _absent(v)}
        raw.update(dtype=raw.get("dtype") or s.dtype, device_map=raw.get("device_map") or s.device_map,
                   max_memory=raw.get("max_memory") or s.max_memory or None,
                   cache_dir=raw.get("cache_dir") or s.cache_dir,
                   offline=bool(raw.get("offline") or s.offline or hub_offline()))
        if load:
            raw["offload_folder"] = raw.get("offload_folder") or s.offload_folder
        return LoadOptions.parse(**raw)

    def with_plan(self, spec: Any, given: dict) -> tuple[Any, dict]:
        """``spec`` a :class:`Plan` (or the name of one in the namespace): its source, and every option it was
        made with and its (edited) map under the options ``given`` (given ones win, ``kw`` items come after)."""
        from .devices.plan import Plan
        from .option_table import from_args, plan_args

        plan = self.namespace.get(spec) if isinstance(spec, str) and self.namespace is not None else spec
        if not isinstance(plan, Plan) or not plan.source:
            return spec, given
        merged = from_args(plan_args(plan, quote=False))
        for key, value in given.items():
            if key == "kw" and value:
                merged["kw"] = {**parse_kw(merged.get("kw")), **parse_kw(value)}
            elif not _absent(value):
                merged[key] = value
        return plan.source, merged

    # -- plan and load ---------------------------------------------------------------------------
    def plan(self, spec: Any, *, on_event: Any = None, **given: Any):
        """Where ``spec`` would go (:func:`~.api.plan_model`), with the session's defaults."""
        from .api import plan_model

        spec, given = self.with_plan(spec, given)
        return plan_model(spec, self.options(**given), on_event=on_event)

    def load(self, spec: Any, *, name: str = "model", tokenizer: Any = False, locked: bool = False,
             update: bool = False, on_event: Any = None, **given: Any):
        """Load ``spec`` (``org/name@rev``, a folder, or a Plan) and keep it under ``name``; see :meth:`request`."""
        return self.run(self.request(spec, name=name, tokenizer=tokenizer, locked=locked, update=update, **given),
                        on_event=on_event)

    def request(self, spec: Any, *, name: str = "model", tokenizer: Any = False, locked: bool = False,
                update: bool = False, **given: Any) -> LoadRequest:
        """Check a load before it starts: its options, and the lock file (``locked``: load the sha it pins,
        refusing if the Hub has moved on; ``update``: move the entry to this load). ``tokenizer``: also load
        the tokenizer, bound as ``NAME_tokenizer`` (or the name given)."""
        spec, given = self.with_plan(spec, given)
        options = self.options(load=True, tokenizer=bool(tokenizer), **given)
        tokenizer_name = (tokenizer if isinstance(tokenizer, str) and tokenizer else f"{name}_tokenizer") \
            if tokenizer else None
        spec, key, files = self._locked_spec(str(spec), options, locked=locked, update=update)
        if files is not None:  # --locked: even an entry that lists none (then no file is vouched for)
            options = options.with_(locked_files=files)
        return LoadRequest(spec, options, name, tokenizer_name, key, update or locked)

    def run(self, request: LoadRequest, *, on_event: Any = None):
        """Run a checked load; bind the model (and tokenizer) only once it is whole, then record the lock
        entry (``result.lock`` says what became of it)."""
        from .api import load_model
        from .quiet import interrupts_held

        result = load_model(request.spec, request.options, name=request.name, on_event=on_event)
        with interrupts_held() as held:  # bound, registered, the old one released and recorded: all or nothing
            previous = self.registry.get(request.name)
            if self.namespace is not None:
                self.namespace[request.name] = result.model
                if request.tokenizer_name:
                    self.namespace[request.tokenizer_name] = result.tokenizer
            self.registry.add(request.name, result)
            if self.namespace is not None:
                result.hold_weakly()  # the notebook's names keep it: `del model` frees it
            if previous is not None and previous is not result:
                result.replaced = _release(previous)
            result.lock = self._record_lock(result, request.lock_key, request.move_lock)
        result.interrupted_late = bool(held)  # a Ctrl-C as the load ended: it completed, and its record says so
        return result

    # -- tensor/pipeline-parallel plans and launches -----------------------------------------------
    def plan_ranks(self, spec: Any, *, target: Optional[str] = None, gpus: Optional[int] = None,
                   gpu_memory: Optional[str] = None, nodes: Optional[int] = None, tp: Optional[int] = None,
                   pp: Optional[int] = None, name: Optional[str] = None, on_event: Any = None, **given: Any):
        """Each rank's share of ``spec`` split tp x pp over ``target`` (``"2x8xH100"``), or ``nodes`` x ``gpus``
        devices of ``gpu_memory``: :meth:`plan` (config, dtype, meta model), then
        :func:`~.distributed.ranks.plan_ranks`. Without ``tp`` and ``pp``, the smallest layout that fits. The
        :class:`~.distributed.ranks.RankPlan` keeps the pinned source, class and options a launch needs;
        ``name``: the variable it will be bound to (its record's ``%launch_model`` lines)."""
        from .devices.plan import build_meta_model
        from .distributed.ranks import plan_ranks

        machine = _machine(target, gpus, gpu_memory, nodes)
        for what, value in (("--tp", tp), ("--pp", pp)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise OptionError(f"{what} {value!r} is not a whole number >= 1.", hint=f"e.g. {what} 2.")
        inference = self.options(**{k: given.pop(k, None) for k in ("context", "batch", "kv_dtype")})
        if inference.context == "max":
            raise OptionError("--context max is for a plan on this machine; a parallel plan needs the number of "
                              "tokens.", hint="Give --context TOKENS, e.g. --context 8192.")
        plan = self.plan(spec, on_event=on_event, **given)
        if plan.quantization is not None:
            raise OptionError("A tensor/pipeline-parallel plan is made for unquantized weights.",
                              hint="Leave out --quantize and --quantization-config.")
        model = build_meta_model(plan.model_cls, plan.config, plan.dtype) if plan.model_cls is not None else None
        ranks = plan_ranks(plan.config, machine, dtype=plan.dtype, tp=tp, pp=pp, context=inference.context,
                           batch=inference.batch or 1, kv_dtype=inference.kv_dtype, class_name=plan.model_class,
                           model=model)
        return replace(ranks, source=plan.source, model_class=plan.model_class, options=plan.options,
                       name=name or "")

    def rank_plan(self, name: Any):
        """The :class:`~.distributed.ranks.RankPlan` given, or bound to ``name`` in the namespace."""
        from .distributed.ranks import RankPlan

        value = self.namespace.get(name) if isinstance(name, str) and self.namespace is not None else name
        if isinstance(value, RankPlan):
            return value
        what = "not defined" if value is None else f"a {type(value).__name__}"
        raise NotLoadedError(f"{name!r} is not a tensor/pipeline-parallel plan ({what}).",
                             hint=f"Make one with %plan_model org/name --target 2x8xH100 --as {name} (or --gpus N "
                                  "--gpu-memory SIZE instead of --target).")

    def launch(self, plan: Any, *, engine: str = "transformers", folder: Optional[str] = None,
               memory_fraction: Optional[float] = None, master_addr: Optional[str] = None,
               master_port: Optional[int] = None):
        """What runs ``plan`` on ``engine``, pinned to its full sha (:func:`~.distributed.launch.prepare_launch`):
        ``transformers`` writes ``folder`` (run.py, launch.sh, README.md and the sha's lock file); ``vllm`` and
        ``sglang`` give their serve commands, written with a README and the lock file into ``folder`` when one is
        given. A :class:`~.distributed.launch.Launch`."""
        from .distributed.launch import options_for, prepare_launch
        from .distributed.pinning import pinned_files

        plan = self.rank_plan(plan)
        o = options_for(plan, engine=engine, memory_fraction=memory_fraction, **_address(master_addr, master_port))
        lock = None
        if engine == "transformers" and folder is None:
            raise OptionError("The transformers engine writes a launch folder: run.py, launch.sh, README.md.",
                              hint="Give it: --to DIR (a new or empty folder).")
        if folder is not None:
            lock = pinned_files(plan, fetch=False, **self._hub(plan)).lock
        return prepare_launch(engine, o, folder, lock=lock)

    def run_ranks(self, plan: Any, *, folder: Optional[str] = None, on_event: Any = None, stop: Any = None,
                  timeout_s: float = 600.0):
        """Run ``plan`` for real on this machine (a ``1xNxcpu`` target): fetch the pinned files, start the
        ranks under torchrun (:func:`~.distributed.run.run_transformers`), and compare their logits with one
        process and their parameter bytes with the plan. ``folder``: where the launch files go (default: a
        temporary folder, removed after a run that passed). Ctrl-C stops every rank."""
        import shutil

        from .distributed.launch import options_for
        from .distributed.pinning import pinned_files
        from .distributed.run import run_transformers

        plan = self.rank_plan(plan)
        if not plan.local:
            raise OptionError(f"--run starts the ranks on this machine's CPU, and {plan.name or 'the plan'} is for "
                              f"{plan.target}.", hint="Plan with --target 1x2xcpu to run it here; for the cluster, "
                              "write the launch with --to DIR and run its launch.sh there.")
        pinned = pinned_files(plan, fetch=True, on_event=on_event, **self._hub(plan))
        o = options_for(plan, local_folder=pinned.folder)
        workdir = tempfile.mkdtemp(prefix="hf_notebook-run-")
        try:
            result = run_transformers(o, workdir, on_event=on_event, stop=stop, timeout_s=timeout_s, folder=folder,
                                      lock=pinned.lock)
        except KeyboardInterrupt:
            shutil.rmtree(workdir, ignore_errors=True)
            raise KeyboardInterrupt() from None  # not chained: its frames hold the job
        result = replace(result, planned_param_bytes=tuple(r.weight_bytes for r in plan.ranks))
        if (result.ok or result.cancelled) and folder is None:
            shutil.rmtree(workdir, ignore_errors=True)
            result = replace(result, folder="", logs="")
        return result

    def _hub(self, plan: Any) -> dict:
        """Where the plan's files come from: its cache folder and offline switch, or the settings'."""
        from .hf_env import hub_offline

        opts = plan.options
        return dict(cache_dir=getattr(opts, "cache_dir", None) or self.settings.cache_dir,
                    offline=bool(getattr(opts, "offline", False) or self.settings.offline or hub_offline()))

    # -- what is loaded --------------------------------------------------------------------------
    def get(self, name: str):
        """The :class:`~.api.LoadResult` of the model loaded as ``name``."""
        result = self.registry.get(name)
        if result is None and self.registry.was_freed(name):
            raise NotLoadedError(f"{name!r} is no longer loaded: its model was freed when its last name went "
                                 "(del or a new value).", hint=f"Load it again with %load_model ... --as {name}.")
        if result is None:
            raise NotLoadedError(f"No model named {name!r} was loaded by hf_notebook (loaded: {self._loaded()}).",
                                 hint="See %models (from Python: session.registry.names()).")
        return result

    def models(self) -> list:
        """``(name, LoadResult)`` of every model loaded, oldest first."""
        return self.registry.items()

    def unload(self, name: str):
        """Free the model loaded as ``name``: hooks, every name bound to it, its memory; an
        :class:`~.unload.UnloadReport` of what came back."""
        from .unload import unload

        result = self.get(name)
        self.registry.pop(name)
        return unload(name, result, [self.namespace] if self.namespace is not None else [])

    def release_unbound(self) -> list[str]:
        """Give back the memory of models whose name the notebook let go of since the last call (``del model``, a
        new value): a model with hooks (offloaded, or spread over devices) is a reference cycle, which only the
        cyclic collector frees, maybe long after. Run after each cell; a model still held elsewhere is collected
        for again only once its reference count has fallen. A model another name still holds (``alias = model;
        del model``) is listed under that name from then on. The names whose model is gone now (their entries
        go too)."""
        if self.namespace is None:
            return []
        from .unload import release_memory

        freed = self.registry.take_freed()  # went with their `del` (no cycle): their memory still to give back
        unbound = [(n, r) for n, r in self.registry.items() if self.namespace.get(n) is not r.model]
        # One still held elsewhere (an alias) is looked at again only once something let go of it.
        if freed or any(not r.references or _references(r) < r.references for _, r in unbound):
            release_memory()
        for name, result in unbound:
            result.references = _references(result)
            alias = self._other_name(result, name)
            if alias is not None:
                self.registry.rename(name, alias)
                result.name, result.references = alias, 0
        return freed + [name for name, result in unbound if result.freed]

    def _other_name(self, result: Any, name: str) -> Optional[str]:
        """The first other public name in the namespace bound to ``result``'s model, if no entry has it yet."""
        model = result.model
        if model is None:
            return None
        taken = set(self.registry.names())
        return next((k for k, v in self.namespace.items() if v is model and k != name and not k.startswith("_")
                     and k not in taken), None)

    def measure(self, name: str, *, context: int, batch: int = 1, steps: int = 4):
        """One prefill of ``context`` random tokens for ``batch`` sequences and ``steps`` decode steps with the
        model loaded as ``name``: the KV cache planned against the cache's own tensors, and the peak each
        device saw (:class:`~.devices.measure.Measurement`)."""
        from .devices.measure import measure

        result = self.get(name)
        try:
            return measure(result, context=context, batch=batch, steps=steps, name=name)
        except KeyboardInterrupt:
            raise KeyboardInterrupt() from None

    def close(self) -> None:
        """Forget every model (the namespace's names stay: the models go once those go too)."""
        for name in self.registry.names():
            self.registry.pop(name)

    # -- the device map --------------------------------------------------------------------------
    def target(self, name: Any):
        """A loaded model's record, or a Plan (given, or bound to ``name`` in the namespace)."""
        from .devices.plan import Plan

        if isinstance(name, Plan) or hasattr(name, "pin"):
            return name
        result = self.registry.get(name)
        if result is not None:
            return result
        value = self.namespace.get(name) if self.namespace is not None else None
        if isinstance(value, Plan):
            return value
        raise NotLoadedError(f"{name!r} is neither a model loaded by hf_notebook (loaded: {self._loaded()}) nor a "
                             "plan.", hint=f"Load one with %load_model ... --as {name}, or plan one with %plan_model "
                                           f"... --as {name}.")

    def edit(self, name: Any, assignments: Sequence[str] = (), *, layers: Any = None):
        """Move modules (``"model.layers.20-39=cpu"``, ...), all checked together and applied as one change: a
        loaded model is re-dispatched in place (the :class:`~.devices.redispatch.Moved`), a plan's map replaced
        (None). ``layers``: first the first N layers on the fastest device on offer and the rest on the next (the
        editor's slider; ``"max"``: the most that fit). A map that does not fit is refused (:class:`MapError`)
        and nothing moves."""
        from .api import apply_device_map, device_map_editor
        from .devices.editing import parse_assignment

        target = self.target(name)
        draft = device_map_editor(target)
        if layers is not None:
            draft.put_layers(draft.most_layers_that_fit() if str(layers) == "max" else _layer_count(layers))
        if assignments:
            draft.assign([parse_assignment(text) for text in assignments])
        problems = draft.problems()
        if problems:
            raise MapError("The edited map does not fit: " + "; ".join(map(problem_text, problems))
                           + ". Nothing was moved.", hint="Move less there, or raise --max-memory.")
        return apply_device_map(target, draft.map)

    def export_map(self, name: Any, path: str) -> None:
        """Write the (edited) map of ``name`` as JSON (``--device-map @path`` loads it)."""
        from .api import device_map_editor

        target = self.target(name)
        try:
            device_map_editor(target).to_json(path)
        except OSError as exc:
            raise SaveError(f"Cannot write {path!r}: {exc.strerror or exc}.", hint="Give a writable path.") from None
        if hasattr(target, "map_file"):
            target.map_file = path

    # -- save, push, export ----------------------------------------------------------------------
    def save(self, model: Any, folder: str, *, max_shard_size: Any = None, dtype: Optional[str] = None,
             overwrite: bool = False, on_event: Any = None):
        """Save ``model`` (a name, or a LoadResult) as a complete model folder, atomically; never into a folder
        a loaded model reads from (:func:`~.weights.save.save_model`)."""
        from .dtypes import parse_dtype
        from .weights.save import parse_shard_size, save_model

        result = self.get(model) if isinstance(model, str) else model
        result.loaded()  # a panel's record of a model freed since
        out_dtype = parse_dtype(dtype) if dtype else None
        shard = parse_shard_size(max_shard_size)
        try:
            return save_model(result, folder, max_shard_size=shard, dtype=out_dtype, overwrite=overwrite,
                              reads_from=self.folders_in_use(), on_event=on_event)
        except KeyboardInterrupt:
            raise KeyboardInterrupt() from None  # not chained: the frames hold the model's tensors
        except SaveError:
            raise  # ours already: its message and its hint as they are
        except OSError as exc:
            raise SaveError(f"Saving into {folder} failed: {exc.strerror or exc}. The folder is as it was.") from None

    def folders_in_use(self) -> tuple:
        """Folders loaded models read weights from: their source folders and offload folders."""
        return tuple(f for _, r in self.registry.items() for f in (r.source_folder, r.offload_folder) if f)

    def push(self, repo_id: str, *, model: Any = None, folder: Optional[str] = None, private: bool = False,
             branch: Optional[str] = None, create_pr: bool = False, message: Optional[str] = None,
             tag: Optional[str] = None, token: Any = None, max_shard_size: Any = None, dtype: Optional[str] = None,
             name: Optional[str] = None, on_event: Any = None):
        """Push a saved ``folder``, or a loaded ``model`` (saved into a temporary folder first), in one commit
        (:func:`~.hub.push.push_folder`). The token comes from the login unless given."""
        from .hub.push import check_push_words, push_folder

        check_push_words(repo_id, branch=branch, tag=tag, message=message)
        if (model is None) == (folder is None):
            raise OptionError("Push either a loaded model or a saved folder.",
                              hint="%push_model NAME owner/repo, or %push_model owner/repo --from DIR.")
        push = dict(private=private, branch=branch, create_pr=create_pr, message=message, tag=tag, token=token,
                    on_event=on_event)
        try:
            if folder is not None:
                return push_folder(folder, repo_id, name=name, **push)
            name = name or (model if isinstance(model, str) else None)
            with tempfile.TemporaryDirectory(prefix="hf_notebook-push-") as tmp:
                saved = os.path.join(tmp, "model")
                self.save(model, saved, max_shard_size=max_shard_size, dtype=dtype)
                return push_folder(saved, repo_id, name=name, **push)
        except KeyboardInterrupt:
            raise KeyboardInterrupt() from None

    def whoami(self, token: Any = None):
        """Who pushes (:class:`~.hub.push.Identity`): the login's token, or ``token``; offline, nobody is asked
        (an :class:`~.errors.OfflineError`)."""
        from .hf_env import hub_offline
        from .errors import HfNotebookError, OfflineError, wrapped
        from .hub.push import whoami

        if self.settings.offline or hub_offline():
            raise OfflineError("Offline: the Hub is not asked who you are.", hint="Pushing needs the network.")
        try:
            return whoami(token)
        except HfNotebookError:
            raise
        except Exception as exc:  # noqa: BLE001 - the network or the Hub: said as ours, without frames
            error = wrapped(exc, "Asking the Hub who you are")
        raise error

    def export(self, spec: str, folder: str, *, layout: str = "folder", cache_dir: Optional[str] = None,
               offline: bool = False):
        """Write a pinned model's files into ``folder`` for a host without network (:func:`~.hub.bundle.export_bundle`)."""
        from .hf_env import hub_offline
        from .hub.bundle import export_bundle

        return export_bundle(spec, folder, layout=layout, cache_dir=cache_dir or self.settings.cache_dir,
                             offline=bool(offline or self.settings.offline or hub_offline()))

    # -- the lock file ---------------------------------------------------------------------------
    @property
    def lock_path(self) -> Optional[Path]:
        """The lock file (relative to the working directory now), or None when it is off."""
        return Path(self.settings.lock_file).expanduser() if self.settings.lock_file else None

    def lock_entries(self) -> dict:
        """The lock file's entries, ``repo@revision`` -> entry."""
        from .hub import lock

        return lock.read(self._need_lock())

    def lock_check(self) -> list:
        """Every entry checked against the Hub (has its revision moved?) and the cache (files, sizes, hashes)."""
        from .hf_env import hub_offline
        from .hub import lock

        entries = lock.read(self._need_lock())
        return lock.check(entries, offline=bool(self.settings.offline or hub_offline()),
                          cache_dir=self.settings.cache_dir)

    def _need_lock(self) -> Path:
        if self.lock_path is None:
            raise OptionError("The lock file is off.",
                              hint="Set a path: %config HFNotebook.lock_file = 'hf_notebook.lock.json'.")
        return self.lock_path

    def _locked_spec(self, spec: str, options: LoadOptions, *, locked: bool, update: bool) -> tuple:
        """The spec to load, its lock key and the files the lock records: under ``locked``, the locked sha (after
        checking for drift) and its files' sizes and sha256, which the load checks every file it reads against."""
        from .hub import lock
        from .option_table import key_args
        from .spec import parse_spec

        if locked and update:
            raise OptionError("--locked loads the locked commit and --update moves it: give one of them.")
        parsed = parse_spec(spec)
        if parsed.is_local:
            if locked or update:
                raise OptionError("A local folder has no Hub revision to lock; --locked and --update are for Hub "
                                  "models.")
            return spec, None, None
        key = lock.key_of(parsed.repo_id, parsed.revision, tuple(key_args(options)))
        path = self.lock_path
        entry = lock.read(path).get(key) if path else None  # a damaged lock file is named before the load
        if not locked:
            return spec, key, None
        if entry is None:
            raise LockError(f"The lock file {path} has no entry for {key}.",
                            hint="Load it once without --locked (or with --update) to record it.")
        _check_locked_kernel(key, entry, options.attn_implementation)
        if not options.offline:
            from .hub.resolve import resolve

            now = resolve(parsed, token=options.token).pin.sha
            if now != entry["sha"]:
                raise LockError(f"{key} has moved on the Hub: the lock file pins {entry['sha']}, the Hub now has {now}.",
                                hint=f"Load the locked commit with %load_model {parsed.repo_id}@{entry['sha']}, or take "
                                     "the new one with --update.")
        return f"{parsed.repo_id}@{entry['sha']}", key, dict(entry.get("files", {}))

    def _record_lock(self, result: Any, key: Optional[str], move: bool) -> Optional[LockUpdate]:
        """Record a Hub load in the lock file; an existing entry moves only with ``move``. The model is bound
        already: a lock file that cannot be written is reported (``failed``), not a lost load."""
        from .errors import HfNotebookError
        from .hub import lock
        from .option_table import recorded_args

        path = self.lock_path
        if path is None or key is None or result.pin.kind == "local":
            return None
        revision = key.split(" ")[0].rsplit("@", 1)[1]  # as written: the key's first word is repo@revision

        def make(old):
            new = lock.entry_for(result, old, options=recorded_args(result.options))
            new["revision"] = revision
            return None if old is not None and old["sha"] != new["sha"] and not move else new

        try:
            old, new = lock.update(path, key, make)
        except (OSError, HfNotebookError) as exc:
            reason = exc.message if isinstance(exc, HfNotebookError) else (exc.strerror or str(exc))
            return LockUpdate(str(path), key, "failed", reason=reason)
        if new is None:
            return LockUpdate(str(path), key, "kept", old_sha=old["sha"], sha=result.pin.sha, revision=revision)
        if old is None:
            return LockUpdate(str(path), key, "recorded", sha=new["sha"])
        if old == new:
            return LockUpdate(str(path), key, "unchanged", old_sha=old["sha"], sha=new["sha"])
        return LockUpdate(str(path), key, "updated", old_sha=old["sha"], sha=new["sha"],
                          changes=tuple(lock.changes(old, new)))

    def _loaded(self) -> str:
        return ", ".join(self.registry.names()) or "none"


@dataclass(frozen=True)
class Replaced:
    """The model a load replaced under its name: what it was, what it held, and whether it is gone."""

    spec: str
    held: dict
    freed: bool  # False: something else (another variable, an output) still holds it


def _references(result: Any) -> int:
    """How many references hold ``result``'s model (0: none, it is gone)."""
    import sys

    model = result.model
    return 0 if model is None else sys.getrefcount(model) - 2  # less this function's and getrefcount's own


def _release(previous: Any) -> Replaced:
    """Drop our reference to a model replaced under its name; its temporary offload folder goes with the
    model itself (``core.owned``)."""
    import weakref

    model = weakref.ref(previous.model) if previous.model is not None else None
    spec = previous.pin.pinned_spec if previous.pin.kind != "local" else previous.pin.repo_id
    previous.model = None
    gc.collect()
    return Replaced(spec, dict(previous.placement.bytes_by_device), model is None or model() is None)


def _machine(target: Optional[str], gpus: Optional[int], gpu_memory: Optional[str], nodes: Optional[int]):
    """The :class:`~.distributed.targets.Target` of ``--target`` or of ``--gpus``/``--gpu-memory``/``--nodes``."""
    from .distributed.targets import parse_target, target_from

    numbers = (gpus, gpu_memory, nodes)
    if target is not None:
        if any(v is not None for v in numbers):
            raise OptionError("Give either --target or --gpus/--gpu-memory/--nodes, not both.",
                              hint="e.g. --target 2x8xH100, or --gpus 8 --gpu-memory 80GiB --nodes 2.")
        return parse_target(target)
    if gpus is None or gpu_memory is None:
        raise OptionError("A parallel plan needs the machines: --target, or --gpus with --gpu-memory.",
                          hint="e.g. --target 2x8xH100, or --gpus 8 --gpu-memory 80GiB --nodes 2.")
    return target_from(gpus, gpu_memory, nodes or 1)


def _address(master_addr: Optional[str], master_port: Optional[int]) -> dict:
    """Node 0's address and port where given (else the launch's placeholder and default port)."""
    return {k: v for k, v in (("master_addr", master_addr), ("master_port", master_port)) if v is not None}


def _absent(value: Any) -> bool:
    """An option not given: None, a switch off, an empty list."""
    return value is None or value is False or (isinstance(value, (list, tuple, dict)) and not value)


def problem_text(problem: Any) -> str:
    """Why a draft map cannot be applied: ``cpu would hold 12.0 GB, 2.0 GB over its budget of 10.0 GB``."""
    from .units import format_bytes

    return (f"{problem.device} would hold {format_bytes(problem.nbytes)}, {format_bytes(problem.over)} over its "
            f"budget of {format_bytes(problem.budget)}")


def _check_locked_kernel(key: str, entry: dict, asked: Optional[str]) -> None:
    """Under ``--locked``, the Hub kernel asked for is the one the lock file recorded (or neither has one)."""
    from .hub.kernel import is_hub_kernel
    from .hub.lock import kernel_of

    locked = kernel_of(entry)
    asked = asked.split(":")[0] if is_hub_kernel(asked) else None
    if locked == asked:
        return
    if locked is None:
        raise LockError(f"The lock file records {key} without a Hub kernel; this load asks for {asked}.",
                        hint="Leave --attn-implementation out, or record the kernel with --update.")
    raise LockError(f"The lock file records {key} with the kernel {locked}; this load asks for {asked or 'none'}.",
                    hint=f"Add --attn-implementation {locked} --trust-remote-code, or record the change with --update.")


def _layer_count(text: Any) -> int:
    """``--layers N``: a whole number of at least 0."""
    try:
        count = int(str(text))
    except ValueError:
        count = -1
    if count < 0:
        raise MapError(f"Cannot read --layers {text!r}.", hint="Give a number of layers (0 or more), or max.")
    return count
