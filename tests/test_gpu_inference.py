"""Planning for inference on a real GPU: skipped without CUDA (run them on a GPU machine: pytest -m gpu)."""

import pytest
import torch

pytestmark = pytest.mark.gpu

BUDGET = 450 * 10**6  # bytes of GPU 0 the test may use: enforced by the allocator, not only planned
CONTEXT, BATCH = 8192, 4


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """A ~330 MB bfloat16 llama whose weights fit BUDGET, but not with the KV cache and step of CONTEXT x BATCH."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                         num_key_value_heads=4, vocab_size=32000, max_position_embeddings=CONTEXT + 64,
                         architectures=["LlamaForCausalLM"])
    folder = tmp_path_factory.mktemp("gpu-inference") / "medium"
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder, max_shard_size="100MB")
    return folder


@pytest.fixture
def capped():
    """GPU 0's allocator limited to BUDGET: going past it raises OutOfMemoryError, as on a full card."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(BUDGET / total, 0)
    yield
    torch.cuda.set_per_process_memory_fraction(1.0, 0)
    torch.cuda.empty_cache()


def _generate(model):
    ids = torch.randint(0, 32000, (BATCH, CONTEXT), device="cuda:0")
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=2, do_sample=False)


def test_weights_that_fit_then_fail_in_generate_unless_the_plan_keeps_room(medium, capped):
    """Plain device_map="auto" puts every weight on the GPU (they fit) and generate runs out of memory; the plan
    with --context moves layers to cpu until the cache and the step fit, and generate runs."""
    from transformers import AutoModelForCausalLM

    from hf_notebook.core.api import load_model

    max_memory = {0: BUDGET, "cpu": 8 * 10**9}
    plain = AutoModelForCausalLM.from_pretrained(medium, dtype=torch.bfloat16, device_map="auto", max_memory=max_memory)
    assert set(plain.hf_device_map.values()) == {0}
    with pytest.raises(torch.cuda.OutOfMemoryError):
        _generate(plain)
    del plain
    torch.cuda.empty_cache()
    result = load_model(str(medium), no_verify=True, dtype="bfloat16", max_memory="0=450MB,cpu=8GB",
                        context=CONTEXT + 2, batch=BATCH)
    assert "cpu" in result.device_map.values()
    assert _generate(result.model).shape == (BATCH, CONTEXT + 2)


def test_the_measured_gpu_peak_is_within_ten_percent_of_the_plan(medium):
    from hf_notebook.core.api import load_model
    from hf_notebook.core.devices.measure import measure

    result = load_model(str(medium), no_verify=True, dtype="bfloat16", device_map="cuda:0")
    measured = measure(result, context=2048, batch=4, steps=2, name="medium")
    assert measured.planned_kv["cuda:0"] == measured.measured_kv["cuda:0"]
    assert abs(measured.peak_difference("cuda:0")) <= 10, (measured.planned_peak, measured.peak)
