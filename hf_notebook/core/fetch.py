"""Download exactly the files a load needs, through huggingface_hub's cache, with byte progress."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import LoadError, OfflineError
from .events import FileProgress, OnEvent, emit
from .resolve import Resolution

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Checkpoint:
    """A model's files on local disk, ready to load."""

    config_file: Path
    shards: list[Path]  # safetensors files, in index order
    generation_config_file: Optional[Path] = None

    @property
    def folder(self) -> Path:
        return self.config_file.parent


def fetch_config(resolution: Resolution, *, cache_dir=None, force_download: bool = False, offline: bool = False,
                 token=None, on_event: OnEvent | None = None) -> Path:
    """Bring ``config.json`` of the pinned sha into the cache (or find it in a local folder)."""
    if resolution.local_path is not None:
        return _local_checkpoint(resolution.local_path).config_file
    getter = _CachedFiles(resolution, cache_dir, offline, force_download, token, on_event)
    config = getter.get(CONFIG)
    getter.raise_missing()
    if config is None:
        raise LoadError(f"{resolution.repo_id}@{resolution.sha[:12]} has no {CONFIG}.",
                        hint="hf_notebook loads transformers models: the repo needs a config.json.")
    return config


def shard_names(resolution: Resolution, *, cache_dir=None, force_download: bool = False, offline: bool = False,
                token=None, on_event: OnEvent | None = None) -> list[str]:
    """The safetensors files of the checkpoint (fetches only the small index, if there is one)."""
    getter = _CachedFiles(resolution, cache_dir, offline, force_download, token, on_event)
    names = getter.shard_names()
    getter.raise_missing()
    return names


def fetch_weights(resolution: Resolution, config_file: Path, *, cache_dir=None, force_download: bool = False,
                  offline: bool = False, token=None, on_event: OnEvent | None = None,
                  max_workers: int = 4) -> Checkpoint:
    """Bring the index, every shard and the generation config into the cache, in parallel."""
    if resolution.local_path is not None:
        return _local_checkpoint(resolution.local_path)
    getter = _CachedFiles(resolution, cache_dir, offline, force_download, token, on_event)
    shard_names = getter.shard_names()
    optional = [GENERATION_CONFIG] if getter.may_exist(GENERATION_CONFIG) else []
    names = shard_names + optional
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(names)))) as pool:
        paths = dict(zip(names, pool.map(getter.get, names)))
    getter.raise_missing()
    return Checkpoint(config_file, [paths[n] for n in shard_names], paths.get(GENERATION_CONFIG))


class _CachedFiles:
    """One pinned repo's files: from the cache, or downloaded with progress events."""

    def __init__(self, resolution: Resolution, cache_dir, offline, force_download, token, on_event):
        self.res, self.cache_dir, self.offline = resolution, cache_dir, offline
        self.force, self.token, self.on_event = force_download, token, on_event
        self.missing: list[str] = []

    def may_exist(self, name: str) -> bool:
        """Online we know the file list; offline we try and accept absence."""
        return name in self.res.file_sizes if self.res.file_sizes else True

    def shard_names(self) -> list[str]:
        if self.may_exist(INDEX):
            index_file = self.get(INDEX, required=not self.offline)
            if index_file is not None:
                weight_map = json.loads(index_file.read_text())["weight_map"]
                return sorted(set(weight_map.values()))
        if self.may_exist(SINGLE) or self.offline:
            return [SINGLE]
        if any(name in self.res.file_sizes for name in PICKLE_WEIGHTS):
            raise LoadError(f"{self.res.repo_id} has only pickle weights (pytorch_model.bin), no safetensors.",
                            hint="Pickle files can run code when loaded; hf_notebook loads safetensors only. "
                            "Ask the author for a safetensors conversion, or convert it yourself in a sandbox.")
        raise LoadError(f"{self.res.repo_id}@{self.res.sha[:12]} has no safetensors weights.",
                        hint=f"Files there: {', '.join(sorted(self.res.file_sizes)[:12])}")

    def get(self, name: str, required: bool = True) -> Optional[Path]:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        cached = None if self.force else try_to_load_from_cache(
            self.res.repo_id, name, cache_dir=self.cache_dir, revision=self.res.sha)
        if isinstance(cached, str):
            size = Path(cached).stat().st_size
            emit(self.on_event, FileProgress(name, size, size, cached=True))
            return Path(cached)
        if self.offline:
            if required and name != GENERATION_CONFIG:
                self.missing.append(name)
            return None
        path = hf_hub_download(self.res.repo_id, name, revision=self.res.sha, cache_dir=self.cache_dir,
                               force_download=self.force, token=self.token,
                               tqdm_class=_progress_class(name, self.res.file_sizes.get(name), self.on_event))
        return Path(path)

    def raise_missing(self) -> None:
        if self.missing:
            spec = f"{self.res.repo_id}@{self.res.sha}"
            raise OfflineError(
                f"Offline, and {len(self.missing)} file(s) of {spec} are not in the cache: {', '.join(self.missing)}.",
                hint=f"On a machine with network run `%load_model {spec}` (or `hf download {self.res.repo_id} "
                f"--revision {self.res.sha}`), then copy its HF_HOME cache folder here.",
                missing=list(self.missing))


def _progress_class(name: str, size: Optional[int], on_event: OnEvent | None):
    """A stand-in for tqdm that huggingface_hub drives; it turns updates into FileProgress events."""

    class _Progress:
        def __init__(self, *, total=None, initial=0, **_):
            self.total = total or size
            self.done = initial or 0
            emit(on_event, FileProgress(name, self.done, self.total))

        def update(self, n: int = 1) -> None:
            self.done += n
            emit(on_event, FileProgress(name, self.done, self.total))

        def close(self) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

    return _Progress


def _local_checkpoint(folder: Path) -> Checkpoint:
    config = folder / CONFIG
    if not config.is_file():
        raise LoadError(f"{folder} has no {CONFIG}.", hint="Point at a folder written by save_pretrained.")
    if (folder / INDEX).is_file():
        weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
        shards = [folder / n for n in sorted(set(weight_map.values()))]
    elif (folder / SINGLE).is_file():
        shards = [folder / SINGLE]
    else:
        raise LoadError(f"{folder} has no safetensors weights ({INDEX} or {SINGLE}).",
                        hint="hf_notebook loads safetensors only; save with save_pretrained(safe_serialization=True).")
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise LoadError(f"{folder} lacks shard(s) named in its index: {', '.join(missing)}.",
                        hint="The checkpoint is incomplete: copy the missing files or save it again.")
    generation = folder / GENERATION_CONFIG
    return Checkpoint(config, shards, generation if generation.is_file() else None)
