"""The core's face: one function per user action, explicit arguments, an ``on_event`` callback."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import HfNotebookError
from .events import Failed, OnEvent, Resolved, StageDone, StageStarted, emit
from .fetch import fetch_config, fetch_weights, shard_names
from .options import parse_device_map, parse_dtype, parse_max_memory
from .plan import Plan, check_devices_exist, plan_placement
from .resolve import record_ref, resolve
from .spec import ModelSpec, parse_spec


@dataclass
class LoadResult:
    """A loaded model and the facts of its load: the pin, the plan, where it really lives."""

    model: Any
    pin: Resolved
    plan: Plan
    placement: Any  # core.placement.Placement
    seconds: float
    offload_folder: Optional[str] = None
    owns_offload_folder: bool = False  # we made it (a temp folder): unloading removes it
    name: Optional[str] = None  # the notebook variable it is bound to
    timings: dict = field(default_factory=dict)

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


@dataclass(frozen=True)
class _Options:
    """What every action shares: where files come from and how the model is placed."""

    class_name: Optional[str]
    dtype: str
    device_map: Any
    max_memory: Optional[dict]
    no_offload: bool
    trust_remote_code: bool
    io: dict  # cache_dir, offline, force_download, token


def _options(dtype, device_map, max_memory, class_name, no_offload, trust_remote_code, cache_dir, offline,
             force_download, token) -> _Options:
    io = dict(cache_dir=cache_dir, offline=offline or _hub_offline(), force_download=force_download, token=token)
    return _Options(class_name, parse_dtype(dtype), parse_device_map(device_map), parse_max_memory(max_memory),
                    no_offload, trust_remote_code, io)


def plan_model(spec: str | ModelSpec, *, class_name: Optional[str] = None, dtype: Optional[str] = "auto",
               device_map: Any = "auto", max_memory: Any = None, no_offload: bool = False,
               trust_remote_code: bool = False, cache_dir: Optional[str] = None, offline: bool = False,
               token: Any = None, on_event: OnEvent | None = None) -> Plan:
    """Where a model would go with these options, from its config and safetensors headers only."""
    stages = _Stages(on_event)
    try:
        opts = _options(dtype, device_map, max_memory, class_name, no_offload, trust_remote_code,
                        cache_dir, offline, False, token)
        with _library_bars_off():
            plan, _, _ = _plan(spec, opts, stages, on_event, read_headers=True)
        return plan
    except BaseException as exc:
        stages.failed(exc)
        raise


def load_model(spec: str | ModelSpec, *, class_name: Optional[str] = None, dtype: Optional[str] = "auto",
               device_map: Any = "auto", max_memory: Any = None, offload_folder: Optional[str] = None,
               cache_dir: Optional[str] = None, offline: bool = False, force_download: bool = False,
               no_offload: bool = False, trust_remote_code: bool = False, token: Any = None,
               name: Optional[str] = None, on_event: OnEvent | None = None) -> LoadResult:
    """Resolve, plan, fetch and load a model: the plan is made before any weight byte is fetched."""
    stages = _Stages(on_event)
    t0 = time.perf_counter()
    try:
        opts = _options(dtype, device_map, max_memory, class_name, no_offload, trust_remote_code,
                        cache_dir, offline, force_download, token)
        with _library_bars_off():
            return _load(spec, opts, stages, on_event, offload_folder, name, t0)
    except BaseException as exc:
        stages.failed(exc)
        raise


def _load(spec, opts: _Options, stages: _Stages, on_event, offload_folder, name, t0) -> LoadResult:
    """The load pipeline proper; a temp offload folder it made is removed if it fails."""
    owns_offload = False
    try:
        plan, resolution, config = _plan(spec, opts, stages, on_event, read_headers=False)
        check_devices_exist(plan.device_map)

        stages.start("fetch")
        checkpoint = fetch_weights(resolution, config.config_file, on_event=on_event, **opts.io)
        if not opts.io["offline"]:
            record_ref(resolution, opts.io["cache_dir"])
        stages.done(checkpoint)

        stages.start("load", plan.model_class)
        from .load import materialize
        from .placement import measure_placement

        owns_offload = "disk" in plan.devices and offload_folder is None
        if owns_offload:
            offload_folder = tempfile.mkdtemp(prefix="hf_notebook-offload-")
        model = materialize(checkpoint, config.config, plan, offload_folder=offload_folder, on_event=on_event)
        model.config._name_or_path = resolution.repo_id  # the repo, not the cache folder it was read from
        result = LoadResult(model=model, pin=resolution.pin, plan=plan,
                            placement=measure_placement(model, _summary_map(plan, model.hf_device_map)),
                            seconds=time.perf_counter() - t0, offload_folder=offload_folder,
                            owns_offload_folder=owns_offload, name=name, timings=stages.timings)
        stages.done(result)
        return result
    except BaseException:
        if owns_offload:
            shutil.rmtree(offload_folder, ignore_errors=True)
        raise


@dataclass(frozen=True)
class _Config:
    config: Any
    config_file: Path


def _plan(spec, opts: _Options, stages: _Stages, on_event, *, read_headers: bool):
    """Resolve, fetch the config (and headers when needed), plan. Shared by plan and load."""
    spec = spec if isinstance(spec, ModelSpec) else parse_spec(spec)
    stages.start("resolve", str(spec))
    resolution = resolve(spec, offline=opts.io["offline"], cache_dir=opts.io["cache_dir"], token=opts.io["token"])
    emit(on_event, resolution.pin)
    stages.done(resolution.pin)

    stages.start("config")
    config_file = fetch_config(resolution, on_event=on_event, **opts.io)
    config = _read_config(config_file, opts.trust_remote_code)
    dtype = opts.dtype if opts.dtype != "auto" else _config_dtype(config)
    headers = _headers(resolution, config_file, opts) if read_headers or dtype is None else None
    dtype = dtype or (headers.float_dtype if headers else None) or "float32"
    stages.done(config)

    stages.start("plan")
    source = resolution.pin.pinned_spec if resolution.local_path is None else str(resolution.local_path)
    plan = plan_placement(config, class_name=opts.class_name, dtype=dtype, device_map=opts.device_map,
                          max_memory=opts.max_memory, no_offload=opts.no_offload, headers=headers, source=source)
    stages.done(plan)
    return plan, resolution, _Config(config, config_file)


def _headers(resolution, config_file: Path, opts: _Options):
    """Safetensors headers: remote through Range requests, or from local/cached shards (None if absent)."""
    from .errors import OfflineError
    from .headers import local_headers, remote_headers

    if resolution.local_path is None and not opts.io["offline"]:
        names = shard_names(resolution, **{**opts.io, "force_download": False})
        return remote_headers(resolution.repo_id, resolution.sha, names, token=opts.io["token"])
    try:
        checkpoint = fetch_weights(resolution, config_file, **{**opts.io, "force_download": False})
    except OfflineError:
        return None
    return local_headers(checkpoint.shards)


def _summary_map(plan: Plan, device_map: dict) -> dict:
    """The map to report by: a one-device map is spelled out per block (embeddings, layers, head)."""
    if list(device_map) == [""] and plan.blocks:
        return {block: device_map[""] for block in plan.blocks}
    return device_map


@contextlib.contextmanager
def _library_bars_off():
    """Silence huggingface_hub's and transformers' own tqdm bars: our events carry that progress."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as tf_logging

    hub_was_off, tf_was_on = are_progress_bars_disabled(), tf_logging.is_progress_bar_enabled()
    disable_progress_bars()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not hub_was_off:
            enable_progress_bars()
        if tf_was_on:
            tf_logging.enable_progress_bar()


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _read_config(config_file: Path, trust_remote_code: bool):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(config_file.parent, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise HfNotebookError("This model needs custom code from its repo, which is not run by default.",
                                  hint="Read the repo's code first; pass --trust-remote-code only if you trust it.") from None
        raise


def _config_dtype(config) -> Optional[str]:
    value = getattr(config, "dtype", None)
    if value is None:
        return None
    return str(value).removeprefix("torch.")
