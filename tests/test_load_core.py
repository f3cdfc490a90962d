"""load_model gives what transformers' from_pretrained gives: same tensors, outputs and placement."""

import pytest
import torch

from hf_notebook.core.api import load_model
from hf_notebook.core.events import ShardProgress, StageDone
from hf_notebook.testing.models import ARCHITECTURES, MODEL_CLASSES, save_model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {arch: save_model(arch, root / arch) for arch in ARCHITECTURES}


def reference(arch, folder, **kwargs):
    import transformers

    cls = getattr(transformers, MODEL_CLASSES[arch])
    return cls.from_pretrained(folder, **kwargs)


def forward(model, arch):
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    extra = {"decoder_input_ids": ids[:, :3]} if arch == "t5" else {}
    with torch.no_grad():
        out = model(input_ids=ids, **extra)
    return out.logits


def assert_same_tensors(ours, ref):
    a, b = ours.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        if a[key].device.type == "meta" or b[key].device.type == "meta":  # offloaded: compared via outputs
            assert a[key].device == b[key].device, key
            continue
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_equal_to_from_pretrained_on_cpu(folders, arch, dtype):
    ours = load_model(str(folders[arch]), no_verify=True, dtype=dtype, device_map="cpu").model
    ref = reference(arch, folders[arch], dtype=getattr(torch, dtype), device_map="cpu")
    assert_same_tensors(ours, ref)
    assert torch.equal(forward(ours, arch), forward(ref, arch))
    assert ours.hf_device_map == {"": "cpu"}  # set even on one device (transformers sets none)
    assert {p.dtype for p in ours.parameters()} >= {getattr(torch, dtype)}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_equal_to_from_pretrained_with_disk_spill(folders, arch, tmp_path):
    """A tiny cpu budget makes 'auto' spill to disk, as accelerate's own tests do with byte budgets."""
    budget = {"cpu": 60_000}
    result = load_model(str(folders[arch]), no_verify=True, dtype="float32", device_map="auto", max_memory=budget,
                        offload_folder=str(tmp_path / "ours"))
    ref = reference(arch, folders[arch], dtype=torch.float32, device_map="auto", max_memory=budget,
                    offload_folder=str(tmp_path / "ref"))
    assert "disk" in result.model.hf_device_map.values()
    assert result.model.hf_device_map == ref.hf_device_map
    assert result.plan.device_map == ref.hf_device_map  # the plan is what was loaded
    assert_same_tensors(result.model, ref)
    assert torch.equal(forward(result.model, arch), forward(ref, arch))
    assert result.placement.bytes_by_device["disk"] > 0


def test_progress_reaches_every_shard(folders):
    events = []
    result = load_model(str(folders["llama"]), no_verify=True, dtype="bfloat16", device_map="cpu", on_event=events.append)
    shards = {}
    for event in events:
        if isinstance(event, ShardProgress):
            shards[event.shard] = event
    assert len(shards) >= 3
    assert all(e.tensors_done == e.tensors_total and e.bytes_done == e.bytes_total for e in shards.values())
    stages = [e.stage for e in events if isinstance(e, StageDone)]
    assert stages == ["resolve", "config", "plan", "fetch", "load"]
    assert events[-1].result is result
