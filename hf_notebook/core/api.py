"""The load pipeline: ``plan_model`` and ``load_model`` (typed options, an ``on_event`` callback), and the
device-map edits of a loaded model or plan. ``session.Session`` calls them for each user action.

A call runs the pipeline once, each stage handing its product to the next:
``spec -> resolve (pin) -> files (config, shard names) -> plan -> fetch (checkpoint) -> load``.
Nothing is listed, read or planned twice; the revision is resolved once (twice under ``--locked``, which
first checks the lock against the Hub).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from .devices.offloaded import rewrites_weights
from .devices.placement import Placement
from .devices.plan import Plan, check_devices_exist, one_device, plan_placement, sized_by
from .errors import HfNotebookError, LoadError, PlanError, wrapped
from .events import Failed, OnEvent, Resolved, StageDone, StageStarted, emit
from .hf_env import hub_offline
from .hub.bundle import bundle_records
from .hub.fetch import Checkpoint, FileFacts, HubFiles, SourceFiles, source_files
from .hub.kernel import served
from .hub.resolve import Resolution, record_ref, resolve
from .options import LoadOptions
from .owned import own_folder, remove_own, remove_with
from .quiet import gc_paused, library_bars_off
from .spec import ModelSpec, parse_spec
from .units import format_bytes


class _WeakModel(weakref.ref):
    """A model held only while something else holds it (:meth:`LoadResult.hold_weakly`)."""


class _Model:
    """``LoadResult.model``: the model, held strongly until :meth:`LoadResult.hold_weakly`; None once freed."""

    def __set_name__(self, owner, name):
        self.slot = "_" + name

    def __get__(self, obj, owner=None):
        if obj is None:
            raise AttributeError(self.slot)  # no class-level default: the dataclass field stays required
        value = obj.__dict__.get(self.slot)
        return value() if isinstance(value, _WeakModel) else value

    def __set__(self, obj, value):
        obj.__dict__[self.slot] = value


@dataclass
class LoadResult:
    """A loaded model and the facts of its load: the pin, the plan, where it really lives."""

    model: Any = _Model()
    pin: Resolved
    plan: Plan
    placement: Placement
    seconds: float  # the whole call, resolve to bound
    options: LoadOptions = field(default_factory=LoadOptions)
    files: tuple[FileFacts, ...] = ()
    offload_folder: Optional[str] = None  # the model's own folder for offloaded weights (made by us), or None
    owns_offload_folder: bool = False  # we made it (always, when there is one): unloading removes it
    name: Optional[str] = None  # the notebook variable it is bound to
    timings: dict = field(default_factory=dict)  # stage -> seconds
    edits: list = field(default_factory=list)  # one Moved per applied device-map edit, oldest first
    map_file: Optional[str] = None  # the JSON file the current map was exported to (the load line names it)
    source_folder: Optional[str] = None  # the local folder the weights were read from (snapshot or user folder)
    paths: dict = field(default_factory=dict)  # repo file name -> its local (cached) path, for every file read
    hashes: dict = field(default_factory=dict)  # repo file name -> sha256 the Hub gave for it (LFS files)
    code_files: dict = field(default_factory=dict)  # the repo's code that ran (--trust-remote-code) -> sha256
    kernel: Any = None  # the Hub attention kernel it runs (a hub.kernel.KernelPin), or None
    tokenizer: Any = None  # the tokenizer of the same pinned sha (--tokenizer)
    lock: Any = None  # what the load did to the lock file (a session.LockUpdate), or None
    replaced: Any = None  # the model it replaced under its name (a session.Replaced), or None
    interrupted_late: bool = False  # a Ctrl-C came while the finished model was being bound: it was bound anyway
    references: int = 0  # while its name no longer holds it: its reference count when last looked at (a cell's end)

    def hold_weakly(self) -> None:
        """Keep the model only while something else holds it (a notebook's names): deleting its last name
        frees it, and its offload folder, as for any Python object. A model that cannot be weakly referenced
        stays held."""
        model = self.__dict__.get("_model")
        if model is not None and not isinstance(model, _WeakModel):
            try:
                self.__dict__["_model"] = _WeakModel(model)
            except TypeError:
                pass

    def __getstate__(self) -> dict:
        """A copy (``copy.deepcopy``, pickle) holds the model itself: a weak reference cannot be copied."""
        state = dict(self.__dict__)
        if isinstance(state.get("_model"), _WeakModel):
            state["_model"] = state["_model"]()
        return state

    @property
    def freed(self) -> bool:
        """The model is gone: unloaded, replaced, or (held weakly) its last name was deleted."""
        return self.model is None

    def loaded(self):
        """The model, or :class:`~.errors.NotLoadedError` when it is gone (a panel or a variable that kept this
        record of it)."""
        from .errors import NotLoadedError

        model = self.model
        if model is None:
            raise NotLoadedError(f"{self.name or 'This model'} is no longer loaded: it was unloaded, replaced, or "
                                 "freed when its last name went.", hint="Load it again with %load_model.")
        return model

    @property
    def repo_id(self) -> str:
        return self.pin.repo_id

    @property
    def sha(self) -> str:
        return self.pin.sha

    @property
    def dtype(self) -> str:
        return self.plan.dtype

    @property
    def device_map(self) -> dict:
        return dict(getattr(self.model, "hf_device_map", self.plan.device_map))

    def __repr__(self) -> str:
        return f"LoadResult({self.name or 'model'} = {self.pin.pinned_spec}, {self.plan.model_class}, {self.dtype})"


class _Stages:
    """Emits StageStarted/StageDone around each step and Failed on the way out of an error."""

    def __init__(self, on_event: OnEvent | None):
        self.on_event, self.current, self.timings = on_event, "", {}

    def start(self, stage: str, detail: str = "") -> None:
        self.current, self._t0 = stage, time.perf_counter()
        emit(self.on_event, StageStarted(stage, detail))

    def done(self, result=None) -> None:
        seconds = time.perf_counter() - self._t0
        self.timings[self.current] = seconds
        emit(self.on_event, StageDone(self.current, seconds, result))

    def failed(self, error: BaseException) -> None:
        emit(self.on_event, Failed(self.current or "start", error))


def _options(options: Optional[LoadOptions], raw: dict) -> LoadOptions:
    if options is not None and raw:
        raise TypeError(f"pass either options or keyword options, not both: {', '.join(raw)}")
    options = options if options is not None else LoadOptions.parse(**raw)
    return options.with_(offline=True) if not options.offline and hub_offline() else options


def plan_model(spec: str | ModelSpec, options: Optional[LoadOptions] = None, *, on_event: OnEvent | None = None,
               **raw: Any) -> Plan:
    """Where a model would go with these options, from its config and safetensors headers only.

    ``options`` is a :class:`LoadOptions`; or give its fields as keywords (``dtype="bfloat16"``).
    """
    opts = _options(options, raw)
    stages = _Stages(on_event)
    try:
        _import_libraries(stages)
        with library_bars_off():
            return _Pipeline(spec, opts, stages, on_event).plan(read_headers=True)
    except BaseException as exc:
        stages.failed(exc)
        _raise_ours(exc, stages.current)


def load_model(spec: str | ModelSpec, options: Optional[LoadOptions] = None, *, name: Optional[str] = None,
               on_event: OnEvent | None = None, **raw: Any) -> LoadResult:
    """Resolve, plan, fetch and load a model: the plan is made before any weight byte is fetched."""
    t0 = time.perf_counter()
    opts = _options(options, raw)
    stages = _Stages(on_event)
    try:
        with gc_paused():  # the imports too: at the default threshold the collector walks every new module
            _import_libraries(stages)
            with library_bars_off():
                return _Pipeline(spec, opts, stages, on_event).load(name, t0)
    except BaseException as exc:
        stages.failed(exc)
        _raise_ours(exc, stages.current)


#: What a first plan or load imports (seconds, in a fresh process): an ``import`` stage, named and timed.
LIBRARIES = ("torch", "transformers", "accelerate", "huggingface_hub")


def _import_libraries(stages: _Stages) -> None:
    """Import what is not imported yet as a stage of its own, so a fresh kernel's first seconds are shown
    (which libraries) and counted in the record's times, not silent."""
    import sys

    running = _imports is not None and _imports.is_alive()  # started by %load_ext, or by a load cancelled then
    missing = [name for name in LIBRARIES if name not in sys.modules or running]
    if not missing:
        return
    stages.start("import", ", ".join(missing))
    wait_for(start_imports())
    stages.done()


_imports_lock = threading.Lock()
_imports: Optional[threading.Thread] = None  # the thread importing LIBRARIES, once one was started
_import_error: list = []  # what it raised, if it failed


def start_imports() -> threading.Thread:
    """Import :data:`LIBRARIES` in a thread of their own (the one already at it, if there is one). An import
    stopped halfway leaves a module half made, in every later cell (torch "partially initialized" until a
    restart): so a Ctrl-C stops the wait for them, never the imports."""
    global _imports
    with _imports_lock:
        if _imports is None or not (_imports.is_alive() or _import_error):
            _import_error.clear()
            _imports = threading.Thread(target=_import_all, name="hf_notebook-imports", daemon=True)
            _imports.start()
        return _imports


def _import_all() -> None:
    try:
        import_libraries()
    except BaseException as exc:  # noqa: BLE001 - raised again in the thread that waits
        _import_error.append(exc)


def wait_for(imports: threading.Thread, poll: float = 0.05) -> None:
    """Wait for ``imports`` (a Ctrl-C ends the wait, the imports go on); raise what they raised."""
    while imports.is_alive():
        imports.join(poll)
    if _import_error:
        error = _import_error[0]
        _import_error.clear()  # the next load tries again
        raise error


def import_libraries() -> None:
    """Import :data:`LIBRARIES` and transformers' model code, without optional backends' chatter (``quiet.py``)."""
    import importlib

    from .quiet import import_transformers, quiet_loggers

    with quiet_loggers("torchao", "torch.utils._pytree"):
        for name in LIBRARIES:
            importlib.import_module(name)
        import_transformers()


def _raise_ours(exc: BaseException, stage: str):
    """Re-raise our errors and interrupts as they are; anything else as ours, without its frames."""
    if isinstance(exc, (HfNotebookError, KeyboardInterrupt, SystemExit)) or not isinstance(exc, Exception):
        raise exc
    raise wrapped(exc, stage) from None


class _Pipeline:
    """One action's run: each stage's product is kept and handed to the next."""

    def __init__(self, spec, opts: LoadOptions, stages: _Stages, on_event):
        from .quiet import import_transformers

        import_transformers()
        self.spec = spec if isinstance(spec, ModelSpec) else parse_spec(spec)
        self.opts, self.stages, self.on_event = opts, stages, on_event
        self.resolution: Optional[Resolution] = None
        self.files: Optional[SourceFiles] = None
        self.config = None
        self.headers = None
        self.code: dict[str, str] = {}  # the repo's code files that will run (--trust-remote-code) -> sha256
        self.kw: dict = {}  # --kw arguments for from_pretrained itself (config settings are applied to the config)

    def plan(self, *, read_headers: bool, for_load: bool = False) -> Plan:
        """Resolve, read the config (and headers when needed), plan. ``for_load``, with every shard here already:
        a one-device map's sizes wait for the loaded model (see ``plan_placement``). Weights still to download
        are planned on a meta model first, so a model that cannot be built fails before the download, not after."""
        opts, stages = self.opts, self.stages
        stages.start("resolve", str(self.spec))
        self.resolution = resolve(self.spec, offline=opts.offline, cache_dir=opts.cache_dir, token=opts.token)
        records = [("the lock file", dict(opts.locked_files))] if opts.locked_files is not None else []  # --locked
        records += bundle_records(self.resolution, opts.cache_dir)  # the cache is an hf-cache bundle
        if records:  # every file read is also checked against these
            self.resolution = replace(self.resolution, records=tuple(records))
        emit(self.on_event, self.resolution.pin)
        if opts.trust_remote_code:
            _check_pinned_for_code(self.spec, self.resolution)
        stages.done(self.resolution.pin)

        stages.start("config")
        self.files = source_files(self.resolution, cache_dir=opts.cache_dir, offline=opts.offline,
                                  force_download=opts.force_download, token=opts.token, on_event=self.on_event,
                                  allow_pickle=opts.allow_pickle, variant=opts.variant, subfolder=opts.subfolder,
                                  verify=not opts.no_verify)
        self.code = self.files.code_files() if opts.trust_remote_code else {}
        self.config = _read_config(self.files.config(), opts.trust_remote_code)
        self.kw, settings = split_kw(opts.extra, self.config)
        for key, value in settings.items():  # config settings given with --kw: the plan sees them too
            setattr(self.config, key, value)
        dtype = opts.dtype if opts.dtype != "auto" else _config_dtype(self.config)
        if read_headers or dtype is None:
            self.headers = self._headers()
        dtype = dtype or (self.headers.float_dtype if self.headers else None) or "float32"
        stages.done(self.config)

        stages.start("plan")
        pin = self.resolution.pin
        source = pin.pinned_spec if self.resolution.local_path is None else str(self.resolution.local_path)
        plan = plan_placement(self.config, class_name=opts.class_name, dtype=dtype, device_map=opts.device_map,
                              max_memory=opts.max_memory, no_offload=opts.no_offload, headers=self.headers,
                              source=source, code_folder=str(self.files.config().parent) if self.code else None,
                              quantization=opts.quantization, context=opts.context, batch=opts.batch,
                              kv_dtype=opts.kv_dtype, fit=opts.fit, reserve=opts.reserve,
                              sizes_from_load=for_load and one_device(opts.device_map) and self.files.weights_here())
        check_attention(opts.attn_implementation)
        if opts.fit or opts.context == "max":  # what they chose, as options that give it again
            opts = self.opts = opts.with_(device_map=dict(plan.device_map), fit=False, reserve=None,
                                          context=plan.kv.context if plan.kv is not None else None)
        plan = replace(plan, options=opts.with_(token=None))  # %load_model PLAN loads with these
        stages.done(plan)
        return plan

    def _tokenizer(self):
        """The tokenizer of the pinned sha, read from the snapshot (its files fetched like the weights)."""
        folder = self.files.tokenizer_folder()
        if folder is None:
            where = self.resolution.pin.pinned_spec if self.resolution.local_path is None else str(self.resolution.local_path)
            raise LoadError(f"{where} has no tokenizer files (tokenizer.json, tokenizer_config.json, ...).",
                            hint="Leave --tokenizer out, or load the tokenizer from the repo it was published in.")
        return _load_tokenizer(folder, self.opts.trust_remote_code)

    def _kernel(self):
        """A Hub attention kernel (``org/repo@sha``), fetched and checked; None for transformers' own."""
        from .hub.kernel import check, fetch, is_hub_kernel

        name = self.opts.attn_implementation
        if not is_hub_kernel(name):
            return None
        check(name, trust_remote_code=self.opts.trust_remote_code, offline=self.opts.offline)  # offline may be new
        return fetch(name)

    def _headers(self):
        """Safetensors headers: remote through Range requests, or from local/cached shards (None if absent)."""
        from .hub.headers import cached_headers, local_headers, remote_headers

        names = self.files.shard_names()
        if self.files.pickled:  # no header to read: sizes come from the config alone
            return None
        res = self.resolution
        if isinstance(self.files, HubFiles) and not self.opts.offline:
            return remote_headers(res.repo_id, res.sha, names, token=self.opts.token, cache_dir=self.opts.cache_dir,
                                  etags={**res.blob_ids, **res.file_hashes})
        if isinstance(self.files, HubFiles):  # offline: headers a plan kept serve, else the cached shards'
            found = cached_headers(res.repo_id, res.sha, names, cache_dir=self.opts.cache_dir)
            if found is not None:
                return found
        checkpoint = self.files.cached_checkpoint() if isinstance(self.files, HubFiles) else self.files.checkpoint()
        return local_headers(checkpoint.shards) if checkpoint is not None else None

    def load(self, name: Optional[str], t0: float) -> LoadResult:
        """The load pipeline proper; a temp offload folder it made is removed if it fails."""
        plan = self.plan(read_headers=False, for_load=True)
        opts, stages = self.opts, self.stages  # as the plan resolved them (--fit, --context max)
        check_devices_exist(plan.device_map, opts.max_memory)

        stages.start("fetch")
        checkpoint: Checkpoint = self.files.checkpoint(self.headers)
        tokenizer = self._tokenizer() if opts.tokenizer else None  # before the weights: a missing one fails early
        if not opts.offline:
            record_ref(self.resolution, opts.cache_dir)
        kernel = self._kernel()
        stages.done(checkpoint)

        stages.start("load", plan.model_class)
        from .hub.headers import local_headers
        from .weights.load import materialize
        from .devices.placement import measure_placement

        if checkpoint.headers is None and not self.files.pickled:  # read once; the load's progress counts from them
            checkpoint = replace(checkpoint, headers=local_headers(checkpoint.shards))
        _check_offload_space(plan, self.config, opts.offload_folder, rewrites=self.files.pickled)
        # a folder of its own for what the load writes to disk (inside the user's, which other loads may share)
        offload_folder = own_folder(opts.offload_folder, name) if "disk" in plan.devices else None
        try:
            with served(kernel) if kernel is not None else contextlib.nullcontext():
                model = materialize(checkpoint, self.config, plan, offload_folder=offload_folder,
                                    on_event=self.on_event, options=opts, kw=self.kw)
            model.config._name_or_path = self.resolution.repo_id  # the repo, not the cache folder it was read from
            plan = sized_by(plan, model)
            placement = measure_placement(model, _summary_map(plan, model.hf_device_map))
        except BaseException as exc:
            if offload_folder is not None:
                remove_own(offload_folder)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                where = opts.offload_folder or offload_folder
                raise LoadError(f"The disk ran out of space while offloading weights to {where}.",
                                hint="Free space there, point --offload-folder at a bigger disk, or raise "
                                "--max-memory so less goes to disk.") from None
            raise
        if offload_folder is not None:
            remove_with(model, offload_folder)
        result = LoadResult(model=model, pin=self.resolution.pin, plan=plan, placement=placement,
                            seconds=time.perf_counter() - t0, options=opts, files=checkpoint.files,
                            offload_folder=offload_folder, owns_offload_folder=offload_folder is not None, name=name,
                            timings=stages.timings, source_folder=str(checkpoint.folder),
                            paths={n: str(p) for n, p in getattr(self.files, "_paths", {}).items()},
                            hashes=dict(self.resolution.file_hashes), code_files=dict(self.code),
                            tokenizer=tokenizer, kernel=kernel)
        stages.done(result)
        return result


def device_map_editor(target: "LoadResult | Plan"):
    """A :class:`~.editing.MapEditor` on a loaded model's map (this machine's devices, budgets from
    ``--max-memory`` or what is free now) or on a plan's (the devices of its budget, which may
    describe another machine)."""
    from .devices.editing import MapEditor, Structure
    from .devices.machine import devices_here, free_bytes
    from .units import device_name

    if isinstance(target, LoadResult):
        target.loaded()
        plan, current = target.plan, target.device_map
        devices = devices_here()
        held = target.placement.bytes_by_device
        given = {device_name(k): v for k, v in (target.options.max_memory or {}).items()}
        folder = target.offload_folder or target.options.offload_folder
        budget = {d: given.get(d, held.get(d, 0) + free_bytes(d, folder)) for d in devices}
        auto, max_memory = plan.device_map, target.options.max_memory
    else:
        plan, current = target, target.device_map
        devices = sorted(set(plan.budget) | {device_name(d) for d in plan.device_map.values()} | {"disk"})
        budget = {d: b for d, b in plan.budget.items() if d != "disk"}
        auto, max_memory = (plan.edits[0] if plan.edits else dict(plan.device_map)), plan.max_memory
    strategies = {"auto": lambda: auto}
    if any(d.startswith("cuda:") for d in devices) and plan.config is not None:
        for name in ("balanced", "sequential"):
            strategies[name] = lambda name=name: plan_placement(
                plan.config, class_name=plan.model_class, dtype=plan.dtype, device_map=name,
                max_memory=max_memory).device_map
    return MapEditor(Structure.of(plan), current, devices=devices, budget=budget, strategies=strategies,
                     room=plan.room_for if plan.kv is not None else None)


def apply_device_map(target: "LoadResult | Plan", device_map: dict):
    """Apply an edited map: a loaded model is re-dispatched in place (nothing downloaded; returns the
    :class:`~.redispatch.Moved`), a plan's map is replaced (its next load uses it; returns None)."""
    from .options import parse_device_map

    device_map = parse_device_map(dict(device_map))
    if isinstance(target, Plan):
        target.edits.append(dict(target.device_map))
        target.device_map.clear()
        target.device_map.update(device_map)
        return None
    from .devices.placement import measure_placement
    from .devices.redispatch import redispatch

    folder = target.offload_folder or target.options.offload_folder
    try:  # its own folder, or a new one (inside the user's offload folder) if it has none yet
        moved = redispatch(target.loaded(), device_map, offload_folder=target.offload_folder,
                           within=target.options.offload_folder, label=target.name)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            _raise_ours(exc, "re-dispatch")
        raise LoadError(f"The disk ran out of space while writing weights to {folder or 'the offload folder'}; "
                        "every weight is back where it was.",
                        hint="Free space there, or keep more on cpu.") from None
    except BaseException as exc:
        _raise_ours(exc, "re-dispatch")
    if moved.made_folder:
        target.offload_folder, target.owns_offload_folder = moved.offload_folder, True
    model = target.model
    target.placement = measure_placement(model, _summary_map(target.plan, model.hf_device_map))
    target.options = target.options.with_(device_map=dict(model.hf_device_map))
    target.edits.append(moved)
    target.map_file = None
    return moved


def check_attention(name: Optional[str]) -> None:
    """``--attn-implementation``: one transformers knows, or a Hub kernel (checked when the options were read:
    trusted, pinned, online; fetched and checked by the load)."""
    from .hub.kernel import is_hub_kernel

    if not name or is_hub_kernel(name):
        return
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from .errors import OptionError

    known = ["eager", *ALL_ATTENTION_FUNCTIONS.keys()]
    if name not in known:
        raise OptionError(f"Unknown --attn-implementation {name!r}.", hint=f"transformers knows: {', '.join(known)}.")


def split_kw(extra: dict, config) -> tuple[dict, dict]:
    """``--kw`` into (``from_pretrained`` arguments, config settings); any other name is refused."""
    if not extra:
        return {}, {}
    import difflib

    from .compat import from_pretrained_keywords
    from .errors import OptionError

    arguments = from_pretrained_keywords()
    settings = set(config.to_dict()) | {k for k in vars(config) if not k.startswith("_")}
    known = arguments | settings
    for key in extra:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
            raise OptionError(f"--kw {key}: from_pretrained takes no such argument, and the {type(config).__name__} "
                              "has no such setting.",
                              hint=f"Close names: {', '.join(close)}." if close else "Check the spelling.")
    return ({k: v for k, v in extra.items() if k in arguments},
            {k: v for k, v in extra.items() if k not in arguments})


def _check_pinned_for_code(spec: ModelSpec, resolution: Resolution) -> None:
    """Remote code runs only from a full commit sha: a branch or tag can change the code under you."""
    from .errors import OptionError
    from .spec import is_commit_sha

    if spec.is_local or (spec.revision and is_commit_sha(spec.revision) and len(spec.revision) == 40):
        return
    asked = f"@{spec.revision}" if spec.revision else " (the default branch)"
    raise OptionError(f"--trust-remote-code runs Python code from {spec.repo_id}, and {spec.repo_id}{asked} can "
                      "change that code under you.",
                      hint=f"Read the code at its commit, then pin the full sha: %load_model "
                      f"{spec.repo_id}@{resolution.sha} --trust-remote-code")


def _load_tokenizer(folder: Path, trust_remote_code: bool):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code, local_files_only=True)


def _check_offload_space(plan: Plan, config, folder: Optional[str], rewrites: bool = False) -> None:
    """Refuse up front, with the numbers, when the weights to write to disk would not fit there.

    transformers reads offloaded weights in place from the checkpoint (converting the dtype as it
    reads); it writes to the offload folder only weights it must reshape first (a model type with
    weight converters, such as mixtral's fused experts). For those, all planned disk bytes count.
    """
    need = plan.bytes_by_device.get("disk", 0)
    if not need or not (rewrites or rewrites_weights(plan.model_class, config.model_type)):
        return
    from .devices.machine import free_bytes

    where = folder or tempfile.gettempdir()
    free = free_bytes("disk", where)
    if free < need * 1.05:
        raise PlanError(f"Offloading writes about {format_bytes(need)} of {plan.dtype} weights to {where}, "
                        f"but only {format_bytes(free)} is free there.",
                        hint="Free space there, point --offload-folder at a bigger disk, raise --max-memory, or load "
                        "in the checkpoint's own dtype so the weights are read in place.")


def _summary_map(plan: Plan, device_map: dict) -> dict:
    """The map to report by: a one-device map is spelled out per block (embeddings, layers, head)."""
    from .devices.placement import spread_one_device

    return dict(spread_one_device(device_map, plan.blocks))


def _read_config(config_file: Path, trust_remote_code: bool):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(config_file.parent, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise HfNotebookError("This model needs custom code from its repo, which is not run by default.",
                                  hint="Read the repo's code first; if you trust it, pin a full commit sha and pass "
                                  "--trust-remote-code.") from None
        raise


def _config_dtype(config) -> Optional[str]:
    value = getattr(config, "dtype", None)
    if value is None:
        return None
    return str(value).removeprefix("torch.")
