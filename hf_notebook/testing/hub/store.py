"""Model repos on disk: one bare git repository per repo id, big files in an LFS object store and in Xet.

Layout under ``root``: ``<org>/<name>.git`` (a bare repo, plus ``hub.json`` for settings the Hub
keeps outside git: ``private``, and ``xet``, whether its big files are served through Xet storage),
``.lfs/<sha256>`` (LFS content) and ``.xet-cas/`` (hf_xet's local CASes: the same content as Xet
files, see :mod:`.xet`). Committing an LFS file to a Xet repo puts it in both. Writes hold a lock and
move refs with compare-and-swap, so one store can be written by tests while a server process reads it.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from ._git import ZERO_SHA, GitError, git_env, run_git
from .lfs import LfsInfo, LfsObjects, is_lfs, parse_pointer, pointer
from .xet import XetStorage
from .xet_format import XetFile

_REPO_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_HEX_RE = re.compile(r"[0-9a-f]{4,40}")
_MAX_POINTER_SIZE = 1024  # the LFS spec's limit: bigger blobs are never pointers
_SHA_RE = re.compile(r"[0-9a-f]{40}")
_BLOB_CACHE_BYTES = 64 * 2**20  # small files' contents kept in memory (a blob id names its content for ever)

FileContent = bytes | os.PathLike


class NotFound(KeyError):
    """Something looked up does not exist; subclass names are the Hub's ``X-Error-Code`` values."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RepoNotFound(NotFound):
    """No repository with this id."""


class RevisionNotFound(NotFound):
    """The revision is no branch, tag, pull request or commit of the repository."""


class EntryNotFound(NotFound):
    """No file at this path in the commit."""


class Conflict(FileExistsError):
    """The repo, branch or tag already exists, or the branch moved away from the expected parent."""


@dataclass(frozen=True)
class FileEntry:
    """A file of a commit: ``blob_id`` is the git oid (the pointer's, for LFS files), ``size`` the content's."""

    path: str
    blob_id: str
    size: int
    lfs: LfsInfo | None


@dataclass(frozen=True)
class Snapshot:
    """The files and folders of one commit; immutable, so cached by sha."""

    sha: str
    date: str  # committer date as the Hub writes it: 2024-01-31T12:00:00.000Z
    files: dict[str, FileEntry]
    dirs: dict[str, str]  # folder path -> git tree oid


@dataclass(frozen=True)
class Commit:
    """One entry of a commit history."""

    sha: str
    author: str
    date: str
    title: str
    message: str


def folder_files(folder: str | os.PathLike) -> dict[str, Path]:
    """Every file under ``folder``, keyed by its posix path relative to it: ready for :meth:`RepoStore.commit`."""
    root = Path(folder)
    return {path.relative_to(root).as_posix(): path for path in sorted(root.rglob("*")) if path.is_file()}


class RepoStore:
    """Model repos as plain git repositories under ``root`` (one bare git repo per repo_id)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lfs = LfsObjects(self.root / ".lfs")
        self.xet = XetStorage(self.root / ".xet-cas")
        self._lock = threading.Lock()
        self._snapshots: dict[tuple[str, str], Snapshot] = {}
        self._blobs: dict[str, bytes] = {}
        self._kernels: RepoStore | None = None

    @property
    def kernels(self) -> RepoStore:
        """The kernel repos (the Hub's ``kernels/`` repo type): a store of their own under ``root/.kernels``,
        so a kernel and a model may share an id, as on the Hub."""
        if self._kernels is None:
            self._kernels = RepoStore(self.root / ".kernels")
        return self._kernels

    # -- repos -------------------------------------------------------------------------------

    def create_repo(self, repo_id: str, *, private: bool = False, exist_ok: bool = False, xet: bool = True) -> None:
        """Create an empty repo (no commit yet); raise :class:`Conflict` if it exists unless ``exist_ok``.

        ``xet=False`` makes an LFS-only repo, as older repos and other servers are: its big files are
        served over plain HTTP, with no Xet headers.
        """
        path = self._repo_path(repo_id)
        with self._lock:
            if path.exists():
                if exist_ok:
                    return
                raise Conflict(f"You already created this model repo: {repo_id}")
            # Build it aside, then rename: readers never see a repo without its settings.
            staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
            staging.parent.mkdir(parents=True, exist_ok=True)
            run_git(staging, "init", "--quiet", "--bare", "--initial-branch=main")
            (staging / "hub.json").write_text(json.dumps({"private": private, "xet": xet}))
            os.rename(staging, path)

    def exists(self, repo_id: str) -> bool:
        """Whether the repo exists (a malformed id never does)."""
        return _REPO_ID_RE.fullmatch(repo_id) is not None and self._repo_path(repo_id).exists()

    def repo_ids(self) -> list[str]:
        """Every model repo's id, sorted."""
        return sorted(f"{path.parent.name}/{path.name.removesuffix('.git')}" for path in self.root.glob("*/*.git")
                      if path.is_dir())

    def is_private(self, repo_id: str) -> bool:
        """Whether the repo was created private."""
        return self._settings(repo_id)["private"]

    def is_xet(self, repo_id: str) -> bool:
        """Whether the repo's LFS files are served through Xet storage (repos made before the setting: yes)."""
        return self._settings(repo_id).get("xet", True)

    # -- writes ------------------------------------------------------------------------------

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, FileContent],
        *,
        branch: str = "main",
        message: str = "update",
        delete: Iterable[str] = (),
        parent: str | None = None,
    ) -> str:
        """Commit ``files`` (path -> bytes or a file path) and deletions to ``branch``; return the new sha.

        ``branch`` may also be a pull request ref (``refs/pr/N``). A missing branch is created from
        nothing only while the repo has no refs at all. With ``parent``, raise :class:`Conflict` when
        the branch head is another commit.
        """
        git_dir = self._git_dir(repo_id)
        ref = branch if branch.startswith("refs/pr/") else f"refs/heads/{branch}"
        with self._lock:
            refs = _read_refs(git_dir)
            head = refs.get(ref)
            if head is None and refs:
                raise RevisionNotFound(f"Invalid rev id: {branch}")
            if parent is not None and parent != head:
                raise Conflict(f"{branch} is at {head}, not at the expected parent commit {parent}")
            sha = self._write_commit(repo_id, head, files, delete, message)
            run_git(git_dir, "update-ref", ref, sha, head or ZERO_SHA)
        return sha

    def create_pr(
        self,
        repo_id: str,
        files: Mapping[str, FileContent],
        *,
        message: str = "pr",
        base: str = "main",
        delete: Iterable[str] = (),
    ) -> tuple[int, str]:
        """Open pull request ``refs/pr/N`` with one commit on top of ``base``; return ``(N, sha)``."""
        git_dir = self._git_dir(repo_id)
        with self._lock:
            parent = self.resolve(repo_id, base)
            pulls = [int(ref.rsplit("/", 1)[1]) for ref in _read_refs(git_dir) if ref.startswith("refs/pr/")]
            number = max(pulls, default=0) + 1
            sha = self._write_commit(repo_id, parent, files, delete, message)
            run_git(git_dir, "update-ref", f"refs/pr/{number}", sha, ZERO_SHA)
        return number, sha

    def create_branch(self, repo_id: str, branch: str, *, revision: str = "main") -> None:
        """Create ``branch`` at ``revision``; :class:`Conflict` if it exists."""
        self._create_ref(repo_id, f"refs/heads/{branch}", revision)

    def create_tag(self, repo_id: str, tag: str, *, revision: str = "main") -> None:
        """Create a (lightweight) tag at ``revision``; :class:`Conflict` if it exists."""
        self._create_ref(repo_id, f"refs/tags/{tag}", revision)

    def delete_branch(self, repo_id: str, branch: str) -> None:
        """Delete ``branch``; :class:`RevisionNotFound` if there is none."""
        self._delete_ref(repo_id, f"refs/heads/{branch}")

    def delete_tag(self, repo_id: str, tag: str) -> None:
        """Delete ``tag``; :class:`RevisionNotFound` if there is none."""
        self._delete_ref(repo_id, f"refs/tags/{tag}")

    # -- reads -------------------------------------------------------------------------------

    def resolve(self, repo_id: str, revision: str | None) -> str:
        """The full commit sha of a branch (default ``main``), tag, ``refs/pr/N``, or full or short sha."""
        git_dir = self._git_dir(repo_id)
        revision = revision or "main"
        if (repo_id, revision) in self._snapshots:
            return revision
        refs = _read_refs(git_dir)
        names = [revision] if revision.startswith("refs/") else [f"refs/heads/{revision}", f"refs/tags/{revision}"]
        for name in names:
            if name in refs:
                return refs[name]
        if _HEX_RE.fullmatch(revision):
            try:
                out = run_git(git_dir, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
                return out.decode().strip()
            except GitError:
                pass
        raise RevisionNotFound(f"Invalid rev id: {revision}")

    def refs(self, repo_id: str) -> dict:
        """``{"branches": {name: sha}, "tags": {name: sha}, "pulls": {"refs/pr/N": sha}}``."""
        out: dict[str, dict[str, str]] = {"branches": {}, "tags": {}, "pulls": {}}
        for ref, sha in _read_refs(self._git_dir(repo_id)).items():
            if ref.startswith("refs/heads/"):
                out["branches"][ref.removeprefix("refs/heads/")] = sha
            elif ref.startswith("refs/tags/"):
                out["tags"][ref.removeprefix("refs/tags/")] = sha
            elif ref.startswith("refs/pr/"):
                out["pulls"][ref] = sha
        return out

    def list_files(self, repo_id: str, sha: str) -> list[str]:
        """The sorted file paths of a commit (any revision is resolved first)."""
        return sorted(self.snapshot(repo_id, sha).files)

    def snapshot(self, repo_id: str, revision: str | None) -> Snapshot:
        """The files and folders of a revision, read from git once per commit."""
        sha = self.resolve(repo_id, revision)
        key = (repo_id, sha)
        if key not in self._snapshots:
            self._snapshots[key] = _read_snapshot(self._git_dir(repo_id), sha)
        return self._snapshots[key]

    def entry(self, repo_id: str, revision: str | None, path: str) -> FileEntry:
        """The file at ``path``; :class:`EntryNotFound` if the commit has none."""
        snapshot = self.snapshot(repo_id, revision)
        try:
            return snapshot.files[path]
        except KeyError:
            raise EntryNotFound(f"{path} does not exist at {snapshot.sha}") from None

    def open(self, repo_id: str, entry: FileEntry) -> BinaryIO:
        """A binary stream of the file's content (read straight from the LFS store for LFS files)."""
        if entry.lfs is not None:
            return open(self.lfs.path(entry.lfs.oid), "rb")
        data = self._blobs.get(entry.blob_id)
        if data is None:
            data = run_git(self._git_dir(repo_id), "cat-file", "blob", entry.blob_id)
            if sum(map(len, self._blobs.values())) + len(data) <= _BLOB_CACHE_BYTES:
                self._blobs[entry.blob_id] = data
        return io.BytesIO(data)

    def xet_file(self, oid: str) -> XetFile:
        """LFS object ``oid`` as a Xet file, uploaded into Xet storage first if it is not there yet."""
        return self.xet.put(self.lfs.path(oid), oid)

    def lfs_path(self, oid: str) -> Path | None:
        """Where the content of ``oid`` is, or None if neither LFS nor Xet storage has it.

        Content pushed through Xet is reconstructed into the LFS objects here, on first use.
        """
        if self.lfs.size(oid) is None:
            file = self.xet.find(oid)
            if file is None:
                return None
            with tempfile.TemporaryDirectory(dir=self.root, prefix=".tmp-") as tmp:
                self.xet.read(file, Path(tmp) / "content")
                with open(Path(tmp) / "content", "rb") as stream:
                    self.lfs.receive(stream, oid, file.size)
        return self.lfs.path(oid)

    def read(self, repo_id: str, path: str, revision: str | None = None) -> bytes:
        """The content of one file at a revision (default ``main``)."""
        with self.open(repo_id, self.entry(repo_id, revision, path)) as stream:
            return stream.read()

    def history(self, repo_id: str, revision: str | None) -> list[Commit]:
        """The commits reachable from ``revision``, newest first."""
        sha = self.resolve(repo_id, revision)
        out = run_git(self._git_dir(repo_id), "log", "--format=%H%x1f%an%x1f%ct%x1f%s%x1f%b%x1e", sha)
        records = [record.strip("\n").split("\x1f") for record in out.decode().split("\x1e") if record.strip()]
        return [Commit(sha, author, _hub_date(ts), title, body.strip()) for sha, author, ts, title, body in records]

    # -- internals ---------------------------------------------------------------------------

    def _repo_path(self, repo_id: str) -> Path:
        malformed = _REPO_ID_RE.fullmatch(repo_id) is None or repo_id.endswith(".git")
        if malformed or ".." in repo_id or "--" in repo_id:  # the client refuses '..' and '--' too
            raise ValueError(f"Repo id must be 'namespace/name' (letters, digits, '-', '_', '.'): {repo_id!r}")
        return self.root / f"{repo_id}.git"

    def _git_dir(self, repo_id: str) -> Path:
        if not self.exists(repo_id):
            raise RepoNotFound(f"Repository not found: {repo_id}")
        return self._repo_path(repo_id)

    def _settings(self, repo_id: str) -> dict:
        return json.loads((self._git_dir(repo_id) / "hub.json").read_text())

    def _create_ref(self, repo_id: str, ref: str, revision: str) -> None:
        git_dir = self._git_dir(repo_id)
        with self._lock:
            sha = self.resolve(repo_id, revision)
            if ref in _read_refs(git_dir):
                raise Conflict(f"Reference already exists: {ref}")
            try:
                run_git(git_dir, "update-ref", ref, sha, ZERO_SHA)
            except GitError as error:
                raise ValueError(f"Invalid reference name {ref!r}: {error}") from None

    def _delete_ref(self, repo_id: str, ref: str) -> None:
        git_dir = self._git_dir(repo_id)
        with self._lock:
            if ref not in _read_refs(git_dir):
                raise RevisionNotFound(f"Invalid rev id: {ref}")
            run_git(git_dir, "update-ref", "-d", ref)

    def _write_commit(
        self,
        repo_id: str,
        parent: str | None,
        files: Mapping[str, FileContent],
        delete: Iterable[str],
        message: str,
    ) -> str:
        """Write a commit object (no ref moves) with ``files`` added to and ``delete`` removed from ``parent``."""
        git_dir = self._git_dir(repo_id)
        delete = list(delete)
        existing = self.snapshot(repo_id, parent).files if parent else {}
        for path in delete:
            if path not in existing:
                raise EntryNotFound(f"A file with this name doesn't exist: {path}")
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".tmp-") as tmp:
            env = git_env(GIT_INDEX_FILE=str(Path(tmp) / "index"))
            run_git(git_dir, "read-tree", parent or "--empty", env=env)
            blobs = self._write_blobs(git_dir, files, Path(tmp), xet=self.is_xet(repo_id))
            # Index lines "<mode> <oid>\t<path>"; mode 0 removes the path.
            lines = [f"0 {ZERO_SHA}\t{path}\0" for path in delete]
            lines += [f"100644 {blob}\t{path}\0" for path, blob in blobs.items()]
            run_git(git_dir, "update-index", "-z", "--index-info", input="".join(lines).encode(), env=env)
            tree = run_git(git_dir, "write-tree", env=env).decode().strip()
        parents = ["-p", parent] if parent else []
        return run_git(git_dir, "commit-tree", tree, *parents, "-m", message).decode().strip()

    def _write_blobs(self, git_dir: Path, files: Mapping[str, FileContent], tmp: Path, *, xet: bool) -> dict[str, str]:
        """Store each file as a git blob, or its content in LFS (and Xet) and a pointer as the blob; path -> oid."""
        sources = []
        for index, (path, content) in enumerate(files.items()):
            _check_path(path)
            source = _as_file(content, tmp / f"content-{index}")
            size = source.stat().st_size
            if is_lfs(path, size):
                info = self.lfs.put(source)
                if xet:
                    self.xet_file(info.oid)
                source = tmp / f"pointer-{index}"
                source.write_bytes(pointer(info.oid, info.size))
            sources.append(str(source.resolve()))
        if not sources:
            return {}
        paths = "\n".join(sources).encode()
        oids = run_git(git_dir, "hash-object", "-w", "--no-filters", "--stdin-paths", input=paths)
        return dict(zip(files, oids.decode().split()))


def _as_file(content: FileContent, scratch: Path) -> Path:
    """A path holding ``content``: the given file, or ``scratch`` filled with the bytes."""
    if isinstance(content, bytes):
        scratch.write_bytes(content)
        return scratch
    if isinstance(content, os.PathLike):
        return Path(content)
    raise TypeError(f"File content must be bytes or a path, not {type(content).__name__}")


def _check_path(path: str) -> None:
    parts = path.split("/")
    if any(part in ("", ".", "..", ".git") for part in parts):
        raise ValueError(f"Invalid path in repo: {path!r}")


def _hub_date(unix_time: str) -> str:
    return datetime.fromtimestamp(int(unix_time), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _read_refs(git_dir: Path) -> dict[str, str]:
    """Every ref -> its sha, as ``git for-each-ref`` lists them, read from git's files (a loose ref over a packed
    one) rather than a ``git`` process per request: each answer naming a branch or tag reads them."""
    refs: dict[str, str] = {}
    try:
        for line in (git_dir / "packed-refs").read_text().splitlines():
            if line and line[0] not in "#^":
                sha, name = line.split(" ", 1)
                refs[name] = sha
    except FileNotFoundError:
        pass
    symbolic = {}
    for folder, _, names in os.walk(git_dir / "refs"):
        for name in names:
            if name.endswith(".lock"):  # a ref being written: git lists the ref itself, as it was
                continue
            path = Path(folder, name)
            try:
                value = path.read_text().strip()
            except FileNotFoundError:  # deleted meanwhile
                continue
            ref = path.relative_to(git_dir).as_posix()
            if _SHA_RE.fullmatch(value):
                refs[ref] = value
            elif value.startswith("ref: "):
                symbolic[ref] = value.removeprefix("ref: ")
    refs.update({ref: refs[target] for ref, target in symbolic.items() if target in refs})
    return dict(sorted(refs.items()))


def _read_snapshot(git_dir: Path, sha: str) -> Snapshot:
    listing = run_git(git_dir, "ls-tree", "-r", "-t", "-l", "-z", sha)
    blobs: dict[str, tuple[str, int]] = {}
    dirs: dict[str, str] = {}
    for record in listing.decode().split("\0"):
        if not record:
            continue
        meta, path = record.split("\t", 1)
        _mode, kind, oid, size = meta.split()
        if kind == "tree":
            dirs[path] = oid
        elif kind == "blob":
            blobs[path] = (oid, int(size))
    small = {oid for oid, size in blobs.values() if size <= _MAX_POINTER_SIZE}
    pointers = {oid: info for oid, data in _read_blobs(git_dir, small).items() if (info := parse_pointer(data))}
    files = {
        path: FileEntry(path, oid, pointers[oid].size if oid in pointers else size, pointers.get(oid))
        for path, (oid, size) in blobs.items()
    }
    date = _hub_date(run_git(git_dir, "show", "-s", "--format=%ct", sha).decode())
    return Snapshot(sha=sha, date=date, files=files, dirs=dirs)


def _read_blobs(git_dir: Path, oids: set[str]) -> dict[str, bytes]:
    """Contents of several blobs in one ``git cat-file --batch`` call."""
    if not oids:
        return {}
    out = run_git(git_dir, "cat-file", "--batch", input="".join(f"{oid}\n" for oid in oids).encode())
    contents, pos = {}, 0
    while pos < len(out):
        header_end = out.index(b"\n", pos)
        oid, _kind, size = out[pos:header_end].decode().split()
        start = header_end + 1
        contents[oid] = out[start : start + int(size)]
        pos = start + int(size) + 1
    return contents
