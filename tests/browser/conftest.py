"""Fixtures for the real-browser tier: JupyterLab on the Hub stand-in, driven by headless Chromium.

Playwright's sync API must be started here (a conftest), not in a test module; see
``/work/shared/notes/browser-tests.md`` for the recipe and the kernel-idle race.
"""

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from hf_notebook.demo import ROOT, free_port, start_lab, stop

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


@dataclass
class Lab:
    """A running JupyterLab: where it is and the folder it serves."""

    port: int
    token: str
    root_dir: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/lab/tree/{path}?token={self.token}"


def isolated_jupyter_env(home: Path) -> dict[str, str]:
    """Jupyter and IPython folders under ``home``; Lab without its news toast, every cell in the DOM."""
    env = {name: str(home / name.lower()) for name in (
        "JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR", "IPYTHONDIR",
    )}
    settings = Path(env["JUPYTERLAB_SETTINGS_DIR"])
    write_settings(settings, "apputils-extension/notification", {"fetchNews": "false"})
    write_settings(settings, "notebook-extension/tracker", {"windowingMode": "none"})
    return env


def write_settings(settings_dir: Path, plugin: str, values: dict) -> None:
    """Override one ``@jupyterlab`` plugin's user settings."""
    path = settings_dir / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))


@pytest.fixture(scope="session")
def lab(tiny_hub, tmp_path_factory):
    """JupyterLab serving a copy of the notebooks (runs must not write into the checkout).

    Its kernels inherit the session's ``HF_ENDPOINT`` (the stand-in with the tiny models) and get
    a Hub cache of their own.
    """
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (make browser-deps) to run browser tests")
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    home = tmp_path_factory.mktemp("lab")
    root_dir = home / "notebooks"
    root_dir.mkdir()
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        shutil.copy(notebook, root_dir)
    env = {**os.environ, **isolated_jupyter_env(home), "HF_HUB_CACHE": str(home / "hf-cache")}
    server = Lab(port=free_port(), token=secrets.token_hex(16), root_dir=root_dir)
    with open(home / "lab.log", "wb") as log:
        proc = start_lab(root_dir, env, port=server.port, token=server.token, log=log)
        yield server
        stop(proc)


@pytest.fixture(scope="session")
def browser(lab, tmp_path_factory):
    """A headless Debian Chromium (never Playwright's own download) in a throwaway profile."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900},
        )
        yield context
        context.close()


@pytest.fixture
def artifacts() -> Path:
    """The git-ignored folder for screenshots."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def page(browser):
    page = browser.new_page()
    yield page
    page.close()
