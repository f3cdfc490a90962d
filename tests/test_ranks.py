"""Per-rank plans for tensor/pipeline-parallel inference: each rank's bytes equal what transformers' own sharding
leaves on that rank, found by running its DistributedConfig code on meta-model copies in fake processes."""

import copy

import pytest
import torch.distributed as dist

from hf_notebook.core.distributed.ranks import plan_ranks
from hf_notebook.core.distributed.targets import CARDS, parse_target, target_from
from hf_notebook.core.errors import PlanError
from hf_notebook.testing.models import _llama_70b, _mixtral_8x7b, make_config

GiB = 2**30


def _meta(config, dtype="bfloat16"):
    from hf_notebook.core.devices.plan import build_meta_model, model_class_for

    return build_meta_model(model_class_for(config), config, dtype)


@pytest.fixture(scope="module")
def llama70b():
    return _meta(_llama_70b())


@pytest.fixture(scope="module")
def mixtral():
    return _meta(_mixtral_8x7b())


# -- the independent count: transformers' own code, one fake process per rank --------------------------------------
def _sharded_by_transformers(meta, tp, pp, ep=1):
    """Per rank: (parameter bytes it holds, its stage's layers or None, bytes of its tensors left whole)."""
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from transformers.distributed import DistributedConfig
    from transformers.distributed.utils import TransformersDeviceMesh

    tied = set(meta.all_tied_weights_keys or {})  # tied again after loading: one tensor
    layers = meta.config.num_hidden_layers
    found = []
    for rank in range(tp * pp):
        dist.init_process_group("fake", rank=rank, world_size=tp * pp, store=FakeStore())
        try:
            dense = dist.init_device_mesh("cpu", (pp, 1, 1, tp), mesh_dim_names=("pp", "dp_replicate", "fsdp", "tp"))
            expert = dist.init_device_mesh("cpu", (pp, 1, tp // ep, ep),
                                           mesh_dim_names=("pp", "dp_replicate", "efsdp", "ep"))
            config = DistributedConfig(tp_size=tp, pp_size=pp, ep_size=ep)
            mesh = TransformersDeviceMesh(dense, expert)
            model = copy.deepcopy(meta)
            if tp > 1 and pp > 1:
                model = _tp_and_pp(model, config, mesh)
            else:
                model = type(model).maybe_distribute_model(model, config, mesh)
            params = [(p, p.to_local() if hasattr(p, "to_local") else p)
                      for n, p in model.named_parameters() if n not in tied]
            stage = getattr(model, "_pp_stage", None)
            found.append((sum(local.nbytes for _, local in params),
                          range(*stage.layer_range_for_rank(stage.pp_rank, layers)) if stage else None,
                          sum(local.nbytes for p, local in params if local.shape == p.shape)))
        finally:
            dist.destroy_process_group()
    return found


def _tp_and_pp(model, config, mesh):
    """``maybe_distribute_model`` for tp > 1 with pp > 1, minus its crash: transformers 5.25 resolves the TP rules
    before the stage drops modules, then shards names that are gone (see the canary below). Same calls otherwise."""
    from transformers.distributed.pipeline_parallel import PipelineIdentityLayer, apply_pipeline_parallelism
    from transformers.distributed.tensor_parallel import apply_tensor_parallelism

    model._mesh_manager = mesh
    tp_rules, _, _ = model._resolve_parallel_plans(config)
    model = apply_pipeline_parallelism(model, mesh.get_mesh("pp"))
    kept = dict(model.named_parameters()).keys() | {
        n for n, m in model.named_modules() if not isinstance(m, PipelineIdentityLayer)}
    return apply_tensor_parallelism(model, mesh.get_mesh("tp"), {k: v for k, v in tp_rules.items() if k in kept})


def _assert_matches_transformers(plan, meta, ep=1):
    expected = _sharded_by_transformers(meta, plan.tp, plan.pp, ep)
    assert [r.weight_bytes for r in plan.ranks] == [nbytes for nbytes, _, _ in expected]
    if plan.pp > 1:
        assert [r.layers for r in plan.ranks] == [layers for _, layers, _ in expected]
    return expected


# -- big models on 2 nodes of 8 H100 ----------------------------------------------------------------------------
def test_llama_70b_on_two_nodes_tp8_pp2_each_rank_as_transformers_shards_it(llama70b):
    plan = plan_ranks(_llama_70b(), parse_target("2x8xH100"), tp=8, pp=2, model=llama70b)
    _assert_matches_transformers(plan, llama70b)
    assert plan.ranks[0].layers == range(0, 40) and plan.ranks[15].layers == range(40, 80)
    nine = plan.ranks[9]
    assert (nine.rank, nine.node, nine.local_rank, nine.device, nine.stage, nine.tp_rank) == (9, 1, 1, "cuda:1", 1, 1)
    assert plan.distributed_config == {"tp_size": 8, "pp_size": 2, "ep_size": 1}
    assert all(r.budget == 80 * GiB and r.free == 80 * GiB - r.weight_bytes for r in plan.ranks)


def test_llama_70b_tp8_ranks_add_up_to_the_model_plus_the_copies_of_what_stays_whole(llama70b):
    plan = plan_ranks(_llama_70b(), parse_target("2x8xH100"), tp=8, model=llama70b)
    expected = _assert_matches_transformers(plan, llama70b)
    replicated = expected[0][2]
    assert replicated > 0  # the norms
    assert sum(r.weight_bytes for r in plan.ranks) == plan.weight_bytes + 7 * replicated
    assert plan.weight_bytes == sum(p.numel() * 2 for p in llama70b.parameters())  # untied: every tensor once


def test_the_kv_cache_is_split_by_kv_heads_and_by_stage(llama70b):
    plan = plan_ranks(_llama_70b(), parse_target("2x8xH100"), tp=8, pp=2, context=8192, batch=2, model=llama70b)
    one_head = 2 * 2 * 128 * 8192 * 2  # keys and values x batch x head dim x tokens x bf16, per layer
    assert [r.kv_bytes for r in plan.ranks] == [40 * one_head] * 16  # 8 KV heads over tp=8, 40 layers a stage
    assert all(r.free == r.budget - r.weight_bytes - r.kv_bytes for r in plan.ranks)


def test_mixtral_tp8_splits_the_experts_by_expert_parallelism(mixtral):
    plan = plan_ranks(_mixtral_8x7b(), parse_target("2x8xH100"), tp=8, model=mixtral)
    assert plan.ep == 8 and plan.distributed_config == {"tp_size": 8, "pp_size": 1, "ep_size": 8}
    _assert_matches_transformers(plan, mixtral, ep=8)


def test_mixtral_with_pipeline_stages_holds_every_expert_on_every_rank(mixtral):
    """transformers refuses expert parallelism with pp > 1, so each rank of a stage holds all its experts."""
    plan = plan_ranks(_mixtral_8x7b(), parse_target("2x8xH100"), tp=8, pp=2, model=mixtral)
    assert plan.ep == 1
    _assert_matches_transformers(plan, mixtral)
    experts = sum(p.numel() * 2 for n, p in mixtral.named_parameters() if ".experts." in n)
    assert all(r.weight_bytes > experts / 2 for r in plan.ranks)  # half the layers, all of their experts
    with pytest.raises(PlanError, match="pipeline"):
        plan_ranks(_mixtral_8x7b(), parse_target("2x8xH100"), tp=8, pp=2, ep=8, model=mixtral)


# -- refusals -----------------------------------------------------------------------------------------------------
def test_a_tp_that_does_not_divide_the_heads_is_refused_with_the_tp_values_that_would(llama70b):
    with pytest.raises(PlanError) as caught:
        plan_ranks(_llama_70b(), parse_target("2x8xH100"), tp=3, model=llama70b)
    message = str(caught.value)
    assert "64 attention heads" in message and "8 KV heads" in message
    assert "1, 2, 4, 8." in message  # 16 would split 8 KV heads: not listed


def test_a_model_type_without_a_tp_plan_is_refused_by_name():
    with pytest.raises(PlanError, match="no tensor-parallel plan for gpt2") as caught:
        plan_ranks(make_config("gpt2"), parse_target("1x2xcpu"), tp=2)
    assert "llama" in caught.value.hint


def test_more_ranks_than_devices_is_refused():
    with pytest.raises(PlanError, match="4 ranks"):
        plan_ranks(make_config("llama"), parse_target("1x2xcpu"), tp=2, pp=2)


# -- the smallest layout that fits --------------------------------------------------------------------------------
def test_without_tp_and_pp_the_fewest_h100s_that_hold_the_model_are_chosen(llama70b):
    target = parse_target("2x8xH100")
    plan = plan_ranks(_llama_70b(), target, model=llama70b)
    assert (plan.tp, plan.pp) == (2, 1) and plan.fits  # 131 GiB of weights: more than one H100
    assert plan.reason.startswith("weights 141.1 GB need 2 H100s") and "tp=2 divides 64 attention heads" in plan.reason
    long = plan_ranks(_llama_70b(), target, context=131072, batch=4, model=llama70b)
    smaller = plan_ranks(_llama_70b(), target, tp=long.tp // 2, context=131072, batch=4, model=llama70b)
    assert long.fits and not smaller.fits and long.tp > plan.tp


def test_on_small_nodes_tp_fills_a_node_then_stages_go_across_nodes():
    config = make_config("llama")
    weights = plan_ranks(config, parse_target("1x2xcpu"), tp=1).weight_bytes
    assert plan_ranks(config, target_from(2, int(weights * 0.6), nodes=2)).tp == 2
    plan = plan_ranks(config, target_from(2, int(weights * 0.3), nodes=2))
    assert (plan.tp, plan.pp) == (2, 2) and plan.fits and "pp=2 stages of 1, 1 layers" in plan.reason
    assert [(r.node, r.local_rank, r.stage) for r in plan.ranks] == [(0, 0, 0), (0, 1, 0), (1, 0, 1), (1, 1, 1)]
    assert not plan_ranks(config, target_from(2, int(weights * 0.3), nodes=2), tp=2).fits
    with pytest.raises(PlanError, match=r"does not fit 2x2xGPU.*tp=2, pp=2"):
        plan_ranks(config, target_from(2, int(weights * 0.1), nodes=2))


# -- tiny models on this machine's CPU ----------------------------------------------------------------------------
def test_a_tiny_llama_on_two_cpu_ranks_including_an_uneven_vocabulary_and_biases():
    config = make_config("llama")
    config.vocab_size = 255  # 128 rows on rank 0, 127 on rank 1
    config.attention_bias = config.mlp_bias = True  # colwise biases split, rowwise ones stay whole
    target = parse_target("1x2xcpu")
    plan = plan_ranks(config, target, tp=2)
    _assert_matches_transformers(plan, _meta(config))
    assert plan.ranks[0].weight_bytes - plan.ranks[1].weight_bytes == 2 * 64 * 2  # one embedding row, one head row
    assert [r.device for r in plan.ranks] == ["cpu", "cpu"] and plan.ranks[0].budget == target.memory


def test_layers_that_do_not_divide_give_the_first_stages_one_more():
    config = make_config("llama")
    config.num_hidden_layers = 3
    plan = plan_ranks(config, parse_target("1x2xcpu"), pp=2, context=16)
    _assert_matches_transformers(plan, _meta(config))
    assert [r.layers for r in plan.ranks] == [range(0, 2), range(2, 3)]
    assert plan.ranks[0].kv_bytes == 2 * plan.ranks[1].kv_bytes


def test_tied_embeddings_live_on_the_first_and_the_last_stage():
    config = make_config("qwen2")
    plan = plan_ranks(config, parse_target("1x2xcpu"), pp=2)
    _assert_matches_transformers(plan, _meta(config))
    embeddings = config.vocab_size * config.hidden_size * 2
    assert sum(r.weight_bytes for r in plan.ranks) == plan.weight_bytes + embeddings


def test_canary_transformers_cannot_load_tp_with_pp_yet():
    """The module docstring says transformers 5.25 fails on tp > 1 with pp > 1; when this fails, drop that note."""
    with pytest.raises(KeyError, match="embed_tokens"):
        _sharded_by_transformers_plain(_meta(make_config("llama")), tp=2, pp=2, rank=3)


def _sharded_by_transformers_plain(meta, tp, pp, rank):
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from transformers.distributed import DistributedConfig
    from transformers.distributed.utils import TransformersDeviceMesh

    dist.init_process_group("fake", rank=rank, world_size=tp * pp, store=FakeStore())
    try:
        dense = dist.init_device_mesh("cpu", (pp, 1, 1, tp), mesh_dim_names=("pp", "dp_replicate", "fsdp", "tp"))
        expert = dist.init_device_mesh("cpu", (pp, 1, tp, 1), mesh_dim_names=("pp", "dp_replicate", "efsdp", "ep"))
        type(meta).maybe_distribute_model(meta, DistributedConfig(tp_size=tp, pp_size=pp),
                                          TransformersDeviceMesh(dense, expert))
    finally:
        dist.destroy_process_group()


# -- targets ------------------------------------------------------------------------------------------------------
def test_targets_parse_nodes_gpus_and_card_in_any_case():
    import psutil

    two = parse_target("2x8xH100")
    assert (two.nodes, two.gpus_per_node, two.card, two.memory, two.kind) == (2, 8, "H100", 80 * GiB, "cuda")
    assert str(two) == "2x8xH100" and two.world_size == 16 and two.device(3) == "cuda:3"
    one = parse_target("8xh100")
    assert (one.nodes, one.gpus_per_node) == (1, 8)
    assert parse_target("a100").memory == 80 * GiB and parse_target("1xA100-40GB").memory == 40 * GiB
    assert parse_target("4x4090").card == "RTX4090" and parse_target("8xMI300X").memory == 192 * GiB
    cpu = parse_target("1x2xCPU")
    assert (cpu.kind, cpu.device(1), cpu.memory) == ("cpu", "cpu", psutil.virtual_memory().total // 2)
    given = target_from(gpus=8, gpu_memory="80GiB", nodes=2)
    assert (given.world_size, given.memory) == (16, 80 * GiB)


@pytest.mark.parametrize("text, problem", [("2x8xB300", "Unknown card 'B300'"), ("2x8x", "Unknown card"),
                                           ("two H100s", "Cannot read"), ("0x8xH100", "no devices"),
                                           ("2x0xH100", "no devices")])
def test_a_target_that_does_not_read_is_refused_with_the_problem(text, problem):
    with pytest.raises(PlanError, match=problem) as caught:
        parse_target(text)
    if problem != "no devices":
        assert all(card in caught.value.hint for card in CARDS)


def test_target_from_refuses_a_size_it_cannot_read():
    with pytest.raises(PlanError, match="lots"):
        target_from(8, "lots")
