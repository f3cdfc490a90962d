"""Planning from config + safetensors headers only: zero weight bytes, same maps as accelerate."""

import json
import struct

import pytest

from hf_notebook.core.errors import PlanError
from IPython.core.error import UsageError

from hf_notebook.core.api import plan_model
from hf_notebook.testing.models import BIG_CONFIGS, synthetic_checkpoint

GIB = 2**30


def header_bytes(folder):
    """Bytes a plan may fetch: config and index, plus the 8-byte length and JSON header per shard."""
    total = sum((folder / name).stat().st_size for name in ("config.json", "model.safetensors.index.json"))
    for shard in folder.glob("*.safetensors"):
        with open(shard, "rb") as handle:
            total += 8 + struct.unpack("<Q", handle.read(8))[0]
    return total


@pytest.fixture(scope="module")
def big_repos(hub_store, tmp_path_factory):
    """Header-only checkpoints of big real shapes, published into the stand-in."""
    repos = {}
    for name in ("llama-70b", "mixtral-8x7b", "t5-11b"):
        folder = synthetic_checkpoint(BIG_CONFIGS[name](), tmp_path_factory.mktemp(name))
        repo_id = f"big/{name}"
        hub_store.create_repo(repo_id, exist_ok=True)
        hub_store.commit(repo_id, {p.name: p for p in folder.iterdir()}, message="synthetic headers")
        repos[name] = (repo_id, folder)
    return repos


def accelerate_map(name, budget):
    """accelerate's own answer on an independently built meta model."""
    import torch
    import transformers
    from accelerate import infer_auto_device_map, init_empty_weights

    config = BIG_CONFIGS[name]()
    auto = transformers.AutoModelForSeq2SeqLM if config.is_encoder_decoder else transformers.AutoModelForCausalLM
    with init_empty_weights():
        model = auto.from_config(config, dtype=torch.bfloat16)
    return infer_auto_device_map(model, max_memory=budget, no_split_module_classes=model._no_split_modules)


@pytest.mark.parametrize("name", ["llama-70b", "mixtral-8x7b", "t5-11b"])
def test_big_plans_agree_with_accelerate_and_fetch_no_weights(big_repos, hub_server, hf_cache, name):
    repo_id, folder = big_repos[name]
    budget = {0: 80 * GIB, "cpu": 100 * GIB}
    plan = plan_model(repo_id, dtype="bfloat16", max_memory=budget)
    assert plan.device_map == accelerate_map(name, budget)
    assert 0 < hub_server.bytes_served(repo_id) <= header_bytes(folder)
    assert plan.headers.total_params == json.loads((folder / "model.safetensors.index.json").read_text()
                                                    )["metadata"]["total_size"] // 2


def test_70b_plan_explains_the_spill(big_repos, hf_cache):
    plan = plan_model("big/llama-70b", dtype="bfloat16", max_memory="0=80GiB,cpu=100GiB")
    assert plan.spilled == ["cpu"]
    assert 70.5e9 < plan.headers.param_counts["BF16"] < 70.6e9
    findings = {f.kind: f for f in plan.explain()}
    assert findings["filled"].device == "cuda:0" and findings["filled"].budget <= 80 * GIB
    assert findings["spill"].device == "cpu" and findings["spill"].severity == "warning"
    assert findings["spill"].nbytes == plan.bytes_by_device["cpu"] > 0
    need = findings["needs"]
    assert need.nbytes > sum(plan.bytes_by_device.values()) and need.option.startswith("--max-memory 0=")
    assert plan.bytes_by_device["cuda:0"] <= 80 * GIB


def test_no_offload_turns_a_spill_into_an_error(shell, big_repos, hf_cache):
    with pytest.raises(UsageError, match="--no-offload"):
        shell.run_line_magic("plan_model", "big/llama-70b --dtype bfloat16 --max-memory 0=80GiB,cpu=100GiB --no-offload")
    shell.run_line_magic("plan_model", "big/llama-70b --dtype bfloat16 --max-memory 0=200GiB --no-offload --as p")
    assert set(shell.user_ns["p"].device_map.values()) == {0}


def test_plan_as_binds_a_map_that_load_model_reads(shell, tiny_hub, hub_server, hf_cache, tmp_path, capsys):
    shell.run_line_magic("plan_model", "tiny/llama --max-memory cpu=300KB --as plan")
    plan = shell.user_ns["plan"]
    assert hub_server.bytes_served("tiny/llama") <= header_bytes(tiny_hub["llama"].folders["main"])
    assert {"cpu", "disk"} == {str(d) for d in plan.device_map.values()}
    out = capsys.readouterr().out
    assert "disk" in out and "spill to disk" in out
    plan.to_json(tmp_path / "map.json")
    shell.run_line_magic("load_model", f"tiny/llama --device-map @{tmp_path / 'map.json'} --as m")
    assert shell.user_ns["m"].hf_device_map == plan.device_map


def test_plan_only_is_the_same_plan(shell, tiny_hub, hf_cache):
    shell.run_line_magic("load_model", "tiny/t5 --plan-only --max-memory cpu=300KB --as only")
    shell.run_line_magic("plan_model", "tiny/t5 --max-memory cpu=300KB --as p")
    only, plan = shell.user_ns["only"], shell.user_ns["p"]
    assert "model" not in shell.user_ns  # nothing was loaded
    assert "disk" in only.device_map.values()  # a real spill, so the comparison below means something
    assert (only.model_class, only.dtype, only.device_map, only.module_bytes, only.source) == (
        plan.model_class, plan.dtype, plan.device_map, plan.module_bytes, plan.source)


def test_plot_is_a_static_png(shell, tiny_hub, hf_cache, monkeypatch):
    shown = []
    monkeypatch.setattr(shell.display_pub, "publish", lambda data, metadata=None, **kw: shown.append(data))
    shell.run_line_magic("config", "HFNotebook.display = 'widget'")  # as in Jupyter
    shell.run_line_magic("plan_model", "tiny/gpt2 --plot")
    assert any("image/png" in d and d["image/png"] for d in shown)


def test_in_a_terminal_the_plot_goes_to_the_png_file_named(shell, tiny_hub, hf_cache, capsys, tmp_path):
    """A terminal writes the figure where the user says, and nowhere unchosen (no temp file left behind)."""
    with pytest.raises(UsageError, match="--plot plan.png"):
        shell.run_line_magic("plan_model", "tiny/gpt2 --plot")
    target = tmp_path / "plan.png"
    shell.run_line_magic("plan_model", f"tiny/gpt2 --plot {target}")
    assert f"drawn to {target}" in capsys.readouterr().out
    assert target.read_bytes().startswith(b"\x89PNG")


def test_the_figure_reads_on_a_dark_page_too(tiny_hub, hf_cache):
    """No white slab in a dark theme: the PNG's background is transparent."""
    import io

    from PIL import Image

    from hf_notebook.magics import _figure_image

    png = _figure_image(plan_model("tiny/gpt2", max_memory="cpu=300KB")).data
    image = Image.open(io.BytesIO(png)).convert("RGBA")
    assert image.getpixel((2, 2))[3] == 0  # a corner: fully transparent


def test_load_refuses_a_gpu_this_machine_lacks_but_plan_accepts_it(shell, tiny_hub, hf_cache):
    import torch

    if torch.cuda.device_count() > 3:
        pytest.skip("this machine has cuda:3")
    shell.run_line_magic("plan_model", "tiny/llama --device-map cuda:3 --as p")
    assert shell.user_ns["p"].device_map == {"": 3}
    with pytest.raises(UsageError, match="this machine has"):
        shell.run_line_magic("load_model", "tiny/llama --device-map cuda:3")


def test_does_a_70b_fit_on_a_48gb_gpu_in_4bit(big_repos, hf_cache):
    """Planned from headers only, for a GPU this machine need not have: 70B in 4-bit nf4 holds 34 GB of
    packed weights, 4.3 GB of absmax blocks and 4.2 GB of unquantized embeddings and head."""
    pytest.importorskip("bitsandbytes")
    plan = plan_model("big/llama-70b", dtype="bfloat16", quantize="4bit", max_memory="0=48GiB,cpu=200GiB")
    params = plan.headers.total_params
    embeddings = 2 * 128256 * 8192 * 2  # input embeddings and lm_head stay bfloat16
    quantized = params - embeddings // 2
    expected = quantized / 2 + quantized / 64 * 4 + embeddings
    assert set(plan.bytes_by_device) == {"cuda:0"}
    assert abs(plan.bytes_by_device["cuda:0"] - expected) < 0.01 * expected
    with pytest.raises(PlanError, match="does not fit on the GPUs"):
        plan_model("big/llama-70b", dtype="bfloat16", quantize="8bit", max_memory="0=48GiB,cpu=200GiB")


def test_a_filled_device_says_why_with_numbers_that_add_up(tiny_hub, hf_cache):
    """400 kB of CPU, 65.5 kB planned: the headline says what accelerate keeps free (the largest layer) and how
    little was left for the next block, so the plot at 16% does not contradict it; advice is in the units shown."""
    from hf_notebook.core.devices.explain import FILLED, NEEDS
    from hf_notebook.core.units import parse_size
    from hf_notebook.ui.words import finding_text

    plan = plan_model("tiny/mixtral", max_memory="cpu=400KB")
    filled = next(f for f in plan.explain() if f.kind == FILLED)
    assert filled.reserved == max(plan.module_sizes[b] for b in plan.blocks)
    assert filled.next_block == "model.layers.0" and filled.budget - filled.reserved - filled.nbytes < filled.next_bytes
    text = finding_text(filled)
    assert "kept free by accelerate for the largest layer" in text and "model.layers.0" in text
    needs = next(f for f in plan.explain() if f.kind == NEEDS)
    assert parse_size(needs.option.rsplit("=", 1)[1]) >= needs.nbytes  # the advice is never below the need
    assert needs.option.endswith("MB") and "MiB" not in needs.option


def test_a_refused_spill_gives_the_numbers_that_would_fit(shell, tiny_hub, hf_cache):
    """--no-offload on a CPU-only budget: no 'fastest device' (there is one device), and the budget that fits."""
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("plan_model", "tiny/llama --max-memory cpu=300KB --no-offload")
    text = str(info.value)
    assert "does not fit on cpu:" in text and "fastest" not in text
    assert "--max-memory cpu=1MB" in text and "--dtype bfloat16" in text and "drop --no-offload" in text


def test_models_shows_how_a_model_is_quantized(shell, tiny_hub, hf_cache, capsys):
    shell.run_line_magic("load_model", "tiny/llama --quantize int8-weight --device-map cpu --as q")
    capsys.readouterr()
    shell.run_line_magic("config", "HFNotebook.display = 'text'")
    from hf_notebook.magics import instance
    from hf_notebook.ui.record import models_record

    text = models_record(instance(shell).session.models()).text
    assert "int8 weight-only (torchao)" in text


def test_a_plan_leaves_torch_init_as_it_found_it(tiny_hub, hf_cache):
    """The plan's meta model is built with torch's init functions switched off (its tensors have no values);
    after the plan, and after a plan that failed, a real module is initialized as usual."""
    import torch

    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_notebook.core.devices.plan import build_meta_model

    def init_functions():
        return (torch.nn.init.uniform_, torch.nn.init.kaiming_uniform_, torch.nn.modules.linear.init.kaiming_uniform_)

    originals = init_functions()
    plan = plan_model("tiny/llama", dtype="float32")
    assert plan.device_map
    broken = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=-5, bos_token_id=None, eos_token_id=None)
    with pytest.raises(RuntimeError, match="negative dimension"):  # the build fails half-way
        build_meta_model(LlamaForCausalLM, broken, "float32")
    assert init_functions() == originals
    assert torch.nn.Linear(64, 64).weight.abs().sum() > 0


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert", "t5", "qwen2", "mixtral"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_one_device_load_builds_the_model_once_and_sizes_its_plan_from_it(tiny_hub, hf_cache, monkeypatch, arch,
                                                                            dtype):
    """A one-device map needs no meta model to place anything: from_pretrained builds the model once, and the
    load's plan is sized from it. Its modules, blocks, ties and sizes are those a plan made beforehand gives."""
    import hf_notebook.core.devices.plan as planning
    from hf_notebook.core.api import load_model

    planned = plan_model(f"tiny/{arch}", dtype=dtype, device_map="cpu")
    built = []
    build = planning.build_meta_model
    monkeypatch.setattr(planning, "build_meta_model", lambda *a, **k: built.append(a[0]) or build(*a, **k))
    first = load_model(f"tiny/{arch}", dtype=dtype, device_map="cpu")
    assert len(built) == 1  # shards to download: the model is built on the meta device before they are
    result = load_model(f"tiny/{arch}", dtype=dtype, device_map="cpu")
    assert len(built) == 1  # every shard cached: from_pretrained alone builds it
    for loaded in (first, result):
        assert loaded.plan.device_map == planned.device_map == {"": "cpu"}
        for name in ("module_bytes", "blocks", "tied", "no_split", "direct", "model_class", "dtype"):
            assert getattr(loaded.plan, name) == getattr(planned, name), name
        assert set(loaded.plan.budget) == set(planned.budget)  # the same devices (their free bytes change)
        assert loaded.placement.bytes_by_device == planned.bytes_by_device

    plan_model(f"tiny/{arch}", dtype=dtype, device_map="auto")  # a map to compute: the plan builds its meta model
    assert len(built) == 2


def test_a_model_that_cannot_be_built_fails_before_its_weights_are_downloaded(hub_store, hub_server, hub_repo_id,
                                                                               hf_cache, tmp_path):
    """The load's plan skips its meta model only when the shards are here already: a config that no model can be
    built from (a negative vocabulary) fails before a weight byte is fetched, and from a folder with a wrapped
    error, never torch's own."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_notebook.core.api import load_model
    from hf_notebook.core.errors import HfNotebookError, LoadError

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=256, architectures=["LlamaForCausalLM"])
    folder = tmp_path / "broken"
    LlamaForCausalLM(config).save_pretrained(folder, max_shard_size="100KB")
    written = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**written, "vocab_size": -5}))
    shards = sorted(folder.glob("*.safetensors"))
    assert len(shards) > 1
    hub_store.create_repo(hub_repo_id)
    hub_store.commit(hub_repo_id, {p.name: p for p in folder.iterdir()}, message="a config no model fits")

    with pytest.raises(HfNotebookError, match="negative dimension"):
        load_model(hub_repo_id, device_map="cpu")
    assert hub_server.bytes_served(hub_repo_id) < sum(p.stat().st_size for p in shards) / 4  # config and index
    assert not list(hf_cache.rglob("*.safetensors"))
    assert torch.nn.Linear(4, 4).weight.device.type == "cpu"  # the failed meta build left no device context behind

    with pytest.raises(HfNotebookError, match="negative dimension") as raised:  # save_pretrained's folder: no manifest
        load_model(str(folder), device_map="cpu", no_verify=True)  # shards here: from_pretrained's build finds it
    assert isinstance(raised.value, LoadError)  # ours, naming torch's error, not torch's error itself
