"""The Hub's HTTP API over a :class:`RepoStore`, with knobs for tests: throttle, broken bodies, byte counters.

Only model repos. Files are served straight from ``/resolve`` (no CDN redirect) with the Hub's
headers: ``X-Repo-Commit``, ``ETag`` (git blob oid, or the sha256 for LFS files),
``X-Linked-Etag``/``X-Linked-Size`` for LFS files, and ``Range`` support. Errors carry the Hub's
``X-Error-Code`` so the client raises the same exception types as against the Hub.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO
from urllib.parse import parse_qs, quote, unquote, urlsplit

from . import payloads
from .lfs import ContentMismatch, IncompleteUpload, is_lfs
from .store import Conflict, FileEntry, NotFound, RepoStore

logger = logging.getLogger(__name__)

_CHUNK = 32 * 1024
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")
_REPO = r"/api/models/(?P<repo>[^/]+/[^/]+)"
_REV = r"(?P<rev>[^/]+)"  # one path segment: the client quotes '/' in revisions as %2F
_NAME = r"(?P<name>[^/]+)"  # a branch or tag name, quoted the same way
_GIT_REPO = r"/(?P<repo>[^/]+/[^/]+)\.git"  # model repos have no type prefix here
_OID = r"(?P<oid>[0-9a-f]{64})"
LFS_UPLOAD_PREFIX = "/lfs-upload/"  # upload hrefs: "/lfs-upload/{repo}/{oid}?size=N&signature=S", like signed S3 URLs
_ROUTES = [
    ("GET", r"/api/whoami-v2", "whoami"),
    ("GET", r"/api/agent-harnesses", "agent_harnesses"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", rf"{_REPO}(?:/revision/{_REV})?", "model_info"),
    ("GET", rf"{_REPO}/tree/{_REV}(?:/(?P<path>.*))?", "tree"),
    ("POST", rf"{_REPO}/paths-info/{_REV}", "paths_info"),
    ("GET", rf"{_REPO}/refs", "refs"),
    ("GET", rf"{_REPO}/commits/{_REV}", "commits"),
    ("GET HEAD", rf"/(?P<repo>[^/]+/[^/]+)/resolve/{_REV}/(?P<path>.+)", "resolve"),
    ("POST", rf"{_REPO}/preupload/{_REV}", "preupload"),
    ("POST", rf"{_REPO}/commit/{_REV}", "commit"),
    ("POST", rf"{_REPO}/branch/{_NAME}", "create_branch"),
    ("DELETE", rf"{_REPO}/branch/{_NAME}", "delete_branch"),
    ("POST", rf"{_REPO}/tag/{_REV}", "create_tag"),
    ("DELETE", rf"{_REPO}/tag/{_NAME}", "delete_tag"),
    ("POST", rf"{_REPO}/discussions", "open_pull_request"),
    ("GET", rf"{_REPO}/discussions/(?P<num>\d+)", "pull_request"),
    ("POST", rf"{_GIT_REPO}/info/lfs/objects/batch", "lfs_batch"),
    ("POST", rf"{_GIT_REPO}/info/lfs/objects/verify", "lfs_verify"),
    ("PUT", rf"{LFS_UPLOAD_PREFIX}(?P<repo>[^/]+/[^/]+)/{_OID}", "lfs_upload"),
]
_COMPILED_ROUTES = [(methods.split(), re.compile(pattern), name) for methods, pattern, name in _ROUTES]
_WRITES = {
    "create_repo", "preupload", "commit", "create_branch", "delete_branch", "create_tag", "delete_tag",
    "open_pull_request", "lfs_batch", "lfs_verify",
}
# The client PUTs to an upload href without its Authorization header: the href's signature stands for the token.
_SIGNED = {"lfs_upload"}


class HttpError(Exception):
    """An error answer: status, the Hub's ``X-Error-Code`` (if any), a message, extra headers."""

    def __init__(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class HubServer:
    """A local Hub on ``endpoint`` serving the repos of ``store``.

    With ``token``, private repos and all writes need ``Authorization: Bearer <token>``; without
    one nothing is checked. The socket is bound on construction (``port=0`` picks a free port),
    so ``endpoint`` is known before :meth:`start`. Test knobs, settable at any time:
    ``throttle_bytes_per_s`` slows every file body down; ``fail_after_bytes`` makes the next file
    body longer than that break off after that many bytes (then resets to None); ``ignore_range``
    answers every ``Range`` request with 200 and the whole file, as some mirrors and proxies do;
    ``errors`` maps a piece of a request path (``"/resolve/"``, ``"model-00002"``, ``"/api/models/"``) to
    the status to answer instead: an int for every such request, or a list consumed one request at a
    time (``[503, 503]``: fail twice, then serve); ``retry_after`` adds that ``Retry-After`` header.
    ``requests`` logs ``(method, unquoted path)``.

    Uploads: ``preupload`` answers ``"lfs"`` for the files :func:`~.lfs.is_lfs` puts in LFS (weights
    suffixes, 1 MiB and up; ``preupload_lfs = False`` answers ``"regular"`` for all, which is what a
    client that uploads through Xet needs), and the client sends those through the LFS batch API:
    ``POST {repo}.git/info/lfs/objects/batch`` hands out signed upload hrefs under ``/lfs-upload/``
    (none for content the store has), the bytes are ``PUT`` there and checked against their sha256
    and size, then ``POST {repo}.git/info/lfs/objects/verify``. ``lfs_uploads`` lists the oids stored
    by PUTs; ``errors`` and ``fail_after_bytes`` (the PUT's body is read that far, then the connection
    is cut) break uploads as they break downloads. The client retries a cut PUT and 429/5xx answers
    (1 s, 2 s, 4 s, ... apart); ``{"/lfs-upload/": 507}`` fails an upload at once.
    """

    def __init__(
        self,
        store: RepoStore | str | os.PathLike,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
    ):
        self.store = store if isinstance(store, RepoStore) else RepoStore(store)
        self.token = token
        self.token_role = "write"  # what whoami says the token may do ("read": writes get 403)
        self.throttle_bytes_per_s: float | None = None
        self.fail_after_bytes: int | None = None
        self.ignore_range = False
        self.errors: dict[str, int | list[int]] = {}
        self.retry_after: str | None = None
        self.requests: list[tuple[str, str]] = []
        self.preupload_lfs = True
        self.lfs_uploads: list[str] = []
        self._secret = secrets.token_bytes(16)
        self._bytes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._httpd = _HTTPServer((host, port), _Handler, self)
        self.endpoint = f"http://{host}:{self._httpd.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self) -> HubServer:
        """Serve in a daemon thread; return self. Starting a running server does nothing."""
        if self._thread is not None:
            return self
        serve = self._httpd.serve_forever
        # A short poll interval makes stop() quick: shutdown() waits for the loop to look at its flag.
        self._thread = threading.Thread(target=serve, kwargs={"poll_interval": 0.05}, name="hub-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open connections, so clients see a Hub that is gone."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.close_connections()
        self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def bytes_served(self, repo_id: str | None = None) -> int:
        """File-body bytes sent by ``/resolve`` GETs, for one repo or in total."""
        with self._lock:
            return self._bytes.get(repo_id, 0) if repo_id else sum(self._bytes.values())

    def reset_counters(self) -> None:
        """Zero the byte counters and clear the request log and ``lfs_uploads``."""
        with self._lock:
            self._bytes.clear()
            self.requests.clear()
            self.lfs_uploads.clear()

    def _count(self, repo_id: str, n: int) -> None:
        with self._lock:
            self._bytes[repo_id] = self._bytes.get(repo_id, 0) + n

    def _log(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def _signature(self, repo: str, oid: str, size: int) -> str:
        """What signs an upload href: only the batch endpoint hands it out, for this repo, object and size."""
        return hmac.new(self._secret, f"{repo}\0{oid}\0{size}".encode(), hashlib.sha256).hexdigest()[:32]

    def _uploaded(self, oid: str) -> None:
        with self._lock:
            self.lfs_uploads.append(oid)

    def _injected_error(self, path: str) -> None:
        """Raise the error the ``errors`` knob asks for on ``path``, if any."""
        with self._lock:
            for piece, status in self.errors.items():
                if piece in path:
                    if isinstance(status, list):
                        if not status:
                            continue
                        status = status.pop(0)
                    headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
                    raise HttpError(status, None, f"injected error {status}", headers)

    def _take_fail_after(self, length: int) -> int | None:
        """Where a body of ``length`` bytes breaks off: the knob's value if below ``length`` (then cleared)."""
        with self._lock:
            limit = self.fail_after_bytes
            if limit is None or limit >= length:
                return None
            self.fail_after_bytes = None
            return limit


class _HTTPServer(ThreadingHTTPServer):
    """Keeps track of open connections so that :meth:`HubServer.stop` can cut idle keep-alives."""

    daemon_threads = True

    def __init__(self, address, handler, hub: HubServer):
        self.hub = hub
        self.connections: set[socket.socket] = set()
        super().__init__(address, handler)

    def close_connections(self) -> None:
        for connection in list(self.connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address) -> None:
        """Stay quiet about clients that hang up (or connections cut by ``stop``); log anything else."""
        if not isinstance(sys.exc_info()[1], OSError):
            logger.exception("Request from %s failed", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stalls
    server: _HTTPServer

    # -- plumbing ----------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    @property
    def store(self) -> RepoStore:
        return self.server.hub.store

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        self.unread = int(self.headers.get("Content-Length") or 0)
        # A PUT body (LFS content, maybe big) is streamed by its handler; other bodies are read here.
        self.body = b"" if self.command == "PUT" else self._read_body()
        self.hub._log(self.command, unquote(url.path))
        try:
            self.hub._injected_error(unquote(url.path))
            handler, params = self._route(url.path)
            handler(**params)
        except HttpError as error:
            self._send_error(error)
        except NotFound as error:
            self._send_error(HttpError(404, type(error).__name__, str(error)))
        except Conflict as error:
            self._send_error(HttpError(409, None, str(error)))
        except (ValueError, KeyError) as error:
            self._send_error(HttpError(400, None, f"Bad request: {error}"))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as error:  # a bug here: answer 500 rather than drop the connection
            logger.exception("%s %s failed", self.command, self.path)
            self._send_error(HttpError(500, None, f"Internal error: {error!r}"))

    def _route(self, path: str) -> tuple[Callable[..., None], dict[str, str]]:
        """The handler for this request and its URL parameters, once the token and repo access are checked."""
        for methods, pattern, name in _COMPILED_ROUTES:
            match = pattern.fullmatch(path)
            if match and self.command in methods:
                params = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                if name in _WRITES and not self._authorized():
                    raise HttpError(401, None, "Invalid credentials in Authorization header")
                if name in _WRITES and self.hub.token_role == "read":
                    raise HttpError(403, None, "You don't have the rights to write with a read token")
                if name in _SIGNED:
                    self._check_signature(params)
                elif "repo" in params:
                    self._check_access(params["repo"])
                return getattr(self, f"_{name}"), params
        # Repo-shaped paths that match no route name a repo id the store cannot hold (e.g. "gpt2").
        code = "RepoNotFound" if path.startswith("/api/models/") or "/resolve/" in path else None
        raise HttpError(404, code, f"Not found: {self.command} {path}")

    def _send_head(self, status: int, headers: dict[str, str], length: int) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self._send_head(status, {"Content-Type": "application/json", **(headers or {})}, len(body))
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, data: object) -> None:
        self._send(200, json.dumps(data).encode())

    def _read_body(self) -> bytes:
        body = self.rfile.read(self.unread)
        self.unread = 0
        return body

    def _drain(self) -> None:
        """Read and drop what is left of the request body, so an answer sent early still reaches the client."""
        while self.unread > 0:
            chunk = self.rfile.read(min(_CHUNK, self.unread))
            if not chunk:
                self.close_connection = True
                break
            self.unread -= len(chunk)

    def _send_error(self, error: HttpError) -> None:
        self._drain()
        headers = {"X-Error-Message": _header_safe(error.message), **error.headers}
        if error.code:
            headers["X-Error-Code"] = error.code
        self._send(error.status, json.dumps({"error": error.message}).encode(), headers)

    def _param(self, name: str) -> bool:
        return self.query.get(name, [""])[0].lower() in ("1", "true")

    # -- access ------------------------------------------------------------------------------

    def _authorized(self) -> bool:
        return self.hub.token is None or self.headers.get("Authorization") == f"Bearer {self.hub.token}"

    def _check_signature(self, params: dict[str, str]) -> None:
        """An upload href is good for the repo, object and size it was handed out for: 403 otherwise."""
        size = self.query.get("size", [""])[0]
        signature = self.query.get("signature", [""])[0]
        if not size.isdigit() or not hmac.compare_digest(
            signature, self.hub._signature(params["repo"], params["oid"], int(size))
        ):
            raise HttpError(403, None, "Upload URL not signed by this server: ask the LFS batch endpoint for one")
        if not self.store.exists(params["repo"]):
            raise HttpError(404, "RepoNotFound", f"Repository not found: {params['repo']}")

    def _check_access(self, repo: str) -> None:
        """``RepoNotFound`` like the Hub: 404 for a missing repo, 401 for a private one without the token."""
        if not self.store.exists(repo):
            raise HttpError(404, "RepoNotFound", f"Repository not found: {repo}")
        if self.store.is_private(repo) and not self._authorized():
            raise HttpError(401, "RepoNotFound", f"Repository not found: {repo}")

    # -- account and repos -------------------------------------------------------------------

    def _whoami(self) -> None:
        if "Authorization" not in self.headers or not self._authorized():
            raise HttpError(401, None, "Invalid credentials in Authorization header")
        self._send_json(payloads.whoami(self.hub.token_role))

    def _agent_harnesses(self) -> None:
        """The registry that huggingface_hub 2.x fetches on first use, to name the AI agent it runs in: empty."""
        self._send_json({"standardEnvVars": [], "harnesses": {}})

    def _create_repo(self) -> None:
        request = json.loads(self.body)
        if request.get("type", "model") != "model":
            raise ValueError("the stand-in hosts model repos only")
        repo = f"{request.get('organization') or payloads.USER}/{request['name']}"
        private = request.get("visibility") == "private" or request.get("private") is True
        url = f"{self.hub.endpoint}/{repo}"
        try:
            self.store.create_repo(repo, private=private)
        except Conflict as error:  # create_repo(exist_ok=True) reads "url" even from this answer
            self._send(409, json.dumps({"error": str(error), "url": url}).encode())
            return
        # Like the Hub, a new repo starts with one commit holding .gitattributes, so `main` exists.
        self.store.commit(repo, {".gitattributes": payloads.GITATTRIBUTES}, message="initial commit")
        self._send_json({"url": url, "name": repo})

    def _validate_yaml(self) -> None:
        self._send_json({"errors": [], "warnings": []})

    # -- reads -------------------------------------------------------------------------------

    def _model_info(self, repo: str, rev: str | None = None) -> None:
        empty = rev is None and not any(self.store.refs(repo).values())
        snapshot = None if empty else self.store.snapshot(repo, rev)
        private = self.store.is_private(repo)
        self._send_json(payloads.model_info(repo, snapshot, private=private, blobs=self._param("blobs")))

    def _tree(self, repo: str, rev: str, path: str = "") -> None:
        snapshot = self.store.snapshot(repo, rev)
        folder = path.strip("/")
        if folder and folder not in snapshot.dirs:
            raise HttpError(404, "EntryNotFound", f"{folder} is not a folder at {snapshot.sha}")
        self._send_json(payloads.tree(snapshot, folder, recursive=self._param("recursive")))

    def _paths_info(self, repo: str, rev: str) -> None:
        paths = parse_qs(self.body.decode()).get("paths", [])
        self._send_json(payloads.paths_info(self.store.snapshot(repo, rev), paths))

    def _refs(self, repo: str) -> None:
        include_prs = self._param("include_prs")
        self._send_json(payloads.refs(self.store.refs(repo), include_prs=include_prs))

    def _commits(self, repo: str, rev: str) -> None:
        self._send_json(payloads.commits(self.store.history(repo, rev)))

    def _resolve(self, repo: str, rev: str, path: str) -> None:
        snapshot = self.store.snapshot(repo, rev)
        entry = snapshot.files.get(path)
        if entry is None:
            # X-Repo-Commit lets the client cache that the file does not exist at this commit.
            message = f"{path} does not exist at {snapshot.sha}"
            raise HttpError(404, "EntryNotFound", message, {"X-Repo-Commit": snapshot.sha})
        headers = _file_headers(snapshot.sha, entry)
        byte_range = None if self.hub.ignore_range else _byte_range(self.headers.get("Range"), entry.size)
        start, end = byte_range or (0, entry.size)
        if byte_range:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{entry.size}"
        self._send_head(206 if byte_range else 200, headers, end - start)
        if self.command == "GET":
            with self.store.open(repo, entry) as stream:
                stream.seek(start)
                self._send_body(repo, stream, end - start)

    def _send_body(self, repo: str, stream: BinaryIO, length: int) -> None:
        """Write ``length`` bytes, counted per repo, slowed by the throttle, cut off by ``fail_after_bytes``."""
        limit = self.hub._take_fail_after(length)
        stop = length if limit is None else limit
        sent, started = 0, time.monotonic()
        while sent < stop:
            chunk = stream.read(min(_CHUNK, stop - sent))
            self.hub._count(repo, len(chunk))  # before the write: once a client has the bytes, they are counted
            self.wfile.write(chunk)
            sent += len(chunk)
            throttle = self.hub.throttle_bytes_per_s
            if throttle:
                time.sleep(max(0.0, sent / throttle - (time.monotonic() - started)))
        if limit is not None:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    # -- writes ------------------------------------------------------------------------------

    def _preupload(self, repo: str, rev: str) -> None:
        """"lfs" for what the store keeps in LFS, "regular" (base64 in the commit) for the rest.

        A client with Xet enabled uploads every "lfs" file to Xet storage, which has no local
        equivalent: it needs ``HF_HUB_DISABLE_XET=1``, or ``preupload_lfs = False`` here.
        """

        def mode(file: dict) -> str:
            return "lfs" if self.hub.preupload_lfs and is_lfs(file["path"], int(file["size"])) else "regular"

        files = [
            {"path": f["path"], "uploadMode": mode(f), "shouldIgnore": False, "oid": None}
            for f in json.loads(self.body)["files"]
        ]
        self._send_json({"files": files})

    def _lfs_batch(self, repo: str) -> None:
        """Upload instructions per object: a signed PUT href and a verify href, or none when the store has it."""
        request = json.loads(self.body)
        if request.get("operation") != "upload":
            raise ValueError(f"the stand-in takes LFS uploads only, not {request.get('operation')!r}")
        if "basic" not in request.get("transfers", ["basic"]):
            raise HttpError(422, None, "the stand-in offers the basic LFS transfer only")
        objects = []
        for item in request["objects"]:
            oid, size = item.get("oid"), item.get("size")
            if not (isinstance(oid, str) and re.fullmatch(r"[0-9a-f]{64}", oid)):
                objects.append(payloads.lfs_batch_error(oid, size, 422, f"not a sha256 oid: {oid!r}"))
            elif not isinstance(size, int) or isinstance(size, bool) or size < 0:
                objects.append(payloads.lfs_batch_error(oid, size, 422, f"invalid size for {oid}: {size!r}"))
            elif self.store.lfs.size(oid) == size:
                objects.append(payloads.lfs_batch_object(oid, size, None))
            else:
                signature = self.hub._signature(repo, oid, size)
                upload = f"{self.hub.endpoint}{LFS_UPLOAD_PREFIX}{quote(repo)}/{oid}?size={size}&signature={signature}"
                actions = {
                    "upload": {"href": upload, "expires_in": 3600},
                    "verify": {"href": f"{self.hub.endpoint}/{quote(repo)}.git/info/lfs/objects/verify"},
                }
                objects.append(payloads.lfs_batch_object(oid, size, actions))
        body = json.dumps(payloads.lfs_batch(objects)).encode()
        self._send(200, body, {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_upload(self, repo: str, oid: str) -> None:
        """Take the bytes of one object (basic transfer): stored only when all of them came and match the oid."""
        size = int(self.query["size"][0])
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower() or "Content-Length" not in self.headers:
            self.close_connection = True  # the body's end is unknown: this connection cannot carry another request
            raise HttpError(411, None, "an LFS upload needs a Content-Length")
        if self.unread != size:
            raise HttpError(400, None, f"sent {self.unread} bytes for LFS object {oid}, which has {size}")
        limit = self.hub._take_fail_after(size)
        stream = _BodyStream(self, size if limit is None else limit)
        try:
            self.store.lfs.receive(stream, oid, size)
        except ContentMismatch as error:
            raise HttpError(400, None, f"{error}; nothing was stored") from None
        except IncompleteUpload:  # cut off by fail_after_bytes, or the client hung up: there is no one to answer
            self.close_connection = True
            if limit is not None:
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.hub._uploaded(oid)
        self._send(200, b"", {"ETag": f'"{oid}"'})

    def _lfs_verify(self, repo: str) -> None:
        """200 once the store has the object at that size; 404 otherwise."""
        request = json.loads(self.body)
        oid, size = request["oid"], request["size"]
        stored = self.store.lfs.size(oid)
        if stored is None:
            raise HttpError(404, None, f"LFS object {oid} was not uploaded")
        if stored != size:
            raise HttpError(422, None, f"LFS object {oid} has {stored} bytes, not {size}")
        self._send_json({"oid": oid, "size": size})

    def _commit(self, repo: str, rev: str) -> None:
        request = payloads.parse_commit(self.body, self.store.lfs)
        deletes = request.deleted_files + self._files_under(repo, rev, request.deleted_folders)
        pr_url = None
        if self._param("create_pr"):
            number, sha = self.store.create_pr(
                repo, request.files, message=request.message, base=rev, delete=deletes
            )
            pr_url = f"{self.hub.endpoint}/{repo}/discussions/{number}"
        else:
            sha = self.store.commit(
                repo, request.files, branch=rev, message=request.message, delete=deletes, parent=request.parent
            )
        commit_url = f"{self.hub.endpoint}/{repo}/commit/{sha}"
        self._send_json({"success": True, "commitOid": sha, "commitUrl": commit_url, "pullRequestUrl": pr_url})

    def _open_pull_request(self, repo: str) -> None:
        """Open a pull request the way ``upload_folder`` does when hf_xet is installed: first an empty PR."""
        request = json.loads(self.body)
        if not request.get("pullRequest"):
            raise ValueError("the stand-in has pull requests only, no discussions")
        number, _sha = self.store.create_pr(repo, {}, message=request["title"])
        self._send_json({"num": number})

    def _pull_request(self, repo: str, num: str) -> None:
        head = self.store.history(repo, f"refs/pr/{num}")[0]
        self._send_json(payloads.pull_request(repo, int(num), head))

    def _files_under(self, repo: str, rev: str, folders: list[str]) -> list[str]:
        if not folders:
            return []
        files = self.store.list_files(repo, rev)
        return [path for path in files if any(path.startswith(f"{folder}/") for folder in folders)]

    def _create_branch(self, repo: str, name: str) -> None:
        starting_point = json.loads(self.body or b"{}").get("startingPoint") or "main"
        self.store.create_branch(repo, name, revision=starting_point)
        self._send_json({})

    def _delete_branch(self, repo: str, name: str) -> None:
        self.store.delete_branch(repo, name)
        self._send_json({})

    def _create_tag(self, repo: str, rev: str) -> None:
        self.store.create_tag(repo, json.loads(self.body)["tag"], revision=rev)
        self._send_json({})

    def _delete_tag(self, repo: str, name: str) -> None:
        self.store.delete_tag(repo, name)
        self._send_json({})


class _BodyStream:
    """The request body as a stream of at most ``limit`` bytes, keeping the handler's count of unread bytes."""

    def __init__(self, handler: _Handler, limit: int):
        self.handler, self.left = handler, limit

    def read(self, n: int) -> bytes:
        chunk = self.handler.rfile.read(min(n, self.left, self.handler.unread))
        self.left -= len(chunk)
        self.handler.unread -= len(chunk)
        return chunk


def _file_headers(sha: str, entry: FileEntry) -> dict[str, str]:
    """What ``/resolve`` tells of a file: its commit, its ETag, and for LFS files the linked oid and size."""
    headers = {
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        "X-Repo-Commit": sha,
        "ETag": f'"{entry.lfs.oid if entry.lfs else entry.blob_id}"',
    }
    if entry.lfs:
        headers.update({"X-Linked-Etag": f'"{entry.lfs.oid}"', "X-Linked-Size": str(entry.size)})
    return headers


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a single ``Range: bytes=a-b`` (or ``a-``, ``-n``); None when absent or malformed."""
    match = _RANGE_RE.fullmatch(header.strip()) if header else None
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":
        return max(size - int(last), 0), size
    start, end = int(first), min(int(last) + 1, size) if last else size
    if start >= size:
        message = f"Range {header} starts after the {size} bytes of the file"
        raise HttpError(416, None, message, {"Content-Range": f"bytes */{size}"})
    return (start, end) if start < end else None


def _header_safe(text: str) -> str:
    """``text`` on one line of ASCII, fit for a header even when it quotes a path from the request."""
    return " ".join(text.split()).encode("ascii", "backslashreplace").decode()
