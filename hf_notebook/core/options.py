"""Parse option strings (``--dtype``, ``--max-memory``, ``--device-map``) into typed values."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Union

from .errors import OptionError

DTYPES = ("auto", "float32", "bfloat16", "float16")
STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}

Device = Union[int, str]
DeviceMap = Union[str, dict]


def parse_dtype(text: str | None) -> str:
    """Return one of :data:`DTYPES` (``None`` means ``auto``)."""
    name = (text or "auto").strip().lower().removeprefix("torch.")
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise OptionError(f"Unknown dtype {text!r}.", hint=f"Use one of: {', '.join(DTYPES)}.")
    return name


def parse_size(text: str) -> int:
    """``"20GiB"`` -> bytes; a bare number is bytes. Decimal (GB) and binary (GiB) units."""
    match = _SIZE.match(str(text))
    if not match:
        raise OptionError(f"Cannot read {text!r} as a size.", hint="Write sizes like 20GiB, 512MB or 1000000 (bytes).")
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "b").lower()])


def parse_device(text: str | int) -> Device:
    """Normalize a device name the way accelerate keys them: GPU ``N`` as int, else ``cpu``/``disk``/``mps``."""
    if isinstance(text, int):
        return text
    name = str(text).strip().lower()
    if re.fullmatch(r"\d+", name):
        return int(name)
    if re.fullmatch(r"cuda:\d+", name):
        return int(name.split(":")[1])
    if name == "cuda":
        return 0
    if name in ("cpu", "disk", "mps", "meta"):
        return name
    raise OptionError(f"Unknown device {text!r}.", hint="Use a GPU number (0, cuda:1), cpu or disk.")


def parse_max_memory(text: str | dict | None) -> dict[Device, int] | None:
    """``"0=20GiB,cpu=30GiB"`` -> ``{0: 21474836480, "cpu": 32212254720}``."""
    if text is None or text == "":
        return None
    if isinstance(text, dict):
        items = text.items()
    else:
        items = []
        for part in str(text).split(","):
            key, sep, value = part.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise OptionError(
                    f"Cannot read {part.strip()!r} in --max-memory {text!r}.",
                    hint="Write DEVICE=SIZE pairs separated by commas, e.g. --max-memory 0=20GiB,cpu=30GiB",
                )
            items.append((key, value))
    budget = {}
    for key, value in items:
        device = parse_device(key)
        if device == "meta":
            raise OptionError("--max-memory cannot budget the meta device.", hint="Budget GPUs, cpu or disk.")
        budget[device] = value if isinstance(value, int) else parse_size(value)
    return budget


def parse_device_map(text: str | dict | None) -> DeviceMap:
    """A strategy name, a single device (as ``{"": device}``), ``@file.json`` or an inline JSON dict."""
    if text is None or text == "":
        return "auto"
    if isinstance(text, dict):
        return _validate_map(text, "the given map")
    text = str(text).strip()
    if text in STRATEGIES:
        return text
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            raw = path.read_text()
        except OSError as exc:
            raise OptionError(f"Cannot read device map file {str(path)!r}: {exc.strerror}.",
                              hint="Give an existing JSON file: --device-map @map.json") from None
        return _validate_map(_load_json(raw, str(path)), str(path))
    if text.startswith("{"):
        return _validate_map(_load_json(text, "--device-map"), "--device-map")
    try:
        return {"": parse_device(text)}
    except OptionError:
        raise OptionError(
            f"Cannot read --device-map {text!r}.",
            hint=f"Use a strategy ({', '.join(STRATEGIES)}), a device (cpu, cuda:0), @map.json "
            'or a JSON dict like \'{"model.embed_tokens": 0, "model.layers": "cpu"}\'.',
        ) from None


def _load_json(raw: str, where: str) -> dict:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise OptionError(f"{where} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).",
                          hint='A device map is a JSON object: {"module.name": "cpu", ...}') from None
    if not isinstance(value, dict):
        raise OptionError(f"{where} must be a JSON object mapping module names to devices.",
                          hint='For example {"model.embed_tokens": 0, "model.layers": "cpu"}')
    return value


def _validate_map(mapping: dict, where: str) -> dict:
    if not mapping:
        raise OptionError(f"{where} is an empty device map.", hint='Map at least "" (the whole model) to a device.')
    return {str(name): parse_device(device) for name, device in mapping.items()}
