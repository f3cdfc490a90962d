"""The one table of load and plan options: flag, help, group, and how each is written back.

A new option goes here (a row), in :class:`~.options.LoadOptions` (its typed field and its check in
``parse``) and, if transformers takes it, where ``weights/load.py`` hands options to
``from_pretrained``. Everything else follows from the row: the magics' arguments and ``--help``
groups, the ``%load_model`` line that loads a result or a plan again (:func:`to_args`), and what
``%load_model PLAN`` keeps of a plan. ``dest`` is the ``LoadOptions.parse`` keyword.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .errors import OptionError

PLACEMENT, INFERENCE, SOURCE, CODE, QUANT, HUB, LOAD = (
    "placement", "inference (room kept for it)", "what is read", "code and formats", "quantization", "the Hub",
    "load only")


@dataclass(frozen=True)
class Option:
    """One option: ``flag`` on the line, ``dest`` in ``LoadOptions.parse``; a ``switch`` takes no value, a
    ``repeat`` one may be given many times; ``load_only`` options are not for ``%plan_model``."""

    flag: str
    dest: str
    help: str
    group: str
    switch: bool = False
    repeat: bool = False
    choices: tuple = ()
    metavar: Optional[str] = None
    load_only: bool = False


OPTIONS: tuple[Option, ...] = (
    Option("--class", "class_name", "Model class, e.g. AutoModelForCausalLM (default: from the config's architectures).",
           SOURCE),
    Option("--dtype", "dtype", "auto | float32 | bfloat16 | float16 (default: auto, the checkpoint's).", PLACEMENT),
    Option("--device-map", "device_map",
           "auto | balanced | balanced_low_0 | sequential | cpu | cuda:N | @map.json | JSON dict.", PLACEMENT),
    Option("--max-memory", "max_memory",
           "Budget per device, e.g. 0=20GiB,cpu=30GiB (may name devices of another machine when planning).", PLACEMENT),
    Option("--no-offload", "no_offload", "Fail instead of spilling to CPU or disk when it does not fit.", PLACEMENT,
           switch=True),
    Option("--fit", "fit", "Place for speed: everything on the accelerators if it fits, else the fewest bytes on cpu "
           "and disk (with --context: its KV cache and step included); the record gives the options that reproduce it.",
           PLACEMENT, switch=True),
    Option("--reserve", "reserve", "Leave this much free on every device (CUDA context, other work), e.g. 2GiB.",
           PLACEMENT, metavar="SIZE"),
    Option("--offload-folder", "offload_folder", "Folder for weights placed on disk.", PLACEMENT, load_only=True),
    Option("--context", "context", "Tokens per sequence to keep room for: the KV cache of every layer and one generate "
           "step are planned on the devices that run them, and the map leaves that room; max: the longest context that "
           "fits beside the weights where the map puts them.", INFERENCE, metavar="TOKENS|max"),
    Option("--batch", "batch", "Sequences at once (with --context; default 1).", INFERENCE, metavar="N"),
    Option("--kv-dtype", "kv_dtype", "The KV cache's dtype (with --context; default: the model's).", INFERENCE,
           choices=("bfloat16", "float16", "float32", "float8_e4m3fn", "float8_e5m2")),
    Option("--cache-dir", "cache_dir", "Hub cache folder for this call.", HUB),
    Option("--offline", "offline", "Use the cache only; fail clearly if files are missing.", HUB, switch=True),
    Option("--force-download", "force_download", "Download again even if the files are cached.", HUB, switch=True,
           load_only=True),
    Option("--trust-remote-code", "trust_remote_code",
           "Allow the repo's own Python code (and a pinned Hub attention kernel) to run.", CODE, switch=True),
    Option("--allow-pickle", "allow_pickle", "Load pickle checkpoints (pytorch_model.bin) when there are no "
           "safetensors, with torch.load(weights_only=True).", CODE, switch=True),
    Option("--no-verify", "no_verify", "Load a local folder that has no hf_notebook.manifest.json (one save_pretrained "
           "wrote), unchecked; the record says unverified. Folders with a manifest are checked otherwise.", CODE,
           switch=True),
    Option("--quantize", "quantize", "Quantize while loading: 4bit / 8bit (bitsandbytes), int8-weight (torchao).",
           QUANT, choices=("4bit", "8bit", "int8-weight")),
    Option("--bnb-compute-dtype", "bnb_compute_dtype", "4bit: the dtype computations run in (e.g. bfloat16).", QUANT),
    Option("--bnb-quant-type", "bnb_quant_type", "4bit: nf4 (default) or fp4.", QUANT, choices=("nf4", "fp4")),
    Option("--double-quant", "double_quant", "4bit: quantize the quantization constants too.", QUANT, switch=True),
    Option("--quantization-config", "quantization_config", "Any transformers quantization config, as JSON (a file "
           "with @).", QUANT, metavar="@FILE.json"),
    Option("--variant", "variant", "Weights variant: model.<VARIANT>.safetensors (e.g. fp16).", SOURCE),
    Option("--subfolder", "subfolder", "The model lives in this folder of the repo.", SOURCE),
    Option("--attn-implementation", "attn_implementation", "eager | sdpa | flash_attention_2 | ... or a Hub kernel, "
           "org/repo@<full sha> with --trust-remote-code.", CODE),
    Option("--kw", "kw", "Any other from_pretrained argument (value as JSON); repeatable. Unknown names are refused.",
           CODE, repeat=True, metavar="KEY=VALUE"),
)
BY_DEST = {option.dest: option for option in OPTIONS}
NOT_REPEATED = frozenset({"offline", "force_download"})  # how this call reaches the Hub, not what it loads
#: Not what a load reads or runs (where it goes, how it reaches the Hub), or recorded under keys of their own
#: (class, dtype): the lock entry's ``options`` leave them out (:func:`recorded_args`).
NOT_RECORDED = frozenset(o.dest for o in OPTIONS if o.group not in (SOURCE, CODE, QUANT)) | {"class_name"}


def to_args(opts: Any, *, skip: frozenset = NOT_REPEATED, quote: bool = True, **values: Any) -> list[str]:
    """The flags that give ``opts`` (a :class:`~.options.LoadOptions`) again, in table order; ``values``
    replace fields (``dtype=`` the resolved dtype, ``device_map=`` an edited map or ``@file``). Parsing
    them gives the same options back; the token is never written. ``quote=False``: values as they are,
    for :func:`from_args` (no magic line, so any value can be given)."""
    fields = {**{name: getattr(opts, name) for name in vars(opts)}, **values}
    write = quote_arg if quote else str
    args: list[str] = []
    for option in OPTIONS:
        if option.dest in skip:
            continue
        if option.dest == "quantize":
            args += quantize_args(fields.get("quantization"), write)
        elif option.dest == "kw":
            args += [arg for key, value in (fields.get("extra") or {}).items()
                     for arg in ("--kw", write(f"{key}={_json(value)}"))]
        elif option.dest in ("bnb_compute_dtype", "bnb_quant_type", "double_quant", "quantization_config"):
            continue  # written with --quantize, from the config itself
        elif option.switch:
            args += [option.flag] if fields.get(option.dest) else []
        else:
            text = _value_text(option.dest, fields.get(option.dest))
            args += [option.flag, write(text)] if text is not None else []
    return args


#: What chooses the weights a load ends with: a lock entry's key carries these (``hub.lock.key_of``).
KEYED = frozenset({"dtype", "variant", "subfolder", "quantize"})


def key_args(opts: Any) -> list[str]:
    """The flags of ``opts`` that choose the weights loaded (dtype as given, variant, subfolder, quantization)."""
    return to_args(opts, skip=frozenset(BY_DEST) - KEYED, quote=False)


def recorded_args(opts: Any) -> list[str]:
    """The flags of ``opts`` that change what is read or run (``--variant``, ``--subfolder``, ``--kw``, code,
    quantization): what a lock entry records beside the sha, class and dtype."""
    return to_args(opts, skip=NOT_RECORDED, quote=False)


def from_args(args: list[str]) -> dict:
    """What ``args`` (from :func:`to_args`) give, as ``LoadOptions.parse`` keywords."""
    flags = {option.flag: option for option in OPTIONS}
    raw: dict = {}
    words = iter(args)
    for word in words:
        option = flags.get(word)
        if option is None:
            raise OptionError(f"{word!r} is not an option of %load_model.", hint="See %load_model --help.")
        if option.switch:
            raw[option.dest] = True
        elif option.repeat:
            raw.setdefault(option.dest, []).append(unquote(next(words)))
        else:
            raw[option.dest] = unquote(next(words))
    return raw


def plan_args(plan: Any, *, quote: bool = True, **values: Any) -> list[str]:
    """The flags that load ``plan`` (a :class:`~.devices.plan.Plan`): every option it was made with, its class,
    dtype, budget and (edited) map; ``values`` replace fields as in :func:`to_args`."""
    from .options import LoadOptions

    fields = dict(class_name=plan.model_class, dtype=plan.dtype, device_map=dict(plan.device_map),
                  max_memory=plan.max_memory)
    return to_args(plan.options or LoadOptions(), quote=quote, **{**fields, **values})


def _value_text(dest: str, value: Any) -> Optional[str]:
    if value is None or value == "" or (dest in ("dtype", "device_map") and value == "auto"):
        return None
    if dest == "device_map" and isinstance(value, dict):
        if list(value) == [""]:
            return device_arg(value[""])
        return _json(value, separators=(", ", ": "))
    if dest == "max_memory":
        return ",".join(f"{k}={size_arg(v)}" for k, v in value.items()) or None
    if dest == "reserve":
        return size_arg(value)
    return str(value)


def quantize_args(qconfig: Any, write: Callable[[str], str] = None) -> list[str]:
    """The flags that ask for ``qconfig`` again: ``--quantize 4bit --double-quant``, or the config as JSON."""
    if qconfig is None:
        return []
    if getattr(qconfig, "load_in_4bit", False):
        args = ["--quantize", "4bit"]
        if qconfig.bnb_4bit_quant_type != "nf4":
            args += ["--bnb-quant-type", qconfig.bnb_4bit_quant_type]
        compute = getattr(qconfig, "bnb_4bit_compute_dtype", None)
        if compute is not None and str(compute) != "torch.float32":
            args += ["--bnb-compute-dtype", str(compute).removeprefix("torch.")]
        return args + (["--double-quant"] if qconfig.bnb_4bit_use_double_quant else [])
    if getattr(qconfig, "load_in_8bit", False):
        return ["--quantize", "8bit"]
    from .quant import as_dict, describe

    if describe(qconfig) == "int8 weight-only (torchao)":
        return ["--quantize", "int8-weight"]
    return ["--quantization-config", (write or quote_arg)(_json(as_dict(qconfig), separators=(",", ":")))]


def unquote(value: Any) -> Any:
    """One pair of matching outer quotes off ``value`` (what :func:`quote_arg` put on)."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def quote_arg(text: str) -> str:
    """Quote a magic argument only when it needs it (spaces, quotes). IPython splits a magic line without the
    shell's rules: a quoted word keeps its quotes whole (we take one pair off) and nothing escapes a quote, so
    the quote is one the text lacks. Text with both kinds cannot be one argument: :class:`OptionError`."""
    if re.fullmatch(r"[\w@./:=,+-]+", text):
        return text
    for quote in "'\"":
        if quote not in text:
            return f"{quote}{text}{quote}"
    raise OptionError(f"{text!r} holds both kinds of quote, so no magic line can give it as one argument.",
                      hint="Use the Python API (hf_notebook.load_model) for such a value.")


def _json(value: Any, **kwargs: Any) -> str:
    """JSON with every ``'`` written ``\\u0027``, so a single-quoted argument can hold it."""
    return json.dumps(value, **kwargs).replace("'", "\\u0027")


def size_arg(nbytes: int) -> str:
    """An exact size in the largest unit that divides it: ``20GiB``, ``300KB``, ``1234B``."""
    for unit, size in (("TiB", 2**40), ("TB", 10**12), ("GiB", 2**30), ("GB", 10**9), ("MiB", 2**20),
                       ("MB", 10**6), ("KiB", 2**10), ("KB", 10**3)):
        if nbytes and nbytes % size == 0:
            return f"{nbytes // size}{unit}"
    return f"{nbytes}B"


def device_arg(device: Any) -> str:
    return f"cuda:{device}" if isinstance(device, int) else str(device)

