"""Quantized loads: the transformers quantization config a ``--quantize`` choice stands for, a
one-glance description, and the bytes a quantized model will hold, from its shape alone.

transformers does the quantizing (bitsandbytes 4-bit/8-bit, torchao int8 weight-only, or any
config given as JSON); the plan applies the same quantizer to its meta model as
``from_pretrained`` does, so both agree on which modules are quantized. Sizes are counted the
way the weights are really held: packed weights plus their quantization state (absmax blocks,
row scales, zero points), which ``get_memory_footprint()`` leaves out or, for tensor subclasses,
counts unquantized.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from .errors import OptionError

CHOICES = ("4bit", "8bit", "int8-weight")
QUANT_TYPES = ("nf4", "fp4")
_BNB_BLOCK = 64  # bitsandbytes' 4-bit blocksize on cpu and cuda
_NESTED_BLOCK = 256  # double quantization: absmax of absmax blocks


def quantization_config(quantize: Optional[str], *, compute_dtype: Optional[str] = None, quant_type: str = "nf4",
                        double_quant: bool = False, config: Optional[dict] = None) -> Any:
    """The transformers config object for these options (None: no quantization)."""
    if config is not None:
        if quantize:
            raise OptionError("Give either --quantize or --quantization-config, not both.",
                              hint="--quantization-config @file.json holds the whole config.")
        return _from_dict(config)
    if not quantize:
        if compute_dtype or double_quant or quant_type != "nf4":
            raise OptionError("--bnb-compute-dtype, --bnb-quant-type and --double-quant need --quantize 4bit.",
                              hint="Add --quantize 4bit.")
        return None
    if quantize not in CHOICES:
        raise OptionError(f"Unknown --quantize {quantize!r}.", hint=f"Use one of: {', '.join(CHOICES)}; other methods "
                          "through --quantization-config @file.json.")
    if quantize in ("4bit", "8bit"):
        _need("bitsandbytes", quantize)
        from transformers import BitsAndBytesConfig

        from .quiet import only_errors_from

        with only_errors_from("bitsandbytes.backends.cpu.ops"):  # an optional faster CPU kernel it cannot fetch
            import bitsandbytes  # noqa: F401

        if quantize == "8bit":
            if compute_dtype or double_quant or quant_type != "nf4":
                raise OptionError("--bnb-compute-dtype, --bnb-quant-type and --double-quant are 4-bit settings.",
                                  hint="Use them with --quantize 4bit.")
            return BitsAndBytesConfig(load_in_8bit=True)
        if quant_type not in QUANT_TYPES:
            raise OptionError(f"Unknown --bnb-quant-type {quant_type!r}.", hint="Use nf4 or fp4.")
        from .dtypes import parse_dtype, torch_dtype

        compute = torch_dtype(parse_dtype(compute_dtype)) if compute_dtype and compute_dtype != "auto" else None
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_compute_dtype=compute,
                                  bnb_4bit_use_double_quant=double_quant)
    _need("torchao", quantize)
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    return TorchAoConfig(Int8WeightOnlyConfig())


def read_config_file(text: Optional[str]) -> Optional[dict]:
    """``@file.json`` (or inline JSON) -> the quantization config as a dict."""
    if not text:
        return None
    raw = text
    if text.startswith("@"):
        from .option_files import read_option_file

        raw = read_option_file(Path(text[1:]).expanduser(), "--quantization-config", "--quantization-config @quant.json")
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise OptionError(f"--quantization-config is not valid JSON: {exc}.",
                          hint='For example {"quant_method": "bitsandbytes", "load_in_4bit": true}') from None
    if not isinstance(value, dict) or "quant_method" not in value:
        raise OptionError("--quantization-config must be a JSON object with a quant_method.",
                          hint='For example {"quant_method": "bitsandbytes", "load_in_4bit": true}')
    return value


def _from_dict(config: dict) -> Any:
    from transformers.quantizers.auto import AutoQuantizationConfig

    try:
        return AutoQuantizationConfig.from_dict(dict(config))
    except (ValueError, KeyError, TypeError) as exc:
        raise OptionError(f"transformers cannot use this quantization config: {exc}",
                          hint="Check quant_method and its fields against transformers' quantization docs.") from None


def _need(package: str, choice: str) -> None:
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise OptionError(f"--quantize {choice} needs the {package} package, which is not installed.",
                          hint=f"pip install {package}")


def describe(qconfig: Any) -> str:
    """``4-bit nf4, compute bfloat16, double quant``, ``8-bit (LLM.int8)``, ``int8 weight-only (torchao)``."""
    if qconfig is None:
        return ""
    method = str(getattr(qconfig, "quant_method", "")).split(".")[-1].lower()
    if getattr(qconfig, "load_in_4bit", False):
        compute = str(getattr(qconfig, "bnb_4bit_compute_dtype", None) or "float32").removeprefix("torch.")
        double = ", double quant" if getattr(qconfig, "bnb_4bit_use_double_quant", False) else ""
        return f"4-bit {qconfig.bnb_4bit_quant_type}, compute {compute}{double} (bitsandbytes)"
    if getattr(qconfig, "load_in_8bit", False):
        return "8-bit LLM.int8 (bitsandbytes)"
    if method == "torchao":
        kind = type(getattr(qconfig, "quant_type", None)).__name__.removesuffix("Config")
        return f"{'int8 weight-only' if kind == 'Int8WeightOnly' else kind} (torchao)"
    return method or type(qconfig).__name__


def as_dict(qconfig: Any) -> Optional[dict]:
    """A JSON-friendly form for the lock file and the manifest."""
    if qconfig is None:
        return None
    value = qconfig.to_dict() if hasattr(qconfig, "to_dict") else dict(qconfig)
    return json.loads(json.dumps(value, default=str))


# -- sizes from shapes ----------------------------------------------------------------------------
def quantized_weights(model: Any, hf_quantizer: Any) -> dict[str, int]:
    """Bytes each quantized weight will hold (packed data and quantization state), by parameter name;
    ``model`` is the meta model after the quantizer's ``preprocess_model``."""
    qconfig = hf_quantizer.quantization_config
    found = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is None or not _quantized(name, module, hf_quantizer):
            continue
        n = module.in_features * module.out_features if hasattr(module, "in_features") else weight.numel()
        rows = module.out_features if hasattr(module, "out_features") else weight.shape[0]
        if getattr(qconfig, "load_in_4bit", False):
            blocks = math.ceil(n / _BNB_BLOCK)
            if getattr(qconfig, "bnb_4bit_use_double_quant", False):
                # uint8 absmax, its float32 offset, the nested absmax and 256-entry code, the 16-entry code
                state = blocks + 4 + math.ceil(blocks / _NESTED_BLOCK) * 4 + 256 * 4 + 16 * 4
            else:
                state = blocks * 4 + 16 * 4  # float32 absmax, the 16-entry code
            found[f"{name}.weight" if name else "weight"] = math.ceil(n / 2) + state
        elif getattr(qconfig, "load_in_8bit", False):
            found[f"{name}.weight" if name else "weight"] = n + rows * 4  # int8 + float32 row scales (SCB)
        else:  # torchao int8 weight-only: int8, a float32 scale and an int8 zero point per row
            found[f"{name}.weight" if name else "weight"] = n + rows * (4 + 1)
    return found


def _quantized(name: str, module: Any, hf_quantizer: Any) -> bool:
    from torch import nn

    kind = type(module).__name__
    if kind in ("Linear4bit", "Linear8bitLt"):
        return True
    method = getattr(hf_quantizer.quantization_config, "quant_method", "")
    if getattr(method, "value", method) == "torchao":
        from transformers.quantizers.quantizers_utils import should_convert_module

        skip = getattr(hf_quantizer, "modules_to_not_convert", None) or []
        return isinstance(module, nn.Linear) and should_convert_module(name, skip)
    return False
