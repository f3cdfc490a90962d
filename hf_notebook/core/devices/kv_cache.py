"""The KV cache a model fills for a context and batch, per decoder layer, from its config alone.

A layer keeps ``2 (keys, values) x batch x KV heads x head dim x tokens`` elements, in the cache dtype.
``tokens`` is the context for full attention; a sliding-window layer keeps ``window - 1`` tokens at most
(transformers' ``DynamicSlidingWindowLayer``); hybrid models say which layer is which in ``layer_types``.
An encoder-decoder's decoder layer keeps two such caches (transformers' ``EncoderDecoderCache``): its
self-attention over the decoder's own tokens, and its cross-attention over the encoder's output, as long as
the encoder's input. A model whose cache is not a plain KV cache (latent attention, state-space or
linear-attention layers), or an encoder-decoder whose cache was not checked against a real run, is refused
with the reason: never guessed. The cache of a layer lives where the layer computes: its device, or
accelerate's main device for a layer whose weights are offloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..errors import PlanError

#: Cache dtypes a user may ask for, with their bytes per element.
KV_DTYPES = {"bfloat16": 2, "float16": 2, "float32": 4, "float8_e4m3fn": 1, "float8_e5m2": 1}
_FULL, _SLIDING = "full_attention", "sliding_attention"
#: Encoder-decoders whose cache was checked against a real prefill (tests/test_kv_cache.py), with the config
#: fields of their decoder: layers, attention heads, head dim (None: ``d_model // heads``).
_T5_FIELDS = ("num_decoder_layers", "num_heads", "d_kv")
_BART_FIELDS = ("decoder_layers", "decoder_attention_heads", None)
_ENCODER_DECODERS = {"t5": _T5_FIELDS, "mt5": _T5_FIELDS, "umt5": _T5_FIELDS, "longt5": _T5_FIELDS,
                     "bart": _BART_FIELDS, "mbart": _BART_FIELDS, "marian": _BART_FIELDS, "pegasus": _BART_FIELDS,
                     "m2m_100": _BART_FIELDS}


@dataclass(frozen=True)
class KVCache:
    """The cache of one context and batch: bytes per decoder layer, in layer order. For an encoder-decoder,
    ``context`` is the encoder's input length, ``decoder_tokens`` the decoder's, and each layer's bytes are its
    self-attention plus its cross-attention cache (``cross``, per layer; empty for a decoder-only model)."""

    context: int
    batch: int
    dtype: str
    layers: tuple[int, ...]  # bytes of layer 0, 1, ... (cross-attention included)
    cross: tuple[int, ...] = ()  # of which cross-attention, per layer (encoder-decoders only)
    decoder_tokens: Optional[int] = None  # the decoder's tokens (encoder-decoders only)

    @property
    def nbytes(self) -> int:
        return sum(self.layers)

    @property
    def cross_bytes(self) -> int:
        return sum(self.cross)


def kv_cache(config: Any, *, context: int, batch: int = 1, dtype: str = "bfloat16",
             decoder_tokens: Optional[int] = None) -> KVCache:
    """The KV cache ``config``'s decoder fills with ``context`` tokens for ``batch`` sequences.

    For an encoder-decoder, ``context`` is the encoder's input (its cross-attention cache holds that many
    tokens) and ``decoder_tokens`` the decoder's (prompt and generated tokens: its self-attention cache).
    ``decoder_tokens`` defaults to ``context``: as many tokens out as in, an upper bound for a summary and
    about right for a translation; give it to plan a short answer to a long input. Decoder-only models
    take no ``decoder_tokens``: their context is their tokens."""
    if getattr(config, "is_encoder_decoder", False):
        return _encoder_decoder_cache(config, context, batch, dtype, context if decoder_tokens is None
                                      else decoder_tokens)
    if decoder_tokens is not None:
        raise PlanError(f"{config.model_type} is decoder-only: its cache holds its context, and it takes no "
                        "separate decoder tokens.", hint="Give the whole length (prompt and generated) as context.")
    text = getattr(config, "get_text_config", lambda **_: config)(decoder=True)
    _refuse_other_caches(text)
    layers = text.num_hidden_layers
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    window = getattr(text, "sliding_window", None)
    kinds = list(getattr(text, "layer_types", None) or [])
    if not kinds:
        sliding = window is not None and getattr(text, "use_sliding_window", True)
        kinds = [_SLIDING if sliding else _FULL] * layers
    unknown = sorted({k for k in kinds if k not in (_FULL, _SLIDING)})
    if unknown:
        raise PlanError(f"{text.model_type} has {', '.join(unknown)} layers, whose cache is not a plain KV cache: "
                        "hf_notebook does not plan it yet.", hint="Plan without --context.")
    per_token = 2 * batch * kv_heads * head_dim * KV_DTYPES[dtype]
    sizes = tuple(per_token * (min(context, window - 1) if kind == _SLIDING and window else context) for kind in kinds)
    return KVCache(context, batch, dtype, sizes)


def _encoder_decoder_cache(config: Any, context: int, batch: int, dtype: str, decoder_tokens: int) -> KVCache:
    """Per decoder layer: ``2 x batch x heads x head dim`` elements per token, for ``decoder_tokens`` (its
    self-attention) and ``context`` (its cross-attention over the encoder's output, as long as its input)."""
    fields = _ENCODER_DECODERS.get(config.model_type)
    if fields is None:
        raise PlanError(_unchecked_encoder_decoder(config), hint="Plan without --context.")
    layers, heads, head_dim = (getattr(config, name) if name else None for name in fields)
    per_token = 2 * batch * heads * (head_dim or config.d_model // heads) * KV_DTYPES[dtype]
    cross = (per_token * context,) * layers
    return KVCache(context, batch, dtype, tuple(c + per_token * decoder_tokens for c in cross), cross,
                   decoder_tokens)


def _unchecked_encoder_decoder(config: Any) -> str:
    if getattr(config, "max_source_positions", None) and getattr(config, "num_mel_bins", None):
        return (f"{config.model_type} is a speech encoder-decoder: its cross-attention cache holds the encoder's "
                f"{config.max_source_positions} audio frames whatever the context, so a token --context does not "
                "say its size: not planned yet.")
    return (f"{config.model_type} is an encoder-decoder whose cache (decoder self-attention and cross-attention) "
            "has not been checked against a real run: not planned yet.")


def _refuse_other_caches(text: Any) -> None:
    if getattr(text, "kv_lora_rank", None):
        raise PlanError(f"{text.model_type} uses latent attention (MLA): its cache holds compressed latents, not "
                        "keys and values per head, and is not planned yet.", hint="Plan without --context.")
    if any(hasattr(text, name) for name in ("state_size", "ssm_state_size", "mamba_d_state")):
        raise PlanError(f"{text.model_type} has state-space layers, whose state is not a KV cache: not planned yet.",
                        hint="Plan without --context.")


def runs_at(device: Any, main_device: Any) -> Any:
    """Where a module mapped to ``device`` computes: there, or on ``main_device`` when it is offloaded (``"disk"``,
    or ``"cpu"`` behind an accelerator), as accelerate runs it."""
    offloaded = device == "disk" or (device == "cpu" and main_device not in ("cpu", None))
    return main_device if offloaded else device


def by_device(cache: KVCache, layer_devices: list[Any], main_device: Any) -> dict[Any, int]:
    """Cache bytes per device: layer ``i``'s where it runs (:func:`runs_at`) when mapped to ``layer_devices[i]``."""
    found: dict[Any, int] = {}
    for size, device in zip(cache.layers, layer_devices):
        where = runs_at(device, main_device)
        found[where] = found.get(where, 0) + size
    return found


def main_device(device_map: Mapping[str, Any]) -> Any:
    """Accelerate's main device for a map: its first accelerator, else cpu."""
    return next((d for d in device_map.values() if d not in ("cpu", "disk")), "cpu")


def layer_devices(device_map: Mapping[str, Any], layer_names: list[str]) -> list[Optional[Any]]:
    """The device each decoder layer is mapped to (its own entry or its nearest mapped parent)."""
    found = []
    for name in layer_names:
        probe = name
        while probe not in device_map and probe:
            probe = probe.rpartition(".")[0]
        found.append(device_map.get(probe))
    return found
