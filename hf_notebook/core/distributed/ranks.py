"""The per-rank plan of a tensor/pipeline-parallel load: each rank's layers, weight bytes and KV cache.

It follows transformers 5.25's own code (``transformers/distributed``), on a meta model:

- rules: the model's resolved TP and EP plans (``DistributedMixin._resolve_parallel_plans``: the config's
  ``base_model_tp_plan``/``base_model_ep_plan``, the class's ``_tp_plan`` such as ``lm_head:
  colwise_gather_output``, and ``embed_tokens: embedding_rowwise`` that ``init_parallel_plans`` adds). A parameter
  no rule names is replicated on every rank of its stage.
- shards: the DTensor placement each style's ``shard_param`` gives (``tensor_parallel.py``,
  ``expert_parallel.py``), split as ``torch.chunk`` splits an uneven dim: the first ranks get ``ceil(n / size)``,
  the last ones less, possibly nothing.
- stages: ``PipelineStage.layer_range_for_rank`` (contiguous layers; when they do not divide, the first stages
  hold one more). The first stage also holds the embeddings, the last the final norm and ``lm_head`` (and, when
  tied, the embeddings again); any other module stays on every stage (``apply_pipeline_parallelism``).
- ranks: the ``(pp, dp_replicate, fsdp, tp)`` mesh of ``initialize_distributed_mesh``, so
  ``rank = stage * tp + tp_rank``; expert ranks come from its ``(pp, dp_replicate, efsdp, ep)`` mesh.

MoE experts are sharded only by expert parallelism (``ep_size``, equal to ``tp_size`` without FSDP, and refused
with ``pp_size > 1``); under TP alone every rank holds every expert. transformers 5.25 itself fails to load
``tp > 1`` together with ``pp > 1`` (its TP rules still name the modules a stage dropped); vLLM and SGLang run
such layouts. Weight bytes count parameters; buffers (rotary tables, a few kB) are left out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import IncompatibleVersion, PlanError
from ..quiet import only_errors_from
from ..units import format_bytes
from .targets import Target

_COLWISE = {"colwise", "colwise_gather_output", "colwise_rep"}
_ROWWISE = {"rowwise", "rowwise_split_input", "rowwise_rep"}
#: Styles that hook a module's forward but leave its parameters whole on every rank.
_WHOLE = {"replicate", "sequence_parallel", "replicated_with_grad_allreduce", "mla_kv_a_proj", "all_reduce",
          "moe_tp_experts", "local_params", "ep_dispatch_experts"}
_KEY_PROJECTIONS = ("k_proj", "qkv_proj", "query_key_value")  # as transformers' get_kv_heads_per_rank
_TP_EXAMPLES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "mixtral")


@dataclass(frozen=True)
class Rank:
    """One process of the launch: where it runs, which decoder layers it holds, and its bytes."""

    rank: int
    node: int
    local_rank: int
    device: str
    stage: int
    tp_rank: int
    layers: range  # decoder layer indices of its stage
    weight_bytes: int
    kv_bytes: int
    budget: int  # the device's memory

    @property
    def free(self) -> int:
        """Bytes left for activations and the runtime (negative: it does not fit)."""
        return self.budget - self.weight_bytes - self.kv_bytes


@dataclass(frozen=True)
class RankPlan:
    """A layout (``tp`` x ``pp`` ranks, ``ep`` expert ranks) on ``target`` and what each rank holds."""

    tp: int
    pp: int
    ep: int
    target: Target
    reason: str
    ranks: tuple[Rank, ...]
    model_type: str = ""
    dtype: str = ""
    weight_bytes: int = 0  # the whole model, each tensor once
    kv: Any = None  # the kv_cache.KVCache planned for, or None
    source: str = ""  # what a launch pins: "org/name@sha" (Session.plan_ranks fills these four)
    model_class: str = ""
    options: Any = field(default=None, repr=False, compare=False)  # the LoadOptions it was planned with (no token)
    name: str = ""  # the notebook variable it is bound to (%plan_model --as), for the %launch_model lines

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    @property
    def fits(self) -> bool:
        return all(r.free >= 0 for r in self.ranks)

    @property
    def local(self) -> bool:
        """Whether every rank runs on this machine's CPU (one node of ``cpu`` ranks): ``%launch_model --run``."""
        return self.target.kind == "cpu" and self.target.nodes == 1

    @property
    def distributed_config(self) -> dict:
        """Keyword arguments for ``transformers.distributed.DistributedConfig``."""
        return {"tp_size": self.tp, "pp_size": self.pp, "ep_size": self.ep}


@dataclass(frozen=True)
class _Model:
    """What the plan reads off the meta model, once."""

    module: Any
    text: Any  # the decoder's text config
    params: dict[str, tuple[tuple[int, ...], int]]  # name -> (shape, bytes per element); tied copies left out
    tied: dict[str, str]  # tied copy -> the parameter it shares
    base: str  # the base model's prefix with a dot ("model."), "" for a base model
    layers: int  # decoder layers the pipeline splits (0: none it can split)

    @property
    def nbytes(self) -> int:
        return sum(math.prod(shape) * size for shape, size in self.params.values())

    @property
    def model_type(self) -> str:
        return getattr(self.text, "model_type", "") or "this model"


def plan_ranks(config: Any, target: Target, *, dtype: str = "bfloat16", tp: Optional[int] = None,
               pp: Optional[int] = None, ep: Optional[int] = None, context: Optional[int] = None, batch: int = 1,
               kv_dtype: Optional[str] = None, class_name: Optional[str] = None, model: Any = None) -> RankPlan:
    """Each rank's share of ``config``'s model in ``dtype`` on ``target``, with the KV cache of ``context`` tokens
    for ``batch`` sequences. Without ``tp`` and ``pp``: the smallest layout that fits (fewest devices; tp within a
    node first, then pipeline stages); with one of them, the other is 1. ``ep`` (expert ranks) defaults to ``tp`` for
    a model with an expert-parallel plan when ``pp`` is 1, else 1. ``model``: ``config``'s meta model, if built."""
    from ..devices.kv_cache import KV_DTYPES, kv_cache
    from ..devices.plan import build_meta_model, model_class_for

    if model is None:
        model = build_meta_model(model_class_for(config, class_name), config, dtype)
    described = _describe(model)
    kv = None
    if context:
        kv = kv_cache(config, context=context, batch=batch,
                      dtype=kv_dtype or (dtype if dtype in KV_DTYPES else "bfloat16"))
    if tp is None and pp is None:
        if ep not in (None, 1):
            raise PlanError(f"ep={ep} without tp: the expert ranks follow tp.", hint="Give tp too, or leave ep out.")
        return _auto(described, target, kv, ep, dtype)
    tp, pp = tp or 1, pp or 1
    ep, ranks = _layout(described, target, tp, pp, ep, kv)
    fullest = max(ranks, key=lambda r: r.weight_bytes + r.kv_bytes)
    reason = (f"tp={tp}, pp={pp}{f', ep={ep}' if ep > 1 else ''} as asked: the fullest rank needs "
              f"{format_bytes(fullest.weight_bytes + fullest.kv_bytes)} of its {format_bytes(fullest.budget)}"
              f"{'' if fullest.free >= 0 else ', so it does not fit'}")
    return _plan(described, target, tp, pp, ep, ranks, reason, kv, dtype)


def _plan(model: _Model, target, tp, pp, ep, ranks, reason, kv, dtype) -> RankPlan:
    return RankPlan(tp=tp, pp=pp, ep=ep, target=target, reason=reason, ranks=ranks, model_type=model.model_type,
                    dtype=dtype, weight_bytes=model.nbytes, kv=kv)


def _describe(model: Any) -> _Model:
    text = model.config.get_text_config(decoder=True)
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    params = {name: (tuple(p.shape), p.element_size()) for name, p in model.named_parameters() if name not in tied}
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    base, dotted = (base, f"{prefix}.") if base is not None else (model, "")
    layers = getattr(base, "layers", None)
    count = len(layers) if _is_module_list(layers) else 0
    return _Model(model, text, params, tied, dotted, count)


def _is_module_list(layers: Any) -> bool:
    import torch

    return isinstance(layers, torch.nn.ModuleList)


# -- the layout ------------------------------------------------------------------------------------------------
def _layout(model: _Model, target: Target, tp: int, pp: int, ep: Optional[int], kv) -> tuple[int, tuple[Rank, ...]]:
    """The expert-parallel size and the ranks of ``tp`` x ``pp``, or a PlanError saying why it cannot be made."""
    if tp < 1 or pp < 1 or tp * pp > target.world_size:
        raise PlanError(f"tp={tp} x pp={pp} makes {tp * pp} ranks; {target} has {target.world_size} devices.",
                        hint="Choose tp and pp whose product is at most the number of devices, or leave both out.")
    _check_tp_plan(model, tp)
    _check_pp(model, pp)
    ep = _expert_size(model, tp, pp, ep)
    rules = _rules(model, tp, pp, ep)
    failures = _indivisible(model, tp, ep, rules)
    if failures:
        raise PlanError(f"{model.model_type} cannot be split tp={tp} ways: {tp} does not divide "
                        f"{_listed(failures)}.", hint=f"tp values that divide them all: {_working_tp(model, target)}.")
    stages = [_layer_range(s, model.layers, pp) for s in range(pp)]
    owners = _owners(model, stages)
    ranks = tuple(_rank(model, target, tp, ep, stage, tp_rank, stages, owners, rules, kv)
                  for stage in range(pp) for tp_rank in range(tp))
    return ep, ranks


def _rank(model: _Model, target: Target, tp, ep, stage, tp_rank, stages, owners, rules, kv) -> Rank:
    rank = stage * tp + tp_rank
    node, local = divmod(rank, target.gpus_per_node)
    weights = 0
    for name, (shape, size) in model.params.items():
        if stage in owners[name]:
            weights += math.prod(_local_shape(model, name, shape, rules, tp, tp_rank, ep)) * size
    layers = stages[stage] if model.layers else range(_kv_layers(model, kv))
    return Rank(rank, node, local, target.device(local), stage, tp_rank, layers, weights,
                _kv_bytes(model, kv, layers, tp, rules[0]), target.memory)


def _layer_range(stage: int, layers: int, pp: int) -> range:
    """``PipelineStage.layer_range_for_rank``: contiguous layers, the remainder one each to the first stages."""
    per, extra = divmod(layers, pp)
    start = stage * per + min(stage, extra)
    return range(start, start + per + (stage < extra))


def _owners(model: _Model, stages: list[range]) -> dict[str, set[int]]:
    """The stages that hold each parameter (``apply_pipeline_parallelism``)."""
    if len(stages) == 1:
        return {name: {0} for name in model.params}
    found = {name: _stages_of(model, name, stages) for name in model.params}
    for copy, source in model.tied.items():  # a tied head keeps the embeddings on its stage too
        if source in found:
            found[source] |= _stages_of(model, copy, stages)
    return found


def _stages_of(model: _Model, name: str, stages: list[range]) -> set[int]:
    last = len(stages) - 1
    layer = re.match(re.escape(model.base) + r"layers\.(\d+)\.", name)
    if layer:
        return {s for s, r in enumerate(stages) if int(layer.group(1)) in r}
    if name.startswith(f"{model.base}embed_tokens."):
        return {0}
    if name.startswith((f"{model.base}norm.", "lm_head.")):
        return {last}
    return set(range(len(stages)))


# -- checks ----------------------------------------------------------------------------------------------------
def _layer_rules(model: _Model) -> dict:
    """The TP rules beyond the class's own head rule: what a model type defines as its tensor-parallel plan."""
    own = getattr(type(model.module), "_tp_plan", None) or {}
    return {k: v for k, v in (model.module.tp_plan or {}).items() if k not in own}


def _check_tp_plan(model: _Model, tp: int) -> None:
    if tp > 1 and not _layer_rules(model):
        instead = ("tp=1 with pipeline stages (pp)" if model.layers else
                   "tp=1 on one device (transformers cannot split it into pipeline stages either)")
        raise PlanError(f"transformers defines no tensor-parallel plan for {model.model_type}, so it cannot be "
                        f"split tp={tp} ways.", hint=f"Use {instead}, or a model type that has a plan, such as "
                        f"{', '.join(_types_with_plan())}.")


def _types_with_plan() -> list[str]:
    from transformers import CONFIG_MAPPING

    return [t for t in _TP_EXAMPLES if t in CONFIG_MAPPING and getattr(CONFIG_MAPPING[t], "base_model_tp_plan", None)]


def _check_pp(model: _Model, pp: int) -> None:
    if pp > 1 and not model.layers:
        raise PlanError(f"transformers splits pipeline stages on the base model's `layers` list, which "
                        f"{model.model_type} does not have.", hint="Use pp=1.")
    if pp > model.layers > 0:
        raise PlanError(f"pp={pp} stages for {model.layers} decoder layers: a stage would hold none.",
                        hint=f"Use at most pp={model.layers}.")


def _expert_size(model: _Model, tp: int, pp: int, ep: Optional[int]) -> int:
    experts = bool(model.module.ep_plan)
    if ep is None:
        return tp if experts and tp > 1 and pp == 1 else 1
    if ep > 1 and not experts:
        raise PlanError(f"transformers defines no expert-parallel plan for {model.model_type}.", hint="Use ep=1.")
    if ep not in (1, tp):
        raise PlanError(f"ep={ep} with tp={tp}: transformers needs ep to be a multiple of tp that divides tp "
                        "(fsdp is 1 for inference), so ep equals tp.", hint=f"Use ep={tp}, or ep=1.")
    if ep > 1 and pp > 1:
        raise PlanError("transformers does not combine expert parallelism with pipeline stages (pp > 1).",
                        hint="Use pp=1, or ep=1 (then every rank of a stage holds all of its experts).")
    return ep


def _rules(model: _Model, tp: int, pp: int, ep: int) -> tuple[dict, dict]:
    """The concrete TP and EP rules (one per parameter or module) transformers resolves for this layout."""
    from transformers.distributed import DistributedConfig

    resolve = getattr(model.module, "_resolve_parallel_plans", None)
    if resolve is None:
        from importlib.metadata import version

        raise IncompatibleVersion(f"transformers {version('transformers')} has no "
                                  "PreTrainedModel._resolve_parallel_plans, which hf_notebook uses.",
                                  hint="Install the versions hf_notebook was tested with (constraints.txt).")
    try:
        with only_errors_from("transformers.distributed.mixin"):
            tp_rules, ep_rules, _ = resolve(DistributedConfig(tp_size=tp, pp_size=pp, ep_size=ep))
    except ValueError as exc:
        raise PlanError(f"transformers refuses tp={tp}, pp={pp}, ep={ep} for {model.model_type}: {exc}",
                        hint="Choose another layout, or leave tp and pp out to get one that works.") from None
    return tp_rules, ep_rules


def _listed(counts: list[tuple[str, int, int]]) -> str:
    """``64 attention heads, 8 KV heads, intermediate size 28672``."""
    return ", ".join(f"{n} {what}" if what.endswith(("heads", "experts")) else f"{what} {n}" for what, n, _ in counts)


def _indivisible(model: _Model, tp: int, ep: int, rules: tuple[dict, dict]) -> list[tuple[str, int, int]]:
    """(what, how many, by what) for each count the layout must divide and does not."""
    return [(what, n, size) for what, n, size in _counts(model, tp, ep, rules) if n % size]


def _counts(model: _Model, tp: int, ep: int, rules: tuple[dict, dict]) -> list[tuple[str, int, int]]:
    """The counts a split must divide: heads, KV heads (when the plan shards keys), the intermediate sizes the plan
    shards, and the experts (when EP shards them)."""
    text, (tp_rules, ep_rules) = model.text, rules
    counts = []
    if tp > 1:
        heads = getattr(text, "num_attention_heads", None)
        counts += [("attention heads", heads, tp)] if heads else []
        if _shards_keys(tp_rules):
            counts.append(("KV heads", _kv_heads(text), tp))
        dims = _split_sizes(model, tp_rules)
        for attr in ("intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size"):
            value = getattr(text, attr, None)
            if isinstance(value, int) and value in dims:
                counts.append((attr.replace("_", " "), value, tp))
    if ep > 1:  # grouped_gemm (MoEParamShard) refuses experts that do not divide
        experts = {model.params[n][0][0] for n, s in ep_rules.items() if s == "grouped_gemm" and n in model.params}
        counts += [("experts", n, ep) for n in sorted(experts)]
    return counts


def _working_tp(model: _Model, target: Target) -> str:
    """The tp values (up to the target's devices) that divide every count tp must divide."""
    counts = [n for what, n, _ in _counts(model, 2, 2 if model.module.ep_plan else 1, _rules_or_empty(model))]
    good = [t for t in range(1, target.world_size + 1) if all(n % t == 0 for n in counts)]
    return ", ".join(map(str, good))


def _rules_or_empty(model: _Model) -> tuple[dict, dict]:
    try:
        return _rules(model, 2, 1, 2 if model.module.ep_plan else 1)
    except PlanError:
        return {}, {}


def _shards_keys(tp_rules: dict) -> bool:
    return any(k.rsplit(".", 1)[-1] in _KEY_PROJECTIONS and s == "colwise" for k, s in tp_rules.items())


def _kv_heads(text: Any) -> int:
    return getattr(text, "num_key_value_heads", None) or text.num_attention_heads


def _split_sizes(model: _Model, tp_rules: dict) -> set[int]:
    """The sizes of the dims the TP rules split."""
    sizes = set()
    for name, style in tp_rules.items():
        if name in model.params:
            shape = model.params[name][0]
            split = _placement(style, shape, name.endswith(".bias"))
            if split is not None:
                sizes.add(shape[split[0]])
    return sizes


# -- shards ----------------------------------------------------------------------------------------------------
def _placement(style: str, shape: tuple[int, ...], bias: bool) -> Optional[tuple[int, str]]:
    """(dim, how) a style's ``shard_param`` splits a parameter by: ``shard`` (``Shard``), ``strided``
    (``_StridedShard``, split_factor 2) or ``unit`` (``Shard`` over whole heads); None: kept whole."""
    last, second = len(shape) - 1, (len(shape) - 2) % len(shape)  # Shard(-1), Shard(ndim - 2)
    if style in _COLWISE:
        return second, "shard"
    if style in _ROWWISE:
        return None if bias else (last, "shard")
    if style == "unit_colwise":
        return second, "unit"
    if style == "unit_rowwise":
        return None if bias else (last, "unit")
    if style in ("embedding_rowwise", "embedding_colwise"):
        return (0 if style == "embedding_rowwise" else 1), "shard"
    if style == "packed_colwise":
        return (0, "shard") if len(shape) == 1 else (second, "strided")
    if style == "packed_rowwise":
        return None if len(shape) == 1 else (last, "strided")
    if style == "grouped_gemm":
        return 0, "shard"
    if style in _WHOLE:
        return None
    raise PlanError(f"The tensor-parallel style {style!r} is new to hf_notebook: it cannot size its shards.",
                    hint="Plan with tp=1, or update hf_notebook.")


def _local_shape(model: _Model, name: str, shape: tuple[int, ...], rules: tuple[dict, dict], tp: int,
                 tp_rank: int, ep: int) -> tuple[int, ...]:
    """The shape of this rank's piece of parameter ``name``. An EP rule splits over the ``ep`` expert ranks
    (``ep_rank = tp_rank % ep``), a TP rule over the ``tp`` ranks."""
    tp_rules, ep_rules = rules
    style, size, index = (ep_rules[name], ep, tp_rank % ep) if name in ep_rules else (tp_rules.get(name), tp, tp_rank)
    split = _placement(style, shape, name.endswith(".bias")) if style else None
    if split is None or size == 1:
        return shape
    dim, how = split
    n = shape[dim]
    if how == "strided":
        local = sum(_chunk(_chunk(n, 2, piece), size, index) for piece in range(2))
    elif how == "unit":
        groups = math.gcd(_units(model, name, style), size)
        local = _chunk(n, groups, index // (size // groups))
    else:
        local = _chunk(n, size, index)
    return shape[:dim] + (local,) + shape[dim + 1:]


def _chunk(n: int, parts: int, index: int) -> int:
    """Length of piece ``index`` of ``n`` split as ``torch.chunk`` does (DTensor ``Shard``)."""
    size = -(-n // parts)
    return max(0, min(n, size * (index + 1)) - size * index)


def _units(model: _Model, name: str, style: str) -> int:
    """Heads of a projection (``UnitColwiseParallel``/``UnitRowwiseParallel``: its weight's width / head dim)."""
    text = model.text
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    weight = model.params[name.rpartition(".")[0] + ".weight"][0]
    return (weight[0] if style == "unit_colwise" else weight[-1]) // head_dim


# -- KV cache --------------------------------------------------------------------------------------------------
def _kv_layers(model: _Model, kv) -> int:
    return len(kv.layers) if kv is not None else getattr(model.text, "num_hidden_layers", 0)


def _kv_bytes(model: _Model, kv, layers: range, tp: int, tp_rules: dict) -> int:
    """The rank's cache: its stage's layers, for the KV heads it holds (``get_kv_heads_per_rank``)."""
    if kv is None:
        return 0
    heads = _kv_heads(model.text)
    held = heads // tp if tp > 1 and _shards_keys(tp_rules) else heads
    return sum(kv.layers[i] for i in layers if i < len(kv.layers)) // heads * held


# -- the smallest layout that fits -----------------------------------------------------------------------------
def _auto(model: _Model, target: Target, kv, ep: Optional[int], dtype: str) -> RankPlan:
    """The fewest devices that hold the model: tp grows within a node (over the values that divide the node and
    the model's heads), then pipeline stages are added at the largest such tp."""
    shortfall = None
    for tp, pp in _candidates(model, target, ep):
        ep_used, ranks = _layout(model, target, tp, pp, ep, kv)
        fullest = max(ranks, key=lambda r: r.weight_bytes + r.kv_bytes)
        if fullest.free >= 0:
            reason = _reason(model, target, tp, pp, ep_used, ranks, kv, shortfall)
            return _plan(model, target, tp, pp, ep_used, ranks, reason, kv, dtype)
        shortfall = (tp, pp, fullest)
    raise _no_fit(model, target, kv, shortfall)


def _candidates(model: _Model, target: Target, ep: Optional[int]) -> list[tuple[int, int]]:
    node = target.gpus_per_node
    tps = [t for t in range(1, node + 1) if node % t == 0 and _tp_works(model, t, ep)]
    most = tps[-1]
    stages = range(2, min(target.world_size // most, model.layers) + 1) if model.layers else range(0)
    return [(t, 1) for t in tps] + [(most, p) for p in stages]


def _tp_works(model: _Model, tp: int, ep: Optional[int]) -> bool:
    if tp == 1:
        return True
    if not _layer_rules(model):
        return False
    ep = _expert_size(model, tp, 1, ep)
    try:
        return not _indivisible(model, tp, ep, _rules(model, tp, 1, ep))
    except PlanError:
        return False


def _reason(model: _Model, target: Target, tp, pp, ep, ranks, kv, shortfall) -> str:
    need = f"weights {format_bytes(model.nbytes)}" + (f" + KV {format_bytes(kv.nbytes)}" if kv else "")
    count = tp * pp
    parts = [f"{need} need {count} {target.card}{'s' if count > 1 else ''} ({format_bytes(target.memory)} each)"]
    if shortfall:
        t, p, fullest = shortfall
        parts.append(f"with tp={t}, pp={p} a rank would need {format_bytes(fullest.weight_bytes + fullest.kv_bytes)}")
    if tp > 1:
        parts.append(f"tp={tp} divides {_listed(_counts(model, tp, ep, _rules(model, tp, pp, ep)))}")
    if pp > 1:
        parts.append(f"pp={pp} stages of {', '.join(str(len(r.layers)) for r in ranks[::tp])} layers")
    return "; ".join(parts)


def _no_fit(model: _Model, target: Target, kv, shortfall) -> PlanError:
    need = f"{format_bytes(model.nbytes)} of weights" + (f" + {format_bytes(kv.nbytes)} of KV cache" if kv else "")
    tp, pp, fullest = shortfall
    hint = "Use a target with more or larger devices, a shorter context or smaller batch, or a smaller dtype."
    if not _layer_rules(model) and not model.layers:
        hint = (f"transformers defines no tensor-parallel plan for {model.model_type} and cannot split it into "
                "pipeline stages: it must fit one device. " + hint)
    return PlanError(f"{model.model_type} ({need}) does not fit {target}: its largest layout there, tp={tp}, "
                     f"pp={pp}, needs {format_bytes(fullest.weight_bytes + fullest.kv_bytes)} on its fullest rank, "
                     f"more than a {target.card}'s {format_bytes(target.memory)}.", hint=hint)
