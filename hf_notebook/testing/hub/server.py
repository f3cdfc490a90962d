"""The Hub's HTTP API over a :class:`RepoStore`, with knobs for tests: throttle, broken bodies, byte counters.

Model repos, and kernel repos (``/api/kernels/...``, ``/kernels/{repo}/resolve/...``: reads of small
files, from ``store.kernels``). Two listening sockets, as the Hub and its storage are two hosts: ``endpoint``
(the Hub API) and ``cas_endpoint`` (Xet's CAS and the CAS bridge). ``/resolve`` answers with the
Hub's headers: ``X-Repo-Commit``, ``ETag`` (git blob oid, or the sha256 for LFS files),
``X-Linked-Etag``/``X-Linked-Size`` for LFS files. Small files and the LFS files of LFS-only repos
are served right there, with ``Range`` support. An LFS file of a Xet repo (the default, as on the
Hub) is answered, HEAD and GET alike, with a 302 to the CAS bridge plus ``X-Xet-Hash`` and
``Link: <.../xet-read-token/{sha}>; rel="xet-auth"``: the client does not follow a redirect to
another host for its metadata, downloads through hf_xet (read token, then the CAS's
``/v2/reconstructions/{hash}`` and ranges of ``/xorbs/...``), and a client without Xet follows the
302 to the bridge, which serves the bytes with ``Range``. Errors carry the Hub's ``X-Error-Code``
so the client raises the same exception types as against the Hub.
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
import ssl
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO
from urllib.parse import parse_qs, quote, unquote, urlsplit

from . import payloads
from .lfs import ContentMismatch, IncompleteUpload, is_lfs
from .store import Conflict, FileEntry, NotFound, RepoStore, Snapshot

logger = logging.getLogger(__name__)

_CHUNK = 32 * 1024
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")
_REPO = r"/api/(?:models|(?P<kind>kernels))/(?P<repo>[^/]+/[^/]+)"  # kind: a kernel repo (the Hub's repo type)
_REV = r"(?P<rev>[^/]+)"  # one path segment: the client quotes '/' in revisions as %2F
_NAME = r"(?P<name>[^/]+)"  # a branch or tag name, quoted the same way
_GIT_REPO = r"/(?P<repo>[^/]+/[^/]+)\.git"  # model repos have no type prefix here
_OID = r"(?P<oid>[0-9a-f]{64})"
_HASH = r"[0-9a-f]{64}"
LFS_UPLOAD_PREFIX = "/lfs-upload/"  # upload hrefs: "/lfs-upload/{repo}/{oid}?size=N&signature=S", like signed S3 URLs
BRIDGE_PREFIX = "/cas-bridge/"  # on the CAS host: "/cas-bridge/{repo}/{oid}?signature=S", bytes of a Xet file
XORB_PREFIX = "/xorbs/"  # on the CAS host: "/xorbs/{repo}/{xorb}?signature=S", ranges of a xorb (as from S3)
XET_TELEMETRY_PATH = "/v1/telemetry"  # on the CAS host
XET_TOKEN_TTL_S = 3600
_ROUTES = [
    ("GET", r"/api/whoami-v2", "whoami"),
    ("GET", r"/api/agent-harnesses", "agent_harnesses"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", r"/api/models", "list_models"),
    ("GET", rf"{_REPO}(?:/revision/{_REV})?", "model_info"),
    ("GET", rf"{_REPO}/tree/{_REV}(?:/(?P<path>.*))?", "tree"),
    ("POST", rf"{_REPO}/paths-info/{_REV}", "paths_info"),
    ("GET", rf"{_REPO}/refs", "refs"),
    ("GET", rf"{_REPO}/commits/{_REV}", "commits"),
    ("GET HEAD", rf"(?:/(?P<kind>kernels))?/(?P<repo>[^/]+/[^/]+)/resolve/{_REV}/(?P<path>.+)", "resolve"),
    ("GET", rf"{_REPO}/xet-read-token/(?P<rev>.+)", "xet_read_token"),  # the client does not quote '/' here
    ("GET", rf"{_REPO}/xet-write-token/(?P<rev>.+)", "xet_write_token"),
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
_CAS_ROUTES = [
    ("GET HEAD", rf"{BRIDGE_PREFIX}(?P<repo>[^/]+/[^/]+)/{_OID}", "bridge"),
    ("GET", rf"/v2/reconstructions/(?P<xet_hash>{_HASH})", "reconstruction"),
    ("GET", rf"{XORB_PREFIX}(?P<repo>[^/]+/[^/]+)/(?P<xorb>{_HASH})", "xorb"),
]
_HUB = [(methods.split(), re.compile(pattern), name) for methods, pattern, name in _ROUTES]
_CAS = [(methods.split(), re.compile(pattern), name) for methods, pattern, name in _CAS_ROUTES]
_WRITES = {
    "create_repo", "preupload", "commit", "create_branch", "delete_branch", "create_tag", "delete_tag",
    "open_pull_request", "lfs_batch", "lfs_verify", "xet_write_token",
}
# Reached without the Hub token (an upload href, a redirect to another host): a signature in the URL stands for it.
_SIGNED = {"lfs_upload", "bridge", "xorb"}


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
    time (``[503, 503]``: fail twice, then serve; a 0 serves that one: ``[0, 503]``); ``retry_after``
    adds that ``Retry-After`` header; ``answer_delay`` maps a path piece to seconds to wait before answering
    (a slow first byte); ``answer_commit`` maps a revision asked for to another one the server answers
    with instead (a broken mirror or a tampering proxy: every route that names a revision). ``requests`` logs ``(method, unquoted path)`` on both hosts. With ``tls`` (a
    server-side ``ssl.SSLContext``) both hosts speak HTTPS, as the Hub and its CDN do: a client trusts
    its certificate through ``SSL_CERT_FILE``.

    Xet, on as on the Hub (``xet = False``: a server without it, no Xet headers nor token routes;
    ``RepoStore.create_repo(..., xet=False)``: one LFS-only repo). Read tokens
    (``/api/models/{repo}/xet-read-token/{rev}``) name the HTTP CAS on ``cas_endpoint``; write
    tokens (``.../xet-write-token/{rev}``, which needs the write token) name a new hf_xet local CAS
    in the store, so a push goes through the real hf_xet into it, and its commit names the files by
    sha256. CAS and bridge bodies are file bodies for ``throttle_bytes_per_s``, ``fail_after_bytes``
    and :meth:`bytes_served`, and ``errors`` reaches them by path (``"/reconstructions/"``,
    ``"/xorbs/"``, ``"/cas-bridge/"``). hf_xet retries a 5xx for minutes and takes a 403 on a xorb
    for an expired URL (asks again, for minutes); other 4xx fail at once. ``xet_unknown_hash`` holds
    path pieces (``""``: every file): Xet files whose path has one are announced (``/resolve``, tree,
    paths-info) with a Xet hash the CAS lacks.

    Uploads: ``preupload`` answers ``"lfs"`` for the files :func:`~.lfs.is_lfs` puts in LFS (weights
    suffixes, 1 MiB and up). A client with hf_xet sends those through Xet, as said above; one without
    it (or with its Xet turned off, as the LFS tier of the tests does) through the LFS batch API:
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
        tls: ssl.SSLContext | None = None,
    ):
        self.store = store if isinstance(store, RepoStore) else RepoStore(store)
        self.token = token
        self.token_role = "write"  # what whoami says the token may do ("read": writes get 403)
        self.throttle_bytes_per_s: float | None = None
        self.fail_after_bytes: int | None = None
        self.ignore_range = False
        self.errors: dict[str, int | list[int]] = {}
        self.answer_delay: dict[str, float] = {}  # path piece -> seconds before the answer starts (a slow first byte)
        self.answer_commit: dict[str, str] = {}  # revision asked for -> the one answered instead (a lying mirror)
        self.retry_after: str | None = None
        self.requests: list[tuple[str, str]] = []
        self.lfs_uploads: list[str] = []
        self.xet = True
        self.xet_unknown_hash: set[str] = set()
        self._xet_tokens: dict[str, tuple[str, str, int]] = {}  # token -> (repo, "read" or "write", expiry)
        self._secret = secrets.token_bytes(16)
        self._bytes: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._servers = [_HTTPServer((host, port), _Handler, self, _HUB), _HTTPServer((host, 0), _Handler, self, _CAS)]
        if tls is not None:  # the handshake happens in each connection's own thread, on its first read
            for httpd in self._servers:
                httpd.socket = tls.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
        scheme = "http" if tls is None else "https"
        self.endpoint, self.cas_endpoint = (f"{scheme}://{host}:{httpd.server_address[1]}" for httpd in self._servers)
        self._threads: list[threading.Thread] = []

    def start(self) -> HubServer:
        """Serve in daemon threads; return self. Starting a running server does nothing."""
        if self._threads:
            return self
        for httpd, name in zip(self._servers, ("hub-standin", "hub-standin-cas")):
            # A short poll interval makes stop() quick: shutdown() waits for the loop to look at its flag.
            serve = httpd.serve_forever
            thread = threading.Thread(target=serve, kwargs={"poll_interval": 0.05}, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving and drop open connections, so clients see a Hub that is gone."""
        for httpd, thread in zip(self._servers, self._threads):
            httpd.shutdown()
            thread.join()
        self._threads = []
        for httpd in self._servers:
            httpd.close_connections()
            httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def bytes_served(self, repo_id: str | None = None, via: str | None = None) -> int:
        """File-body bytes sent, for one repo or in total: ``via`` ``"resolve"`` (straight from
        ``/resolve``), ``"bridge"`` (the CAS bridge), ``"xet"`` (xorb bytes from the CAS, compressed
        as stored), or None for all of them."""
        with self._lock:
            return sum(n for (way, repo), n in self._bytes.items() if repo_id in (None, repo) and via in (None, way))

    def reset_counters(self) -> None:
        """Zero the byte counters and clear the request log and ``lfs_uploads``."""
        with self._lock:
            self._bytes.clear()
            self.requests.clear()
            self.lfs_uploads.clear()

    def _count(self, repo_id: str, via: str, n: int) -> None:
        with self._lock:
            self._bytes[via, repo_id] = self._bytes.get((via, repo_id), 0) + n

    def _log(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def _signature(self, *parts: object) -> str:
        """What signs a URL this server hands out (an upload href, a bridge or xorb URL) for what ``parts`` name."""
        return hmac.new(self._secret, "\0".join(map(str, parts)).encode(), hashlib.sha256).hexdigest()[:32]

    def _new_xet_token(self, repo: str, kind: str) -> tuple[str, int]:
        token, expires = secrets.token_urlsafe(24), int(time.time()) + XET_TOKEN_TTL_S
        with self._lock:
            self._xet_tokens[token] = (repo, kind, expires)
        return token, expires

    def _xet_token_repo(self, token: str, kind: str) -> str | None:
        """The repo a live Xet token of ``kind`` was handed out for, or None."""
        with self._lock:
            repo, token_kind, expires = self._xet_tokens.get(token, (None, None, 0))
        return repo if token_kind == kind and expires > time.time() else None

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
                    if not status:  # 0 in a list: serve this request
                        continue
                    headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
                    raise HttpError(status, None, f"injected error {status}", headers)

    def _delay_answer(self, path: str) -> None:
        """Wait as long as the ``answer_delay`` knob asks for ``path`` before answering."""
        with self._lock:
            delay = max((seconds for piece, seconds in self.answer_delay.items() if piece in path), default=0.0)
        time.sleep(delay)

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

    def __init__(self, address, handler, hub: HubServer, routes: list):
        self.hub, self.routes = hub, routes
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

    kind: str | None = None

    @property
    def store(self) -> RepoStore:
        return self.server.hub.store.kernels if self.kind else self.server.hub.store

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        self.unread = int(self.headers.get("Content-Length") or 0)
        # A PUT body (LFS content, maybe big) is streamed by its handler; other bodies are read here.
        self.body = b"" if self.command == "PUT" else self._read_body()
        if self.server.routes is _CAS and url.path == XET_TELEMETRY_PATH:
            # hf_xet's reports on its transfers, sent on its own schedule (maybe during a later test): taken,
            # and kept out of the request log and the knobs.
            self._send_json({})
            return
        self.hub._log(self.command, unquote(url.path))
        self.hub._delay_answer(unquote(url.path))
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
        for methods, pattern, name in self.server.routes:
            match = pattern.fullmatch(path)
            if match and self.command in methods:
                params = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                self.kind = params.pop("kind", None)  # "kernels": the request is for a kernel repo
                if params.get("rev") in self.hub.answer_commit:
                    params["rev"] = self.hub.answer_commit[params["rev"]]
                if name in _WRITES and not self._authorized():
                    raise HttpError(401, None, "Invalid credentials in Authorization header")
                if name in _WRITES and self.hub.token_role == "read":
                    raise HttpError(403, None, "You don't have the rights to write with a read token")
                if name in _SIGNED:
                    self._check_signature(name, params)
                elif "repo" in params:
                    self._check_access(params["repo"])
                return getattr(self, f"_{name}"), params
        # Repo-shaped paths that match no route name a repo id the store cannot hold (e.g. "gpt2").
        repo_shaped = path.startswith(("/api/models/", "/api/kernels/")) or "/resolve/" in path
        code = "RepoNotFound" if self.server.routes is _HUB and repo_shaped else None
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

    def _check_signature(self, route: str, params: dict[str, str]) -> None:
        """A signed URL is good for what it was handed out for (route, repo, object, size): 403 otherwise."""
        size = self.query.get("size", [""])[0]
        signature = self.query.get("signature", [""])[0]
        signed = [value for key, value in params.items() if key != "repo"] + ([size] if route == "lfs_upload" else [])
        if not hmac.compare_digest(signature, self.hub._signature(route, params["repo"], *signed)):
            raise HttpError(403, None, f"URL not signed by this server for {route}: ask the Hub for one")
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

    def _list_models(self) -> None:
        """``/api/models?search=&author=&limit=``: public repos whose id holds ``search``, by ``author`` (one page)."""
        search = self.query.get("search", [""])[0].lower()
        author = self.query.get("author", [""])[0]
        limit = int(self.query.get("limit", ["1000"])[0] or 1000)
        ids = [r for r in self.store.repo_ids() if search in r.lower() and (not author or r.split("/")[0] == author)
               and not self.store.is_private(r)]
        self._send_json([{"id": r, "modelId": r, "private": False} for r in ids[:limit]])

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
        xet_hashes = self._xet_hashes(repo, snapshot)
        self._send_json(payloads.tree(snapshot, folder, recursive=self._param("recursive"), xet_hashes=xet_hashes))

    def _paths_info(self, repo: str, rev: str) -> None:
        paths = parse_qs(self.body.decode()).get("paths", [])
        snapshot = self.store.snapshot(repo, rev)
        self._send_json(payloads.paths_info(snapshot, paths, self._xet_hashes(repo, snapshot, paths)))

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
        xet_hash = self._xet_hashes(repo, snapshot, [path]).get(path)
        if xet_hash is None:
            self._send_content(repo, "resolve", entry.size, headers, lambda: self.store.open(repo, entry))
            return
        oid = entry.lfs.oid
        token_url = f"{self.hub.endpoint}/api/{self.kind or 'models'}/{repo}/xet-read-token/{snapshot.sha}"
        bridge = f"{self.hub.cas_endpoint}{BRIDGE_PREFIX}{quote(repo)}/{oid}"
        headers.update({
            "X-Xet-Hash": xet_hash,
            "Link": f'<{token_url}>; rel="xet-auth"',
            "Location": f"{bridge}?signature={self.hub._signature('bridge', repo, oid)}",
        })
        self._send_head(302, headers, 0)

    def _xet_hashes(self, repo: str, snapshot: Snapshot, paths: list[str] | None = None) -> dict[str, str]:
        """The Xet hashes announced for the LFS files at ``paths`` (default: all), if the repo is served by Xet."""
        if not (self.hub.xet and self.store.is_xet(repo)):
            return {}
        entries = [snapshot.files.get(path) for path in (snapshot.files if paths is None else paths)]
        return {entry.path: self._xet_hash(entry) for entry in entries if entry and entry.lfs}

    def _xet_hash(self, entry: FileEntry) -> str:
        if any(piece in entry.path for piece in self.hub.xet_unknown_hash):
            return _unknown_xet_hash(entry.lfs.oid)
        return self.store.xet_file(entry.lfs.oid).hash

    def _send_content(self, repo: str, via: str, size: int, headers: dict, source: Callable[[], BinaryIO]) -> None:
        """Answer with the bytes of ``source()`` (one ``Range`` honoured) as a file body counted as ``via``."""
        honour_range = via == "xet" or not self.hub.ignore_range
        byte_range = _byte_range(self.headers.get("Range"), size) if honour_range else None
        start, end = byte_range or (0, size)
        if byte_range:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        self._send_head(206 if byte_range else 200, headers, end - start)
        if self.command == "GET":
            with source() as stream:
                stream.seek(start)
                self._send_body(repo, via, stream, end - start)

    def _send_body(self, repo: str, via: str, stream: BinaryIO, length: int) -> None:
        """Write ``length`` bytes, counted per repo, slowed by the throttle, cut off by ``fail_after_bytes``."""
        limit = self.hub._take_fail_after(length)
        stop = length if limit is None else limit
        sent, started = 0, time.monotonic()
        while sent < stop:
            chunk = stream.read(min(_CHUNK, stop - sent))
            self.hub._count(repo, via, len(chunk))  # before the write: once a client has the bytes, they are counted
            self.wfile.write(chunk)
            sent += len(chunk)
            throttle = self.hub.throttle_bytes_per_s
            if throttle:
                time.sleep(max(0.0, sent / throttle - (time.monotonic() - started)))
        if limit is not None:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    # -- Xet: tokens on the Hub, then the CAS host --------------------------------------------

    def _xet_read_token(self, repo: str, rev: str) -> None:
        self.store.resolve(repo, rev)  # RevisionNotFound for a revision the repo does not have
        self._send_xet_token(repo, "read", self.hub.cas_endpoint)

    def _xet_write_token(self, repo: str, rev: str) -> None:
        """A write token names a new local CAS in the store, for hf_xet (``rev`` is ``None`` when opening a PR)."""
        self._send_xet_token(repo, "write", self.store.xet.push_endpoint())

    def _send_xet_token(self, repo: str, kind: str, cas_url: str) -> None:
        if not self.hub.xet:
            raise HttpError(404, None, "This server has no Xet storage")
        token, expires = self.hub._new_xet_token(repo, kind)
        headers = {"X-Xet-Cas-Url": cas_url, "X-Xet-Access-Token": token, "X-Xet-Token-Expiration": str(expires)}
        self._send(200, json.dumps(payloads.xet_token(token, expires, cas_url)).encode(), headers)

    def _reconstruction(self, xet_hash: str) -> None:
        """Which xorb ranges make up the file (or the bytes its ``Range`` asks for), with signed URLs to them."""
        authorization = self.headers.get("Authorization", "")
        repo = self.hub._xet_token_repo(authorization.removeprefix("Bearer "), "read")
        if repo is None:
            raise HttpError(401, None, "Invalid or expired Xet token: ask the Hub's xet-read-token route for one")
        file = self.store.xet.file(xet_hash)
        if file is None:
            raise HttpError(404, None, f"No file with Xet hash {xet_hash}")
        start, end = _byte_range(self.headers.get("Range"), file.size) or (0, file.size)

        def url(xorb: str) -> str:
            signature = self.hub._signature("xorb", repo, xorb)
            return f"{self.hub.cas_endpoint}{XORB_PREFIX}{quote(repo)}/{xorb}?signature={signature}"

        self._send_json(payloads.xet_reconstruction(self.store.xet.reconstruction(file, start, end), url))

    def _xorb(self, repo: str, xorb: str) -> None:
        path = self.store.xet.xorb_path(xorb)
        if path is None:
            raise HttpError(404, None, f"No xorb {xorb}")
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        self._send_content(repo, "xet", path.stat().st_size, headers, lambda: open(path, "rb"))

    def _bridge(self, repo: str, oid: str) -> None:
        """The bytes of a Xet-stored file over plain HTTP, for clients without Xet (the Hub's CAS bridge)."""
        path = self.store.lfs_path(oid)
        if path is None:
            raise HttpError(404, None, f"No content {oid}")
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", "ETag": f'"{oid}"'}
        self._send_content(repo, "bridge", path.stat().st_size, headers, lambda: open(path, "rb"))

    # -- writes ------------------------------------------------------------------------------

    def _preupload(self, repo: str, rev: str) -> None:
        """"lfs" for what the store keeps in LFS (the client sends it through Xet, or LFS without hf_xet),
        "regular" (base64 in the commit) for the rest."""

        def mode(file: dict) -> str:
            return "lfs" if is_lfs(file["path"], int(file["size"])) else "regular"

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
                signature = self.hub._signature("lfs_upload", repo, oid, size)
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
        request = payloads.parse_commit(self.body, self.store.lfs_path)
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


def _unknown_xet_hash(oid: str) -> str:
    """A well-formed Xet hash that no CAS has: what ``xet_unknown_hash`` announces instead of the real one."""
    return hashlib.sha256(f"not in any CAS: {oid}".encode()).hexdigest()


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
