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
    result = load_model(str(llama), dtype=dtype, device_map="cuda:0")
    ref = reference(llama, dtype=getattr(torch, dtype), device_map="cuda:0")
    assert result.model.hf_device_map == {"": 0}
    assert {p.device.type for p in result.model.parameters()} == {"cuda"}
    assert torch.equal(logits(result.model, "cuda:0"), logits(ref, "cuda:0"))
    assert set(result.placement.bytes_by_device) == {"cuda:0"}


def test_gpu_and_cpu_split_matches_from_pretrained(llama):
    budget = {0: 150_000, "cpu": 10**9}
    result = load_model(str(llama), dtype="float32", device_map="auto", max_memory=budget)
    ref = reference(llama, dtype=torch.float32, device_map="auto", max_memory=budget)
    assert {0, "cpu"} <= set(result.model.hf_device_map.values())
    assert result.model.hf_device_map == ref.hf_device_map
    assert torch.equal(logits(result.model, "cuda:0"), logits(ref, "cuda:0"))
    assert result.placement.bytes_by_device["cuda:0"] > 0 and result.placement.bytes_by_device["cpu"] > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_balanced_over_two_gpus(llama):
    result = load_model(str(llama), dtype="float32", device_map="balanced")
    assert {0, 1} <= set(result.model.hf_device_map.values())


def test_unload_gives_gpu_memory_back(llama):
    result = load_model(str(llama), dtype="float32", device_map="cuda:0")
    namespace = {"m": result.model}
    report = unload("m", result, [namespace])
    assert report.cuda_freed > 0.9 * result.placement.bytes_by_device["cuda:0"]
