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
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import HfNotebookError, LoadError, OfflineError, hub_failure
from ..events import FetchPlanned, FileProgress, OnEvent, emit
from ..integrity import default_memo, digest_of, problem_with
from ..quiet import small_download_chunks
from .headers import HeaderInfo
from .resolve import Resolution
from .transfer import Cancelled, Downloads, in_parallel, progress_class, retrying, xet_failure

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
    """One file of the checkpoint: its size, whether it came from the cache, and (when downloaded) how many
    bytes crossed the network: 0 when the cache's shared Xet store already held the content."""

    name: str
    size: int
    cached: bool
    transferred: Optional[int] = None

    @property
    def deduplicated(self) -> bool:
        return not self.cached and self.transferred == 0 and self.size > 0


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
                 variant: Optional[str] = None, subfolder: Optional[str] = None, verify: bool = True) -> "SourceFiles":
    """The files of ``resolution``: a local folder (checked against its manifest unless ``verify`` is
    false), or the pinned repo through the Hub cache; with a ``subfolder``, the model in that folder;
    with a ``variant``, its ``model.<variant>.safetensors``."""
    if resolution.local_path is not None:
        files = LocalFiles(resolution.local_path / subfolder if subfolder else resolution.local_path, verify=verify)
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

    def weights_here(self) -> bool:
        """Whether every shard is on this machine already, so that fetching them costs nothing."""
        return True

    def code_files(self) -> dict[str, str]:
        """The repo's Python files (what --trust-remote-code runs), present locally, with their sha256."""
        raise NotImplementedError

    def tokenizer_folder(self) -> Optional[Path]:
        """The local folder holding the tokenizer's files (fetched if needed), or None when there are none."""
        raise NotImplementedError

    def _list_shards(self) -> list[str]:
        raise NotImplementedError


class LocalFiles(SourceFiles):
    """A local model folder, checked against its manifest first: exactly the files it lists, with their
    sizes and sha256. A folder without one (as ``save_pretrained`` writes it) loads only unverified
    (``verify=False``, ``--no-verify``)."""

    def __init__(self, folder: Path, verify: bool = True):
        super().__init__()
        self.folder = folder
        self.verify = verify
        self.manifest: Optional[dict] = None
        self._checked = False

    def config(self) -> Path:
        if not self._checked:
            from ..manifest import verify_folder

            if self.verify:
                self.manifest = verify_folder(self.folder, required=True)
            self._checked = True
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
        self.downloads = Downloads()
        self.res, self.cache_dir, self.offline = resolution, cache_dir, offline
        self.force, self.token, self.on_event = force_download, token, on_event
        self.missing: list[str] = []
        self.damaged: dict[str, str] = {}  # offline: file -> what is wrong with its cached copy
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
        emit(self.on_event, FetchPlanned(tuple((n, self.res.file_sizes.get(n)) for n in names),
                                         frozenset(n for n in names if self._cached(n))))
        paths = self.get_many(names, max_workers)
        files = tuple(self.facts[n] for n in names if n in self.facts)
        return Checkpoint(self.config(), [paths[n] for n in shards], paths.get(generation), headers, files)

    def get_many(self, names: list[str], max_workers: int = 4) -> dict[str, Optional[Path]]:
        """These files of the pinned sha, cached or downloaded side by side; every missing or damaged one
        named at once (offline)."""
        paths = dict(zip(names, in_parallel(self._get, names, self.downloads, max_workers)))
        self._raise_missing()
        return paths

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

    def weights_here(self) -> bool:
        """Whether the cache holds every shard of the pinned sha: lookups only, nothing is fetched or announced (the
        fetch stage reads and checks the index; a cached index that cannot be read here answers no)."""
        names = self._names
        if names is None:
            index, single = (self.prefix + n for n in weight_names(self.variant)[:2])
            found = self._cached_path(index)
            if found is None:
                if index in self.res.file_sizes:  # an index still to fetch
                    return False
                names = [single]
            else:
                try:
                    names = [self.prefix + n for n in _weight_map_files(found)]
                except (HfNotebookError, OSError):
                    return False
        return all(self._cached(name) for name in names)

    def cached_checkpoint(self, headers: Optional[HeaderInfo] = None) -> Optional[Checkpoint]:
        """The checkpoint if every shard is already cached (offline planning), else None."""
        try:
            return self.checkpoint(headers)
        except OfflineError:
            self.missing.clear()
            return None

    def _cached(self, name: str) -> bool:
        """Whether the cache has ``name`` of the pinned sha (a lookup: it is checked when fetched)."""
        return name in self._paths or self._cached_path(name) is not None

    def _cached_path(self, name: str) -> Optional[Path]:
        """The cache's copy of ``name`` of the pinned sha, unchecked; None if absent or fetched again anyway."""
        from huggingface_hub import try_to_load_from_cache

        found = None if self.force else try_to_load_from_cache(
            self.res.repo_id, name, cache_dir=self.cache_dir, revision=self.res.sha)
        return Path(found) if isinstance(found, str) else None

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
        """A file of the pinned sha from the cache (verified) or downloaded (and verified). A damaged cached copy
        is downloaded again (huggingface_hub replaces the repo's entry; nothing is deleted here: a cached file
        may be a blob that other repos share); offline it is named, with every other damaged file."""
        from huggingface_hub import try_to_load_from_cache

        if name in self._paths:
            return self._paths[name]
        cached = None if self.force else try_to_load_from_cache(
            self.res.repo_id, name, cache_dir=self.cache_dir, revision=self.res.sha)
        force = self.force
        if isinstance(cached, str):
            problem = self._problem(name, Path(cached))
            if problem is None:
                size = Path(cached).stat().st_size
                self.facts[name] = FileFacts(name, size, True)
                emit(self.on_event, FileProgress(name, size, size, cached=True))
                self._paths[name] = Path(cached)
                return self._paths[name]
            if self.offline:
                self.damaged[name] = f"{problem} ({os.path.realpath(cached)})"
                return None
            log.warning("%s in the cache is damaged (%s): downloading it again", name, problem)
            self._drop_pointer(Path(cached))
            force = True
        if self.offline:
            if required and not name.endswith(GENERATION_CONFIG):
                self.missing.append(name)
            return None
        path, transferred = self._download(name, force)
        problem = self._problem(name, path)
        if problem is not None and not force:  # e.g. linked from a damaged blob of the cache's shared store
            log.warning("%s came from the cache's shared store damaged (%s): downloading it again", name, problem)
            path, transferred = self._download(name, True)  # huggingface_hub then replaces the store's copy
            problem = self._problem(name, path)
        if problem is not None and problem.endswith("the lock file records"):
            raise LoadError(f"{name} of {self.res.repo_id}@{self.res.sha[:12]} is not the file the lock file "
                            f"recorded: {problem}.", hint="Nothing was bound. Check the lock file (%lock --check), or "
                            "record what the Hub has now with --update instead of --locked.")
        if problem is not None and problem.endswith("manifest records"):
            raise LoadError(f"{name} of {self.res.repo_id}@{self.res.sha[:12]} is not the file the bundle's manifest "
                            f"lists: {problem}.", hint="Nothing was bound. Copy the bundle again from its source.")
        if problem is not None:
            raise LoadError(f"{name} of {self.res.repo_id}@{self.res.sha[:12]} arrived damaged: {problem}.",
                            hint="Run the cell again; if it keeps happening, the network or a proxy alters downloads.")
        size = path.stat().st_size
        self.facts[name] = FileFacts(name, size, False, transferred)
        emit(self.on_event, FileProgress(name, size, size, transferred=transferred))  # 0: linked from the shared store
        self._paths[name] = path
        return path

    def _problem(self, name: str, path: Path) -> Optional[str]:
        sha256, git_sha1 = self.res.file_hashes.get(name), self.res.blob_ids.get(name)
        if sha256 is None and git_sha1 is None and not path.is_symlink() and self._links_in_cache():
            return "it is a plain file where huggingface_hub keeps a link to its blob, so it was put there by hand"
        problem = problem_with(path, self.memo, self.res.file_sizes.get(name), sha256, git_sha1)
        for source, files in self.res.records:  # the lock file (--locked), a bundle's manifest: theirs too
            if problem is not None:
                break
            facts = files.get(name)  # a file they do not list is one they do not vouch for
            problem = (f"it is not among the files {source} records" if facts is None
                       else problem_with(path, self.memo, facts["size"], facts["sha256"], source=source))
        return problem

    def _drop_pointer(self, path: Path) -> None:
        """Remove the damaged file's entry in this repo's own snapshot folder, before a forced download: a forced
        download writes the right blob but leaves an existing entry as it is (a plain file put there by hand, or a
        link to another blob), which would still be what the load reads. Only the entry goes: what a link points
        to (a blob, maybe shared with other repos) and anything outside the snapshot folder are never touched."""
        from .resolve import repo_cache_folder

        snapshots = Path(os.path.abspath(repo_cache_folder(self.res.repo_id, self.cache_dir) / "snapshots"))
        entry = Path(os.path.abspath(path))
        if entry.is_relative_to(snapshots) and (entry.is_symlink() or entry.is_file()):
            entry.unlink()

    def _links_in_cache(self) -> bool:
        """huggingface_hub lays this cache out with links (it copies files only where links cannot be made)."""
        from huggingface_hub import constants
        from huggingface_hub.file_download import are_symlinks_supported

        try:
            return bool(are_symlinks_supported(self.cache_dir or constants.HF_HUB_CACHE))
        except OSError:  # a read-only cache cannot be probed: trust its layout
            return False

    def _download(self, name: str, force: bool) -> tuple[Path, int]:
        """huggingface_hub's download (HTTP or Xet), retried after a 5xx/429 answer, failures made ours; with the
        bytes that crossed the network."""
        from huggingface_hub import constants, hf_hub_download

        progress = progress_class(name, self.res.file_sizes.get(name), self.on_event)

        def download() -> str:
            return hf_hub_download(self.res.repo_id, name, revision=self.res.sha, cache_dir=self.cache_dir,
                                   force_download=force, token=self.token, tqdm_class=progress)

        what = f"{name} of {self.res.repo_id}@{self.res.sha[:12]}"
        try:
            with small_download_chunks():
                path = Path(retrying(download, self.downloads))
        except Cancelled:
            raise
        except Exception as exc:
            if self.downloads.cancelled.is_set():
                raise Cancelled() from exc
            ours = hub_failure(exc, what, constants.ENDPOINT) or xet_failure(exc, what, constants.ENDPOINT)
            if ours is None:
                raise
            raise ours from None
        transferred = sum(p.transferred for p in progress.bars) if progress.bars else 0
        return path, transferred

    def _raise_missing(self) -> None:
        if self.damaged:
            spec = f"{self.res.repo_id}@{self.res.sha}"
            lines = "; ".join(f"{n}: {why}" for n, why in sorted(self.damaged.items()))
            hint = (f"On a machine with network run `%load_model {spec} --force-download` and copy its cache here "
                    "(every file named above).")
            if "the bundle's manifest records" in lines:
                hint = "The cache is a bundle that changed after its export: copy it again from its source."
            elif "the lock file records" in lines:
                hint = ("These are not the files the lock file records: check it (%lock --check), or on a machine "
                        "with network load with --update to record what the Hub has.")
            raise LoadError(f"Offline, and {len(self.damaged)} file(s) of {spec} in the cache are damaged: {lines}.",
                            hint=hint)
        if self.missing:
            spec = f"{self.res.repo_id}@{self.res.sha}"
            missing = sorted(self.missing)  # the fetch threads found them in any order: name them in a stable one
            raise OfflineError(
                f"Offline, and {len(missing)} file(s) of {spec} are not in the cache: {', '.join(missing)}.",
                hint=f"On a machine with network run `%load_model {spec}` (or `hf download {self.res.repo_id} "
                f"--revision {self.res.sha}`), then copy its HF_HOME cache folder here.",
                missing=missing)


def _weight_map_files(index_file: Path) -> list[str]:
    """The shard files an index names, in order."""
    try:
        weight_map = json.loads(index_file.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError):
        raise LoadError(f"{index_file.name} in {index_file.parent} has no readable weight_map.",
                        hint="The checkpoint's index is damaged: save the model again, or re-download it.") from None
    return sorted(set(weight_map.values()))
