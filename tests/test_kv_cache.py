"""The KV cache planned from a config equals the bytes of the cache tensors after a real prefill."""

import inspect
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


_T5 = dict(d_model=64, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=3, d_ff=128, vocab_size=256)
_BART = dict(vocab_size=256, d_model=64, encoder_layers=2, decoder_layers=3, encoder_attention_heads=2,
             decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=96, max_position_embeddings=128)
ENCODER_DECODERS = {  # encoder and decoder differ in depth (and bart's in heads): the cache is the decoder's
    "t5": (transformers.T5Config, _T5, transformers.T5ForConditionalGeneration),
    "mt5": (transformers.MT5Config, _T5, transformers.MT5ForConditionalGeneration),
    "umt5": (transformers.UMT5Config, _T5, transformers.UMT5ForConditionalGeneration),
    "longt5": (transformers.LongT5Config, _T5, transformers.LongT5ForConditionalGeneration),
    "bart": (transformers.BartConfig, _BART, transformers.BartForConditionalGeneration),
    "mbart": (transformers.MBartConfig, _BART, transformers.MBartForConditionalGeneration),
    "marian": (transformers.MarianConfig, dict(_BART, decoder_vocab_size=256, pad_token_id=0), transformers.MarianMTModel),
    "pegasus": (transformers.PegasusConfig, _BART, transformers.PegasusForConditionalGeneration),
    "m2m_100": (transformers.M2M100Config, _BART, transformers.M2M100ForConditionalGeneration),
}


def _prefill(arch: str, dtype: str, batch: int, context: int, decoder_tokens: int):
    """An encoder pass over ``context`` tokens and a decoder prefill of ``decoder_tokens``: (config, model, cache)."""
    config_cls, fields, model_cls = ENCODER_DECODERS[arch]
    config = config_cls(**fields)
    model = model_cls(config).to(getattr(torch, dtype)).eval()
    with torch.no_grad():
        out = model(input_ids=torch.randint(3, 255, (batch, context)),
                    decoder_input_ids=torch.randint(3, 255, (batch, decoder_tokens)), use_cache=True)
    cache = out.cache if hasattr(out, "cache") else out.past_key_values  # renamed in transformers 5.25
    assert isinstance(cache, transformers.EncoderDecoderCache)
    return config, model, cache


@pytest.mark.parametrize("context, decoder_tokens", [(8, 5), (40, 1)])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_t5s_planned_cache_is_its_decoders_self_and_cross_attention_after_a_prefill(dtype, context, decoder_tokens):
    config, _, cache = _prefill("t5", dtype, 3, context, decoder_tokens)
    planned = kv_cache(config, context=context, batch=3, dtype=dtype, decoder_tokens=decoder_tokens)
    own, cross = _cache_bytes(cache.self_attention_cache), _cache_bytes(cache.cross_attention_cache)
    assert len(planned.layers) == config.num_decoder_layers == 3  # the decoder's 3 layers, not the encoder's 2
    assert list(planned.cross) == cross
    assert list(planned.layers) == [s + c for s, c in zip(own, cross)]
    assert (planned.context, planned.decoder_tokens) == (context, decoder_tokens)
    size = 2 if dtype == "bfloat16" else 4
    assert planned.layers[0] == 2 * 3 * 4 * 16 * size * (context + decoder_tokens)  # K and V, batch, heads, d_kv


def test_decode_steps_grow_the_self_attention_cache_and_not_the_cross_attention_cache():
    config, model, cache = _prefill("t5", "float32", 2, 12, 4)
    keyword = "cache" if "cache" in inspect.signature(model.decoder.forward).parameters else "past_key_values"
    with torch.no_grad():  # one decode step: the cross-attention cache is reused, the self-attention one grows
        model.decoder(input_ids=torch.randint(3, 255, (2, 1)), encoder_hidden_states=torch.zeros(2, 12, 64),
                      use_cache=True, **{keyword: cache})
    planned = kv_cache(config, context=12, batch=2, dtype="float32", decoder_tokens=5)
    assert list(planned.cross) == _cache_bytes(cache.cross_attention_cache)
    assert list(planned.layers) == [s + c for s, c in zip(_cache_bytes(cache.self_attention_cache),
                                                           _cache_bytes(cache.cross_attention_cache))]


def test_the_decoder_tokens_default_to_the_context():
    config = transformers.T5Config(**_T5)
    assert kv_cache(config, context=32) == kv_cache(config, context=32, decoder_tokens=32)
    assert kv_cache(config, context=32).cross_bytes * 2 == kv_cache(config, context=32).nbytes
    with pytest.raises(PlanError, match="decoder-only"):  # a decoder-only model has one length: its context
        kv_cache(CONFIGS["llama (GQA)"](), context=32, decoder_tokens=8)
    assert kv_cache(CONFIGS["llama (GQA)"](), context=32).cross == ()


@pytest.mark.parametrize("arch", [a for a in ENCODER_DECODERS if a != "t5"])
def test_other_encoder_decoders_plan_the_cache_a_prefill_fills(arch):
    config, _, cache = _prefill(arch, "float32", 2, 11, 5)
    planned = kv_cache(config, context=11, batch=2, dtype="float32", decoder_tokens=5)
    assert list(planned.cross) == _cache_bytes(cache.cross_attention_cache)
    assert list(planned.layers) == [s + c for s, c in zip(_cache_bytes(cache.self_attention_cache),
                                                           _cache_bytes(cache.cross_attention_cache))]


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
    with pytest.raises(PlanError, match="audio frames whatever the context"):  # whisper's encoder length is fixed
        kv_cache(transformers.WhisperConfig(), context=16)
    with pytest.raises(PlanError, match="encoder-decoder whose cache .* has not been checked"):
        kv_cache(transformers.ProphetNetConfig(), context=16)
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
