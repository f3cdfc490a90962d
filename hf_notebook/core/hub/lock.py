"""The lock file: what each Hub model a notebook loaded really was, so it loads the same again.

One entry per ``repo@revision as written``: the resolved sha, every file read (size and
sha256: from the Hub's LFS metadata for weights, never by re-reading them), class, dtype, the
options that change what is read or run (``options``: the option table's flags) and the library versions. JSON with sorted keys and one entry per line group, so it diffs well next to
the notebook. ``check`` compares entries with the Hub (has the revision moved?) and with the
local cache (files present, sizes, hashes).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import HfNotebookError, OptionError
from ..folders import writable_folder
from ..integrity import recorded_sha256
from ..spec import is_commit_sha

FORMAT = "hf_notebook.lock/1"
_SHA256 = 64


def key_of(repo_id: str, revision: Optional[str], loaded: tuple = ()) -> str:
    """``org/name@main``: the repo and the revision as written (the default branch when none), then the flags
    that choose what is loaded of it (``option_table.key_args``: ``org/name@main --quantize 4bit``), so a full,
    a 4-bit and a bfloat16 load of one revision are three entries, not one rewritten each time."""
    return " ".join([f"{repo_id}@{revision or 'main'}", *loaded])


def check_lock_path(path: str | os.PathLike) -> None:
    """A path a lock file can be kept at: a file, or a name in an existing writable folder."""
    path = Path(path).expanduser()
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OptionError(f"The lock file {str(path)!r} is a folder.",
                          hint="Give a file path, e.g. %config HFNotebook.lock_file = 'hf_notebook.lock.json'.")
    if not writable_folder(folder):
        raise OptionError(f"The lock file {str(path)!r} cannot be written: {str(folder)!r} is not a writable folder.",
                          hint="Give a path in a folder that exists and you can write to ('' turns the lock file off).")


def read(path: str | os.PathLike) -> dict[str, dict]:
    """The entries of the lock file at ``path`` (none if it does not exist), each checked for the fields a
    locked load relies on: a damaged or hand-edited file is refused here, before anything is loaded."""
    path = Path(path)
    if not path.exists():
        return {}
    fix = f"Fix or remove {path}, or point %config HFNotebook.lock_file elsewhere."
    if not path.is_file():
        raise OptionError(f"The lock file {path} is not a file.", hint=fix)
    try:
        data = json.loads(path.read_text())
        entries = dict(data["models"])
    except OSError as exc:
        raise OptionError(f"The lock file {path} cannot be read: {exc.strerror}.", hint=fix) from None
    except (ValueError, KeyError, TypeError):
        raise OptionError(f"{path} is not a hf_notebook lock file.", hint=fix) from None
    for key, entry in entries.items():
        problem = _entry_problem(entry)
        if problem:
            raise OptionError(f"The lock file {path} has a damaged entry {key!r}: {problem}.", hint=fix)
    return entries


def _entry_problem(entry: Any) -> Optional[str]:
    if not isinstance(entry, dict):
        return "not an object"
    if not (isinstance(entry.get("sha"), str) and is_commit_sha(entry["sha"]) and len(entry["sha"]) == 40):
        return "no full commit sha"
    if not isinstance(entry.get("repo"), str):
        return "no repo"
    files = entry.get("files", {})
    if not isinstance(files, dict):
        return "its files are not an object"
    for name, facts in files.items():
        if not (isinstance(facts, dict) and isinstance(facts.get("size"), int)
                and isinstance(facts.get("sha256"), str) and len(facts["sha256"]) == _SHA256):
            return f"file {name!r} lacks its size or sha256"
    kernel = entry.get("kernel")
    if kernel is not None and not (isinstance(kernel, dict) and isinstance(kernel.get("repo"), str)
                                   and isinstance(kernel.get("sha"), str) and len(kernel["sha"]) == 40
                                   and isinstance(kernel.get("files"), dict)):
        return "its kernel lacks its repo, full sha or files"
    return None


def kernel_of(entry: dict) -> Optional[str]:
    """The Hub kernel a lock entry loads with, as ``org/repo@sha``, or None."""
    kernel = entry.get("kernel")
    return f"{kernel['repo']}@{kernel['sha']}" if kernel else None


def write(path: str | os.PathLike, entries: dict[str, dict]) -> None:
    """Write ``entries`` atomically (a temporary file of this writer's own, then a rename), sorted."""
    path = Path(path)
    text = json.dumps({"format": FORMAT, "models": entries}, indent=1, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            os.fchmod(handle.fileno(), path.stat().st_mode & 0o777 if path.exists() else 0o644)  # not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def update(path: str | os.PathLike, key: str, make: Callable[[Optional[dict]], Optional[dict]]) -> tuple:
    """Change one entry under an exclusive lock: read the file as it is now, ``make(old)`` the new entry (None:
    leave it), write. Two kernels loading at once both keep their entries. Returns ``(old, new)``. A lock file
    that is a link (a team's shared file) is the file it links to: that file is locked and updated, the link kept."""
    path = Path(os.path.realpath(path))
    with _locked(path):
        entries = read(path)
        old = entries.get(key)
        new = make(old)
        if new is not None and new != old:
            entries[key] = new
            write(path, entries)
    return old, new


@contextlib.contextmanager
def _locked(path: Path):
    """An advisory lock (``fcntl.flock``) on the lock file's folder: no companion file is left beside the
    notebook, and the lock file itself is replaced by rename. Where there is no fcntl, no lock."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def entry_for(result: Any, previous: Optional[dict] = None, options: Optional[list] = None) -> dict:
    """The lock entry of a finished Hub load; ``options``: its flags that change what is read or run
    (``option_table.recorded_args``). Hashes ``previous`` (the entry being replaced) recorded for the same
    sha and size are kept, so loading a locked model again reads no file to hash it."""
    import torch
    import transformers

    from hf_notebook._version import __version__

    known = previous.get("files", {}) if previous and previous.get("sha") == result.pin.sha else {}
    files = {}
    for name, local in sorted(result.paths.items()):
        size = os.path.getsize(local)
        recorded, hub = known.get(name, {}), result.hashes.get(name)  # hub: what the file was checked against
        keep = recorded.get("size") == size and recorded.get("sha256") and hub in (None, recorded["sha256"])
        files[name] = {"size": size, "sha256": recorded["sha256"] if keep else recorded_sha256(Path(local), hub)}
    return {"repo": result.pin.repo_id, "revision": result.pin.revision or "main", "sha": result.pin.sha,
            "class": result.plan.model_class, "dtype": result.dtype, "files": files,
            "versions": {"hf_notebook": __version__, "transformers": transformers.__version__,
                         "torch": torch.__version__.split("+")[0]},
            **({"options": options} if options else {}),
            **({"code": dict(sorted(result.code_files.items()))} if result.code_files else {}),
            **({"kernel": result.kernel.as_lock()} if result.kernel is not None else {}),
            **({"quantization": _quantization(result)} if result.plan.quantization is not None else {})}


def _quantization(result: Any) -> dict:
    from ..quant import as_dict

    return as_dict(result.plan.quantization)


def changes(old: Optional[dict], new: dict) -> list[tuple[str, str]]:
    """What moved between two entries of one key, as ``(what, how)`` rows: the sha, the files (counted), and
    each recorded fact that changed."""
    if old is None:
        return [("entry", f"new at {new['sha'][:12]}")]
    found = [] if old["sha"] == new["sha"] else [("sha", f"{old['sha'][:12]} → {new['sha'][:12]}")]
    a, b = old.get("files", {}), new.get("files", {})
    counts = [(len(set(b) - set(a)), "added"), (len(set(a) - set(b)), "removed"),
              (sum(1 for n in set(a) & set(b) if a[n] != b[n]), "changed")]
    if any(n for n, _ in counts):
        delta = sum(f["size"] for f in b.values()) - sum(f["size"] for f in a.values())
        sign = "+" if delta >= 0 else "-"
        found.append(("files", ", ".join(f"{n} {word}" for n, word in counts if n)
                      + (f" ({sign}{_size(abs(delta))})" if delta else "")))
    for key in ("class", "dtype", "options", "quantization", "code", "kernel", "versions"):
        if old.get(key) != new.get(key):
            found.append((key, f"{_short(old.get(key))} → {_short(new.get(key))}"))
    return found


def _size(nbytes: int) -> str:
    from ..units import format_bytes

    return format_bytes(nbytes)


def _short(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return " ".join(map(str, value)) or "none"
    if isinstance(value, dict) and "quant_method" in value:  # a quantization config: its method and bits
        bits = "4-bit" if value.get("load_in_4bit") or value.get("_load_in_4bit") else \
            "8-bit" if value.get("load_in_8bit") or value.get("_load_in_8bit") else ""
        return " ".join(filter(None, [str(value["quant_method"]), bits]))
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):  # versions, code hashes
        return ", ".join(f"{k} {v[:12]}" for k, v in sorted(value.items()))
    if isinstance(value, dict):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
        return text if len(text) <= 60 else text[:57] + "..."
    return str(value)


@dataclass(frozen=True)
class CheckRow:
    """One entry checked: the Hub's sha for its revision now, and the cache's state."""

    key: str
    locked_sha: str
    hub_sha: Optional[str]  # None: not checked (offline) or unreachable
    hub_note: str  # "same", "moved", "offline", "unreachable: ..."
    cache_note: str  # "complete", "missing: a, b", "size differs: a", "hash differs: a"

    @property
    def ok(self) -> bool:
        return self.hub_note in ("same", "offline") and self.cache_note == "complete"


def check(entries: dict[str, dict], *, offline: bool, cache_dir=None, token=None) -> list[CheckRow]:
    """Each entry against the Hub (drift) and the local cache (present, sizes, hashes)."""
    rows = []
    for key, entry in sorted(entries.items()):
        hub_sha, note = None, "offline"
        if not offline:
            hub_sha, note = _hub_sha(entry, token)
        rows.append(CheckRow(key, entry["sha"], hub_sha, note, _cache_state(entry, cache_dir)))
    return rows


def _hub_sha(entry: dict, token) -> tuple[Optional[str], str]:
    from .resolve import resolve
    from ..spec import parse_spec

    try:
        now = resolve(parse_spec(f"{entry['repo']}@{entry['revision']}"), token=token).pin.sha
    except HfNotebookError as exc:
        return None, f"unreachable: {exc.message}"
    return now, "same" if now == entry["sha"] else "moved"


def _cache_state(entry: dict, cache_dir) -> str:
    """Every locked file in the cache at the locked sha, of its size and with the locked sha256 (each file's
    content hashed once per file identity, ``integrity``; a shared Xet blob is checked like any other)."""
    from huggingface_hub import try_to_load_from_cache

    from ..integrity import default_memo, problem_with

    memo = default_memo()
    missing, resized, changed = [], [], []
    for name, facts in sorted(entry.get("files", {}).items()):
        path = try_to_load_from_cache(entry["repo"], name, cache_dir=cache_dir, revision=entry["sha"])
        if not isinstance(path, str) or not os.path.exists(path):
            missing.append(name)
        elif os.path.getsize(path) != facts["size"]:
            resized.append(name)
        elif problem_with(Path(path), memo, facts["size"], facts.get("sha256")) is not None:
            changed.append(name)
    for label, names in (("missing", missing), ("size differs", resized), ("hash differs", changed)):
        if names:
            return f"{label}: {', '.join(names)}"
    return "complete"
