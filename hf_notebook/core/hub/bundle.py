"""Bundles for air-gapped hosts: a pinned model's files in a folder that proves what it holds.

``export_bundle`` writes the files a load needs (config, safetensors shards and index,
generation config, tokenizer files, chat template, the repo's code files, the card) of one
pinned sha, copied from the Hub cache (each checked against the Hub's sha256; only missing or damaged
files are downloaded), with a manifest
(every file's size and sha256, the source ``repo@sha``) and ``BUNDLE.md`` saying how to load
it. ``layout="hf-cache"`` writes a Hub cache tree instead (``models--org--name/blobs``,
``snapshots/<sha>``, ``refs``), which plain transformers loads with ``HF_HUB_CACHE=DIR
HF_HUB_OFFLINE=1``. A load checks the folder against its manifest (``..manifest.verify_folder``); a load
whose Hub cache is an hf-cache bundle checks every file it reads against the bundle's manifest
(:func:`bundle_records`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BundleError, LoadError, OptionError
from ..events import OnEvent
from ..folders import temp_sibling
from ..integrity import MANIFEST, expected_digest, recorded_sha256, repo_entry

OTHER_WEIGHTS = (".bin", ".pt", ".pth", ".h5", ".msgpack", ".gguf", ".onnx", ".ckpt", ".ot", ".tflite")
LAYOUTS = ("folder", "hf-cache")


@dataclass(frozen=True)
class ExportResult:
    folder: str
    layout: str
    repo_id: str
    sha: str
    files: dict  # name -> {"size", "sha256"}
    downloaded: tuple[str, ...]  # files that were not in the cache
    seconds: float

    @property
    def nbytes(self) -> int:
        return sum(f["size"] for f in self.files.values())


def export_bundle(spec: str, folder: str | os.PathLike, *, layout: str = "folder", cache_dir=None,
                  offline: bool = False, token=None, on_event: OnEvent | None = None) -> ExportResult:
    """Write the bundle of ``spec`` (``org/name[@rev]``, pinned to its sha first) into ``folder``."""
    from .fetch import HubFiles
    from .resolve import resolve
    from ..spec import parse_spec

    t0 = time.perf_counter()
    if layout not in LAYOUTS:
        raise OptionError(f"Unknown --layout {layout!r}.", hint=f"Use one of: {', '.join(LAYOUTS)}.")
    parsed = parse_spec(spec)
    if parsed.is_local:
        raise OptionError(f"{spec} is a local folder: export a Hub model (org/name@rev).",
                          hint="A local folder can be copied as it is; %save_model writes one with a manifest.")
    target = _export_target(folder)
    resolution = resolve(parsed, offline=offline, cache_dir=cache_dir, token=token)
    names = _bundle_files(resolution, cache_dir)
    source = HubFiles(resolution, cache_dir=cache_dir, offline=offline, force_download=False, token=token,
                      on_event=on_event)
    paths = source.get_many(names)  # each file checked against the Hub's hash; every missing one named at once
    downloaded = [n for n in names if not source.facts[n].cached]
    files = {n: {"size": os.path.getsize(p), "sha256": recorded_sha256(p, resolution.file_hashes.get(n))}
             for n, p in sorted(paths.items())}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(target)
    except OSError as exc:
        raise OptionError(f"Cannot write into {target.parent}: {exc.strerror}.",
                          hint="Export into a folder you can write to; nothing was written.") from None
    try:
        if layout == "folder":
            for name, path in paths.items():
                dest = tmp / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
        else:
            _write_cache_tree(tmp, resolution, paths, files)
        _write_manifest(tmp, resolution, files, layout)
        (tmp / "BUNDLE.md").write_text(_how_to_load(resolution, layout, target))
        if target.exists():
            target.rmdir()
        os.rename(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise OptionError(f"Writing the bundle into {target} failed: {exc.strerror or exc}.",
                              hint="Free some space or export elsewhere; nothing was left behind.") from None
        raise
    return ExportResult(str(target), layout, resolution.repo_id, resolution.sha, files, tuple(downloaded),
                        time.perf_counter() - t0)


def _export_target(folder: Any) -> Path:
    """``--to``: resolved (``..`` and links), a new or empty folder whose nearest existing parent we may write."""
    from ..folders import parse_folder

    fix = "Export into a new folder you can write to, e.g. --to ./bundle."
    try:
        target = Path(folder).expanduser().resolve()
        taken = target.exists() and (not target.is_dir() or any(target.iterdir()))
    except (OSError, RuntimeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise OptionError(f"--to {str(folder)[:120]!r} cannot be used: {reason}.", hint=fix) from None
    if taken:
        raise OptionError(f"{target} exists and is not an empty folder.", hint="Export into a new folder.")
    parse_folder(str(target), "--to")
    return target


def _bundle_files(resolution: Any, cache_dir) -> list[str]:
    """The repo's files at the sha that a load needs; other weight formats only when there are no safetensors."""
    names = list(resolution.file_sizes) or _cached_names(resolution, cache_dir)
    if not names:
        raise LoadError(f"No file list for {resolution.repo_id}@{resolution.sha} (offline, and nothing cached).",
                        hint="Export on a machine with network.")
    has_safetensors = any(n.endswith(".safetensors") for n in names)
    return sorted(n for n in names if not (has_safetensors and n.endswith(OTHER_WEIGHTS))
                  and not n.startswith(".") and n != ".gitattributes")


def _cached_names(resolution: Any, cache_dir) -> list[str]:
    from .resolve import repo_cache_folder

    snapshot = repo_cache_folder(resolution.repo_id, cache_dir) / "snapshots" / resolution.sha
    if not snapshot.is_dir():
        return []
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def _write_cache_tree(root: Path, resolution: Any, paths: dict, files: dict) -> None:
    """``models--org--name/{blobs,snapshots/<sha>,refs}`` as huggingface_hub lays out its cache: each blob named
    as the source cache names it (sha256 or git sha1), never by a shared store's Xet hash."""
    repo = root / ("models--" + resolution.repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / resolution.sha
    for name, path in paths.items():
        promise = expected_digest(repo_entry(path))
        blob = repo / "blobs" / (promise[1] if promise else files[name]["sha256"])
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(path, blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    revision = resolution.pin.revision
    if revision and resolution.pin.kind in ("branch", "tag", "ref"):
        (repo / "refs" / revision).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / revision).write_text(resolution.sha)
    if not (repo / "refs" / "main").exists():
        (repo / "refs" / "main").write_text(resolution.sha)


def _write_manifest(root: Path, resolution: Any, files: dict, layout: str) -> None:
    from hf_notebook._version import __version__

    manifest = {"format": "hf_notebook.manifest/1", "kind": "bundle", "layout": layout,
                "source": f"{resolution.repo_id}@{resolution.sha}", "files": files,
                "versions": {"hf_notebook": __version__}}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _how_to_load(resolution: Any, layout: str, target: Path) -> str:
    spec = f"{resolution.repo_id}@{resolution.sha}"
    if layout == "folder":
        how = (f"```python\n%load_ext hf_notebook\n%load_model {target} --as model\n```\n\n"
               "hf_notebook checks every file against `hf_notebook.manifest.json` first (sizes always, sha256 once)\n"
               "and refuses a changed or truncated file, naming it. Without hf_notebook:\n"
               f"`AutoModelForCausalLM.from_pretrained(\"{target}\")` (or the model's own class).\n")
    else:
        how = (f"Point the Hub cache at this folder, offline, and load by repo and sha:\n\n```sh\n"
               f"HF_HUB_CACHE={target} HF_HUB_OFFLINE=1 python -c 'from transformers import AutoModel; "
               f"AutoModel.from_pretrained(\"{resolution.repo_id}\", revision=\"{resolution.sha}\")'\n```\n\n"
               f"With hf_notebook: `HF_HUB_CACHE={target}` then `%load_model {spec} --offline`.\n")
    return (f"# {resolution.repo_id} at {resolution.sha}\n\nExported by hf_notebook's `%export_model` for a host "
            f"without network.\nEvery file with its size and sha256: `{MANIFEST}`.\n\n{how}")


def bundle_records(resolution: Any, cache_dir: Any = None) -> list:
    """``[("the bundle's manifest", files)]`` when the Hub cache a load reads is an hf-cache bundle of this repo
    and sha (its manifest at the cache's root), else ``[]``: every file the load reads is checked against it, so a
    bundle changed after its export (a blob swapped for another, renamed to match) is refused."""
    from huggingface_hub import constants

    if resolution.local_path is not None:
        return []
    path = Path(cache_dir or constants.HF_HUB_CACHE) / MANIFEST
    if not path.is_file():
        return []
    again = "Copy the bundle again from its source; nothing was loaded."
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        raise BundleError(f"{path} cannot be read.", hint=again) from None
    if not isinstance(manifest, dict) or manifest.get("layout") != "hf-cache" \
            or manifest.get("source") != f"{resolution.repo_id}@{resolution.sha}":
        return []  # another repo's or sha's bundle: it says nothing of these files
    files = manifest.get("files")
    if not (isinstance(files, dict) and all(isinstance(f, dict) and isinstance(f.get("size"), int)
                                            and isinstance(f.get("sha256"), str) for f in files.values())):
        raise BundleError(f"{path} has no valid size and sha256 for its files.", hint=again)
    return [("the bundle's manifest", files)]
