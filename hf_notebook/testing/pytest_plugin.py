"""pytest fixtures for tests that talk to the local Hub stand-in through the real ``huggingface_hub`` client.

Enable with ``pytest_plugins = ["hf_notebook.testing.pytest_plugin"]`` in ``tests/conftest.py``.

At configure time, before any test module imports ``huggingface_hub`` (it reads its environment
once, on import), the plugin isolates the session: ``HF_HOME`` in a temp dir (so no stored token
and an empty default cache), no ``HF_TOKEN``, no offline mode, loopback never proxied.
The client keeps its defaults: telemetry on (its user agent names the libraries, as the Hub sees it),
Xet on (large files through hf_xet, against the stand-in's own Xet storage) and huggingface_hub's
shared blob store on; a test that needs the plain HTTP path makes
its repo LFS-only (``hub_store.create_repo(repo_id, xet=False)``). It starts one :class:`HubServer` on a
temp store and puts its endpoint in ``HF_ENDPOINT``. Everything is restored and removed at unconfigure.

Fixtures:

- ``hub_server``: that server, with counters, request log and knobs reset before and after each test.
- ``hub_store``: its :class:`RepoStore` (shared by the session: use ``hub_repo_id`` for fresh names).
- ``hub_repo_id``: a repo id no other test uses.
- ``hub_token``: turns auth on for one test and returns the token private repos and writes then need.
- ``hf_cache``: a fresh, empty HF cache dir for one test, used by huggingface_hub and transformers
  alike (``huggingface_hub.constants.HF_HUB_CACHE`` is patched, ``HF_HUB_CACHE`` set for subprocesses).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from .hub import HubServer, RepoStore

_UNSET = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_XET_CACHE",
    "HUGGINGFACE_CO_STAGING",
    "HF_HUB_DISABLE_XET",  # the client's defaults are what is tested
    "HF_HUB_DISABLE_SHARED_BLOBS",
    "HF_HUB_DISABLE_TELEMETRY",  # on by default: the user agent then names the libraries, as the Hub sees it
)
_SET = ("HF_HOME", "HF_ENDPOINT", "NO_PROXY", "no_proxy")

_SERVER = pytest.StashKey[HubServer]()
_SAVED_ENV = pytest.StashKey[dict]()
_TMP_DIR = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    if "huggingface_hub" in sys.modules:
        raise pytest.UsageError(
            "huggingface_hub was imported before hf_notebook.testing.pytest_plugin could point HF_ENDPOINT at the "
            "local Hub. Import it inside tests or fixtures, not at the top of a conftest.py."
        )
    tmp = Path(tempfile.mkdtemp(prefix="hf-notebook-tests-"))
    server = HubServer(tmp / "hub").start()
    config.stash[_TMP_DIR] = tmp
    config.stash[_SERVER] = server
    config.stash[_SAVED_ENV] = {name: os.environ.get(name) for name in _UNSET + _SET}
    for name in _UNSET:
        os.environ.pop(name, None)
    loopback = "127.0.0.1,localhost"
    os.environ.update(
        HF_HOME=str(tmp / "hf-home"),
        HF_ENDPOINT=server.endpoint,
        NO_PROXY=f"{loopback},{os.environ['NO_PROXY']}" if os.environ.get("NO_PROXY") else loopback,
        no_proxy=f"{loopback},{os.environ['no_proxy']}" if os.environ.get("no_proxy") else loopback,
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SERVER not in config.stash:
        return
    config.stash[_SERVER].stop()
    for name, value in config.stash[_SAVED_ENV].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(config.stash[_TMP_DIR], ignore_errors=True)


def _reset(server: HubServer) -> None:
    server.reset_counters()
    server.throttle_bytes_per_s = None
    server.fail_after_bytes = None
    server.ignore_range = False
    server.errors = {}
    server.answer_delay = {}
    server.answer_commit = {}
    server.retry_after = None
    server.token = None
    server.token_role = "write"
    server.xet = True
    server.xet_unknown_hash = set()


@pytest.fixture
def hub_server(request: pytest.FixtureRequest):
    """The session's Hub stand-in, counters and knobs reset around the test."""
    server = request.config.stash[_SERVER]
    _reset(server)
    yield server
    _reset(server)


@pytest.fixture(scope="session")
def hub_store(request: pytest.FixtureRequest) -> RepoStore:
    """The store behind the session's Hub stand-in."""
    return request.config.stash[_SERVER].store


@pytest.fixture
def hub_repo_id(request: pytest.FixtureRequest) -> str:
    """A repo id unique to this test, e.g. ``tests/test_download-1a2b3c``."""
    name = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:60].strip("-")
    return f"tests/{name}-{secrets.token_hex(3)}"


@pytest.fixture
def hub_token(hub_server: HubServer):
    """Require this token for private repos and writes during the test; return it."""
    hub_server.token = f"hf_standin_{secrets.token_hex(8)}"
    yield hub_server.token
    hub_server.token = None


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty HF hub cache for this test, the default for huggingface_hub and transformers."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # a test that set HF_HUB_OFFLINE had it followed
    return cache
