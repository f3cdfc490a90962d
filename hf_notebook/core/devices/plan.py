"""Placement before loading: a meta-device model, its sizes, and the device map.

The map comes from transformers' own ``_get_device_map`` on a model built the way
``from_pretrained`` builds it, so a plan and the load that follows agree exactly. A load onto
one device has nothing to place: its plan is sized from the model it loads (``sized_by``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from ..errors import DeviceError, LoadError, PlanError
from ..hub.headers import HeaderInfo
from ..quiet import only_errors_from
from ..units import Device, device_name, format_bytes, parse_device
from .explain import Finding, explain
from .placement import Placement, own_tensors, planned_placement, spread_one_device

# Default class per task when the config names none we know (order matters: first match wins).
_AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModelForMaskedLM", "AutoModel")


@dataclass(frozen=True)
class Plan:
    """Where every module of a model would go, and what it would weigh there.

    ``module_bytes`` holds (parameter, buffer) bytes for every module, in module order, so
    views and the device-map editor can size any unit without the meta model. ``no_split``
    names the modules that must stay whole on one device (instances of the class's
    ``_no_split_modules``). ``device_map`` is the plan's own dict: the editor updates it in
    place, so the next load of the plan uses the edited map.
    """

    model_class: str
    dtype: str
    device_map: dict[str, Device]
    max_memory: Optional[dict] = None
    module_bytes: dict[str, tuple[int, int]] = field(default_factory=dict)
    blocks: tuple[str, ...] = ()  # top-level blocks in module order (layers expanded)
    tied: dict[str, str] = field(default_factory=dict)  # tied parameter -> the parameter it shares
    budget: dict[str, int] = field(default_factory=dict)  # device name -> bytes it may take
    headers: Optional[HeaderInfo] = None  # what the checkpoint's headers say (None: not read)
    source: str = ""  # "org/name@sha" or a folder
    no_split: frozenset = frozenset()  # modules that must stay whole on one device
    direct: dict[str, dict[str, int]] = field(default_factory=dict)  # module with children -> its own tensors' bytes
    config: Any = field(default=None, repr=False, compare=False)  # the model config the plan was made from
    model_cls: Any = field(default=None, repr=False, compare=False)  # the class itself (a repo's own, with remote code)
    quantization: Any = field(default=None, repr=False, compare=False)  # the transformers quantization config
    edits: list = field(default_factory=list, compare=False)  # applied editor changes, oldest first
    options: Any = field(default=None, repr=False, compare=False)  # the LoadOptions it was made with (no token)
    kv: Any = None  # the KV cache planned for (a kv_cache.KVCache, with --context), or None
    layer_names: tuple[str, ...] = ()  # the decoder layers in order: where each layer's cache goes
    step: Any = None  # what one generation step holds beside weights and cache (a step_memory.StepMemory)
    chosen_by: str = ""  # "--fit" or "--context max" when the plan chose the map or the context itself

    @property
    def kv_cache_bytes(self) -> int:
        """The KV cache of ``--context`` tokens for ``--batch`` sequences, every layer (0 without --context)."""
        return self.kv.nbytes if self.kv is not None else 0

    @property
    def kv_cache_by_device(self) -> dict[str, int]:
        """Device name -> the KV cache bytes it holds under the current (perhaps edited) map."""
        return self.kv_for(self.device_map)

    @property
    def headroom_by_device(self) -> dict[str, int]:
        """Device name -> the activations and logits of one ``--context`` step it computes (0 without --context)."""
        return self.headroom_for(self.device_map)

    def kv_for(self, device_map: dict) -> dict[str, int]:
        """Device name -> KV cache bytes under ``device_map`` (a draft, say); empty without --context."""
        from .kv_cache import by_device, layer_devices, main_device

        if self.kv is None:
            return {}
        found = by_device(self.kv, layer_devices(device_map, list(self.layer_names)), main_device(device_map))
        return {device_name(d): n for d, n in found.items()}

    def headroom_for(self, device_map: dict) -> dict[str, int]:
        """Device name -> one step's activations and logits under ``device_map``; empty without --context."""
        if self.step is None:
            return {}
        return {device_name(d): n for d, n in _step_by_device(self.step, self.blocks, device_map).items()}

    def room_for(self, device_map: dict) -> dict[str, int]:
        """Device name -> what beside the weights a ``--context`` step needs there: KV cache and step."""
        found = dict(self.kv_for(device_map))
        for device, nbytes in self.headroom_for(device_map).items():
            found[device] = found.get(device, 0) + nbytes
        return found

    @property
    def spilled(self) -> list[str]:
        return spilled_devices(self.device_map)

    @property
    def module_sizes(self) -> dict[str, int]:
        """Bytes per module name the plan knows (entries and blocks)."""
        return {name: p + b for name, (p, b) in self.module_bytes.items()}

    def explain(self) -> list[Finding]:
        """Structured findings: does it fit, what spills where, what would make it fit.

        An edited or fitted map was not filled block by block, so "the next block did not fit" does not apply."""
        from .explain import FILLED

        sizes = self.module_sizes
        largest = max((sizes.get(b, 0) for b in self.blocks), default=0)
        spilled = set(self.spilled)
        first = next((b for b in self.blocks if str(self._device_of(b)) in spilled), "")
        room = self.room_for(self.device_map)
        alone = self.step.by_device({}, "here") if self.step is not None else {}  # every block on one device
        whole = self.kv_cache_bytes + sum(alone.values())
        findings = explain(self.bytes_by_device, self.budget, self.spilled, self.dtype, largest=largest,
                           next_block=(first, sizes.get(first, 0)), room_by_device=room, room=whole)
        return [f for f in findings if not ((self.edits or self.chosen_by == "--fit") and f.kind == FILLED)]

    def _device_of(self, module: str):
        """The device the map gives ``module`` (its own entry or its nearest mapped parent)."""
        name = module
        while True:
            if name in self.device_map:
                return self.device_map[name]
            if not name:
                return None
            name = name.rpartition(".")[0]

    def placement(self) -> Placement:
        """The plan as a :class:`~hf_notebook.core.devices.placement.Placement` (estimated bytes; with
        ``--context``, the KV cache and step it keeps room for per device).

        A one-device map (``{"": "cpu"}``) is shown block by block, so it still reads layer by layer.
        """
        shown = spread_one_device(self.device_map, self.blocks)
        if shown is self.device_map:  # accelerate lists what it placed last at the end: show it in module order
            shown = dict(sorted(shown.items(), key=lambda item: _block_position(item[0], self.blocks)))
        placed = planned_placement(shown, self.module_bytes, frozenset(self.spilled))
        if self.kv is None:
            return placed
        return replace(placed, kv_by_device=self.kv_cache_by_device, step_by_device=self.headroom_by_device)

    @property
    def bytes_by_device(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for name, device in self.device_map.items():
            key = device_name(device)
            totals[key] = totals.get(key, 0) + sum(self.module_bytes.get(name, (0, 0)))
        return totals

    @property
    def devices(self) -> set:
        return set(self.device_map.values())

    def to_json(self, path: str | Path | None = None) -> str:
        """The device map as JSON, readable by ``--device-map @file``; written to ``path`` if given."""
        text = json.dumps(self.device_map, indent=1)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text


def model_class_for(config, class_name: Optional[str] = None, code_folder: Optional[str] = None):
    """The concrete model class: ``--class`` (an Auto model class or a model class) or the config's
    ``architectures``; with ``code_folder`` (remote code allowed), the repo's own class its ``auto_map`` names."""
    import transformers

    auto_map = getattr(config, "auto_map", None) or {}
    if code_folder is not None and auto_map:
        return _remote_class(auto_map, class_name, code_folder)
    if class_name:
        return _named_class(config, class_name)
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if _is_model_class(cls) and _fits(cls, config):
            return cls
    for auto_name in _AUTO_CLASSES:
        cls = _auto_pick(config, auto_name)
        if cls is not None:
            return cls
    if auto_map:
        raise LoadError(f"{config.model_type!r} is a model with its own code in its repo, which is not run by default.",
                        hint="Read the repo's code first; pass --trust-remote-code (with a full commit sha) only if "
                        "you trust it.")
    raise LoadError(f"No transformers class knows model type {config.model_type!r}.",
                    hint="Upgrade transformers, or pass --class.")


def _remote_class(auto_map: dict, class_name: Optional[str], code_folder: str):
    """The repo's own model class (``auto_map``), imported from the pinned snapshot's code files."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    key = class_name if class_name in auto_map else next((a for a in _AUTO_CLASSES if a in auto_map), None)
    if key is None:
        offered = ", ".join(k for k in auto_map if k != "AutoConfig") or "none"
        raise LoadError(f"The repo's code has no model class for {class_name or 'this task'}.",
                        hint=f"Its auto_map offers: {offered}. Pass one with --class.")
    return get_class_from_dynamic_module(auto_map[key], code_folder)


def _named_class(config, class_name: str):
    """``--class NAME``: an Auto model class that supports the config, or a model class built for it."""
    import transformers

    cls = None if class_name.startswith("_") or "." in class_name else getattr(transformers, class_name, None)
    if class_name.startswith("Auto") and hasattr(cls, "_model_mapping"):
        picked = _auto_pick(config, class_name)
        if picked is None:
            raise LoadError(f"{class_name} does not support model type {config.model_type!r}.",
                            hint=_class_hint(config))
        return picked
    if not _is_model_class(cls):
        what = "has no class" if cls is None else "has no model class"
        raise LoadError(f"transformers {what} {class_name!r}.", hint=_class_hint(config))
    if not _fits(cls, config):
        raise LoadError(f"{class_name} is built for {cls.config_class.model_type!r} models, "
                        f"but this checkpoint is a {config.model_type!r} model.", hint=_class_hint(config))
    return cls


def _is_model_class(cls) -> bool:
    from transformers import PreTrainedModel

    return isinstance(cls, type) and issubclass(cls, PreTrainedModel) and cls is not PreTrainedModel


def _fits(cls, config) -> bool:
    config_class = getattr(cls, "config_class", None)
    return config_class is None or isinstance(config, config_class)


def _auto_pick(config, auto_name: str):
    """The class ``auto_name`` (an Auto model class) picks for ``config``, or None."""
    import transformers

    from ..compat import auto_class_pick

    auto = getattr(transformers, auto_name, None)
    try:
        return auto_class_pick(config, auto)
    except (KeyError, ValueError, AttributeError):
        return None


def _class_hint(config) -> str:
    """The classes that fit this checkpoint, to name in an error."""
    import transformers

    names = [a for a in getattr(config, "architectures", None) or [] if _is_model_class(getattr(transformers, a, None))]
    names += [a for a in _AUTO_CLASSES if _auto_pick(config, a) is not None]
    fits = ", ".join(dict.fromkeys(names)) or "none known"
    return f"Classes that fit this {config.model_type!r} checkpoint: {fits}. Or leave --class out."


def build_meta_model(cls, config, dtype: str, hf_quantizer=None, device_map: Any = None):
    """Instantiate ``cls(config)`` on the meta device exactly as ``from_pretrained`` does (with a
    quantizer: its modules replaced as the quantizer replaces them before loading), less the init
    functions' work on tensors that have no values."""
    from transformers.utils.generic import ContextManagers

    from ..compat import init_contexts, skipped_init
    from ..dtypes import torch_dtype

    contexts = init_contexts(cls, torch_dtype(dtype), hf_quantizer is not None) + [skipped_init()]
    with ContextManagers(contexts):
        model = cls(copy.deepcopy(config))
        if hf_quantizer is not None:
            hf_quantizer.preprocess_model(model=model, dtype=torch_dtype(dtype), device_map=device_map,
                                          checkpoint_files=None, use_kernels=False)
        return model


def plan_placement(config, *, class_name: Optional[str] = None, dtype: str = "float32",
                   device_map: Any = "auto", max_memory: Optional[dict] = None,
                   no_offload: bool = False, headers: Optional[HeaderInfo] = None, source: str = "",
                   code_folder: Optional[str] = None, quantization: Any = None, context: Any = None,
                   batch: Optional[int] = None, kv_dtype: Optional[str] = None, fit: bool = False,
                   reserve: Optional[int] = None, sizes_from_load: bool = False) -> Plan:
    """Compute the device map ``from_pretrained`` would use for these options, without weights.

    ``max_memory`` may name devices this machine lacks: planning for a target machine is fine
    (``check_devices_exist`` is what a load adds). With ``context``, the KV cache of that many tokens for
    ``batch`` sequences and one generate step are planned too, and a strategy's map leaves room for them on
    every device; ``context="max"``: the longest that fits beside the weights where the map puts them.
    ``fit``: the placement that streams the fewest bytes (``fit.py``). ``reserve``: bytes every budget leaves free.
    ``sizes_from_load`` (a load about to follow): a one-device map with nothing to fit or quantize needs no meta
    model, since its map is already whole; the plan's sizes are then read from the loaded model (``sized_by``),
    so the model is built once, by ``from_pretrained``, not twice.
    """
    from transformers.integrations.accelerate import get_max_memory

    from ..compat import device_map_for

    cls = model_class_for(config, class_name, code_folder)
    if sizes_from_load and one_device(device_map) and quantization is None and not context and not fit:
        with only_errors_from("accelerate.utils.modeling", "transformers.integrations.accelerate"):
            room_memory = get_max_memory(max_memory)
        budget = {device_name(k): int(v) for k, v in room_memory.items()}
        return Plan(model_class=cls.__name__, dtype=dtype, device_map={"": parse_device(device_map[""])},
                    max_memory=max_memory, budget=budget, headers=headers, source=source, config=config, model_cls=cls)
    hf_quantizer = None
    if quantization is not None:
        hf_quantizer, config, device_map = _quantizer(config, quantization, device_map)
    model = build_meta_model(cls, config, dtype, hf_quantizer, device_map)
    context_max = context == "max"
    with only_errors_from("accelerate.utils.modeling", "transformers.integrations.accelerate"):
        room_memory = get_max_memory(max_memory)  # (it warns of devices this machine lacks: planning for another)
        if reserve:
            room_memory = {d: max(0, int(n) - reserve) for d, n in room_memory.items()}
        try:
            resolved = device_map_for(model, device_map, room_memory if reserve else max_memory, hf_quantizer)
        except ValueError as exc:
            if hf_quantizer is None or "dispatched on the CPU or the disk" not in str(exc):
                raise
            raise PlanError("Quantized this way the model does not fit on the GPUs: some modules would go to cpu or "
                            "disk, where bitsandbytes cannot run them quantized.",
                            hint="Raise the GPUs' --max-memory, use --quantize 4bit, or pass a --quantization-config "
                            "with llm_int8_enable_fp32_cpu_offload and a --device-map.") from None
        budget = {device_name(k): int(v) for k, v in room_memory.items()}
        resolved = {name: parse_device(device) for name, device in resolved.items()}
        structure = _structure(model, hf_quantizer)
        blocks, module_bytes, tied = list(structure["blocks"]), structure["module_bytes"], structure["tied"]
        sizes = {name: p + b for name, (p, b) in module_bytes.items()}
        kv, layers, step = None, (), None
        if context:
            from .kv_cache import KV_DTYPES, kv_cache
            from .step_memory import trace_step

            _refuse_no_generation(cls, config)
            kv_type = kv_dtype or (dtype if dtype in KV_DTYPES else "bfloat16")
            kv = kv_cache(config, context=1, batch=batch or 1, dtype=kv_type)
            layers = _layer_names(blocks, len(kv.layers))
            twin = model if hf_quantizer is None else build_meta_model(cls, config, dtype)  # activations: dtype's
            trace_at = lambda c: trace_step(twin, blocks, context=c, batch=batch or 1)  # noqa: E731
            kv_at = lambda c: kv_cache(config, context=c, batch=batch or 1, dtype=kv_type)  # noqa: E731
            offload = not no_offload

            def room_at(kv_now, step_now):
                from .fit import room_of

                return room_of(blocks, sizes, tied, kv=kv_now, layer_names=layers, step=step_now,
                               budgets=_ordered(budget), offload=offload)

            if context == "max":
                most = getattr(config.get_text_config(decoder=True), "max_position_embeddings", None) or 2**20
                context = _longest(trace_at, kv_at, room_at, resolved, most)
                if not context:
                    raise PlanError("Not one token's KV cache and step fit beside the weights where the map puts them.",
                                    hint="Raise --max-memory, lower --batch or --reserve, or let --fit move weights.")
            kv, step = kv_at(context), trace_at(context)
            if fit:
                from .fit import best_placement, fitted_map

                room = room_at(kv, step)
                resolved = {name: parse_device(d) for name, d in fitted_map(room, best_placement(room)).items()}
            elif isinstance(device_map, str) and device_map != "" and not context_max:
                resolved = _with_room(model, device_map, room_memory, hf_quantizer, kv, layers, step, blocks,
                                      resolved)
        elif fit:
            from .fit import best_placement, fitted_map, room_of

            room = room_of(blocks, sizes, tied, budgets=_ordered(budget), offload=not no_offload)
            resolved = {name: parse_device(d) for name, d in fitted_map(room, best_placement(room)).items()}
    resolved = placed_whole(resolved, structure)
    plan = Plan(model_class=cls.__name__, dtype=dtype, device_map=resolved, max_memory=max_memory, budget=budget,
                headers=headers, source=source, config=config, model_cls=cls, quantization=quantization, kv=kv,
                layer_names=layers, step=step, chosen_by="--fit" if fit else "--context max" if context_max else "",
                **structure)
    spilled = plan.spilled
    if no_offload and spilled:
        raise PlanError(_spill_message(plan, spilled), hint=_spill_hint(plan))
    return plan


def placed_whole(device_map: dict, structure: dict) -> dict:
    """``device_map`` with every module placed where ``from_pretrained`` puts it: a module holding only tied
    weights (a tied ``lm_head``) with the tensor it shares, as accelerate keeps them; with one device in the
    map (not disk), any other module on cpu, where transformers loads what the map leaves out (it dispatches
    nothing then). A map over several devices that leaves weights out is refused, as accelerate refuses it."""
    from .editing import Structure, place_tied, unplaced

    shape = Structure(structure["module_bytes"], structure["blocks"], structure["no_split"], structure["tied"],
                      structure["direct"])
    placed = place_tied(device_map, shape)
    left = unplaced(placed, shape)
    if not left:
        return placed
    devices = {device_name(d) for d in placed.values()}
    if len(devices) > 1 or "disk" in devices:
        from ..errors import OptionError

        sizes = ", ".join(f"{n or '(the model)'} ({format_bytes(shape.bytes.get(n, 0))})" for n in left[:5])
        raise OptionError(f"The device map does not place {sizes}{' ...' if len(left) > 5 else ''}.",
                          hint=f'Add an entry for each, e.g. "{left[0]}": "cpu", or map a module holding it.')
    return {**placed, **{name: "cpu" for name in left}}


def one_device(device_map: Any) -> bool:
    """A map that puts the whole model on one device other than disk (``{"": "cpu"}``, ``{"": 0}``)."""
    return isinstance(device_map, dict) and list(device_map) == [""] and device_map[""] not in ("disk", "meta")


def _structure(model, hf_quantizer=None) -> dict:
    """What a plan keeps of a model (meta or loaded): every module's bytes, the blocks, ties, whole modules."""
    walk = _Walk(model)
    return dict(module_bytes=_module_bytes(walk, _quantized_sizes(model, hf_quantizer)), blocks=tuple(_blocks(walk)),
                tied=dict(walk.tied), no_split=_no_split(walk), direct=_direct_tensors(walk))


class _Walk:
    """A model's modules in ``named_modules`` order, each with its own parameters and buffers, read once:
    the structure's parts all walk the same tree (a 70B model has over a thousand modules)."""

    def __init__(self, model):
        self.model = model
        self.modules = list(model.named_modules())
        self.own = [own_tensors(module) for _, module in self.modules]
        self.tied = getattr(model, "all_tied_weights_keys", None) or {}
        self.no_split_classes = set(getattr(model, "_no_split_modules", None) or [])


def sized_by(plan: Plan, model) -> Plan:
    """A ``sizes_from_load`` plan with its sizes read from the model it loaded (already sized: as it is)."""
    if plan.blocks:
        return plan
    return replace(plan, **_structure(model))


def _layer_names(blocks: list[str], count: int) -> tuple[str, ...]:
    """The decoder layers among the plan's blocks: the numbered run of ``count`` children (``model.layers.N``)."""
    import re

    runs: dict[str, list[str]] = {}
    for block in blocks:
        found = re.fullmatch(r"(.+)\.(\d+)", block)
        if found:
            runs.setdefault(found.group(1), []).append(block)
    fitting = [(prefix, names) for prefix, names in runs.items() if len(names) == count]
    decoders = [names for prefix, names in fitting if "decoder" in prefix.split(".")]  # an encoder's run may match
    names = decoders[0] if len(decoders) == 1 else fitting[0][1] if len(fitting) == 1 else None
    if names is None:
        raise PlanError(f"Cannot tell which of the model's modules are its {count} decoder layers, to place their "
                        "KV cache.", hint="Plan without --context.")
    return tuple(names)


def _longest(trace_at, kv_at, room_at, device_map: dict, most: int) -> int:
    """``--context max``: the longest context whose KV cache and step fit beside the weights where ``device_map``
    puts them. Each block's step grows as a polynomial of degree at most two in the context (a materialised mask
    is the square term), so three traces give a guess, which exact traces then confirm (or bisection finds)."""
    from .fit import longest_context, placed
    from .step_memory import StepMemory

    probes = [trace_at(c) for c in (64, 128, 256)]

    def curve(context: int) -> StepMemory:
        x = (context - 128) / 64  # the probes at x = -1, 0, 1
        by_block = {}
        for block, low in probes[0].by_block.items():
            mid, high = probes[1].by_block.get(block, 0), probes[2].by_block.get(block, 0)
            by_block[block] = int(mid + x * (high - low) / 2 + x * x * (high - 2 * mid + low) / 2)
        return StepMemory(context, probes[0].batch, by_block, probes[0].logits, probes[0].head)

    def fits(context: int, step) -> bool:
        room = room_at(kv_at(context), step)
        return room.fits(placed(room, device_map))

    guess = longest_context(lambda c: fits(c, curve(c)), most)
    exact = lambda c: fits(c, trace_at(c))  # noqa: E731
    if guess and exact(guess) and (guess == most or not exact(guess + 1)):
        return guess
    return longest_context(exact, most)


def _refuse_no_generation(cls, config) -> None:
    if not cls.can_generate():
        raise PlanError(f"{cls.__name__} does not generate: a {config.model_type} model keeps no KV cache to plan "
                        "for a --context.", hint="Plan without --context (and --batch), or pick a generating --class.")


def _ordered(budget: dict) -> dict:
    """Budgets keyed by device, the accelerators first (by index), then cpu; disk left out (no budget)."""
    devices = sorted((parse_device(d) for d in budget if d != "disk"), key=lambda d: (not isinstance(d, int), str(d)))
    return {d: budget[device_name(d)] for d in devices}


def _step_by_device(step, blocks, device_map) -> dict:
    from .kv_cache import main_device
    from .step_memory import block_devices

    main = main_device(device_map)
    return step.by_device(block_devices(list(blocks), device_map, main), main)


def _with_room(model, strategy: str, full: dict, hf_quantizer, kv, layers, step, blocks, resolved: dict) -> dict:
    """The strategy's map with each device's budget lowered by the KV cache and the step's activations it
    would hold, until the map and they agree (they follow the layers: a few rounds at most)."""
    from ..compat import device_map_for
    from .kv_cache import by_device, layer_devices, main_device

    for _ in range(4):
        need = by_device(kv, layer_devices(resolved, list(layers)), main_device(resolved))
        for device, nbytes in _step_by_device(step, blocks, resolved).items():
            need[device] = need.get(device, 0) + nbytes
        lowered = {}
        for device, nbytes in full.items():
            left = int(nbytes) - need.get(parse_device(device), 0)
            if left <= 0 and need.get(parse_device(device)):
                raise PlanError(f"The KV cache and one step's activations alone need "
                                f"{format_bytes(need[parse_device(device)])} on {device_name(device)}, more than its "
                                f"budget of {format_bytes(int(nbytes))}.",
                                hint="Lower --context or --batch, use --kv-dtype float8_e4m3fn, or raise --max-memory.")
            lowered[device] = max(left, 0)
        again = {name: parse_device(d) for name, d in device_map_for(model, strategy, lowered, hf_quantizer).items()}
        if again == resolved:
            break
        resolved = again
    return resolved


def _quantizer(config, quantization, device_map):
    """transformers' quantizer for this config, as ``from_pretrained`` makes it (environment checked)."""
    from transformers.quantizers.auto import get_hf_quantizer

    try:
        return get_hf_quantizer(copy.deepcopy(config), quantization, device_map, True, {})
    except (ImportError, ValueError, RuntimeError) as exc:
        raise PlanError(f"This quantization cannot be used here: {str(exc).splitlines()[0]}",
                        hint="Check the --quantize options (and that bitsandbytes / torchao are installed).") from None


def _quantized_sizes(model, hf_quantizer) -> dict[str, int]:
    if hf_quantizer is None:
        return {}
    from ..quant import quantized_weights

    return quantized_weights(model, hf_quantizer)


def _module_bytes(walk: _Walk, sizes: Optional[dict] = None) -> dict[str, tuple[int, int]]:
    """(parameter, buffer) bytes of every module, in module order; tied copies (untied on meta) count once,
    and so does a tensor held by two modules (``named_parameters`` order: the first holder has it).
    ``sizes`` overrides the bytes of quantized weights (packed data and quantization state)."""
    tied, sizes = walk.tied, sizes or {}
    totals = {name: [0, 0] for name, _ in walk.modules}
    seen: tuple[set, set] = (set(), set())
    for (name, _), own in zip(walk.modules, walk.own):
        slot = totals[name]
        for kind in (0, 1):
            for local, tensor in own[kind]:
                if id(tensor) in seen[kind]:
                    continue
                seen[kind].add(id(tensor))
                full = f"{name}.{local}" if name else local
                if full not in tied:
                    slot[kind] += sizes.get(full, tensor.numel() * tensor.element_size())
    for name, _ in reversed(walk.modules):  # children follow their parent: each total is whole when it is added
        parent = name
        while parent:
            parent = parent.rpartition(".")[0]
            if parent in totals:
                totals[parent][0] += totals[name][0]
                totals[parent][1] += totals[name][1]
                break
    return {name: (p, b) for name, (p, b) in totals.items()}


def _direct_tensors(walk: _Walk) -> dict[str, dict[str, int]]:
    """Tensors held directly by a module that also has children (``cls.predictions.bias``): splitting
    such a module in a device map needs an entry for each of them."""
    found: dict[str, dict[str, int]] = {}
    for (name, module), (params, buffers) in zip(walk.modules, walk.own):
        if all(child is None for child in module._modules.values()):  # a leaf (as `children()` sees it)
            continue
        for local, tensor in params + buffers:
            full = f"{name}.{local}" if name else local
            if full not in walk.tied:
                found.setdefault(name, {})[full] = tensor.numel() * tensor.element_size()
    return found


def _no_split(walk: _Walk) -> frozenset:
    """Names of the modules whose class is in ``_no_split_modules``: each must stay on one device."""
    return frozenset(name for name, module in walk.modules if type(module).__name__ in walk.no_split_classes)


def _blocks(model) -> list[str]:
    """The units a map is read and edited by, in module order: modules are opened down to their
    layer lists (``model.layers.0``, ``bert.encoder.layer.0``); a module with no layer list inside,
    or one that must stay whole, is one block. Modules without tensors are left out."""
    from torch import nn

    walk = model if isinstance(model, _Walk) else _Walk(model)
    holds_list = {name for name, module in walk.modules if isinstance(module, nn.ModuleList)}
    holds_list |= {prefix for name in list(holds_list) for prefix in _prefixes(name)}
    holding = {name for (name, _), (params, buffers) in zip(walk.modules, walk.own) if params or buffers}
    holding |= {prefix for name in list(holding) for prefix in _prefixes(name)}

    def opened(name: str, module) -> list[str]:
        if name and (name not in holds_list or type(module).__name__ in walk.no_split_classes):
            return [name]
        if isinstance(module, nn.ModuleList):
            return [f"{name}.{index}" for index in range(len(module))]
        return [block for sub, child in module.named_children() for block in opened(f"{name}.{sub}" if name else sub, child)]

    return [b for b in opened("", walk.model) if b in holding]


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _block_position(name: str, blocks: tuple[str, ...]) -> int:
    """Where module ``name`` comes in module order: the first block it is, holds, or lies in."""
    for i, block in enumerate(blocks):
        if name in ("", block) or block.startswith(name + ".") or name.startswith(block + "."):
            return i
    return len(blocks)


def spilled_devices(device_map: dict) -> list[str]:
    """Devices that hold what did not fit on a faster one: disk always, cpu behind an accelerator."""
    labels = {device_name(d) for d in device_map.values()}
    spilled = labels & {"disk"}
    if "cpu" in labels and any(isinstance(d, int) or d == "mps" for d in device_map.values()):
        spilled.add("cpu")
    return sorted(spilled)


def _spill_message(plan: Plan, spilled: list[str]) -> str:
    sizes = plan.bytes_by_device
    parts = ", ".join(f"{format_bytes(sizes.get(name, 0))} to {name}" for name in spilled)
    fast = [d for d in sizes if d not in spilled]
    where = " and ".join(fast) if fast else "the devices budgeted"
    return f"The model does not fit on {where}: {parts} would be offloaded, and --no-offload forbids it."


def _spill_hint(plan: Plan) -> str:
    """What would make it fit, with the plan's own numbers: the budget it needs, a smaller dtype."""
    from .explain import NEEDS, SMALLER_DTYPE

    found = {f.kind: f for f in plan.explain()}
    ways = [f"raise the budget ({found[NEEDS].option})"] if NEEDS in found else ["raise --max-memory"]
    if SMALLER_DTYPE in found:
        ways.append(f"load in {found[SMALLER_DTYPE].dtype} ({found[SMALLER_DTYPE].option}, about "
                    f"{format_bytes(found[SMALLER_DTYPE].nbytes)})")
    return "To fit: " + ", or ".join(ways) + "; or drop --no-offload to accept the offload."


def check_devices_exist(device_map: dict, max_memory: Optional[dict] = None) -> None:
    """Refuse a map that names a GPU (or mps) this machine does not have; first a ``--max-memory`` that budgets one
    (the map then follows it there: naming the budget is what the user can fix)."""
    import torch

    count = torch.cuda.device_count()
    have = f"GPUs 0-{count - 1}" if count else "no GPU"
    for device in sorted(k for k in (max_memory or {}) if isinstance(k, int) and k >= count):
        raise DeviceError(f"--max-memory gives a budget to cuda:{device}, but this machine has {have}.",
                          hint="Budget the devices this machine has (e.g. --max-memory cpu=8GiB); to plan for "
                               "another machine, use %plan_model --target.")
    for name, device in device_map.items():
        if isinstance(device, int) and device >= count:
            raise DeviceError(f"The device map puts {name or 'the model'!r} on cuda:{device}, but this machine has {have}.",
                              hint="Use --device-map auto (or cpu), or edit the map to devices that exist.")
        if device == "mps" and not torch.backends.mps.is_available():
            raise DeviceError("The device map names mps, which is not available here.", hint="Use cpu or auto.")
