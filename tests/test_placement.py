"""core/devices/placement.py: measured placement of tiny real models (cpu, disk offload, tied weights)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_notebook.core.devices.placement import (  # noqa: E402
    DeviceBytes,
    Placement,
    PlacementGroup,
    measure_placement,
    planned_placement,
)
from hf_notebook.core.units import format_bytes  # noqa: E402


def collapse_device_map(device_map):
    """(label, device) of each group a plan with these entries shows."""
    return [(g.label, g.device) for g in planned_placement(device_map, {}).groups]

LLAMA_MAP = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "cpu",
    "model.layers.2": "disk",
    "model.layers.3": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


@pytest.fixture(autouse=True)
def _quiet_transformers():
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    yield
    logging.enable_progress_bar()
    logging.set_verbosity(level)


def _llama_config():
    return transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, tie_word_embeddings=True,
    )


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(_llama_config()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("t5")
    config = transformers.T5Config(
        vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2,
        tie_word_embeddings=True,
    )
    transformers.T5ForConditionalGeneration(config).save_pretrained(path)
    return path


def _load(cls, path, device_map, tmp_path):
    return cls.from_pretrained(path, device_map=device_map, offload_folder=str(tmp_path / "offload"))


def _unique_resident_bytes(model, device: str) -> int:
    """Independent count: resident tensors on ``device``, one per storage pointer."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type == device and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _naive_bytes(model) -> int:
    tensors = [t for _, t in model.named_parameters(remove_duplicate=False)]
    tensors += [t for _, t in model.named_buffers(remove_duplicate=False)]
    return sum(t.numel() * t.element_size() for t in tensors)


def _meta_bytes_under(model, prefixes) -> int:
    seen, total = set(), 0
    for name, t in model.named_parameters():
        if name.startswith(prefixes) and id(t) not in seen:
            assert t.device.type == "meta"
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


# -- collapse_device_map -----------------------------------------------------------------
def test_collapse_runs_of_numbered_siblings():
    dm = {"model.embed_tokens": 0, **{f"model.layers.{i}": 0 for i in range(16)}, "model.norm": "cpu"}
    assert collapse_device_map(dm) == [
        ("model.embed_tokens", "cuda:0"), ("model.layers.0-15", "cuda:0"), ("model.norm", "cpu"),
    ]


def test_collapse_breaks_on_device_change_and_gaps():
    dm = {"h.0": 0, "h.1": 0, "h.2": 1, "h.3": "cpu", "h.4": "cpu", "h.6": "cpu", "h.7": "disk", "lm_head": "cpu"}
    assert collapse_device_map(dm) == [
        ("h.0-1", "cuda:0"), ("h.2", "cuda:1"), ("h.3-4", "cpu"), ("h.6", "cpu"), ("h.7", "disk"), ("lm_head", "cpu"),
    ]


def test_groups_carry_their_members_and_bytes_by_kind():
    dm = {"model.embed_tokens": 0, **{f"model.layers.{i}": 0 for i in range(3)}, "model.layers.3": "disk"}
    sizes = {"model.embed_tokens": (100, 0), **{f"model.layers.{i}": (10, 1) for i in range(4)}}
    p = planned_placement(dm, sizes, offloaded=frozenset({"disk"}))
    layers, disk = p.groups[1], p.groups[2]
    assert layers.members == ("model.layers.0", "model.layers.1", "model.layers.2") and layers.label == "model.layers.0-2"
    assert (layers.param_bytes, layers.buffer_bytes, layers.offloaded) == (30, 3, False)
    assert (disk.members, disk.offloaded, disk.buffers_on) == (("model.layers.3",), True, "cuda:0")
    # an offloaded layer's buffers stay where it runs (accelerate's offload_buffers=False): counted on cuda:0
    assert p.devices == {"cuda:0": DeviceBytes("cuda:0", 130, 4, 0), "disk": DeviceBytes("disk", 10, 0, 10)}
    assert p.group_of("model.layers.1") is layers and not p.measured


def test_collapse_keeps_deeper_keys_apart():
    dm = {"layers.0": "cpu", "layers.1.attn": "cpu", "layers.1.mlp": "disk", "layers.2": "disk"}
    assert collapse_device_map(dm) == [
        ("layers.0", "cpu"), ("layers.1.attn", "cpu"), ("layers.1.mlp", "disk"), ("layers.2", "disk"),
    ]


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 999, 1000, 16384, 12_345_678, 3 * 10**9)] == [
        "0 B", "999 B", "1.00 kB", "16.4 kB", "12.3 MB", "3.00 GB",
    ]


# -- measure_placement -------------------------------------------------------------------
def test_llama_cpu_and_disk(llama_dir, tmp_path):
    model = _load(transformers.AutoModelForCausalLM, llama_dir, LLAMA_MAP, tmp_path)
    p = measure_placement(model)  # device map taken from model.hf_device_map

    assert [(g.label, g.device) for g in p.groups] == [
        ("model.embed_tokens", "cpu"), ("model.layers.0-1", "cpu"), ("model.layers.2-3", "disk"),
        ("model.norm", "cpu"), ("model.rotary_emb", "cpu"), ("lm_head", "cpu"),
    ]
    assert set(p.bytes_by_device) == {"cpu", "disk"}  # nothing counted as meta
    assert p.bytes_by_device["cpu"] == _unique_resident_bytes(model, "cpu")
    assert p.bytes_by_device["disk"] == _meta_bytes_under(model, ("model.layers.2.", "model.layers.3."))
    groups = {g.label: g for g in p.groups}
    assert groups["model.layers.2-3"].nbytes == p.bytes_by_device["disk"]
    assert groups["lm_head"].nbytes == 0  # tied to embed_tokens, counted there
    assert p.buffer_bytes_by_device == {"cpu": _unique_resident_bytes(model.model.rotary_emb, "cpu")}
    assert sum(g.nbytes for g in p.groups) == p.total_bytes < _naive_bytes(model)
    assert groups["model.layers.2-3"].members == ("model.layers.2", "model.layers.3")
    assert groups["model.layers.2-3"].offloaded and not groups["model.layers.0-1"].offloaded
    assert p.devices["disk"].offloaded_bytes == p.bytes_by_device["disk"] and p.devices["cpu"].offloaded_bytes == 0


def test_tied_weights_both_on_disk_count_once(llama_dir, tmp_path):
    dm = {**LLAMA_MAP, "model.embed_tokens": "disk", "lm_head": "disk"}
    model = _load(transformers.AutoModelForCausalLM, llama_dir, dm, tmp_path)
    p = measure_placement(model)
    embed = 128 * 32 * 4
    expected = embed + _meta_bytes_under(model, ("model.layers.2.", "model.layers.3."))
    assert p.bytes_by_device["disk"] == expected
    groups = {g.label: g for g in p.groups}
    assert groups["model.embed_tokens"].nbytes == embed and groups["lm_head"] == PlacementGroup("disk", ("lm_head",), 0, 0, False)


def test_plain_model_on_one_device(llama_dir, tmp_path):
    model = _load(transformers.AutoModelForCausalLM, llama_dir, {"": "cpu"}, tmp_path)
    p = measure_placement(model)
    assert [(g.label, g.device) for g in p.groups] == [("model", "cpu"), ("lm_head", "cpu")]
    assert p.bytes_by_device == {"cpu": _unique_resident_bytes(model, "cpu")}
    assert p.total_bytes < _naive_bytes(model)

    fresh = transformers.LlamaForCausalLM(_llama_config())  # never dispatched: no hf_device_map
    assert measure_placement(fresh).bytes_by_device == p.bytes_by_device


def test_t5_shared_embeddings_counted_once(t5_dir, tmp_path):
    dm = {
        "shared": "cpu", "encoder.embed_tokens": "cpu", "encoder.block.0": "cpu", "encoder.block.1": "disk",
        "encoder.final_layer_norm": "cpu", "encoder.dropout": "cpu", "decoder.embed_tokens": "cpu",
        "decoder.block.0": "disk", "decoder.block.1": "disk", "decoder.final_layer_norm": "cpu",
        "decoder.dropout": "cpu", "lm_head": "cpu",
    }
    model = _load(transformers.AutoModelForSeq2SeqLM, t5_dir, dm, tmp_path)
    assert model.shared.weight is model.decoder.embed_tokens.weight
    p = measure_placement(model)
    groups = {g.label: g for g in p.groups}
    assert groups["shared"].nbytes == 64 * 16 * 4
    assert groups["encoder.embed_tokens"].nbytes == groups["decoder.embed_tokens"].nbytes == 0
    assert groups["decoder.block.0-1"].device == "disk"
    assert p.bytes_by_device["cpu"] == _unique_resident_bytes(model, "cpu")
    assert p.bytes_by_device["disk"] == _meta_bytes_under(model, ("encoder.block.1.", "decoder.block."))
    assert p.total_bytes < _naive_bytes(model)


def test_cpu_offload_hooks_count_as_cpu(tmp_path):
    """What dispatch_model does when the main device is a GPU: cpu modules become meta params
    whose weights sit in an OffloadedWeightsLoader state dict; disk ones in its index."""
    from accelerate.hooks import attach_align_device_hook_on_blocks
    from accelerate.utils import OffloadedWeightsLoader, offload_state_dict

    model = transformers.LlamaForCausalLM(_llama_config())
    before = measure_placement(model).bytes_by_device["cpu"]
    sd = model.state_dict()
    offload_state_dict(str(tmp_path), {k: v for k, v in sd.items() if k.startswith("model.layers.3.")})
    weights = OffloadedWeightsLoader(
        state_dict={k: v for k, v in sd.items() if k.startswith("model.layers.2.")}, save_folder=str(tmp_path)
    )
    dm = {**LLAMA_MAP, "model.layers.2": "cpu", "model.layers.3": "disk"}
    attach_align_device_hook_on_blocks(
        model,
        execution_device={"": "cpu", **{k: "cpu" for k in dm}},
        offload={"": False, **{k: k in ("model.layers.2", "model.layers.3") for k in dm}},
        weights_map=weights,
    )
    assert model.model.layers[2].mlp.up_proj.weight.device.type == "meta"

    p = measure_placement(model, dm)
    layer = _meta_bytes_under(model, ("model.layers.3.",))
    assert p.bytes_by_device == {"cpu": before - layer, "disk": layer}
    assert [(g.label, g.device, g.offloaded) for g in p.groups][1:4] == [
        ("model.layers.0-1", "cpu", False), ("model.layers.2", "cpu", True), ("model.layers.3", "disk", True)]
    assert p.devices["cpu"].offloaded_bytes == _meta_bytes_under(model, ("model.layers.2.",)) > 0


def test_accelerate_cpu_offload_counts_as_cpu():
    from accelerate import cpu_offload

    model = transformers.LlamaForCausalLM(_llama_config())
    before = measure_placement(model)
    cpu_offload(model, execution_device=torch.device("cpu"), offload_buffers=True)
    assert model.lm_head.weight.device.type == "meta"
    assert measure_placement(model).bytes_by_device == before.bytes_by_device


def test_meta_model_is_reported_as_meta_once():
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(_llama_config())
    p = measure_placement(model)
    assert set(p.bytes_by_device) == {"meta"}
    assert p.bytes_by_device["meta"] < _naive_bytes(model)  # tied lm_head once, by identity


def test_views_of_one_storage_count_once():
    base = torch.zeros(10, 4)
    module = torch.nn.Module()
    module.a = torch.nn.Parameter(base[:6])
    module.b = torch.nn.Parameter(base[4:])  # overlaps rows 4-5 of a
    p = measure_placement(module, {"": "cpu"})
    assert p == Placement(groups=(PlacementGroup("cpu", ("",), 40 * 4, 0, False),),
                          devices={"cpu": DeviceBytes("cpu", 160, 0, 0)})
