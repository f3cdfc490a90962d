"""Tiny random-weight models of real architectures, and header-only giant checkpoints.

Three tools for tests and demos, none of which touches the network:

- :func:`build_model` / :func:`save_model`: a few-hundred-KB model of a real architecture
  (llama, gpt2, bert, t5, qwen2, mixtral), deterministic by seed, saved as several
  safetensors shards with an index, exactly as ``save_pretrained`` writes them.
- :func:`publish_tiny_models`: pushes them into a local Hub stand-in with a history
  (tag ``v1``, ``main``, branch ``dev``, ``refs/pr/1``) whose revisions hold different weights.
- :func:`synthetic_checkpoint`: a 70B-class checkpoint (config, header-only shards, index)
  written in a second, for planning code that reads only headers.

torch and transformers are imported on first use.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = [
    "ARCHITECTURES",
    "BIG_CONFIGS",
    "DEFAULT_MAX_SHARD_SIZE",
    "MODEL_CLASSES",
    "PublishedRepo",
    "build_model",
    "make_config",
    "model_files",
    "publish_tiny_models",
    "save_model",
    "synthetic_checkpoint",
    "write_header_only_safetensors",
]

DEFAULT_MAX_SHARD_SIZE = "100KB"

# Shared tiny dims for the decoder-only models: ~100K params, ~400 KB in float32.
_DECODER = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)

# name -> (config class name, config kwargs, Auto class used to instantiate).
_SPECS: dict[str, tuple[str, dict[str, Any], str]] = {
    "llama": ("LlamaConfig", dict(_DECODER), "AutoModelForCausalLM"),
    "gpt2": (
        "GPT2Config",
        # GPT-2's default bos/eos (50256) lie outside the tiny vocabulary.
        dict(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=256, bos_token_id=255, eos_token_id=255),
        "AutoModelForCausalLM",
    ),
    "bert": (
        "BertConfig",
        dict(
            vocab_size=256,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=256,
        ),
        "AutoModelForMaskedLM",
    ),
    "t5": (
        "T5Config",
        dict(
            vocab_size=256,
            d_model=64,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_heads=4,
            decoder_start_token_id=0,
        ),
        "AutoModelForSeq2SeqLM",
    ),
    # Qwen2 with tied embeddings, like the small Qwen2 checkpoints on the Hub.
    "qwen2": ("Qwen2Config", dict(_DECODER, tie_word_embeddings=True), "AutoModelForCausalLM"),
    "mixtral": (
        "MixtralConfig",
        dict(_DECODER, intermediate_size=64, num_local_experts=4, num_experts_per_tok=2),
        "AutoModelForCausalLM",
    ),
}

ARCHITECTURES: tuple[str, ...] = tuple(_SPECS)
MODEL_CLASSES: dict[str, str] = {name: spec[2] for name, spec in _SPECS.items()}


def make_config(arch: str) -> PretrainedConfig:
    """A fresh tiny config for ``arch`` (one of :data:`ARCHITECTURES`)."""
    import transformers

    if arch not in _SPECS:
        raise KeyError(f"unknown tiny architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    config_cls, kwargs, _ = _SPECS[arch]
    return getattr(transformers, config_cls)(**kwargs)


def build_model(arch: str, *, seed: int = 0, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Build the tiny ``arch`` model with random weights drawn from ``seed``, in eval mode.

    Weights are always drawn in float32 and then cast, so every dtype holds the same values
    up to rounding. The global torch RNG is left untouched. ``config.architectures`` is set.
    """
    import torch
    import transformers

    config = make_config(arch)
    auto_cls = getattr(transformers, MODEL_CLASSES[arch])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto_cls.from_config(config, dtype=torch.float32)
    if dtype is not None:
        model.to(dtype)
        model.config.dtype = dtype
    model.config.architectures = [type(model).__name__]
    return model.eval()


def save_model(
    arch: str,
    folder: str | os.PathLike,
    *,
    seed: int = 0,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the tiny ``arch`` model as a sharded safetensors checkpoint into ``folder``.

    The folder gets ``config.json``, ``model-0000i-of-0000n.safetensors`` shards,
    ``model.safetensors.index.json`` and, for generative models, ``generation_config.json``.
    Same ``arch``/``seed``/``dtype``/``max_shard_size`` give the same bytes in every process.
    """
    model = build_model(arch, seed=seed, dtype=dtype)
    folder = Path(folder)
    with _quiet_transformers():
        model.save_pretrained(folder, max_shard_size=max_shard_size)
    return folder


def model_files(folder: str | os.PathLike) -> dict[str, Path]:
    """The files of a checkpoint folder, by name relative to it (sorted, POSIX separators)."""
    root = Path(folder)
    files = (p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): p for p in sorted(files)}


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' progress bars while saving; restore the previous setting."""
    from transformers.utils import logging as tf_logging

    was_enabled = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            tf_logging.enable_progress_bar()


# --------------------------------------------------------------------------- publishing


@dataclass(frozen=True)
class PublishedRepo:
    """A tiny model published with history into a local Hub stand-in.

    ``commits`` maps ``"v1"``, ``"main"``, ``"dev"`` and ``"pr1"`` to commit shas; ``seeds``
    maps the same labels to the seed whose weights that revision holds (``dev`` shares
    ``main``'s weights), so a test can rebuild the expected model with :func:`build_model`.
    """

    repo_id: str
    arch: str
    commits: Mapping[str, str]
    seeds: Mapping[str, int]
    model_class: str
    pr_num: int = 1
    folders: Mapping[str, Path] = field(default_factory=dict)


def publish_tiny_models(
    store: Any,
    *,
    org: str = "tiny",
    archs: Iterable[str] | None = None,
    seed: int = 0,
    workdir: str | os.PathLike | None = None,
) -> dict[str, PublishedRepo]:
    """Publish each tiny model into ``store`` (a ``RepoStore``) as ``f"{org}/{arch}"``.

    History per repo: ``main`` commit 1 with weights from ``seed`` (tagged ``v1``), commit 2
    with weights from ``seed + 1``, branch ``dev`` with one more commit (README and, for
    generative models, a changed ``generation_config.json``), and a pull request with weights
    from ``seed + 2``. Checkpoints are built in ``workdir`` (kept, and listed in
    ``PublishedRepo.folders``) or in a temporary folder that is removed afterwards.
    """
    names = tuple(ARCHITECTURES if archs is None else archs)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            root, keep = Path(stack.enter_context(tempfile.TemporaryDirectory())), False
        else:
            root, keep = Path(workdir), True
        return {name: _publish_one(store, org, name, seed, root / name, keep) for name in names}


def _publish_one(store: Any, org: str, arch: str, seed: int, root: Path, keep: bool) -> PublishedRepo:
    repo_id = f"{org}/{arch}"
    seeds = {"v1": seed, "main": seed + 1, "dev": seed + 1, "pr1": seed + 2}
    folders = {label: save_model(arch, root / f"seed{s}", seed=s) for label, s in seeds.items()}

    store.create_repo(repo_id)
    commits = {"v1": store.commit(repo_id, _read_all(folders["v1"]), message="initial weights")}
    store.create_tag(repo_id, "v1", revision=commits["v1"])
    new_weights = _weight_files(folders["main"])
    commits["main"] = store.commit(repo_id, new_weights, message=f"retrain with seed {seeds['main']}")
    store.create_branch(repo_id, "dev", revision="main")
    dev_files = _dev_files(folders["main"], arch)
    commits["dev"] = store.commit(repo_id, dev_files, branch="dev", message="dev tweaks")
    proposal = _weight_files(folders["pr1"])
    pr_num, commits["pr1"] = store.create_pr(repo_id, proposal, message=f"propose weights from seed {seeds['pr1']}")
    return PublishedRepo(
        repo_id=repo_id,
        arch=arch,
        commits=commits,
        seeds=seeds,
        model_class=MODEL_CLASSES[arch],
        pr_num=pr_num,
        folders=folders if keep else {},
    )


def _read_all(folder: Path) -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in model_files(folder).items()}


def _weight_files(folder: Path) -> dict[str, bytes]:
    suffixes = (".safetensors", ".safetensors.index.json")
    return {name: data for name, data in _read_all(folder).items() if name.endswith(suffixes)}


def _dev_files(folder: Path, arch: str) -> dict[str, bytes]:
    files = {"README.md": f"# tiny {arch}\n\nRandom weights for tests (dev branch).\n".encode()}
    gen_path = folder / "generation_config.json"
    if gen_path.exists():
        gen = json.loads(gen_path.read_text(encoding="utf-8"))
        gen["max_new_tokens"] = 8
        files["generation_config.json"] = (json.dumps(gen, indent=2, sort_keys=True) + "\n").encode()
    return files


# --------------------------------------------------------------------------- big shapes

_DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8,
    "F32": 4, "I32": 4, "U32": 4,
    "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip

# Header dtype -> dtype of the meta model (and config.json); others build in bfloat16.
_TORCH_DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def write_header_only_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, tuple[str, tuple[int, ...]]],
    *,
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Write a safetensors header for ``tensors`` (name -> (dtype, shape)) and no data.

    The header is valid (8-byte little-endian length, JSON padded with spaces to a multiple
    of 8, contiguous ``data_offsets`` in the given order) so header readers such as
    ``huggingface_hub``'s ``get_safetensors_metadata`` accept it; loaders will not. Returns
    the number of data bytes the header describes.
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        if dtype not in _DTYPE_BYTES:
            raise ValueError(f"unknown safetensors dtype {dtype!r} for {name!r}")
        size = math.prod(shape) * _DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(raw)) + raw)
    return offset


def synthetic_checkpoint(
    arch_config: PretrainedConfig,
    folder: str | os.PathLike,
    *,
    dtype: str = "BF16",
    n_shards: int | None = None,
    shard_bytes: int = 5 * 10**9,
) -> Path:
    """Write a header-only checkpoint of ``arch_config``'s model into ``folder``.

    The model is built on the meta device (no memory), its state dict is put in the Hub's
    on-disk naming (as ``save_pretrained`` would, e.g. per-expert MoE weights), and split in
    order into ``n_shards`` shards (default: as many as ``shard_bytes``-sized shards need).
    Writes ``config.json`` (with ``dtype`` and ``architectures``), the header-only shards and
    ``model.safetensors.index.json`` whose ``total_size`` is the sum of all tensor sizes.
    """
    state, model = _meta_state_dict(arch_config, dtype)
    sizes = {k: math.prod(shape) * _DTYPE_BYTES[dtype] for k, (_, shape) in state.items()}
    total = sum(sizes.values())
    n = n_shards or max(1, math.ceil(total / shard_bytes))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    for i, names in enumerate(_split_even(list(state), sizes, n), start=1):
        shard = f"model-{i:05d}-of-{n:05d}.safetensors"
        write_header_only_safetensors(folder / shard, {k: state[k] for k in names})
        weight_map.update(dict.fromkeys(names, shard))
    index = {
        "metadata": {"total_size": total, "total_parameters": model.num_parameters()},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    model.config.to_json_file(folder / "config.json")
    return folder


def _meta_state_dict(config: PretrainedConfig, dtype: str) -> tuple[dict[str, tuple[str, tuple[int, ...]]], Any]:
    """On-disk tensors of ``config``'s model as name -> (dtype, shape), and the meta model.

    Uses the same two steps as ``save_pretrained``: drop tied weights, then revert
    transformers' load-time conversions (e.g. fused MoE experts back to one tensor each).
    """
    import copy

    import torch
    import transformers
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    config = copy.deepcopy(config)
    if config.architectures:  # a concrete class such as "BertForMaskedLM"
        model_cls = getattr(transformers, config.architectures[0])
    elif config.is_encoder_decoder:
        model_cls = transformers.AutoModelForSeq2SeqLM
    else:
        model_cls = transformers.AutoModelForCausalLM
    torch_dtype = getattr(torch, _TORCH_DTYPE_NAMES.get(dtype, "bfloat16"))
    # Auto classes' from_config delegates to the concrete class's _from_config.
    factory = model_cls.from_config if model_cls.__name__.startswith("Auto") else model_cls._from_config
    with torch.device("meta"):
        model = factory(config, dtype=torch_dtype)
    model.config.architectures = [type(model).__name__]
    state = remove_tied_weights_from_state_dict(model.state_dict(), model)
    state = revert_weight_conversion(model, state)
    return {k: (dtype, tuple(t.shape)) for k, t in state.items()}, model


def _split_even(names: list[str], sizes: Mapping[str, int], n: int) -> list[list[str]]:
    """Split ``names`` in order into ``n`` non-empty runs of roughly equal total size."""
    if not 1 <= n <= len(names):
        raise ValueError(f"cannot split {len(names)} tensors into {n} shards")
    total = max(sum(sizes.values()), 1)
    shards: list[list[str]] = [[] for _ in range(n)]
    done, prev = 0, -1
    for pos, name in enumerate(names):
        # A tensor goes to the shard its midpoint falls in, never skipping a shard and always
        # leaving one tensor for each shard still to fill.
        want = int((done + sizes[name] / 2) * n / total)
        prev = min(max(want, prev, n - (len(names) - pos)), prev + 1, n - 1)
        shards[prev].append(name)
        done += sizes[name]
    return shards


# Real shapes of a few giant models, for header-only planning tests.
def _llama_70b() -> PretrainedConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=128256,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        bos_token_id=128000,
        eos_token_id=128001,
    )


def _mixtral_8x7b() -> PretrainedConfig:
    from transformers import MixtralConfig

    return MixtralConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        num_local_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=32768,
        rope_theta=1e6,
    )


def _t5(d_model: int, d_ff: int, num_heads: int) -> Callable[[], PretrainedConfig]:
    def make() -> PretrainedConfig:
        from transformers import T5Config

        return T5Config(
            vocab_size=32128, d_model=d_model, d_kv=128, d_ff=d_ff, num_layers=24, num_heads=num_heads
        )

    return make


BIG_CONFIGS: dict[str, Callable[[], PretrainedConfig]] = {
    "llama-70b": _llama_70b,
    "mixtral-8x7b": _mixtral_8x7b,
    "t5-3b": _t5(1024, 16384, 32),
    "t5-11b": _t5(1024, 65536, 128),
}
