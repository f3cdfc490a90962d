"""--fit (the placement that streams the fewest bytes) and --context max, each against brute force."""

import random

import pytest

from hf_notebook.core.devices.fit import Room, best_placement, placed, room_of
from hf_notebook.core.errors import OptionError, PlanError

ALL = 10**9  # try every placement


def _random_room(rng: random.Random) -> Room:
    """Identical layers between a few odd blocks (embeddings, head), some KV and step, one to three runners."""
    layers, odd = rng.randint(2, 6), rng.randint(1, 3)
    layer = (rng.randint(5, 20), rng.choice([0, rng.randint(1, 6)]), rng.randint(0, 5))
    weights = [rng.randint(1, 30) for _ in range(odd - 1)] + [layer[0]] * layers + [rng.randint(1, 30)]
    kv = [0] * (odd - 1) + [layer[1]] * layers + [0]
    act = [rng.randint(0, 5) for _ in range(odd - 1)] + [layer[2]] * layers + [rng.randint(0, 8)]
    devices = rng.choice([["cpu"], [0, "cpu"], [0, 1, "cpu"], [0, 1, 2, "cpu"]])
    return Room(tuple((f"b{i}",) for i in range(len(weights))), tuple(weights), tuple(kv), tuple(act),
                {d: rng.randint(10, 120) for d in devices}, rng.random() < 0.8)


def _cost(room: Room, exhaustive: int):
    try:
        where = best_placement(room, exhaustive=exhaustive)
    except PlanError:
        return None
    assert room.fits(where)
    return room.cost(where)[:2]  # bytes on disk, bytes stored off the runners


def test_the_search_finds_what_brute_force_finds():
    """400 random rooms (1 to 3 accelerators, or cpu alone; small enough to try every placement): the search by kind of block streams exactly as few
    bytes as the best of every placement, and finds one whenever one exists."""
    rng = random.Random(7)
    tried = 0
    while tried < 400:
        room = _random_room(rng)
        if len(room.places) ** len(room.units) > 8_000:  # brute force stays quick
            continue
        tried += 1
        assert _cost(room, exhaustive=0) == _cost(room, exhaustive=ALL), room


def test_everything_stays_on_the_accelerators_when_it_can():
    room = Room((("e",), ("l0",), ("l1",), ("h",)), (10, 20, 20, 10), (0, 5, 5, 0), (3, 4, 4, 6),
                {0: 60, 1: 40, "cpu": 1000})
    where = best_placement(room)
    assert "cpu" not in where and "disk" not in where
    assert room.fits(where)


def test_an_offloaded_block_is_run_on_the_main_device():
    """Its KV cache, its step and its weights (copied in to run) count on device 0, not on cpu."""
    room = Room((("a",), ("b",)), (10, 30), (0, 7), (2, 5), {0: 100, "cpu": 100})
    assert room.needs([0, "cpu"]) == {0: 10 + 7 + 5 + 30, "cpu": 30}
    assert room.needs([0, "disk"]) == {0: 10 + 7 + 5 + 30}


def test_no_placement_at_all_is_a_clear_error():
    room = Room((("a",),), (50,), (0,), (0,), {0: 10}, offload=False)
    with pytest.raises(PlanError, match="Nothing fits on the devices that run it"):
        best_placement(room)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from hf_notebook.testing.models import build_model

    folder = tmp_path_factory.mktemp("fit") / "tiny-llama"
    build_model("llama").save_pretrained(folder)
    return str(folder)


def _room(plan, max_memory, offload=True):
    from hf_notebook.core.devices.plan import _ordered

    return room_of(list(plan.blocks), plan.module_sizes, plan.tied, kv=plan.kv, layer_names=plan.layer_names,
                   step=plan.step, budgets=_ordered(plan.budget), offload=offload)


@pytest.mark.parametrize("max_memory, context", [("cpu=500KB", 100), ("cpu=2MB", 64), ("0=500KB,cpu=300KB", 64),
                                                 ("0=400KB,1=300KB,cpu=1MB", 32), ("cpu=200KB", None)])
def test_a_fit_plan_is_the_best_placement_of_its_blocks(tiny, max_memory, context):
    """A tiny llama under real budgets (GPUs planned for, not present): the plan's map streams as few bytes as
    the best of every map of its blocks, and its options give the same plan again."""
    from hf_notebook.core.api import plan_model

    plan = plan_model(tiny, no_verify=True, dtype="float32", max_memory=max_memory, fit=True, context=context)
    room = _room(plan, max_memory)
    where = placed(room, plan.device_map)
    assert room.fits(where)
    assert room.cost(where)[:2] == room.cost(best_placement(room, exhaustive=ALL))[:2]
    assert not plan.options.fit and plan.options.device_map == plan.device_map  # resolved: the map it chose
    again = plan_model(tiny, no_verify=True, dtype="float32", max_memory=max_memory, device_map=plan.device_map,
                       context=context)
    assert again.device_map == plan.device_map


@pytest.mark.parametrize("max_memory, batch", [("cpu=900KB", 1), ("cpu=600KB", 1), ("cpu=2MB", 3)])
def test_context_max_is_the_longest_that_fits(tiny, max_memory, batch):
    """--context max against every context around it, each with its own exact trace: N fits, N + 1 does not."""
    from hf_notebook.core.api import plan_model
    from hf_notebook.core.devices.kv_cache import kv_cache
    from hf_notebook.core.devices.plan import build_meta_model
    from hf_notebook.core.devices.step_memory import trace_step

    plan = plan_model(tiny, no_verify=True, dtype="float32", max_memory=max_memory, context="max", batch=batch)
    longest = plan.kv.context
    assert plan.options.context == longest and longest >= 1
    meta = build_meta_model(plan.model_cls, plan.config, "float32")

    def fits(context):
        room = room_of(list(plan.blocks), plan.module_sizes, plan.tied,
                       kv=kv_cache(plan.config, context=context, batch=batch, dtype="float32"),
                       layer_names=plan.layer_names, step=trace_step(meta, list(plan.blocks), context=context, batch=batch),
                       budgets={"cpu": plan.budget["cpu"]})
        return room.fits(placed(room, plan.device_map))

    verdicts = {c: fits(c) for c in range(max(1, longest - 8), longest + 9)}
    assert all(verdicts[c] for c in verdicts if c <= longest)
    assert not any(verdicts[c] for c in verdicts if c > longest)


def test_one_token_more_than_context_max_does_not_fit(tiny):
    """A tight budget: the longest context plans with the weights where they were; one token more fits nowhere
    on cpu (offloading forbidden)."""
    from hf_notebook.core.api import plan_model

    plan = plan_model(tiny, no_verify=True, dtype="float32", max_memory="cpu=520KB", context="max")
    full = plan_model(tiny, no_verify=True, dtype="float32", max_memory="cpu=520KB", device_map=plan.device_map,
                      context=plan.kv.context)
    assert full.device_map == plan.device_map
    with pytest.raises(PlanError):  # one more token does not fit beside the weights
        plan_model(tiny, no_verify=True, dtype="float32", max_memory="cpu=520KB", device_map=plan.device_map,
                   context=plan.kv.context + 1, no_offload=True, fit=True)


def test_fit_loads_and_says_how_to_get_it_again(tiny):
    from hf_notebook.core.api import load_model
    from hf_notebook.ui.words import load_line

    result = load_model(tiny, no_verify=True, dtype="float32", max_memory="cpu=500KB", fit=True, context=100)
    assert "disk" in result.device_map.values()
    line = load_line(result)
    assert "--fit" not in line and "--context 100" in line and "--device-map '{" in line


def test_options_that_do_not_go_together_are_refused(tiny):
    from hf_notebook.core.api import plan_model

    with pytest.raises(OptionError, match="cannot be used together"):
        plan_model(tiny, no_verify=True, fit=True, context="max")
    with pytest.raises(OptionError, match="--reserve"):
        plan_model(tiny, no_verify=True, reserve="lots")


def test_reserve_leaves_room_on_every_device(tiny):
    from hf_notebook.core.api import plan_model

    plan = plan_model(tiny, no_verify=True, dtype="float32", max_memory="0=800KB,cpu=900KB", reserve="300KB")
    assert plan.budget == {"cuda:0": 500_000, "cpu": 600_000}
    assert plan.bytes_by_device.get("cuda:0", 0) <= 500_000


def test_the_magic_fits_and_prints_the_options_that_reproduce_it(shell, tiny_hub, hf_cache, monkeypatch):
    shown = []
    monkeypatch.setattr(shell.display_pub, "publish", lambda data, metadata=None, **kw: shown.append(data))
    shell.run_line_magic("plan_model", "tiny/llama --dtype float32 --fit --context 100 --max-memory cpu=500KB --as p")
    plan = shell.user_ns["p"]
    text = shown[-1]["text/plain"]
    assert "disk" in plan.device_map.values()
    assert "--context 100" in text and "--device-map '{" in text and "--fit" not in text.split("load it")[-1]
    shell.run_line_magic("load_model", "p --as m")  # the plan loads as it was fitted
    from hf_notebook.magics import instance

    assert instance(shell).session.get("m").device_map == plan.device_map
