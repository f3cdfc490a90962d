"""The device-map draft: units, ranges, no-split modules, tied weights, budgets, undo and reset.

Plans come from real tiny configs on the meta device (no weights); maps are what accelerate
would make, then edited as a user would.
"""

import json

import pytest

from hf_notebook.core.devices.editing import MapEditor, Structure, parse_assignment
from hf_notebook.core.errors import MapError
from hf_notebook.core.devices.plan import plan_placement
from hf_notebook.testing.models import make_config


def plan_of(arch, **kw):
    return plan_placement(make_config(arch), dtype="float32", **kw)


def editor_for(plan, devices=("cpu", "disk"), budget=None, device_map=None):
    return MapEditor(Structure.of(plan), device_map or plan.device_map, devices=devices, budget=budget,
                     strategies={"auto": lambda: plan.device_map})


def test_units_are_blocks_in_module_order_with_their_bytes():
    plan = plan_of("llama", device_map="cpu")
    ed = editor_for(plan)
    assert [u.name for u in ed.units()] == list(plan.blocks)
    assert {u.device for u in ed.units()} == {"cpu"}
    assert sum(u.nbytes for u in ed.units()) == sum(plan.module_sizes[b] for b in plan.blocks)
    assert ed.totals() == {"cpu": sum(u.nbytes for u in ed.units()), "disk": 0}


def test_a_range_moves_those_layers_and_splits_the_map_around_them():
    plan = plan_of("llama", device_map="cpu")
    ed = editor_for(plan)
    before = ed.totals()
    ed.set("model.layers.1-1", "disk")
    layer = plan.module_sizes["model.layers.1"]
    assert ed.map == {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                      "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    assert ed.totals() == {"cpu": before["cpu"] - layer, "disk": layer}
    groups = ed.placement().groups
    assert [(g.label, g.device) for g in groups][1:3] == [("model.layers.0", "cpu"), ("model.layers.1", "disk")]


def test_a_parent_assigned_takes_its_children_with_it():
    plan = plan_of("llama", device_map="cpu")
    ed = editor_for(plan)
    ed.set("model.layers.0-1", "disk")
    ed.set("model", "cpu")
    assert ed.map == {"model": "cpu", "lm_head": "cpu"}
    assert all(u.device == "cpu" for u in ed.units())


@pytest.mark.parametrize("text, words", [
    ("model.layers.0.mlp", "must stay whole"),
    ("model.layers.7", "no module 'model.layers.7'"),
    ("model.layers.0-5", "out of range: model.layers has 0-1"),
    ("model.embed_tokens.3-4", "not a module with numbered children"),
    ("modle.layers.0", "model.layers.0"),  # a close match is offered
])
def test_bad_edits_name_the_problem_and_change_nothing(text, words):
    plan = plan_of("llama", device_map="cpu")
    ed = editor_for(plan)
    before = dict(ed.map)
    with pytest.raises(MapError) as info:
        ed.set(text, "disk")
    assert words in str(info.value)
    assert ed.map == before and not ed.history


def test_a_device_not_on_offer_is_refused():
    plan = plan_of("llama", device_map="cpu")
    ed = editor_for(plan)
    with pytest.raises(MapError, match="(?s)cuda:1 is not a device on offer here.*Devices: cpu, disk"):
        ed.set("lm_head", "cuda:1")


def test_several_assignments_are_checked_together_and_applied_as_one_step():
    plan = plan_of("llama", device_map="cpu")
    ed = editor_for(plan)
    with pytest.raises(MapError, match="both"):
        ed.assign([("model.layers.0-1", "disk"), ("model.layers.1", "cpu")])
    assert not ed.history
    ed.assign([parse_assignment("model.layers.0-1=disk"), parse_assignment("lm_head=disk")])
    assert len(ed.history) == 1
    assert ed.device_of("model.layers.1") == "disk" and ed.device_of("lm_head") == "disk"
    ed.undo()
    assert ed.map == ed.initial


@pytest.mark.parametrize("text", ["model.layers.0", "=cpu", "lm_head=gpu", "lm_head="])
def test_assignments_that_do_not_parse(text):
    with pytest.raises(MapError, match="--set"):
        parse_assignment(text)


def test_tied_weights_move_together_and_say_so():
    plan = plan_of("qwen2", device_map="cpu")
    assert plan.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    ed = editor_for(plan)
    change = ed.set("lm_head", "disk")
    assert change.followed == {"model.embed_tokens": "lm_head"}
    assert ed.device_of("model.embed_tokens") == "disk"


def test_tied_weights_sent_to_two_devices_are_refused():
    plan = plan_of("qwen2", device_map="cpu")
    ed = editor_for(plan)
    with pytest.raises(MapError, match="one tensor \\(tied weights\\)"):
        ed.assign([("lm_head", "disk"), ("model.embed_tokens", "cpu")])
    assert ed.map == ed.initial


def test_tie_chains_follow_through_a_shared_embedding():
    plan = plan_of("t5", device_map="cpu")
    ed = editor_for(plan)
    change = ed.set("lm_head", "disk")
    assert set(change.followed) == {"shared", "encoder.embed_tokens", "decoder.embed_tokens"}
    assert all(ed.device_of(m) == "disk" for m in ("shared", "encoder.embed_tokens", "decoder.embed_tokens"))


@pytest.mark.parametrize("arch, layer, embedding", [("gpt2", "transformer.h.0", "transformer.wte"),
                                                     ("qwen2", "model.layers.0", "model.embed_tokens")])
def test_a_tied_head_of_zero_bytes_stays_placed_when_a_one_device_map_is_split(arch, layer, embedding):
    """The tied lm_head weighs 0 B (its tensor is counted at the embedding) but is still a module to place:
    splitting {"": "cpu"} keeps an entry for it, with the tensor it shares, as accelerate keeps them."""
    plan = plan_of(arch, device_map="cpu")
    assert plan.tied == {"lm_head.weight": f"{embedding}.weight"} and plan.module_sizes["lm_head"] == 0
    ed = editor_for(plan)
    ed.set(layer, "disk")
    assert ed.map["lm_head"] == "cpu" and ed.map[layer] == "disk"
    assert [(u.name, u.device) for u in ed.units()][-1] == ("lm_head", "cpu")
    ed.put_layers(0)  # the slider: every layer on the slower device
    assert ed.device_of("lm_head") == "cpu"
    change = ed.set(embedding, "disk")  # the embedding moves: its tied head follows
    assert change.followed == {"lm_head": embedding} and ed.map["lm_head"] == "disk"


def test_a_map_without_an_entry_for_a_tied_head_places_it_with_its_partner():
    """A map written by hand (or by an older version) that leaves the tied head out: placed with its embedding."""
    plan = plan_of("gpt2", device_map="cpu")
    ed = editor_for(plan, device_map={"transformer": "cpu"})
    assert ed.initial == {"transformer": "cpu", "lm_head": "cpu"}
    assert ed.device_of("lm_head") == "cpu"


def test_a_one_device_map_that_leaves_modules_out_places_them_as_from_pretrained_does():
    """transformers loads what a one-device map leaves out on cpu (it dispatches nothing then): the plan says so,
    so the record names lm_head, and an edit finds it placed."""
    plan = plan_of("llama", device_map={"model": "cpu"})
    assert plan.device_map == {"model": "cpu", "lm_head": "cpu"}
    assert plan_of("gpt2", device_map={"transformer": "cpu"}).device_map == {"transformer": "cpu", "lm_head": "cpu"}
    tied = plan_of("qwen2", device_map={"model.embed_tokens": "disk", "model.layers": "cpu", "model.norm": "cpu",
                                        "model.rotary_emb": "cpu"})
    assert tied.device_map["lm_head"] == "disk"  # with its embedding, as accelerate keeps tied weights


def test_a_map_over_several_devices_that_leaves_weights_out_is_refused():
    from hf_notebook.core.errors import OptionError

    with pytest.raises(OptionError, match=r"does not place lm_head \(65.5 kB\)") as info:
        plan_of("llama", device_map={"model.embed_tokens": "cpu", "model.layers": "disk", "model.norm": "cpu",
                                     "model.rotary_emb": "cpu"})
    assert '"lm_head": "cpu"' in info.value.hint


def test_a_split_module_keeps_its_own_tensors_placed():
    """bert's cls.predictions holds a bias of its own next to its children."""
    plan = plan_of("bert", device_map="cpu")
    ed = editor_for(plan)
    ed.set("cls.predictions.transform", "disk")
    assert ed.map["cls.predictions.bias"] == "cpu"
    assert ed.device_of("cls.predictions.decoder") == "cpu"


def test_layer_lists_nested_deeper_are_blocks_too():
    plan = plan_of("bert", device_map="cpu")
    assert "bert.encoder.layer.0" in plan.blocks and "bert.encoder.layer.1" in plan.blocks
    ed = editor_for(plan)
    ed.set("bert.encoder.layer.0-1", "disk")
    assert [u.device for u in ed.units() if u.name.startswith("bert.encoder.layer.")] == ["disk", "disk"]


def test_budget_problems_keep_the_draft_and_block_apply():
    plan = plan_of("llama", device_map="cpu")
    total = sum(plan.module_sizes[b] for b in plan.blocks)
    layer = plan.module_sizes["model.layers.0"]
    ed = editor_for(plan, budget={"cpu": total - layer})
    [problem] = ed.problems()
    assert (problem.device, problem.nbytes, problem.over) == ("cpu", total, layer)
    ed.set("model.layers.0", "disk")
    assert ed.problems() == []


def test_undo_and_reset():
    plan = plan_of("llama", device_map="cpu")
    ed = editor_for(plan)
    ed.set("model.layers.0", "disk")
    ed.set("lm_head", "disk")
    assert ed.undo().asked == {"lm_head": "disk"}
    assert ed.device_of("lm_head") == "cpu" and ed.device_of("model.layers.0") == "disk"
    ed.reset("auto")
    assert ed.map == plan.device_map
    ed.undo()  # a reset is undoable too
    assert ed.device_of("model.layers.0") == "disk"
    with pytest.raises(MapError, match="Strategies on offer: auto"):
        ed.reset("balanced")
    assert ed.undo() is not None and ed.undo() is None


def test_export_reads_back_as_a_device_map(tmp_path):
    from hf_notebook.core.options import parse_device_map

    plan = plan_of("llama", device_map="cpu")
    ed = editor_for(plan)
    ed.set("model.layers.1", "disk")
    path = tmp_path / "map.json"
    ed.to_json(path)
    assert parse_device_map(f"@{path}") == ed.map
    assert json.loads(path.read_text())["model.layers.1"] == "disk"


def test_a_plan_for_another_machine_offers_its_gpus():
    plan = plan_of("llama", max_memory={0: 200_000, 1: 200_000, "cpu": 10**9})
    ed = editor_for(plan, devices=("cuda:0", "cuda:1", "cpu", "disk"), budget=plan.budget)
    ed.set("model.layers.0-1", 1)
    assert ed.device_of("model.layers.0") == 1
    assert list(ed.totals())[:2] == ["cuda:0", "cuda:1"]
