"""The Hub's JSON shapes, built from store objects, and the parsing of commit requests."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .lfs import LFS_SUFFIXES
from .store import Commit, FileEntry, Snapshot
from .xet import Reconstruction

USER = "user"  # the one account of the stand-in: new repos without an organization land under it
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()


def whoami(role: str = "write") -> dict:
    """``/api/whoami-v2`` for the stand-in's user, holding a token of ``role`` ("write" or "read")."""
    return {
        "type": "user",
        "id": "0" * 24,
        "name": USER,
        "fullname": "Local Hub User",
        "isPro": False,
        "orgs": [],
        "auth": {"type": "access_token", "accessToken": {"displayName": "hub-standin", "role": role}},
    }


def model_info(repo_id: str, snapshot: Snapshot | None, *, private: bool, blobs: bool) -> dict:
    """``/api/models/{repo}[/revision/{rev}]``; ``snapshot`` is None for a repo without commits."""
    files = sorted(snapshot.files.values(), key=lambda entry: entry.path) if snapshot else []
    return {
        "id": repo_id,
        "modelId": repo_id,
        "author": repo_id.split("/")[0],
        "sha": snapshot.sha if snapshot else None,
        "lastModified": snapshot.date if snapshot else None,
        "private": private,
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "library_name": "transformers" if snapshot and "config.json" in snapshot.files else None,
        "siblings": [_sibling(entry, blobs) for entry in files],
        "spaces": [],
    }


def _sibling(entry: FileEntry, blobs: bool) -> dict:
    sibling: dict = {"rfilename": entry.path}
    if blobs:
        sibling.update(size=entry.size, blobId=entry.blob_id)
        if entry.lfs:
            sibling["lfs"] = {"sha256": entry.lfs.oid, "size": entry.lfs.size, "pointerSize": entry.lfs.pointer_size}
    return sibling


def file_item(entry: FileEntry, xet_hash: str | None = None) -> dict:
    """A file as the tree and paths-info endpoints list it; ``xetHash`` for a file stored in Xet."""
    item: dict = {"type": "file", "oid": entry.blob_id, "size": entry.size, "path": entry.path}
    if entry.lfs:
        item["lfs"] = {"oid": entry.lfs.oid, "size": entry.lfs.size, "pointerSize": entry.lfs.pointer_size}
    if xet_hash:
        item["xetHash"] = xet_hash
    return item


def folder_item(path: str, oid: str) -> dict:
    """A folder as the tree and paths-info endpoints list it."""
    return {"type": "directory", "oid": oid, "size": 0, "path": path}


def tree(snapshot: Snapshot, folder: str, *, recursive: bool, xet_hashes: dict[str, str]) -> list[dict]:
    """``/tree/{rev}/{folder}``: the entries below ``folder`` ("" for the root), sorted by path.

    ``xet_hashes`` maps the paths of files stored in Xet to their Xet hash (as for :func:`paths_info`).
    """
    prefix = f"{folder}/" if folder else ""

    def wanted(path: str) -> bool:
        return path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])

    items = [folder_item(path, oid) for path, oid in snapshot.dirs.items() if wanted(path)]
    items += [file_item(entry, xet_hashes.get(path)) for path, entry in snapshot.files.items() if wanted(path)]
    return sorted(items, key=lambda item: item["path"])


def paths_info(snapshot: Snapshot, paths: list[str], xet_hashes: dict[str, str]) -> list[dict]:
    """``/paths-info/{rev}``: the requested paths that exist, files and folders alike."""
    items = []
    for path in (path.strip("/") for path in paths):
        if path in snapshot.files:
            items.append(file_item(snapshot.files[path], xet_hashes.get(path)))
        elif path in snapshot.dirs:
            items.append(folder_item(path, snapshot.dirs[path]))
    return items


def refs(store_refs: dict, *, include_prs: bool) -> dict:
    """``/refs`` from :meth:`RepoStore.refs`; pull requests only when asked for, like the Hub."""

    def items(names: dict[str, str], prefix: str) -> list[dict]:
        return [{"name": name, "ref": f"{prefix}{name}", "targetCommit": sha} for name, sha in sorted(names.items())]

    out = {
        "branches": items(store_refs["branches"], "refs/heads/"),
        "converts": [],
        "tags": items(store_refs["tags"], "refs/tags/"),
    }
    if include_prs:
        out["pullRequests"] = items(store_refs["pulls"], "")
    return out


def commits(history: list[Commit]) -> list[dict]:
    """``/commits/{rev}``, newest first."""
    return [
        {"id": c.sha, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": c.author}]}
        for c in history
    ]


def pull_request(repo_id: str, number: int, head: Commit) -> dict:
    """``/discussions/{num}`` for pull request ``number``, titled after its head commit."""
    return {
        "num": number,
        "title": head.title,
        "status": "open",
        "isPullRequest": True,
        "createdAt": head.date,
        "author": {"name": USER},
        "repo": {"name": repo_id, "type": "model"},
        "events": [],
        "changes": {"base": "refs/heads/main"},
        "filesWithConflicts": [],
    }


@dataclass
class CommitRequest:
    """The parsed NDJSON body of ``/commit/{rev}``."""

    message: str = ""
    parent: str | None = None
    files: dict[str, bytes | Path] = field(default_factory=dict)
    deleted_files: list[str] = field(default_factory=list)
    deleted_folders: list[str] = field(default_factory=list)


def parse_commit(body: bytes, lfs_path: Callable[[str], Path | None]) -> CommitRequest:
    """Parse header, ``file`` (base64), ``lfsFile`` (content uploaded: ``lfs_path(oid)`` finds it) and deletions."""
    request = CommitRequest()
    for line in body.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        key, value = item["key"], item["value"]
        if key == "header":
            description = value.get("description") or ""
            request.message = value["summary"] + (f"\n\n{description}" if description else "")
            request.parent = value.get("parentCommit")
        elif key == "file":
            request.files[value["path"]] = base64.b64decode(value["content"])
        elif key == "lfsFile":
            request.files[value["path"]] = _uploaded_object(lfs_path, value["path"], value["oid"], value.get("size"))
        elif key == "deletedFile":
            request.deleted_files.append(value["path"])
        elif key == "deletedFolder":
            request.deleted_folders.append(value["path"].rstrip("/"))
        else:
            raise ValueError(f"Unknown commit operation: {key!r}")
    return request


def _uploaded_object(lfs_path: Callable[[str], Path | None], path: str, oid: str, size: int | None) -> Path:
    """Where the content of an ``lfsFile`` line is; ``ValueError`` (400) unless it was uploaded, at that size."""
    found = lfs_path(oid)
    if found is None:
        raise ValueError(f"LFS object {oid} for {path} was never uploaded: upload it through Xet or the LFS batch API")
    stored = found.stat().st_size
    if size is not None and size != stored:
        raise ValueError(f"LFS object {oid} for {path} has {stored} bytes, not {size}")
    return found


def lfs_batch(objects: list[dict]) -> dict:
    """The answer of ``{repo}.git/info/lfs/objects/batch``: the stand-in offers the basic transfer only."""
    return {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}


def lfs_batch_object(oid: str, size: int, actions: dict | None) -> dict:
    """One object of a batch answer; ``actions`` is None for one the server has (the client skips its upload)."""
    item: dict = {"oid": oid, "size": size}
    if actions is not None:
        item.update(authenticated=True, actions=actions)
    return item


def lfs_batch_error(oid: object, size: object, code: int, message: str) -> dict:
    """One object of a batch answer that the server refuses (the client raises, naming ``message``)."""
    return {"oid": str(oid), "size": size if isinstance(size, int) else 0, "error": {"code": code, "message": message}}


def xet_token(token: str, expires: int, cas_url: str) -> dict:
    """The answer of ``xet-read-token`` / ``xet-write-token``, as hf_xet's token refresh reads it."""
    return {"accessToken": token, "exp": expires, "casUrl": cas_url}


def xet_reconstruction(plan: Reconstruction, url: Callable[[str], str]) -> dict:
    """``GET /v2/reconstructions/{hash}`` of a CAS: the terms, and per xorb the byte ranges to fetch at ``url(xorb)``.

    Chunk ranges exclude their end, byte ranges include it (an HTTP ``Range``); one range per fetch,
    so the client sends single-range requests whatever its multi-range setting.
    """

    def chunk_range(start: int, end: int) -> dict:
        return {"start": start, "end": end}

    return {
        "offset_into_first_range": plan.offset,
        "terms": [
            {"hash": t.xorb, "unpacked_length": t.size, "range": chunk_range(t.chunk_start, t.chunk_end)}
            for t in plan.terms
        ],
        "xorbs": {
            xorb: [
                {"url": url(xorb), "ranges": [{"chunks": chunk_range(c0, c1), "bytes": {"start": b0, "end": b1 - 1}}]}
                for c0, c1, b0, b1 in ranges
            ]
            for xorb, ranges in plan.fetches.items()
        },
    }
