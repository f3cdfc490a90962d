"""The commit a launch is pinned to: its lock entry, and (for a run here) its files on this machine.

A launch reads the same files as a load of the pinned sha: ``config.json``, the safetensors shards and their
index, ``generation_config.json``. They go through the load's own fetch path (``hub.fetch.source_files``: the
Hub cache, verified), and their lock entry is the one ``%load_model`` records (``hub.lock.entry_for``), so the
launch folder's ``hf_notebook.lock.json`` is a lock file like any other. Writing a launch for a cluster
downloads no weights: their sizes and sha256 come from the Hub's metadata; only a run here fetches them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import SpecError


@dataclass(frozen=True)
class _Pinned:
    """What ``hub.lock.entry_for`` reads of a finished load, for a launch of the same commit."""

    pin: Any  # events.Resolved
    paths: dict  # file name -> local path
    hashes: dict  # file name -> sha256 from the Hub's metadata
    plan: Any  # .model_class, .quantization
    dtype: str
    code_files: dict = field(default_factory=dict)
    kernel: Any = None


@dataclass(frozen=True)
class _Class:
    model_class: str
    quantization: Any = None


@dataclass(frozen=True)
class Pinned:
    """The pinned commit of a launch: ``lock`` (``{key: entry}``) and, when fetched, the local ``folder``."""

    pin: str  # org/name@sha
    lock: dict
    folder: Optional[Path] = None  # the snapshot holding every file a load reads (fetch=True)


def pinned_files(plan: Any, *, fetch: bool, cache_dir=None, offline: bool = False, token=None,
                 on_event=None) -> Pinned:
    """The lock entry of ``plan``'s pinned source (a :class:`~.ranks.RankPlan` made by ``Session.plan_ranks``);
    ``fetch``: also bring every file into the Hub cache (verified) and return its snapshot folder."""
    from ..hub import lock
    from ..hub.fetch import GENERATION_CONFIG, source_files
    from ..hub.resolve import resolve
    from ..option_table import key_args, recorded_args
    from ..options import LoadOptions
    from ..spec import parse_spec

    spec = parse_spec(plan.source) if plan.source else None
    if spec is None or spec.is_local:
        raise SpecError(f"{plan.source or 'The plan'} is not a Hub model: a launch is pinned to a Hub commit.",
                        hint="Plan a Hub model: %plan_model org/name@REV --target ... --as NAME.")
    opts = plan.options or LoadOptions()
    resolution = resolve(spec, offline=offline, cache_dir=cache_dir, token=token)
    files = source_files(resolution, cache_dir=cache_dir, offline=offline, token=token, on_event=on_event,
                         variant=opts.variant, subfolder=opts.subfolder)
    files.config()
    shards = files.shard_names()
    generation = files.prefix + GENERATION_CONFIG
    small = [generation] if generation in resolution.file_sizes or not resolution.file_sizes else []
    remote = {}
    if fetch:
        folder = files.checkpoint().folder
    else:
        folder = None
        remote = {n: {"size": resolution.file_sizes[n], "sha256": resolution.file_hashes[n]} for n in shards
                  if resolution.file_sizes.get(n) is not None and resolution.file_hashes.get(n)}
        small += [n for n in shards if n not in remote]  # offline, or no Hub hash: read from the cache
    files.get_many(small)
    pinned = _Pinned(resolution.pin, dict(files._paths), dict(resolution.file_hashes),
                     _Class(plan.model_class or ""), plan.dtype)
    entry = lock.entry_for(pinned, options=recorded_args(opts))
    entry["files"] = dict(sorted({**entry["files"], **remote}.items()))
    key = lock.key_of(resolution.repo_id, resolution.sha, tuple(key_args(opts)))
    return Pinned(resolution.pin.pinned_spec, {key: entry}, folder)
