"""What the user asked for, validated once: option strings -> one typed, keyword-only object.

The magics and the Python API both build :class:`LoadOptions` with :meth:`LoadOptions.parse`,
so every action gets the same checks and the core sees only valid, typed values.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Union

from .dtypes import parse_dtype
from .errors import OptionError
from .folders import parse_folder
from .option_files import read_option_file
from .units import Device, parse_device, parse_size

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
DeviceMap = Union[str, dict]


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """Everything a plan or a load depends on besides the model spec."""

    class_name: Optional[str] = None
    dtype: str = "auto"
    device_map: DeviceMap = "auto"
    max_memory: Optional[dict[Device, int]] = None
    no_offload: bool = False
    fit: bool = False  # place for the fewest bytes streamed from cpu or disk (core/devices/fit.py)
    reserve: Optional[int] = None  # bytes every device's budget leaves free
    context: Union[int, str, None] = None  # tokens per sequence to keep room for; "max": the longest that fits
    batch: Optional[int] = None  # sequences at once (with context; None: 1)
    kv_dtype: Optional[str] = None  # the KV cache's dtype (None: the model's)
    trust_remote_code: bool = False
    allow_pickle: bool = False  # load pickle checkpoints (with torch.load(weights_only=True))
    no_verify: bool = False  # a local folder loads without its manifest check (the record says unverified)
    tokenizer: bool = False  # also load the tokenizer from the same pinned sha
    quantization: Any = None  # a transformers quantization config (--quantize ...), or None
    variant: Optional[str] = None  # weights files model.<variant>.safetensors
    subfolder: Optional[str] = None  # the model lives in this folder of the repo
    attn_implementation: Optional[str] = None
    extra: dict = field(default_factory=dict)  # any other from_pretrained argument (--kw key=value)
    offload_folder: Optional[str] = None
    cache_dir: Optional[str] = None
    offline: bool = False
    force_download: bool = False
    token: Any = None  # never shown: see __repr__
    locked_files: Optional[dict] = None  # --locked: file -> {"size", "sha256"} as the lock file records them

    @classmethod
    def parse(cls, *, class_name: Optional[str] = None, dtype: Optional[str] = "auto", device_map: Any = "auto",
              max_memory: Any = None, no_offload: bool = False, fit: bool = False, reserve: Any = None,
              context: Any = None, batch: Any = None,
              kv_dtype: Optional[str] = None, trust_remote_code: bool = False,
              allow_pickle: bool = False, no_verify: bool = False, tokenizer: bool = False, quantize: Optional[str] = None,
              bnb_compute_dtype: Optional[str] = None, bnb_quant_type: Optional[str] = None,
              double_quant: bool = False, quantization_config: Any = None, variant: Optional[str] = None,
              subfolder: Optional[str] = None, attn_implementation: Optional[str] = None, kw: Any = None,
              offload_folder: Optional[str] = None, cache_dir: Optional[str] = None, offline: bool = False,
              force_download: bool = False, token: Any = None) -> "LoadOptions":
        """Validate raw values (strings as typed, or already-typed values) into options."""
        from .quant import quantization_config as make_quantization, read_config_file

        if offline and force_download:
            raise OptionError("--force-download downloads every file again, and this load is offline (--offline, "
                              "HF_HUB_OFFLINE=1 or %config HFNotebook.offline).",
                              hint="Leave --force-download out to load from the cache, or go online to download again.")

        raw_config = quantization_config if isinstance(quantization_config, dict) else read_config_file(quantization_config)
        quantization = make_quantization(quantize or None, compute_dtype=bnb_compute_dtype,
                                         quant_type=bnb_quant_type or "nf4", double_quant=bool(double_quant),
                                         config=raw_config)
        return cls(class_name=class_name or None, dtype=parse_dtype(dtype), device_map=parse_device_map(device_map),
                   quantization=quantization, variant=_word(variant, "--variant"),
                   subfolder=_subfolder(subfolder), extra=parse_kw(kw),
                   attn_implementation=_attention(attn_implementation, bool(trust_remote_code), bool(offline)),
                   max_memory=parse_max_memory(max_memory), no_offload=bool(no_offload),
                   fit=bool(fit), reserve=_reserve(reserve),
                   context=_context(context, bool(fit)), batch=_batch(batch, context),
                   kv_dtype=_kv_dtype(kv_dtype),
                   trust_remote_code=bool(trust_remote_code), allow_pickle=bool(allow_pickle),
                   no_verify=bool(no_verify), tokenizer=bool(tokenizer),
                   offload_folder=parse_folder(offload_folder, "--offload-folder"),
                   cache_dir=parse_folder(cache_dir, "--cache-dir"), offline=bool(offline),
                   force_download=bool(force_download), token=token)

    def with_(self, **changes: Any) -> "LoadOptions":
        return replace(self, **changes)

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.__dict__.items() if k not in ("token", "locked_files")}
        token = "" if self.token is None else ", token=<hidden>"
        return f"LoadOptions({', '.join(f'{k}={v!r}' for k, v in shown.items())}{token})"


def _context(text: Any, fit: bool) -> Union[int, str, None]:
    """``--context``: a whole number of tokens, or ``max`` (the longest that fits beside the weights)."""
    if str(text).strip().lower() != "max":
        return _count(text, "--context")
    if fit:
        raise OptionError("--context max keeps the weights where the map puts them, and --fit moves them for a "
                          "given context: they cannot be used together.",
                          hint="Use --fit --context N, or --context max alone (then --fit with the context it gives).")
    return "max"


def _reserve(text: Any) -> Optional[int]:
    """``--reserve 2GiB``: bytes every device's budget leaves free."""
    if text is None or text == "":
        return None
    if isinstance(text, int):
        return text
    try:
        return parse_size(str(text))
    except OptionError:
        raise OptionError(f"Cannot read --reserve {text!r} as a size.", hint="Give a size, e.g. --reserve 2GiB.") from None


def _batch(text: Any, context: Any) -> Optional[int]:
    """``--batch``: sequences at once, for the KV cache that ``--context`` keeps room for (alone it means nothing)."""
    batch = _count(text, "--batch")
    if batch is not None and context in (None, ""):
        raise OptionError("--batch sizes the KV cache that --context keeps room for; without --context it does nothing.",
                          hint="Add --context N (tokens per sequence), or leave --batch out.")
    return batch


def _count(text: Any, flag: str) -> Optional[int]:
    """A whole number of at least 1 (``--context 8192``, ``--batch 4``), or None."""
    if text is None or text == "":
        return None
    try:
        value = int(str(text).replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise OptionError(f"Cannot read {flag} {text!r}.",
                          hint=f"{flag} takes a whole number of at least 1, e.g. {flag} {8192 if 'context' in flag else 4}.")
    return value


def _kv_dtype(text: Optional[str]) -> Optional[str]:
    from .devices.kv_cache import KV_DTYPES

    if not text:
        return None
    name = str(text).strip().lower().removeprefix("torch.")
    if name not in KV_DTYPES:
        raise OptionError(f"Unknown --kv-dtype {text!r}.", hint=f"Use one of: {', '.join(KV_DTYPES)}.")
    return name


def _word(text: Optional[str], flag: str) -> Optional[str]:
    """A plain name (a variant, an attention implementation): letters, digits, ``_.-:/@``."""
    if not text:
        return None
    text = str(text).strip()
    if not re.fullmatch(r"[\w.:/@-]+", text):
        raise OptionError(f"Cannot read {flag} {text!r}.", hint=f"{flag} takes a plain name, e.g. fp16 or sdpa.")
    return text


def _attention(text: Optional[str], trust_remote_code: bool, offline: bool) -> Optional[str]:
    """An attention implementation by name. A Hub kernel (``org/repo@sha``) is code downloaded from the Hub and
    run: only with ``trust_remote_code``, pinned to a full sha, online (checked here, before any request)."""
    from .hub.kernel import check, is_hub_kernel

    name = _word(text, "--attn-implementation")
    if is_hub_kernel(name):
        check(name, trust_remote_code=trust_remote_code, offline=offline)
    return name


def _subfolder(text: Optional[str]) -> Optional[str]:
    if not text:
        return None
    text = str(text).strip().strip("/")
    if not text or ".." in text.split("/") or not re.fullmatch(r"[\w.\-/]+", text):
        raise OptionError(f"Cannot read --subfolder {text!r}.", hint="Give a folder of the repo, e.g. --subfolder unet")
    return text


#: from_pretrained arguments hf_notebook sets itself (through its own options).
MANAGED = {"device_map": "--device-map", "dtype": "--dtype", "torch_dtype": "--dtype", "max_memory": "--max-memory",
           "quantization_config": "--quantize / --quantization-config", "offload_folder": "--offload-folder",
           "trust_remote_code": "--trust-remote-code", "variant": "--variant", "subfolder": "--subfolder",
           "attn_implementation": "--attn-implementation", "cache_dir": "--cache-dir", "revision": "org/name@REV",
           "local_files_only": "--offline", "token": "your login", "use_safetensors": "--allow-pickle",
           "weights_only": "(always True)", "force_download": "--force-download", "config": "(from the repo)"}
#: from_pretrained arguments a load cannot take: they change what it returns or read what hf_notebook does not check.
REFUSED = {"output_loading_info": "it makes from_pretrained return a tuple, and the record already lists what "
                                  "was loaded, missing or unexpected",
           "gguf_file": "hf_notebook loads safetensors checkpoints (GGUF files are not checked nor planned)",
           "state_dict": "the weights come from the pinned files, checked against their hashes",
           "pretrained_model_name_or_path": "the model is the spec: %load_model org/name@REV"}
_KERNEL_KEYS = {"use_kernels", "allow_all_kernels", "kernel_config"}  # from_pretrained's switches for Hub kernels
_TOKEN_KEYS = {"token", "use_auth_token", "hf_token", "api_key", "access_token"}


def parse_kw(items: Any) -> dict:
    """``["low_cpu_mem_usage=true", "key_mapping={\"a\": \"b\"}"]`` -> a dict of JSON values (plain text
    where the value is not JSON). Names hf_notebook sets through its own options are refused."""
    if not items:
        return {}
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        pairs = []
        for item in items:
            key, sep, value = str(item).partition("=")
            if not sep or not key.strip():
                raise OptionError(f"Cannot read --kw {item!r}.", hint="Write --kw key=value (the value as JSON).")
            try:
                pairs.append((key.strip(), json.loads(value)))
            except ValueError:
                pairs.append((key.strip(), value))
    for key, value in pairs:
        if key in MANAGED:
            raise OptionError(f"--kw {key}=... is set through hf_notebook's own option.", hint=f"Use {MANAGED[key]}.")
        if key in REFUSED:
            raise OptionError(f"--kw {key}=... cannot be given to a load: {REFUSED[key]}.", hint=f"Leave {key} out.")
        if key == "key_mapping" and not (isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                                         for k, v in value.items())):
            raise OptionError("--kw key_mapping=... takes a JSON object of pattern -> replacement strings.",
                              hint='e.g. --kw key_mapping=\'{"^old\\\\.": "new."}\'')
        if key in _KERNEL_KEYS and value not in (False, None):
            raise OptionError(f"--kw {key}=... would load kernels from the Hub: code downloaded and run, unpinned and "
                              "not in the lock file, so hf_notebook refuses it.",
                              hint="Leave it out: transformers' own kernels (eager, sdpa, ...) need no switch, and a Hub "
                                   "attention kernel loads pinned: --attn-implementation org/repo@<sha> "
                                   "--trust-remote-code.")
        if _holds_token(value):
            raise OptionError(f"--kw {key}=... carries a token.", hint="Tokens come only from your login "
                              "(`hf auth login`, HF_TOKEN): never on a line, where outputs and the lock file keep it.")
    return dict(pairs)


def _holds_token(value: Any) -> bool:
    """A token at any depth of a --kw value: a key that names one, or a string shaped like one."""
    from .errors import redact

    if isinstance(value, dict):
        return any(str(k).lower() in _TOKEN_KEYS or _holds_token(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_holds_token(v) for v in value)
    return isinstance(value, str) and redact(value) != value


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
        raw = read_option_file(path, "--device-map", "--device-map @map.json")
        return _validate_map(_load_json(raw, str(path)), str(path))
    if text.startswith("{"):
        return _validate_map(_load_json(text, "--device-map"), "--device-map")
    try:
        device = parse_device(text)
    except OptionError:
        raise OptionError(
            f"Cannot read --device-map {text!r}.",
            hint=f"Use a strategy ({', '.join(STRATEGIES)}), a device (cpu, cuda:0), @map.json "
            'or a JSON dict like \'{"model.embed_tokens": 0, "model.layers": "cpu"}\'.',
        ) from None
    return _validate_map({"": device}, f"--device-map {text}")


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
    parsed = {str(name): parse_device(device) for name, device in mapping.items()}
    if "meta" in parsed.values():
        raise OptionError(f"{where} puts modules on the meta device, which holds no data.",
                          hint="Place them on a GPU, cpu or disk; to look without loading, use %plan_model.")
    return parsed
