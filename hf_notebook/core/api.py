"""The core's face: one function per user action, explicit arguments, an ``on_event`` callback."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import HfNotebookError
from .events import Failed, OnEvent, Resolved, StageDone, StageStarted, emit
from .fetch import fetch_config, fetch_weights
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


def load_model(spec: str | ModelSpec, *, class_name: Optional[str] = None, dtype: Optional[str] = "auto",
               device_map: Any = "auto", max_memory: Any = None, offload_folder: Optional[str] = None,
               cache_dir: Optional[str] = None, offline: bool = False, force_download: bool = False,
               no_offload: bool = False, trust_remote_code: bool = False, token: Any = None,
               name: Optional[str] = None, on_event: OnEvent | None = None) -> LoadResult:
    """Resolve, plan, fetch and load a model; see the module docs of each stage."""
    stages = _Stages(on_event)
    t0 = time.perf_counter()
    try:
        spec = spec if isinstance(spec, ModelSpec) else parse_spec(spec)
        dtype, device_map, max_memory = parse_dtype(dtype), parse_device_map(device_map), parse_max_memory(max_memory)
        offline = offline or _hub_offline()
        io = dict(cache_dir=cache_dir, offline=offline, force_download=force_download, token=token)

        stages.start("resolve", str(spec))
        resolution = resolve(spec, offline=offline, cache_dir=cache_dir, token=token)
        emit(on_event, resolution.pin)
        stages.done(resolution.pin)

        stages.start("config")
        config_file = fetch_config(resolution, on_event=on_event, **io)
        config = _read_config(config_file, trust_remote_code)
        checkpoint = None
        if dtype == "auto" and _config_dtype(config) is None:  # the weights tell: fetch them first
            checkpoint = fetch_weights(resolution, config_file, on_event=on_event, **io)
        dtype = _concrete_dtype(dtype, config, checkpoint)
        stages.done(config)

        stages.start("plan")
        plan = plan_placement(config, class_name=class_name, dtype=dtype, device_map=device_map,
                              max_memory=max_memory, no_offload=no_offload)
        check_devices_exist(plan.device_map)
        stages.done(plan)

        stages.start("fetch")
        if checkpoint is None:
            checkpoint = fetch_weights(resolution, config_file, on_event=on_event, **io)
        if not offline:
            record_ref(resolution, cache_dir)
        stages.done(checkpoint)

        stages.start("load", plan.model_class)
        from .load import materialize
        from .placement import measure_placement

        if "disk" in plan.devices and offload_folder is None:
            offload_folder = tempfile.mkdtemp(prefix="hf_notebook-offload-")
        source = resolution.repo_id if resolution.local_path is None else str(resolution.local_path)
        model = materialize(checkpoint, config, plan, offload_folder=offload_folder, name_or_path=source,
                            on_event=on_event)
        result = LoadResult(model=model, pin=resolution.pin, plan=plan,
                            placement=measure_placement(model, model.hf_device_map),
                            seconds=time.perf_counter() - t0, offload_folder=offload_folder,
                            name=name, timings=stages.timings)
        stages.done(result)
        return result
    except BaseException as exc:
        stages.failed(exc)
        raise


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


def _concrete_dtype(dtype: str, config, checkpoint) -> str:
    if dtype != "auto":
        return dtype
    from .load import checkpoint_dtype

    return _config_dtype(config) or (checkpoint_dtype(checkpoint) if checkpoint else None) or "float32"
