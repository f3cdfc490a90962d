"""Attention kernels from the Hub (``--attn-implementation org/repo@<sha>``): code downloaded and run.

So, as for a repo's own code: only with ``trust_remote_code``, pinned to a full commit sha, and never
offline (:func:`check`, when the options are read, before any request). :func:`fetch` downloads the
build for this machine through the ``kernels`` library and checks every file of it against the name
its cache entry has from the Hub (a git blob id or a sha256); a file that is no such entry (a
``__pycache__`` too) is refused before anything is imported. :func:`served` then points transformers'
kernel lookup at exactly those files for the load, so nothing more is asked of the Hub. The pin and
the files' sha256 go into the load's record and its lock entry.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import LoadError, OptionError, hub_failure, redact

# transformers' own pattern (``is_kernel``), parts named: org/repo[@revision][:function]
_KERNEL = re.compile(r"(?P<repo>[^/:@|\s]+/[^/:@|\s]+)(?:@(?P<rev>[^/:@|\s]+))?(?::(?P<function>[^/:@|\s]+))?")
_FULL_SHA = re.compile(r"[0-9a-f]{40}")
_SERVING = threading.Lock()  # LOCAL_KERNELS is one environment variable for the whole process


def is_hub_kernel(name: Optional[str]) -> bool:
    """Whether an attention implementation names a kernel repo on the Hub (``org/repo...``)."""
    return bool(name) and ("/" in name or ":" in name or "@" in name)


def check(name: str, *, trust_remote_code: bool, offline: bool) -> None:
    """Refuse a Hub kernel that is not asked for with ``trust_remote_code``, pinned to a full sha, online."""
    match = _KERNEL.fullmatch(name)
    example = "--attn-implementation org/repo@<40-hex commit sha>"
    if match is None:
        raise OptionError(f"Cannot read --attn-implementation {name!r} as a Hub kernel.",
                          hint=f"Give {example} (or one of transformers' own: eager, sdpa, ...).")
    if not trust_remote_code:
        raise OptionError(f"--attn-implementation {name!r} names a kernel on the Hub: its code would be downloaded "
                          "and run.", hint=f"Only with --trust-remote-code, pinned: {example}. "
                                           "transformers' own implementations (eager, sdpa, ...) need neither.")
    if not (match["rev"] and _FULL_SHA.fullmatch(match["rev"])):
        raise OptionError(f"--attn-implementation {name!r} is not pinned: a branch or tag can move, and the code "
                          "that runs with it.", hint=f"Pin it to a full commit sha: {example} "
                                                     "(the kernel repo's page lists its commits).")
    if offline:
        raise OptionError(f"--attn-implementation {name!r} is a Hub kernel, and this load is offline (--offline or "
                          "HF_HUB_OFFLINE): hf_notebook loads Hub kernels only online, checked against the Hub.",
                          hint="Load it once online, or use one of transformers' own implementations (sdpa, eager).")


@dataclass(frozen=True)
class KernelPin:
    """A fetched kernel: repo, commit, build variant, its folder, and its files (relative path -> sha256)."""

    repo_id: str
    sha: str
    variant: str
    folder: str
    files: dict = field(default_factory=dict)

    def as_lock(self) -> dict:
        return {"repo": self.repo_id, "sha": self.sha, "variant": self.variant, "files": dict(sorted(self.files.items()))}


def fetch(name: str) -> KernelPin:
    """Download the pinned kernel's build for this machine (or find it in the cache) and check its files."""
    from huggingface_hub import constants

    from ..integrity import default_memo, digest_of, expected_digest, problem_with, repo_entry

    match = _KERNEL.fullmatch(name)
    repo_id, sha = match["repo"], match["rev"]
    where = f"{repo_id}@{sha[:12]}"
    try:
        import kernels
    except ImportError:  # transformers depends on it; a broken install gets words, not a traceback
        raise LoadError("The kernels library is not installed, and it loads Hub kernels.",
                        hint="pip install kernels (the version transformers asks for).") from None
    try:
        variant_folder = Path(kernels.install_kernel(repo_id, revision=sha, trust_remote_code=[repo_id]))
    except Exception as exc:  # noqa: BLE001 - the library's and the Hub client's, wrapped with what to do
        raise _fetch_failure(exc, repo_id, sha, constants.ENDPOINT) from None
    if ":" in str(variant_folder):  # LOCAL_KERNELS separates its entries with ':'
        raise LoadError(f"The kernel {where} was fetched to {variant_folder}, a path with ':' that the kernels "
                        "library cannot be pointed at.", hint="Set HF_HUB_CACHE to a folder without ':'.")
    memo, files = default_memo(), {}
    for path in sorted(p for p in variant_folder.rglob("*") if not p.is_dir()):
        rel = path.relative_to(variant_folder).as_posix()
        if expected_digest(repo_entry(path)) is None:
            raise LoadError(f"{rel} in the cached kernel {where} is not a file of that commit (no Hub cache entry "
                            f"behind it): it would be imported unchecked.",
                            hint=f"Remove {variant_folder} and load again; it is downloaded afresh.")
        problem = problem_with(path, memo)
        if problem is not None:
            raise LoadError(f"{rel} of the cached kernel {where} was changed: {problem}.",
                            hint=f"Remove {variant_folder} and load again; it is downloaded afresh.")
        files[rel] = digest_of(Path(os.path.realpath(path)), "sha256")
    return KernelPin(repo_id, sha, variant_folder.name, str(variant_folder), files)


def _fetch_failure(exc: Exception, repo_id: str, sha: str, endpoint: str) -> Exception:
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    where = f"{repo_id}@{sha[:12]}"
    if isinstance(exc, RepositoryNotFoundError):
        return LoadError(f"There is no kernel repo {repo_id} on the Hub (or it is private and you are not logged in).",
                         hint="Check the name on the Hub's kernel page; for a private one, `hf auth login`.")
    if isinstance(exc, RevisionNotFoundError):
        return LoadError(f"The kernel repo {repo_id} has no commit {sha}.",
                         hint="Copy the full sha from the repo's commit history.")
    if isinstance(exc, (EntryNotFoundError, FileNotFoundError)):  # no build/ folder, or none for this machine
        return LoadError(f"The kernel {where} has no build for this machine (torch, backend, Python).",
                         hint="Pick a commit that has one, or use one of transformers' own implementations (sdpa).")
    failure = hub_failure(exc, f"the kernel {where}", endpoint)
    first_line = redact(str(exc)).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return failure if failure is not None else LoadError(f"The kernel {where} could not be fetched: {first_line}",
                                                         hint="Check the repo and sha on the Hub.")


@contextlib.contextmanager
def served(pin: KernelPin):
    """While loading: the kernels library finds ``pin``'s repo in its checked folder (``LOCAL_KERNELS``), so it
    asks the Hub nothing, and Python writes no bytecode beside it."""
    with _SERVING:
        saved_env, saved_bytecode = os.environ.get("LOCAL_KERNELS"), sys.dont_write_bytecode
        os.environ["LOCAL_KERNELS"] = f"{pin.repo_id}={pin.folder}"
        sys.dont_write_bytecode = True
        try:
            yield
        finally:
            sys.dont_write_bytecode = saved_bytecode
            if saved_env is None:
                os.environ.pop("LOCAL_KERNELS", None)
            else:
                os.environ["LOCAL_KERNELS"] = saved_env

