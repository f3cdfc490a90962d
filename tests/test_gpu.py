"""Placement on real GPUs: skipped without CUDA (run them on a GPU machine: pytest -m gpu)."""

import pytest
import torch

from hf_notebook.core.api import load_model
from hf_notebook.core.unload import unload
from hf_notebook.testing.models import MODEL_CLASSES, save_model

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_model("llama", tmp_path_factory.mktemp("gpu") / "llama")


def reference(folder, **kwargs):
    import transformers

    return getattr(transformers, MODEL_CLASSES["llama"]).from_pretrained(folder, **kwargs)


def logits(model, device):
    ids = torch.randint(0, 100, (1, 9), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        return model(input_ids=ids).logits.float().cpu()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_whole_model_on_gpu0(llama, dtype):
    result = load_model(str(llama), no_verify=True, dtype=dtype, device_map="cuda:0")
    ref = reference(llama, dtype=getattr(torch, dtype), device_map="cuda:0")
    assert result.model.hf_device_map == {"": 0}
    assert {p.device.type for p in result.model.parameters()} == {"cuda"}
    assert torch.equal(logits(result.model, "cuda:0"), logits(ref, "cuda:0"))
    assert set(result.placement.bytes_by_device) == {"cuda:0"}


def test_gpu_and_cpu_split_matches_from_pretrained(llama):
    budget = {0: 150_000, "cpu": 10**9}
    result = load_model(str(llama), no_verify=True, dtype="float32", device_map="auto", max_memory=budget)
    ref = reference(llama, dtype=torch.float32, device_map="auto", max_memory=budget)
    assert {0, "cpu"} <= set(result.model.hf_device_map.values())
    assert result.model.hf_device_map == ref.hf_device_map
    assert torch.equal(logits(result.model, "cuda:0"), logits(ref, "cuda:0"))
    assert result.placement.bytes_by_device["cuda:0"] > 0 and result.placement.bytes_by_device["cpu"] > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_balanced_over_two_gpus(llama):
    result = load_model(str(llama), no_verify=True, dtype="float32", device_map="balanced")
    assert {0, 1} <= set(result.model.hf_device_map.values())


def test_unload_gives_gpu_memory_back(llama):
    result = load_model(str(llama), no_verify=True, dtype="float32", device_map="cuda:0")
    namespace = {"m": result.model}
    report = unload("m", result, [namespace])
    assert report.cuda_freed > 0.9 * result.placement.bytes_by_device["cuda:0"]


def _edit(result, *edits):
    from hf_notebook.core.api import apply_device_map, device_map_editor

    draft = device_map_editor(result)
    draft.assign(edits)
    return apply_device_map(result, draft.map)


def test_redispatch_between_gpu_cpu_and_disk_keeps_outputs(llama):
    """GPU -> cpu (offloaded, run on the GPU) -> disk -> back to the GPU, in place."""
    result = load_model(str(llama), no_verify=True, dtype="float32", device_map="cuda:0")
    want = logits(result.model, "cuda:0")
    allocated = torch.cuda.memory_allocated(0)
    moved = _edit(result, ("model.layers.0-1", "cpu"))
    assert moved.moves[("cuda:0", "cpu")] > 0
    assert result.model.hf_device_map["model.layers.0"] == "cpu"
    assert torch.cuda.memory_allocated(0) < allocated  # the layers' GPU memory went back
    assert torch.equal(logits(result.model, "cuda:0"), want)
    _edit(result, ("model.layers.1", "disk"))
    assert torch.equal(logits(result.model, "cuda:0"), want)
    back = _edit(result, ("", 0))
    assert result.model.hf_device_map == {"": 0} and back.read > 0
    assert {p.device.type for p in result.model.parameters()} == {"cuda"}
    assert torch.equal(logits(result.model, "cuda:0"), want)


def test_gpu_weights_go_straight_to_disk_and_back(llama):
    """cuda:0 -> disk writes each GPU tensor through a host copy (one at a time), frees its GPU memory,
    and the model still runs on the GPU with the same outputs; then back to cuda:0."""
    result = load_model(str(llama), no_verify=True, dtype="float32", device_map="cuda:0")
    want = logits(result.model, "cuda:0")
    allocated = torch.cuda.memory_allocated(0)
    moved = _edit(result, ("model.layers.0-1", "disk"))
    assert moved.moves[("cuda:0", "disk")] > 0 and moved.written == moved.moves[("cuda:0", "disk")]
    assert torch.cuda.memory_allocated(0) < allocated
    assert torch.equal(logits(result.model, "cuda:0"), want)
    back = _edit(result, ("", 0))
    assert back.read == moved.written and result.model.hf_device_map == {"": 0}
    assert torch.equal(logits(result.model, "cuda:0"), want)


def test_weights_read_in_place_go_from_disk_to_the_gpu(llama):
    """Weights as loaded on cpu go to disk without a write (read in place from the checkpoint), then
    straight to the GPU from their checkpoint's mapping."""
    result = load_model(str(llama), no_verify=True, dtype="float32", device_map="cpu")
    want = logits(result.model, "cpu")
    to_disk = _edit(result, ("model.layers.0-1", "disk"))
    assert to_disk.written == 0 and to_disk.moves[("cpu", "disk")] > 0
    on_gpu = _edit(result, ("", 0))
    assert on_gpu.read == to_disk.moves[("cpu", "disk")] and result.model.hf_device_map == {"": 0}
    assert {p.device.type for p in result.model.parameters()} == {"cuda"}
    assert torch.allclose(logits(result.model, "cuda:0"), want, atol=1e-4)


def test_editor_on_a_gpu_machine_offers_gpus_and_strategies(llama):
    from hf_notebook.core.api import device_map_editor

    result = load_model(str(llama), no_verify=True, dtype="float32", device_map="cpu")
    draft = device_map_editor(result)
    assert draft.devices[0] == "cuda:0" and {"auto", "balanced", "sequential"} <= set(draft.strategies)
    assert draft.budget["cuda:0"] > 0
    draft.reset("sequential")
    assert 0 in draft.map.values()


@pytest.mark.parametrize("quantize", ["4bit", "8bit"])
def test_quantized_on_gpu_matches_from_pretrained_and_its_plan(llama, quantize):
    pytest.importorskip("bitsandbytes")
    from hf_notebook.core.api import plan_model

    plan = plan_model(str(llama), no_verify=True, device_map="cuda:0", quantize=quantize)
    result = load_model(str(llama), no_verify=True, device_map="cuda:0", quantize=quantize)
    ref = reference(llama, quantization_config=result.plan.quantization, device_map="cuda:0")
    assert torch.equal(logits(result.model, "cuda:0"), logits(ref, "cuda:0"))
    held = result.placement.bytes_by_device["cuda:0"]
    assert abs(sum(plan.module_sizes[b] for b in plan.blocks) - held) <= 0.05 * held
