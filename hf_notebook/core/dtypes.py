"""The one dtype table: safetensors codes, torch names, user spellings, bytes per element."""

from __future__ import annotations

from typing import Any

from .errors import OptionError

#: What ``--dtype`` accepts (after aliases).
CHOICES = ("auto", "float32", "bfloat16", "float16")
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}

#: safetensors dtype code -> bytes per element.
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
            "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "F8_E8M0": 1,
            "C64": 8, "U16": 2, "U32": 4, "U64": 8}
#: safetensors floating codes -> torch dtype names.
FLOAT_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def parse_dtype(text: str | None) -> str:
    """Return one of :data:`CHOICES` (``None`` means ``auto``)."""
    name = (text or "auto").strip().lower().removeprefix("torch.")
    name = _ALIASES.get(name, name)
    if name not in CHOICES:
        raise OptionError(f"Unknown dtype {text!r}.", hint=f"Use one of: {', '.join(CHOICES)}.")
    return name


def torch_dtype(name: str):
    """``"bfloat16"`` -> ``torch.bfloat16``."""
    import torch

    return getattr(torch, name.removeprefix("torch."))


def itemsize(dtype: Any, fallback: Any = None) -> int:
    """Bytes per element of a torch dtype, its name, or a safetensors code; else of ``fallback``."""
    if isinstance(dtype, str) and dtype in ITEMSIZE:
        return ITEMSIZE[dtype]
    import torch

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        dtype = fallback
    return dtype.itemsize


def converts(code: str, target: str) -> bool:
    """A floating tensor stored in another dtype than ``target`` (fp8 included: never kept as is)."""
    return (code in FLOAT_NAMES or code.startswith("F8")) and FLOAT_NAMES.get(code) != target


#: torch dtype name -> safetensors code (what a safetensors header says).
CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
         "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "float8_e4m3fn": "F8_E4M3",
         "float8_e5m2": "F8_E5M2", "uint16": "U16", "uint32": "U32", "uint64": "U64"}


def code_of(dtype: Any) -> str:
    """``torch.bfloat16`` -> ``"BF16"``."""
    return CODES[str(dtype).removeprefix("torch.")]


def torch_dtype_of_code(code: str):
    """``"BF16"`` -> ``torch.bfloat16``."""
    import torch

    return getattr(torch, {v: k for k, v in CODES.items()}[code])
