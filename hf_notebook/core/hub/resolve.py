"""Pin a revision to a commit sha: through the Hub when online, from the local cache offline."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import (AuthError, HfNotebookError, HubError, OfflineError, RepoNotFoundError, RevisionNotFoundError, hub_failure,
                     redact, status_of)
from ..events import Resolved
from ..spec import ModelSpec, is_commit_sha

log = logging.getLogger(__name__)
LOGIN_HINT = "Log in with `hf auth login` (or set HF_TOKEN), then run the cell again."


@dataclass(frozen=True)
class Resolution:
    """Where a model comes from: the pin and, when known, the repo's file sizes at that sha."""

    pin: Resolved
    file_sizes: dict[str, Optional[int]] = field(default_factory=dict)  # empty when offline or local
    local_path: Optional[Path] = None
    file_hashes: dict[str, str] = field(default_factory=dict)  # sha256 of LFS files, from the Hub's metadata
    blob_ids: dict[str, str] = field(default_factory=dict)  # git blob sha1 of the other files, likewise
    # Records files are checked against besides the Hub: (whose, {file: {"size", "sha256"}}), e.g. the lock file's
    # under --locked, or an hf-cache bundle's manifest when the cache is one.
    records: tuple = ()

    @property
    def repo_id(self) -> str:
        return self.pin.repo_id

    @property
    def sha(self) -> str:
        return self.pin.sha


def resolve(spec: ModelSpec, *, offline: bool = False, cache_dir: str | Path | None = None,
            token: str | bool | None = None) -> Resolution:
    """Turn ``spec`` into a :class:`Resolution`; every later step uses ``pin.sha`` only."""
    if spec.is_local:
        pin = Resolved(repo_id=str(spec.local_path), revision=None, sha="local", kind="local")
        return Resolution(pin=pin, local_path=spec.local_path)
    if offline:
        return _resolve_from_cache(spec, cache_dir)
    return _resolve_online(spec, token)


def _resolve_online(spec: ModelSpec, token) -> Resolution:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    from huggingface_hub.errors import RevisionNotFoundError as HubRevisionNotFound

    api = HfApi(token=token)
    try:
        info = with_retries(lambda: api.model_info(spec.repo_id, revision=spec.revision, files_metadata=True))
    except GatedRepoError:
        raise AuthError(f"{spec.repo_id} is gated: your account has not been granted access.",
                        hint=f"Request access on the model's page, then {LOGIN_HINT[0].lower()}{LOGIN_HINT[1:]}") from None
    except RepositoryNotFoundError as exc:
        raise _repo_not_found(spec.repo_id, exc, api) from None
    except HubRevisionNotFound:
        raise _revision_not_found(spec, api) from None
    except HfNotebookError:
        raise
    except Exception as exc:  # a failing server, network down, DNS, TLS, ...
        raise (hub_failure(exc, f"the lookup of {spec}", _endpoint()) or _unreachable(spec, exc)) from None
    _check_answer(spec, info.sha)
    kind = _kind_of(spec.revision, info.sha, api, spec.repo_id)
    sizes = {s.rfilename: s.size for s in info.siblings or []}
    hashes = {s.rfilename: s.lfs.sha256 for s in info.siblings or [] if s.lfs is not None and s.lfs.sha256}
    blobs = {s.rfilename: s.blob_id for s in info.siblings or [] if s.lfs is None and s.blob_id}
    return Resolution(pin=Resolved(spec.repo_id, spec.revision, info.sha, kind), file_sizes=sizes, file_hashes=hashes,
                      blob_ids=blobs)


_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")


def _check_answer(spec: ModelSpec, sha) -> None:
    """The Hub's commit for ``spec``: a full sha, and the very one asked for when a full sha was asked for.
    Everything after this trusts it (files by sha, the lock, remote code pinned to it), so nothing is fetched
    from an answer that names no commit or another one (a broken mirror, a proxy, a tampered answer)."""
    if sha is None:
        raise RevisionNotFoundError(f"{spec.repo_id} has no commit yet: there is nothing to load.",
                                    hint="Push files to the repo first, or check the repo id.")
    if not (isinstance(sha, str) and _FULL_SHA.match(sha)):
        raise HubError(f"The Hub at {_endpoint()} answered {spec} with {redact(str(sha))[:60]!r}, not a commit sha.",
                       hint="Check HF_ENDPOINT (a proxy or mirror in between?); nothing was downloaded.")
    if spec.revision is not None and _FULL_SHA.match(spec.revision) and sha != spec.revision:
        raise HubError(f"Asked for commit {spec.revision} of {spec.repo_id}, the Hub at {_endpoint()} answered "
                       f"commit {sha}.",
                       hint="Nothing was downloaded. Check HF_ENDPOINT (a proxy or mirror in between?), then try again.")


def _kind_of(revision: Optional[str], sha: str, api, repo_id: str) -> str:
    """What ``revision`` is (branch, tag, pr, sha), its commit checked against the repo's refs: a tag, branch or
    pull request that points elsewhere than the commit answered is refused (a mirror answering inconsistently).
    The default branch (no revision) costs no second request and is not cross-checked."""
    if revision is None:
        return "branch"
    if is_commit_sha(revision) and sha.startswith(revision):
        return "sha"
    pr = revision.startswith("refs/pr/")
    refs = with_retries(lambda: api.list_repo_refs(repo_id, include_pull_requests=pr))
    groups = [("pr", refs.pull_requests or [])] if pr else [("tag", refs.tags), ("branch", refs.branches)]
    for kind, found in groups:
        for ref in found:
            if revision in (ref.name, ref.ref):
                if ref.target_commit != sha:
                    raise HubError(f"{repo_id}@{revision} points to commit {ref.target_commit}, but the Hub at "
                                   f"{_endpoint()} answered commit {sha}.",
                                   hint="Nothing was downloaded. If it just moved, run the cell again; else check "
                                        "HF_ENDPOINT (a proxy or mirror in between?).")
                return kind
    raise HubError(f"Asked for {revision!r} of {repo_id}, the Hub at {_endpoint()} answered commit {sha}, which "
                   f"is neither that commit nor a branch or tag of that name.",
                   hint="Nothing was downloaded. Check HF_ENDPOINT (a proxy or mirror in between?), then try again.")


RETRY_WAITS = (0.5, 1.0, 2.0)  # seconds before each retry; a Retry-After up to 30 s wins
MAX_RETRY_AFTER = 30.0


def with_retries(call, *, transient=None, sleep=None):
    """``call()``, retried on 408/429/5xx answers and dropped connections, with backoff.

    huggingface_hub retries its API calls and its file GETs only on some answers (2.4: 408 and 429
    for a file); the revision lookup is the first request of every load and a file GET the longest,
    so a passing hiccup there must not fail it. ``transient(exc)`` says what to retry (default: the
    statuses above and network errors); ``sleep(seconds)`` waits (default ``time.sleep``).
    """
    import time

    transient, sleep = transient or _transient, sleep or time.sleep
    for wait in RETRY_WAITS + (None,):
        try:
            return call()
        except Exception as exc:
            if wait is None or not transient(exc):
                raise
            retry_after = _retry_after(exc)
            delay = min(retry_after, MAX_RETRY_AFTER) if retry_after is not None else wait
            log.warning("the Hub answered %s; retrying in %.1f s", status_of(exc) or type(exc).__name__, delay)
            sleep(delay)


def _transient(exc: BaseException) -> bool:
    from ..errors import RETRY_STATUSES

    status = status_of(exc)
    if status is not None:
        return status in RETRY_STATUSES
    return hub_failure(exc, "", "") is not None  # a network error


def _retry_after(exc: BaseException) -> float | None:
    value = getattr(getattr(getattr(exc, "response", None), "headers", None), "get", lambda _: None)("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _repo_not_found(repo_id: str, exc, api) -> HfNotebookError:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    close = _similar_repos(repo_id, api)
    meant = f"Did you mean {' or '.join(close)}? " if close else ""
    if status == 401:
        return AuthError(f"{repo_id} was not found, or it is private and no valid token was sent.",
                         hint=f"{meant}Check the spelling. If it is private: {LOGIN_HINT}")
    return RepoNotFoundError(f"Repository {repo_id} does not exist on {_endpoint()}.",
                             hint=f"{meant}Check the spelling (org/name); private repos also need a login: " + LOGIN_HINT)


def _similar_repos(repo_id: str, api) -> list[str]:
    """Up to three public repos whose ids are close to ``repo_id`` (a typo's likely meaning): from the owner's
    repos and a search on the name's first letters. Best effort: any failure gives none."""
    import difflib

    owner, _, name = repo_id.partition("/")
    found: set[str] = set()
    try:
        if owner:
            found |= {m.id for m in api.list_models(author=owner, limit=500)}
        if len(name) >= 3:
            found |= {m.id for m in api.list_models(search=name[:3], limit=500)}
    except Exception:  # noqa: BLE001 - an error path: the suggestion is a bonus, the error is what matters
        return []
    lowered = {f.lower(): f for f in found}
    return [lowered[m] for m in difflib.get_close_matches(repo_id.lower(), list(lowered), n=3, cutoff=0.75)]


def _revision_not_found(spec: ModelSpec, api) -> RevisionNotFoundError:
    names: list[str] = []
    try:
        refs = api.list_repo_refs(spec.repo_id)
        names = [b.name for b in refs.branches] + [t.name for t in refs.tags]
    except Exception:  # the listing is only a hint
        log.debug("could not list refs of %s", spec.repo_id, exc_info=True)
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    hint = f"Existing branches and tags: {shown}." if names else "Use a branch, tag, commit sha or refs/pr/N."
    return RevisionNotFoundError(f"{spec.repo_id} has no revision {spec.revision!r}.", hint=hint, available=names)


def _unreachable(spec: ModelSpec, exc: Exception) -> HfNotebookError:
    return HfNotebookError(
        f"Could not reach the Hub at {_endpoint()} to resolve {spec}: {type(exc).__name__}: {redact(str(exc))}",
        hint="Check the network (or HF_ENDPOINT). If the model is already in the cache, add --offline.",
    )


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def repo_cache_folder(repo_id: str, cache_dir: str | Path | None = None) -> Path:
    """The huggingface_hub cache folder of a model repo (``models--org--name``)."""
    from huggingface_hub import constants

    root = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    return root / ("models--" + repo_id.replace("/", "--"))


def _resolve_from_cache(spec: ModelSpec, cache_dir) -> Resolution:
    """Offline: a ref name through ``refs/<name>``, a (short) sha through ``snapshots/``."""
    folder = repo_cache_folder(spec.repo_id, cache_dir)
    revision = spec.revision or "main"
    fetch_cmd = (f"`hf download {spec.repo_id} --revision {revision}` (or %load_model {spec}) on a machine with "
                 f"network, then copy its cache ({folder.parent}) here")
    if not folder.is_dir():
        raise OfflineError(f"Offline, and {spec.repo_id} is not in the cache at {folder.parent}.",
                           hint=f"Fetch it first: {fetch_cmd}", missing=["(whole repo)"])
    ref_file = folder / "refs" / revision
    if ref_file.is_file():
        sha = ref_file.read_text().strip()
        kind = "pr" if revision.startswith("refs/pr/") else "ref"
    else:
        snapshots = folder / "snapshots"
        matches = [p.name for p in snapshots.iterdir()] if snapshots.is_dir() else []
        matches = [name for name in matches if is_commit_sha(revision) and name.startswith(revision)]
        if len(matches) != 1:
            cached = sorted(p.name for p in (folder / "refs").glob("*")) if (folder / "refs").is_dir() else []
            raise OfflineError(
                f"Offline, and revision {revision!r} of {spec.repo_id} is not in the cache.",
                hint=f"Cached refs: {', '.join(cached) or 'none'}. Fetch it first: {fetch_cmd}", missing=[revision])
        sha, kind = matches[0], "sha"
    return Resolution(pin=Resolved(spec.repo_id, spec.revision, sha, kind))


def record_ref(resolution: Resolution, cache_dir: str | Path | None = None) -> None:
    """Write ``refs/<name>`` in the cache, as huggingface_hub does, so an offline load finds the name.

    Files are fetched by sha, which records no ref; without this a model loaded online as
    ``org/name`` could not be loaded offline as ``org/name`` afterwards.
    """
    pin = resolution.pin
    if pin.kind in ("sha", "local", "ref"):
        return
    ref = repo_cache_folder(pin.repo_id, cache_dir) / "refs" / (pin.revision or "main")
    ref.parent.mkdir(parents=True, exist_ok=True)
    if not ref.is_file() or ref.read_text().strip() != pin.sha:
        ref.write_text(pin.sha)
