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
error or Ctrl-C removes the temporary folder and leaves the target as it was. The target is
resolved first (``..`` and links: a link to a folder is kept, the folder it points to is saved
into). An existing folder is replaced only when it is a model folder, and never is the root,
working or home folder, a Hub cache or anything in one, or what a loaded model reads (behind
links too); each refusal comes before anything is written. The manifest
(``hf_notebook.manifest.json``) lists every file with its size and sha256, next to the
companion files (tokenizer, chat template, ...) of the pinned snapshot.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..devices.offloaded import rewrites_weights
from ..dtypes import torch_dtype
from ..errors import OptionError, SaveError
from ..events import OnEvent
from ..folders import temp_sibling, writable_folder
from ..integrity import MANIFEST, digest_of
from ..quiet import library_bars_off
from ..units import disk_needed, disk_shortfall
from .shard_writer import ShardWriter, a_core_for_hashing

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".gguf", ".onnx", ".ckpt")
_NOT_COPIED = {"README.md", ".gitattributes", MANIFEST, "model.safetensors.index.json", "pytorch_model.bin.index.json"}
_SAVE_PRETRAINED = re.compile(r"(generation_)?config\.json|(model|pytorch_model|tf_model|flax_model)(\.\w+)?"
                              r"(-\d{5}-of-\d{5})?\.(safetensors|bin|h5|msgpack)(\.index\.json)?")  # what it names
_REPO_FOLDERS = ("models--", "datasets--", "spaces--")  # a Hub cache holds its repos in these


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
    link: Optional[str] = None  # the target given was this link, kept: ``folder`` is where it points

    @property
    def nbytes(self) -> int:
        return sum(f.size for f in self.files)


def save_model(result: Any, folder: str | os.PathLike, *, max_shard_size: Any = None, dtype: Optional[str] = None,
               overwrite: bool = False, reads_from: tuple = (), on_event: OnEvent | None = None) -> SaveResult:
    """Save ``result.model`` (a :class:`~.api.LoadResult`) into ``folder``; see the module docstring.

    ``reads_from`` are folders loaded models read weights from: saving into one is refused (a
    save there would delete the shards being read). ``dtype`` converts on the way out.
    """
    t0 = time.perf_counter()
    given = Path(folder).expanduser().absolute()
    target = given.resolve()  # every check, the temporary sibling and the swap use the real path
    link = str(given) if given.is_symlink() else None
    model = result.model
    out_dtype = dtype if dtype not in (None, "auto") else str(model.dtype).removeprefix("torch.")
    if getattr(model, "hf_quantizer", None) is not None and dtype not in (None, "auto"):
        raise SaveError("A quantized model is saved in its own format; --dtype cannot convert it.",
                        hint="Leave --dtype out.")
    _check_target(target, overwrite, reads_from)
    convert = dtype not in (None, "auto")
    _check_space(target, model, out_dtype if convert else None)
    tmp = temp_sibling(target)
    try:
        writer = ShardWriter(model, out_dtype if convert else None, on_event)
        # library bars off: no "Writing model shards" widget left behind
        try:
            with _streamed(model, writer, convert), library_bars_off(), a_core_for_hashing():
                model.save_pretrained(tmp, max_shard_size=max_shard_size or "50GB")
            writer.finish()  # the last shards' hashes (they overlap the writing of the next shard)
        finally:
            writer.close()  # after a failure: every hash thread ended, the first error kept
        if dtype not in (None, "auto"):
            _set_config_dtype(tmp, out_dtype)
        _copy_companions(result, tmp)
        files = _hashed(tmp, writer.hashes)
        source = result.pin.pinned_spec if result.pin.kind != "local" else result.pin.repo_id
        manifest = _write_manifest(tmp, files, source, out_dtype, model)
        replaced = _swap_in(tmp, target, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remember(target, files)
    return SaveResult(str(target), files, source, out_dtype, time.perf_counter() - t0, manifest, replaced,
                      name=getattr(result, "name", None), link=link)


# -- checks ----------------------------------------------------------------------------------
def _check_target(target: Path, overwrite: bool, reads_from: tuple) -> None:
    """Refuse, before anything is written, a (resolved) target a save must not write into or replace."""
    _check_not_a_home(target)
    _check_not_read(target, reads_from)
    _check_not_in_a_cache(target)
    _check_not_in_a_saved_folder(target)
    if target.exists() and not target.is_dir():
        raise SaveError(f"{target} is a file, not a folder.", hint="Give a folder path to save into.")
    if target.is_dir():
        _check_replaceable(target, overwrite)
    parent = target.parent
    if not writable_folder(parent) or shutil.disk_usage(parent).total == 0:  # 0: /proc, /sys (even to root)
        raise SaveError(f"Cannot write into {parent}.", hint="Give a folder whose parent exists and is writable.")


def _check_not_read(target: Path, reads_from: tuple) -> None:
    """Not a folder a loaded model reads from, nor in or above one; not a folder its files link into (a Hub
    snapshot's ``blobs``, huggingface_hub 2.4's shared ``<cache>/blobs/<xx>/``), nor above one."""
    given = [Path(f).resolve() for f in reads_from]
    for used in given + [p for f in reads_from for p in _linked_folders(Path(f))]:
        if target == used or used.is_relative_to(target) or (used in given and target.is_relative_to(used)):
            raise SaveError(f"A loaded model reads its weights from {used}; saving into {target} would destroy them "
                            "while they are read.", hint="Save into another folder (--overwrite does not change this).")


def _linked_folders(folder: Path) -> list[Path]:
    """The real folders the links in ``folder`` land in, hop by hop (snapshot -> repo blob -> shared blob),
    and the folders linked to themselves."""
    found = []
    for root, dirs, names in os.walk(folder):
        for path in (Path(root, name) for name in names + dirs if os.path.islink(os.path.join(root, name))):
            with contextlib.suppress(OSError):
                for _ in range(40):  # the kernel's limit on a chain of links
                    if not path.is_symlink():
                        break
                    path = path.parent.resolve() / os.readlink(path)
                    found.append(path.parent.resolve())
                if path.is_dir():
                    found.append(path.resolve())
    return list(dict.fromkeys(found))


def _check_not_in_a_saved_folder(target: Path) -> None:
    """Not inside a folder a save or an export wrote: its manifest lists exactly its files, so a model saved
    within would make it fail its check (a load or push of it refused)."""
    for folder in target.parents:
        if (folder / MANIFEST).is_file():
            raise SaveError(f"{target} is inside {folder}, a saved model folder: its manifest lists exactly its files, "
                            "and a folder added to it would make it fail its check.",
                            hint="Save next to it instead, e.g. into a sibling folder.")


def _check_not_in_a_cache(target: Path) -> None:
    """Nothing goes into a Hub cache (a folder holding ``models--*`` repo folders) or anywhere below one."""
    for folder in (target, *target.parents):
        if any(name.startswith(_REPO_FOLDERS) and (folder / name).is_dir() for name in _names_in(folder)):
            raise SaveError(f"{target} is in the Hugging Face Hub cache {folder}; a save there would mix its "
                            "files into the cache's.", hint="Pick a new folder outside the cache.")


def _names_in(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:  # not there (yet), or not readable
        return []


def _check_not_a_home(target: Path) -> None:
    """Never the root, working or home folder, nor a folder holding one, whatever --overwrite says."""
    for name, folder in (("the root folder", Path(target.anchor)), ("the working folder", _resolved(Path.cwd)),
                         ("your home folder", _resolved(Path.home))):
        if folder is not None and folder.is_relative_to(target):
            raise SaveError(f"{target} {'is' if folder == target else 'holds'} {name}: a save never replaces it.",
                            hint="Pick a new folder to save into (--overwrite does not change this).")


def _resolved(where: Any) -> Optional[Path]:
    """``where()`` resolved; None where it fails (a working folder removed since, no home)."""
    try:
        return where().resolve()
    except (OSError, RuntimeError):
        return None


def _check_replaceable(target: Path, overwrite: bool) -> None:
    """A folder with files is replaced only with --overwrite, and only when it is a model folder."""
    if not any(target.iterdir()):
        return
    foreign = _not_model_files(target)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise SaveError(f"{target} already exists and holds files that are not a saved model ({shown}); "
                        "--overwrite replaces only a model folder (a save's, or save_pretrained's config and weights).",
                        hint="Pick a new folder, or remove it yourself.")
    if not overwrite:
        raise SaveError(f"{target} already exists and is not empty.",
                        hint="Pick a new folder, or pass --overwrite to replace it once the new one is complete.")


def _not_model_files(folder: Path) -> list[str]:
    """Files (up to 6) that make ``folder`` more than a model folder: for a save's folder, those its manifest
    does not list; else anything but config and weights named as save_pretrained names them."""
    try:
        listed = set(json.loads((folder / MANIFEST).read_text())["files"]) | {MANIFEST}
    except (OSError, ValueError, KeyError, TypeError):
        listed = None
    found = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names + [d for d in dirs if os.path.islink(os.path.join(root, d))]):
            rel = Path(root, name).relative_to(folder).as_posix()
            if not (rel in listed if listed is not None else _SAVE_PRETRAINED.fullmatch(rel)):
                found.append(rel)
                if len(found) > 5:
                    return found
    return found


def _check_space(target: Path, model: Any, out_dtype: Optional[str]) -> None:
    """Refuse, with the numbers, when the weights would not fit on the target's disk."""
    size = torch_dtype(out_dtype).itemsize if out_dtype else None
    need = sum(t.numel() * (size if size and t.is_floating_point() else t.element_size())
               for t in model.state_dict().values())
    free = shutil.disk_usage(target.parent).free
    if disk_needed(need) > free:
        raise SaveError(disk_shortfall("Saving", need, free, str(target.parent)),
                        hint="Free space there, or save to another disk.")


@contextlib.contextmanager
def _streamed(model: Any, writer: ShardWriter, convert: bool):
    """``save_pretrained`` with our writer, meta placeholders for offloaded weights, shards sized in the
    dtype they are written in (when converting)."""
    import warnings

    from ..compat import modeling_utils_name, patched_modeling_utils

    split = modeling_utils_name("split_torch_state_dict_into_shards")

    def placeholder(model_to_save, name):
        return _meta_like(model_to_save, name)

    def split_in_out_dtype(state_dict, **kwargs):
        import torch

        sized = {k: torch.empty(v.shape, dtype=writer.target_dtype(v), device="meta") for k, v in state_dict.items()}
        return split(sized, **kwargs)

    replacements: dict[str, Any] = {"safe_save_file": writer.save_file}
    # reverting fused weights needs their data: keep transformers' own loading for those models
    if not rewrites_weights(type(model).__name__, getattr(model.config, "model_type", "")):
        replacements["load_offloaded_parameter"] = placeholder
    if convert:
        replacements["split_torch_state_dict_into_shards"] = split_in_out_dtype
    with patched_modeling_utils(**replacements), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
        yield


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


def _remember(folder: Path, files: tuple[SavedFile, ...]) -> None:
    """The files just hashed, remembered by identity (``integrity``), so loading or pushing this folder reads
    none of them again to check it against its manifest."""
    from ..integrity import default_memo

    memo = default_memo()
    for f in files:
        path = folder / f.name
        try:
            st = path.stat()
        except OSError:
            continue
        memo.add(Path(os.path.realpath(path)), [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, f.sha256])


def _write_manifest(folder: Path, files: tuple[SavedFile, ...], source: str, out_dtype: str, model: Any) -> str:
    import safetensors
    import torch
    import transformers

    from hf_notebook._version import __version__

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


def _swap_in(tmp: Path, target: Path, overwrite: bool) -> bool:
    """Rename the finished folder into place; an existing target goes only after the new one is there. The
    target is judged again here, as it is now: another kernel or process may have made or filled it while this
    save ran, and what it put there must not be lost (the save is refused instead)."""
    appeared = "(it changed while this save ran)"
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise SaveError(f"{target} is no longer a folder this save can write {appeared}.",
                        hint="Pick a new folder; the one there was left as it is.")
    if not target.is_dir() or not any(target.iterdir()):
        try:
            os.rename(tmp, target)  # onto nothing, or onto an empty folder; a folder filled meanwhile refuses
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise SaveError(f"{target} was made and filled by someone else {appeared}.",
                            hint="Pick a new folder; theirs was left as it is.") from None
        return False
    try:
        _check_replaceable(target, overwrite)
    except SaveError as exc:
        raise SaveError(f"{exc.message.rstrip('.')} {appeared}.", hint=exc.hint) from None
    old = target.parent / f".{target.name}.hf_notebook-old-{os.getpid()}"
    os.rename(target, old)
    foreign = _not_model_files(old)  # written into it between the check and the rename: it goes back
    if foreign:
        os.rename(old, target)
        raise SaveError(f"{target} got files that are not a saved model ({', '.join(foreign[:5])}) {appeared}.",
                        hint="Pick a new folder; the one there was left as it is.")
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
