"""Bring exactly the files a load needs onto local disk, with byte progress.

One :class:`SourceFiles` per call (a pinned Hub repo through huggingface_hub's cache, or a
local folder) answers every question about the checkpoint's files once: the config, the
shard names (from the index, read once), and the weights. What it fetched is recorded in
:attr:`SourceFiles.facts` for the static record.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import LoadError, OfflineError, hub_failure
from ..events import FileProgress, OnEvent, emit
from ..integrity import default_memo, digest_of, problem_with
from ..quiet import small_download_chunks
from .headers import HeaderInfo
from .resolve import Resolution

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
PICKLE_SINGLE, PICKLE_INDEX = PICKLE_WEIGHTS
TOKENIZER_FILES = ("special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
                   "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json")


def is_tokenizer_file(name: str) -> bool:
    """Files a tokenizer is read from (top level of the repo)."""
    return "/" not in name and (name.startswith("tokenizer") or name in TOKENIZER_FILES or name.endswith(".tiktoken"))


def pickle_refused(where: str) -> LoadError:
    return LoadError(f"{where} has no safetensors weights, only pickle files (pytorch_model.bin).",
                     hint="Unpickling can run code hidden in the file, so hf_notebook refuses it by default. "
                     "--allow-pickle loads it with torch.load(weights_only=True), which rebuilds tensors only; "
                     "use it for repos you trust, or ask the author for a safetensors conversion.")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileFacts:
    """One file of the checkpoint: its size and whether it came from the cache."""

    name: str
    size: int
    cached: bool


@dataclass(frozen=True)
class Checkpoint:
    """A model's files on local disk, ready to load; ``headers`` once they were read."""

    config_file: Path
    shards: list[Path]  # safetensors files, in index order
    generation_config_file: Optional[Path] = None
    headers: Optional[HeaderInfo] = None
    files: tuple[FileFacts, ...] = ()

    @property
    def folder(self) -> Path:
        return self.config_file.parent


def source_files(resolution: Resolution, *, cache_dir=None, offline: bool = False, force_download: bool = False,
                 token=None, on_event: OnEvent | None = None, allow_pickle: bool = False,
                 variant: Optional[str] = None, subfolder: Optional[str] = None) -> "SourceFiles":
    """The files of ``resolution``: a local folder, or the pinned repo through the Hub cache; with a
    ``subfolder``, the model in that folder; with a ``variant``, its ``model.<variant>.safetensors``."""
    if resolution.local_path is not None:
        files = LocalFiles(resolution.local_path / subfolder if subfolder else resolution.local_path)
        files.where = str(resolution.local_path)
    else:
        files = HubFiles(resolution, cache_dir=cache_dir, offline=offline, force_download=force_download, token=token,
                         on_event=on_event)
        files.prefix = f"{subfolder}/" if subfolder else ""
        files.where = f"{resolution.repo_id}@{resolution.sha[:12]}"
    files.allow_pickle, files.variant, files.subfolder = allow_pickle, variant, subfolder
    return files


def weight_names(variant: Optional[str]) -> tuple[str, str, str, str]:
    """(safetensors index, single safetensors, pickle index, single pickle) file names, as transformers names
    a variant's files (``model.fp16.safetensors``, ``model.safetensors.index.fp16.json``)."""
    if not variant:
        return INDEX, SINGLE, PICKLE_INDEX, PICKLE_SINGLE
    return (f"model.safetensors.index.{variant}.json", f"model.{variant}.safetensors",
            f"pytorch_model.bin.index.{variant}.json", f"pytorch_model.{variant}.bin")


def _variants(names: list[str]) -> list[str]:
    found = set()
    for name in names:
        m = re.fullmatch(r"(?:.*/)?model\.([\w-]+?)(?:-\d{5}-of-\d{5})?\.safetensors", name)
        if m:
            found.add(m.group(1))
        m = re.fullmatch(r"(?:.*/)?model\.safetensors\.index\.([\w-]+)\.json", name)
        if m:
            found.add(m.group(1))
    return sorted(found)


def _missing_weights(where: str, names: list[str], variant: Optional[str], subfolder: Optional[str]) -> LoadError:
    """No weights where they were looked for: say which variants and folders do have some."""
    prefix = f"{subfolder}/" if subfolder else ""
    here = [n[len(prefix):] for n in names if n.startswith(prefix)]
    if subfolder and not here:
        folders = sorted({n.rsplit("/", 1)[0] for n in names if n.endswith("/config.json")})
        return LoadError(f"{where} has no folder {subfolder!r}.",
                         hint=f"Folders with a config.json: {', '.join(folders) or 'none'}.")
    if variant:
        variants = _variants(here)
        return LoadError(f"{where} has no weights for --variant {variant!r}" + (f" in {subfolder}" if subfolder else "")
                         + ".", hint=f"Variants there: {', '.join(variants) or 'none (drop --variant)'}.")
    return LoadError(f"{where} has no safetensors weights" + (f" in {subfolder}" if subfolder else "") + ".",
                     hint=f"Files there: {', '.join(sorted(here)[:12])}")


class SourceFiles:
    """What both sources answer; each answer is computed once."""

    allow_pickle = False
    variant: Optional[str] = None
    subfolder: Optional[str] = None
    prefix = ""  # the subfolder as a path prefix of repo file names
    where = ""

    def __init__(self):
        self.facts: dict[str, FileFacts] = {}
        self._names: Optional[list[str]] = None

    @property
    def pickled(self) -> bool:
        """The weights are pickle files (loaded only with --allow-pickle)."""
        return any(n.endswith(".bin") for n in self.shard_names())

    def config(self) -> Path:
        raise NotImplementedError

    def shard_names(self) -> list[str]:
        if self._names is None:
            self._names = self._list_shards()
        return self._names

    def checkpoint(self, headers: Optional[HeaderInfo] = None) -> Checkpoint:
        raise NotImplementedError

    def code_files(self) -> dict[str, str]:
        """The repo's Python files (what --trust-remote-code runs), present locally, with their sha256."""
        raise NotImplementedError

    def tokenizer_folder(self) -> Optional[Path]:
        """The local folder holding the tokenizer's files (fetched if needed), or None when there are none."""
        raise NotImplementedError

    def _list_shards(self) -> list[str]:
        raise NotImplementedError


class LocalFiles(SourceFiles):
    """A folder written by ``save_pretrained``; one with a manifest (a bundle, a ``%save_model`` folder)
    is checked against it first."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder
        self.manifest: Optional[dict] = None
        self._verified = False

    def config(self) -> Path:
        if not self._verified:
            from .bundle import verify_folder

            self.manifest = verify_folder(self.folder)
            self._verified = True
        config = self.folder / CONFIG
        if not config.is_file():
            raise LoadError(f"{self.folder} has no {CONFIG}.", hint="Point at a folder written by save_pretrained.")
        return config

    def code_files(self) -> dict[str, str]:
        return {p.name: digest_of(p, "sha256") for p in sorted(self.folder.glob("*.py"))}

    def tokenizer_folder(self) -> Optional[Path]:
        return self.folder if any(is_tokenizer_file(p.name) for p in self.folder.iterdir()) else None

    def _list_shards(self) -> list[str]:
        index, single, pickle_index, pickle_single = weight_names(self.variant)
        if (self.folder / index).is_file():
            return _weight_map_files(self.folder / index)
        if (self.folder / single).is_file():
            return [single]
        if (self.folder / pickle_index).is_file() or (self.folder / pickle_single).is_file():
            if not self.allow_pickle:
                raise pickle_refused(str(self.folder))
            if (self.folder / pickle_index).is_file():
                return _weight_map_files(self.folder / pickle_index)
            return [pickle_single]
        root = Path(self.where) if self.where else self.folder
        names = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()] if root.is_dir() else []
        raise _missing_weights(str(root), names, self.variant, self.subfolder)

    def checkpoint(self, headers: Optional[HeaderInfo] = None) -> Checkpoint:
        shards = [self.folder / n for n in self.shard_names()]
        missing = [p.name for p in shards if not p.is_file()]
        if missing:
            raise LoadError(f"{self.folder} lacks shard(s) named in its index: {', '.join(missing)}.",
                            hint="The checkpoint is incomplete: copy the missing files or save it again.")
        generation = self.folder / GENERATION_CONFIG
        files = tuple(FileFacts(p.name, p.stat().st_size, True) for p in shards)
        return Checkpoint(self.config(), shards, generation if generation.is_file() else None, headers, files)


class HubFiles(SourceFiles):
    """One pinned repo's files: from the cache, or downloaded with progress events."""

    def __init__(self, resolution: Resolution, *, cache_dir, offline, force_download, token, on_event):
        super().__init__()
        self.memo = default_memo()
        self.cancel = threading.Event()
        self.res, self.cache_dir, self.offline = resolution, cache_dir, offline
        self.force, self.token, self.on_event = force_download, token, on_event
        self.missing: list[str] = []
        self._paths: dict[str, Path] = {}

    def config(self) -> Path:
        if self.prefix and self.res.file_sizes and self.prefix + CONFIG not in self.res.file_sizes:
            raise _missing_weights(self.where, list(self.res.file_sizes), None, self.subfolder)
        config = self._get(self.prefix + CONFIG)
        self._raise_missing()
        if config is None:
            raise LoadError(f"{self.res.repo_id}@{self.res.sha[:12]} has no {CONFIG}.",
                            hint="hf_notebook loads transformers models: the repo needs a config.json.")
        return config

    def checkpoint(self, headers: Optional[HeaderInfo] = None, max_workers: int = 4) -> Checkpoint:
        """Bring every shard and the generation config into the cache, in parallel."""
        shards = self.shard_names()
        generation = self.prefix + GENERATION_CONFIG
        names = shards + ([generation] if self._may_exist(generation) else [])
        paths = dict(zip(names, _in_parallel(self._get, names, max_workers, self.cancel)))
        self._raise_missing()
        files = tuple(self.facts[n] for n in names if n in self.facts)
        return Checkpoint(self.config(), [paths[n] for n in shards], paths.get(generation), headers, files)

    def code_files(self) -> dict[str, str]:
        names = [n for n in self.res.file_sizes if n.endswith(".py") and "/" not in n]
        if not names and self.offline:
            from .resolve import repo_cache_folder

            snapshot = repo_cache_folder(self.res.repo_id, self.cache_dir) / "snapshots" / self.res.sha
            names = sorted(p.name for p in snapshot.glob("*.py")) if snapshot.is_dir() else []
        paths = {n: self._get(n) for n in sorted(names)}
        self._raise_missing()
        return {n: self.res.file_hashes.get(n) or digest_of(p, "sha256") for n, p in paths.items() if p is not None}

    def tokenizer_folder(self) -> Optional[Path]:
        """Bring the tokenizer's files of the pinned sha into the snapshot; its folder, or None if it has none."""
        names = [n for n in self.res.file_sizes if is_tokenizer_file(n)]
        if not names and self.offline:
            from .resolve import repo_cache_folder

            snapshot = repo_cache_folder(self.res.repo_id, self.cache_dir) / "snapshots" / self.res.sha
            names = sorted(p.name for p in snapshot.iterdir() if is_tokenizer_file(p.name)) if snapshot.is_dir() else []
        paths = [self._get(n) for n in sorted(names)]
        self._raise_missing()
        return paths[0].parent if paths else None

    def cached_checkpoint(self, headers: Optional[HeaderInfo] = None) -> Optional[Checkpoint]:
        """The checkpoint if every shard is already cached (offline planning), else None."""
        try:
            return self.checkpoint(headers)
        except OfflineError:
            self.missing.clear()
            return None

    def _may_exist(self, name: str) -> bool:
        """Online we know the file list; offline we try and accept absence."""
        return name in self.res.file_sizes if self.res.file_sizes else True

    def _list_shards(self) -> list[str]:
        index, single, pickle_index, pickle_single = (self.prefix + n for n in weight_names(self.variant))
        if self._may_exist(index):
            index_file = self._get(index, required=not self.offline)
            if index_file is not None:
                return [self.prefix + n for n in _weight_map_files(index_file)]
        if self._may_exist(single) or self.offline:
            return [single]
        if pickle_index in self.res.file_sizes or pickle_single in self.res.file_sizes:
            if not self.allow_pickle:
                raise pickle_refused(self.where)
            if pickle_index in self.res.file_sizes:
                return [self.prefix + n for n in _weight_map_files(self._get(pickle_index))]
            return [pickle_single]
        raise _missing_weights(self.where, list(self.res.file_sizes), self.variant, self.subfolder)

    def _get(self, name: str, required: bool = True) -> Optional[Path]:
        """A file of the pinned sha from the cache (verified) or downloaded (and verified)."""
        from huggingface_hub import try_to_load_from_cache

        if name in self._paths:
            return self._paths[name]
        cached = None if self.force else try_to_load_from_cache(
            self.res.repo_id, name, cache_dir=self.cache_dir, revision=self.res.sha)
        force = self.force
        if isinstance(cached, str):
            problem = problem_with(Path(cached), self.memo, self.res.file_sizes.get(name))
            if problem is None:
                size = Path(cached).stat().st_size
                self.facts[name] = FileFacts(name, size, True)
                emit(self.on_event, FileProgress(name, size, size, cached=True))
                self._paths[name] = Path(cached)
                return self._paths[name]
            if self.offline:
                raise self._damaged(name, Path(cached), problem)
            log.warning("%s in the cache is damaged (%s): downloading it again", name, problem)
            _discard(Path(cached))
            force = True
        if self.offline:
            if required and not name.endswith(GENERATION_CONFIG):
                self.missing.append(name)
            return None
        path = self._download(name, force)
        problem = problem_with(path, self.memo, self.res.file_sizes.get(name))
        if problem is not None:
            _discard(path)
            raise LoadError(f"{name} of {self.res.repo_id}@{self.res.sha[:12]} arrived damaged: {problem}.",
                            hint="Run the cell again; if it keeps happening, the network or a proxy alters downloads.")
        self.facts[name] = FileFacts(name, path.stat().st_size, False)
        self._paths[name] = path
        return path

    def _download(self, name: str, force: bool) -> Path:
        """huggingface_hub's download (its own bounded retries, Retry-After honoured), failures made ours."""
        from huggingface_hub import constants, hf_hub_download

        progress = _progress_class(name, self.res.file_sizes.get(name), self.on_event, self.cancel)
        try:
            with small_download_chunks():
                return Path(hf_hub_download(self.res.repo_id, name, revision=self.res.sha, cache_dir=self.cache_dir,
                                            force_download=force, token=self.token, tqdm_class=progress))
        except Exception as exc:
            ours = hub_failure(exc, f"{name} of {self.res.repo_id}@{self.res.sha[:12]}", constants.ENDPOINT)
            if ours is None:
                raise
            raise ours from None

    def _damaged(self, name: str, path: Path, problem: str) -> LoadError:
        spec = f"{self.res.repo_id}@{self.res.sha}"
        return LoadError(f"{name} of {spec} in the cache is damaged: {problem}.",
                         hint=f"On a machine with network run `%load_model {spec} --force-download` and copy its "
                         f"cache here, or delete {os.path.realpath(path)} and load once online.")

    def _raise_missing(self) -> None:
        if self.missing:
            spec = f"{self.res.repo_id}@{self.res.sha}"
            missing = sorted(self.missing)  # the fetch threads found them in any order: name them in a stable one
            raise OfflineError(
                f"Offline, and {len(missing)} file(s) of {spec} are not in the cache: {', '.join(missing)}.",
                hint=f"On a machine with network run `%load_model {spec}` (or `hf download {self.res.repo_id} "
                f"--revision {self.res.sha}`), then copy its HF_HOME cache folder here.",
                missing=missing)


class Cancelled(BaseException):
    """Raised inside a download thread once the user pressed Ctrl-C (a BaseException: nothing may swallow it)."""


def _in_parallel(get, names: list[str], max_workers: int, cancel: threading.Event) -> list:
    """``get(name)`` for every name in worker threads; Ctrl-C (or any error) stops them all at once.

    A plain ``with ThreadPoolExecutor`` waits for every running download to finish before the
    interrupt reaches the user (seconds to minutes). Here the waiting ones are cancelled and the
    running ones stop at their next chunk (``cancel`` is checked by the progress callback); what
    they wrote stays as ``.incomplete`` files, which the next download resumes.
    """
    pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(names))), thread_name_prefix="hf_notebook-fetch")
    futures = [pool.submit(get, name) for name in names]
    try:
        results = [future.result() for future in futures]
    except BaseException:
        cancel.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def _discard(path: Path) -> None:
    """Remove a cached file: its blob and the snapshot link to it."""
    blob = Path(os.path.realpath(path))
    for victim in (blob, path):
        try:
            victim.unlink()
        except OSError:
            pass


def _weight_map_files(index_file: Path) -> list[str]:
    """The shard files an index names, in order."""
    try:
        weight_map = json.loads(index_file.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError):
        raise LoadError(f"{index_file.name} in {index_file.parent} has no readable weight_map.",
                        hint="The checkpoint's index is damaged: save the model again, or re-download it.") from None
    return sorted(set(weight_map.values()))


def _progress_class(name: str, size: Optional[int], on_event: OnEvent | None, cancel: threading.Event):
    """A stand-in for tqdm that huggingface_hub drives; it turns updates into FileProgress events,
    and stops the download (raising :class:`Cancelled`) once ``cancel`` is set."""

    class _Progress:
        def __init__(self, *, total=None, initial=0, **_):
            self.total = total or size
            self.done = initial or 0
            emit(on_event, FileProgress(name, self.done, self.total))

        def update(self, n: int = 1) -> None:
            if cancel.is_set():
                raise Cancelled(name)
            self.done += n
            emit(on_event, FileProgress(name, self.done, self.total))

        def close(self) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

    return _Progress
