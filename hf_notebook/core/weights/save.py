"""Save a loaded model as a complete model folder: atomic, streamed, hashed while written.

The folder is what ``save_pretrained`` writes (its state-dict rules: names converted back to
the checkpoint's, tied weights once, keys to ignore, quantizer state; its sharding and index),
because ``save_pretrained`` writes it: we only replace the two steps that cost memory.

- ``safe_save_file`` (one shard dict -> one file) becomes a streaming writer
  (:mod:`.shard_writer`): the same bytes, chunk by chunk or file to file, converted to
  ``--dtype`` on the way, hashed in a second thread while written.
- ``load_offloaded_parameter`` (which loads a whole shard's offloaded weights into memory)
  returns a meta placeholder; the writer streams that tensor from the file it is stored in.

The folder is written into a temporary sibling and renamed into place when complete; any
error or Ctrl-C removes the temporary folder and leaves the target as it was. The manifest
(``hf_notebook.manifest.json``) lists every file with its size and sha256, next to the
companion files (tokenizer, chat template, ...) of the pinned snapshot.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..devices.offloaded import rewrites_weights
from ..dtypes import torch_dtype
from ..errors import HfNotebookError, OptionError
from ..events import OnEvent
from ..integrity import MANIFEST, digest_of
from ..quiet import library_bars_off
from ..units import format_bytes
from .shard_writer import ShardWriter, a_core_for_hashing

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".gguf", ".onnx", ".ckpt")
_NOT_COPIED = {"README.md", ".gitattributes", MANIFEST, "model.safetensors.index.json", "pytorch_model.bin.index.json"}


class SaveError(HfNotebookError, OSError):
    """A save that cannot be made (target in use, not writable, too little space); nothing was written."""


@dataclass(frozen=True)
class SavedFile:
    """One file of a saved folder."""

    name: str
    size: int
    sha256: str


@dataclass
class SaveResult:
    """A saved folder: its files (manifest order), where it came from, how long it took."""

    folder: str
    files: tuple[SavedFile, ...]
    source: str
    dtype: str
    seconds: float
    manifest_sha256: str = ""
    replaced: bool = False  # an existing folder was replaced (--overwrite)
    name: Optional[str] = None

    @property
    def nbytes(self) -> int:
        return sum(f.size for f in self.files)

    def _repr_mimebundle_(self, **_):
        from hf_notebook.ui.record import save_record

        return save_record(self).bundle()


def save_model(result: Any, folder: str | os.PathLike, *, max_shard_size: Any = None, dtype: Optional[str] = None,
               overwrite: bool = False, reads_from: tuple = (), on_event: OnEvent | None = None) -> SaveResult:
    """Save ``result.model`` (a :class:`~.api.LoadResult`) into ``folder``; see the module docstring.

    ``reads_from`` are folders loaded models read weights from: saving into one is refused (a
    save there would delete the shards being read). ``dtype`` converts on the way out.
    """
    t0 = time.perf_counter()
    target = Path(folder).expanduser().absolute()
    model = result.model
    out_dtype = dtype if dtype not in (None, "auto") else str(model.dtype).removeprefix("torch.")
    if getattr(model, "hf_quantizer", None) is not None and dtype not in (None, "auto"):
        raise SaveError("A quantized model is saved in its own format; --dtype cannot convert it.",
                        hint="Leave --dtype out.")
    _check_target(target, overwrite, reads_from)
    convert = dtype not in (None, "auto")
    _check_space(target, model, out_dtype if convert else None)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.hf_notebook-", dir=target.parent))
    try:
        writer = ShardWriter(model, out_dtype if convert else None, on_event)
        # library bars off: no "Writing model shards" widget left behind
        try:
            with _streamed(model, writer, convert), library_bars_off(), a_core_for_hashing():
                model.save_pretrained(tmp, max_shard_size=max_shard_size or "50GB")
        finally:
            writer.finish()  # the last shards' hashes (they overlap the writing of the next shard)
        if dtype not in (None, "auto"):
            _set_config_dtype(tmp, out_dtype)
        _copy_companions(result, tmp)
        files = _hashed(tmp, writer.hashes)
        source = result.pin.pinned_spec if result.pin.kind != "local" else result.pin.repo_id
        manifest = _write_manifest(tmp, files, source, out_dtype, model)
        replaced = _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SaveResult(str(target), files, source, out_dtype, time.perf_counter() - t0, manifest, replaced,
                      name=getattr(result, "name", None))


# -- checks ----------------------------------------------------------------------------------
def _check_target(target: Path, overwrite: bool, reads_from: tuple) -> None:
    for used in reads_from:
        used = Path(used).absolute()
        if target == used or used.is_relative_to(target) or target.is_relative_to(used):
            raise SaveError(f"A loaded model reads its weights from {used}; saving into {target} would destroy them "
                            "while they are read.", hint="Save into another folder (--overwrite does not change this).")
    if target.exists() and not target.is_dir():
        raise SaveError(f"{target} is a file, not a folder.", hint="Give a folder path to save into.")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise SaveError(f"{target} already exists and is not empty.",
                        hint="Pick a new folder, or pass --overwrite to replace it once the new one is complete.")
    parent = target.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise SaveError(f"Cannot write into {parent}.", hint="Give a folder whose parent exists and is writable.")


def _check_space(target: Path, model: Any, out_dtype: Optional[str]) -> None:
    """Refuse, with the numbers, when the weights would not fit on the target's disk."""
    size = torch_dtype(out_dtype).itemsize if out_dtype else None
    need = sum(t.numel() * (size if size and t.is_floating_point() else t.element_size())
               for t in model.state_dict().values())
    free = shutil.disk_usage(target.parent).free
    if need * 1.02 + 16 * 2**20 > free:
        raise SaveError(f"Saving writes about {format_bytes(need)}, but only {format_bytes(free)} is free in "
                        f"{target.parent}.", hint="Free space there, or save to another disk.")


@contextlib.contextmanager
def _streamed(model: Any, writer: ShardWriter, convert: bool):
    """``save_pretrained`` with our writer, meta placeholders for offloaded weights, shards sized in the
    dtype they are written in (when converting)."""
    import warnings

    import transformers.modeling_utils as mu

    saved = {name: getattr(mu, name) for name in ("safe_save_file", "load_offloaded_parameter",
                                                  "split_torch_state_dict_into_shards")}
    split = saved["split_torch_state_dict_into_shards"]

    def placeholder(model_to_save, name):
        return _meta_like(model_to_save, name)

    def split_in_out_dtype(state_dict, **kwargs):
        import torch

        sized = {k: torch.empty(v.shape, dtype=writer.target_dtype(v), device="meta") for k, v in state_dict.items()}
        return split(sized, **kwargs)

    mu.safe_save_file = writer.save_file
    # reverting fused weights needs their data: keep transformers' own loading for those models
    if not rewrites_weights(type(model).__name__, getattr(model.config, "model_type", "")):
        mu.load_offloaded_parameter = placeholder
    if convert:
        mu.split_torch_state_dict_into_shards = split_in_out_dtype
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
            yield
    finally:
        for name, value in saved.items():
            setattr(mu, name, value)


def _meta_like(model: Any, name: str):
    import torch

    owner, _, attr = name.rpartition(".")
    tensor = getattr(model.get_submodule(owner), attr)
    return torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")


# -- the rest of the folder ----------------------------------------------------------------------
def _set_config_dtype(folder: Path, out_dtype: str) -> None:
    """``save_pretrained`` records the model's dtype; the files hold ``out_dtype``."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    config.dtype = out_dtype
    config.save_pretrained(folder)


def _copy_companions(result: Any, folder: Path) -> None:
    """Tokenizer files, chat template, ...: the non-weight files of the pinned snapshot that
    ``save_pretrained`` did not write. Copied from the snapshot (fetched from the pinned sha when
    missing from the cache and the Hub is reachable)."""
    for name, path in _companions(result).items():
        if not (folder / name).exists():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, folder / name)


def _companions(result: Any) -> dict[str, Path]:
    source = Path(result.source_folder) if result.source_folder else None
    found: dict[str, Path] = {}
    if result.pin.kind != "local":
        found.update(_hub_companions(result))
    elif source is not None and source.is_dir():
        for path in source.rglob("*"):
            rel = path.relative_to(source).as_posix()
            if path.is_file() and _is_companion(rel):
                found[rel] = path
    return found


def _is_companion(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not (base.endswith(WEIGHT_SUFFIXES) or base in _NOT_COPIED or base.startswith("."))


def _hub_companions(result: Any) -> dict[str, Path]:
    """The pinned snapshot's non-weight files, from the cache, downloading the missing ones if online."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    opts = result.options
    try:
        names = [s.rfilename for s in HfApi().model_info(result.repo_id, revision=result.sha,
                                                          token=opts.token).siblings or []]
    except (HfHubHTTPError, OSError, ValueError):
        names = []  # offline: whatever the snapshot already holds
        if result.source_folder and Path(result.source_folder).is_dir():
            names = [p.relative_to(result.source_folder).as_posix()
                     for p in Path(result.source_folder).rglob("*") if p.is_file() or p.is_symlink()]
    found = {}
    for name in names:
        if not _is_companion(name):
            continue
        try:
            found[name] = Path(hf_hub_download(result.repo_id, name, revision=result.sha, cache_dir=opts.cache_dir,
                                               token=opts.token, local_files_only=opts.offline))
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError):
            continue
    return found


def _hashed(folder: Path, known: dict[str, str]) -> tuple[SavedFile, ...]:
    """Every file with its size and sha256: weights as hashed while written, small files read once."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        digest = known.get(rel) or digest_of(path, "sha256")
        files.append(SavedFile(rel, path.stat().st_size, digest))
    return tuple(files)


def _write_manifest(folder: Path, files: tuple[SavedFile, ...], source: str, out_dtype: str, model: Any) -> str:
    import safetensors
    import torch
    import transformers

    from hf_notebook import __version__

    manifest = {
        "format": "hf_notebook.manifest/1",
        "source": source,
        "dtype": out_dtype,
        "model_class": type(model).__name__,
        "versions": {"hf_notebook": __version__, "transformers": transformers.__version__,
                     "torch": torch.__version__.split("+")[0], "safetensors": safetensors.__version__},
        "files": {f.name: {"size": f.size, "sha256": f.sha256} for f in files},
    }
    quant = getattr(model.config, "quantization_config", None)
    if quant is not None:
        manifest["quantization_config"] = quant if isinstance(quant, dict) else quant.to_dict()
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    (folder / MANIFEST).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def _swap_in(tmp: Path, target: Path) -> bool:
    """Rename the finished folder into place; an existing target goes only after the new one is there."""
    if not target.exists():
        os.rename(tmp, target)
        return False
    old = target.parent / f".{target.name}.hf_notebook-old-{os.getpid()}"
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return True


def parse_shard_size(text: Any) -> Optional[int]:
    """``--max-shard-size 2GB`` -> bytes (None: transformers' default)."""
    if text in (None, ""):
        return None
    from ..units import parse_size

    try:
        return parse_size(str(text))
    except OptionError:
        raise OptionError(f"Cannot read --max-shard-size {text!r}.", hint="Give a size such as 500MB or 5GB.") from None
