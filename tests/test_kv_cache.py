"""The KV cache planned from a config equals the bytes of the cache tensors after a real prefill."""

import re

import pytest
import torch
import transformers

from hf_notebook.core.compat import cache_step
from hf_notebook.core.devices.kv_cache import by_device, kv_cache
from hf_notebook.core.errors import PlanError

_SMALL = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
CONFIGS = {
    "llama (GQA)": lambda: transformers.LlamaConfig(**_SMALL, num_hidden_layers=3),
    "mistral (sliding window)": lambda: transformers.MistralConfig(**_SMALL, num_hidden_layers=2, sliding_window=16),
    "gemma2 (hybrid)": lambda: transformers.Gemma2Config(**_SMALL, num_hidden_layers=4, head_dim=16,
                                                         sliding_window=16),
    "qwen2 (tied embeddings)": lambda: transformers.Qwen2Config(**_SMALL, num_hidden_layers=2, tie_word_embeddings=True),
}


def _cache_bytes(cache) -> list[int]:
    return [sum(t.numel() * t.element_size() for t in (layer.keys, layer.values)) for layer in cache.layers]


@pytest.mark.parametrize("context", [8, 40])  # shorter and longer than the sliding window
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_the_planned_cache_is_the_cache_a_prefill_fills(arch, dtype, context):
    config = CONFIGS[arch]()
    model = transformers.AutoModelForCausalLM.from_config(config).to(getattr(torch, dtype)).eval()
    with torch.no_grad():
        _, cache = cache_step(model, torch.randint(0, 255, (3, context)))
    planned = kv_cache(config, context=context, batch=3, dtype=dtype)
    assert list(planned.layers) == _cache_bytes(cache)


def test_caches_that_are_not_plain_kv_caches_are_refused_with_the_reason():
    with pytest.raises(PlanError, match="encoder-decoder"):
        kv_cache(transformers.T5Config(), context=16)
    with pytest.raises(PlanError, match="latent attention"):
        kv_cache(transformers.DeepseekV3Config(), context=16)


def test_an_offloaded_layers_cache_lives_on_the_device_that_runs_it():
    config = CONFIGS["llama (GQA)"]()
    cache = kv_cache(config, context=10, batch=1, dtype="bfloat16")
    per = cache.layers[0]
    assert by_device(cache, ["cpu", "cpu", "disk"], "cpu") == {"cpu": 3 * per}
    assert by_device(cache, [0, "cpu", "disk"], 0) == {0: 3 * per}  # cpu behind a GPU is offload storage too


def test_a_plan_with_a_context_keeps_room_for_the_cache(tiny_hub, hf_cache):
    """Weights that fit a 600 kB budget alone, and the cache and one step's activations of 100 tokens beside them:
    the plan moves weights off until weights, cache and step fit together; the load follows that map."""
    from hf_notebook.core.api import load_model, plan_model

    weights_only = plan_model("tiny/llama", dtype="float32", max_memory="cpu=600KB")
    assert set(weights_only.device_map.values()) == {"cpu"} and weights_only.kv_cache_bytes == 0
    assert weights_only.headroom_by_device == {}
    plan = plan_model("tiny/llama", dtype="float32", max_memory="cpu=600KB", context=100, kv_dtype="float32")
    per_layer = 2 * 1 * 2 * 16 * 4 * 100  # keys and values x batch x KV heads x head dim x float32 x tokens
    assert plan.kv.layers == (per_layer, per_layer) and plan.kv_cache_by_device == {"cpu": 2 * per_layer}
    assert set(plan.headroom_by_device) == {"cpu"} and plan.headroom_by_device["cpu"] > 100 * 64 * 4
    assert "disk" in plan.device_map.values()  # weights made room for the cache and the step
    assert plan.bytes_by_device["cpu"] + plan.kv_cache_bytes + plan.headroom_by_device["cpu"] <= 600_000
    loaded = load_model("tiny/llama", dtype="float32", max_memory="cpu=600KB", context=100, kv_dtype="float32")
    assert loaded.device_map == plan.device_map
    with pytest.raises(PlanError, match="KV cache and one step's activations alone need"):
        plan_model("tiny/llama", dtype="float32", max_memory="cpu=600KB", context=100_000)


def test_the_context_options_round_trip_through_a_plan(shell, tiny_hub, hf_cache):
    shell.run_line_magic("plan_model", "tiny/llama --context 64 --batch 2 --kv-dtype float16 --as p")
    plan = shell.user_ns["p"]
    assert (plan.kv.context, plan.kv.batch, plan.kv.dtype) == (64, 2, "float16")
    shell.run_line_magic("load_model", "p --as m")
    from hf_notebook.magics import instance

    from hf_notebook.ui.words import load_line

    result = instance(shell).session.get("m")
    assert (result.options.context, result.options.batch, result.options.kv_dtype) == (64, 2, "float16")
    assert result.plan.kv_cache_bytes == 2 * 2 * 2 * 16 * 2 * 64 * 2  # K and V, batch, heads, dim, fp16, tokens, layers
    assert "--context 64 --batch 2 --kv-dtype float16" in load_line(result)  # the line that loads it again
    from hf_notebook.ui.record import plan_record

    assert re.search(r"KV cache +32.8 kB for 64 tokens x 2 sequences in float16 \(cpu 32.8 kB\)", plan_record(plan).text)


@pytest.mark.parametrize("where", ["cpu", "cpu and disk"])
def test_measure_checks_the_planned_cache_against_the_real_one(shell, tiny_hub, hf_cache, where, monkeypatch):
    """%measure: one prefill and decode steps with the loaded model; the cache's own tensors, by device, equal
    the plan (for an offloaded layer too: its cache is where it runs)."""
    from hf_notebook.magics import instance

    budget = "--max-memory cpu=150KB" if where == "cpu and disk" else "--device-map cpu"
    shell.run_line_magic("load_model", f"tiny/llama --dtype bfloat16 {budget} --as m")
    if where == "cpu and disk":
        assert "disk" in instance(shell).session.get("m").device_map.values()
    measured = instance(shell).session.measure("m", context=24, batch=2, steps=3)
    per_layer = 2 * 2 * 2 * 16 * 2 * (24 + 3)  # K and V x batch x KV heads x head dim x bf16 x tokens
    assert measured.planned_kv == measured.measured_kv == {"cpu": 2 * per_layer}
    assert measured.peak["cpu"] >= 0 and measured.seconds > 0
    shown = []
    monkeypatch.setattr(shell.display_pub, "publish", lambda data, metadata=None, **kw: shown.append(data))
    shell.run_line_magic("measure", "m --context 8")  # the magic shows its record: planned against measured
    text = shown[-1]["text/plain"]
    assert text.startswith("measured m: prefill of 8 tokens x 1, 4 decode steps")
    assert "+0.0%" in text and "KV planned" in shown[-1]["text/html"]
    with pytest.raises(Exception, match="whole numbers"):
        shell.run_line_magic("measure", "m --context 0")
