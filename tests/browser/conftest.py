"""Fixtures for the real-browser tier: JupyterLab on the Hub stand-in, driven by headless Chromium.

Playwright's sync API must be started here (a conftest), not in a test module; see
``/work/shared/notes/browser-tests.md`` for the recipe and the kernel-idle race. ``LabPage`` (the
``notebook`` fixture) opens a notebook and waits for a really idle kernel, runs all cells, saves.
The same server also serves Jupyter Notebook 7 (``/tree``, ``/notebooks/<path>``) where it is installed:
``Notebook7Page`` (the ``notebook7`` fixture) drives a notebook there.
"""

import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    def url(self, path: str, workspace: str = "") -> str:
        """``path`` in Lab; in a workspace of that name if given (a fresh one restores no other open notebook)."""
        where = f"workspaces/{workspace}/" if workspace else ""
        return f"http://127.0.0.1:{self.port}/lab/{where}tree/{path}?token={self.token}"

    def notebook7_url(self, path: str) -> str:
        """``path`` in Jupyter Notebook 7 (the same server, where the notebook package is installed)."""
        return f"http://127.0.0.1:{self.port}/notebooks/{path}?token={self.token}"


def isolated_jupyter_env(home: Path) -> dict[str, str]:
    """Jupyter and IPython folders under ``home``; Lab without its news toast, every cell in the DOM."""
    env = {name: str(home / name.lower()) for name in (
        "JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR", "IPYTHONDIR",
    )}
    settings = Path(env["JUPYTERLAB_SETTINGS_DIR"])
    write_settings(settings, "apputils-extension/notification", {"fetchNews": "false"})
    write_settings(settings, "notebook-extension/tracker", {"windowingMode": "none"})
    # Notebook 7's pages get window.jupyterapp too (Lab's come from --expose-app-in-browser).
    config = Path(env["JUPYTER_CONFIG_DIR"])
    config.mkdir(parents=True, exist_ok=True)
    notebook7 = {"JupyterNotebookApp": {"expose_app_in_browser": True}}
    (config / "jupyter_server_config.json").write_text(json.dumps(notebook7))
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


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """The git-ignored folder for screenshots."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def page(browser):
    page = browser.new_page()
    yield page
    page.close()


RUN_TIMEOUT_MS = 180_000  # a whole notebook of tiny loads


class LabPage:
    """One Chromium page on the Lab: open a notebook, run it, save it, stop its kernel."""

    shot_prefix = ""  # the same scenario in another front end: its files and screenshots get its name first

    def __init__(self, page: Any, lab: Lab):
        self.page, self.lab = page, lab
        self.panel = page.locator(".jp-NotebookPanel")  # narrowed to the opened notebook by open()

    def open(self, path: str) -> None:
        """Open ``path`` and return once its kernel is really idle (see the notes on the idle race)."""
        from playwright.sync_api import expect

        self.page.goto(self.lab.url(path, workspace=f"test-{secrets.token_hex(4)}"))
        self._attach(path)
        expect(self.page.locator("#jp-main-statusbar")).to_contain_text("Python 3 (ipykernel) | Idle", timeout=60_000)

    def _attach(self, path: str) -> None:
        """Wait until ``path`` is the app's current notebook with its context and session ready; keep its panel."""
        self.page.wait_for_function(
            "path => window.jupyterapp?.shell.currentWidget?.context?.path === path", arg=path, timeout=60_000)
        panel_id = self.page.evaluate("""async () => {
            const panel = window.jupyterapp.shell.currentWidget;
            await panel.context.ready;
            await panel.sessionContext.ready;
            return panel.id;
        }""")
        self.panel = self.page.locator(f"[id='{panel_id}']")

    def run_all(self, timeout_ms: int = RUN_TIMEOUT_MS) -> None:
        """Run every cell, as Run > Run All Cells does; fail with the stderr shown if a cell fails."""
        import pytest

        self.page.evaluate("""() => {
            window.runAll = undefined;
            window.jupyterapp.commands.execute('notebook:run-all-cells').then(ok => { window.runAll = {ok}; });
        }""")
        result = self.page.wait_for_function("() => window.runAll", timeout=timeout_ms, polling=250).json_value()
        if result["ok"] is not True:
            stderr = self.page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            pytest.fail("a cell failed:\n" + "\n".join(stderr.all_inner_texts()))

    def save(self) -> dict:
        """Save the notebook with Lab (as Ctrl-S does) and return the file as Lab wrote it."""
        path = self.page.evaluate("""async () => {
            const panel = window.jupyterapp.shell.currentWidget;
            await window.jupyterapp.commands.execute('docmanager:save');
            return panel.context.path;
        }""")
        return json.loads((self.lab.root_dir / path).read_text(encoding="utf-8"))

    def shut_down_kernel(self) -> None:
        """Stop the notebook's kernel, so that nothing of its widget models is left when the file is reopened."""
        self.page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")

    def write(self, name: str, sources: list[str]) -> str:
        """A notebook of code cells (no outputs) for the Python 3 kernel in Lab's folder; returns its path there."""
        import nbformat

        nb = nbformat.v4.new_notebook(metadata={"kernelspec": {
            "name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}})
        nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
        nbformat.write(nb, self.lab.root_dir / name)
        return name

    def code_cell(self, source: str) -> Any:
        """The code cell whose input contains ``source`` (its outputs may repeat the text, so match the input)."""
        return self.panel.locator(".jp-CodeCell").filter(
            has=self.page.locator(".jp-InputArea-editor", has_text=source))

    def code_cells(self) -> Any:
        return self.panel.locator(".jp-Notebook .jp-CodeCell")

    def run_new_cell(self, source: str, fails: bool = False) -> Any:
        """Add a code cell at the end, run it (as Shift+Enter does) and return it once it has run; it must
        succeed, or with ``fails`` end in an error (a UsageError, say)."""
        ok = self.page.evaluate("""async source => {
            const app = window.jupyterapp, notebook = app.shell.currentWidget.content;
            notebook.activeCellIndex = notebook.widgets.length - 1;
            await app.commands.execute('notebook:insert-cell-below');
            notebook.activeCell.model.sharedModel.setSource(source);
            return await app.commands.execute('notebook:run-cell');
        }""", source)
        assert (ok is not True) if fails else (ok is True), f"the new cell {'ran' if fails else 'failed'}: {source!r}"
        return self.code_cell(source)

    def text_field(self, within: Any, description: str) -> Any:
        """The ``<input>`` of an ipywidgets Text inside ``within`` whose label is ``description``."""
        label = self.page.locator("label", has_text=re.compile(rf"^{re.escape(description)}$"))
        return within.locator(".widget-text").filter(has=label).locator("input")


@pytest.fixture
def notebook(page, lab) -> LabPage:
    return LabPage(page, lab)


class Notebook7Page(LabPage):
    """The same driving as ``LabPage``, in Jupyter Notebook 7: one notebook per page, no status bar."""

    shot_prefix = "notebook7-"

    def open(self, path: str) -> None:
        """Open ``path`` and return once its kernel is connected and idle (the app's own state, not the toolbar)."""
        self.page.goto(self.lab.notebook7_url(path))
        self._attach(path)
        self.page.wait_for_function("""() => {
            const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session?.kernel;
            return kernel?.connectionStatus === 'connected' && kernel?.status === 'idle';
        }""", timeout=60_000, polling=200)


def notebook7_version() -> str:
    """The installed notebook package's version, or "" without it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("notebook")
    except PackageNotFoundError:
        return ""


@pytest.fixture
def notebook7(page, lab) -> Notebook7Page:
    found = notebook7_version()
    if int((found or "0").split(".")[0]) < 7:
        pytest.skip(f"Jupyter Notebook 7 is not installed (notebook {found or 'missing'}): pip install 'notebook>=7'")
    return Notebook7Page(page, lab)


@pytest.fixture(params=["lab", "notebook7"])
def front_end(request) -> LabPage:
    """A notebook page in JupyterLab 4, then in Jupyter Notebook 7: a panel's scenario runs in both."""
    return request.getfixturevalue("notebook" if request.param == "lab" else "notebook7")


@pytest.fixture(scope="module")
def module_notebook(browser, lab) -> LabPage:
    """A ``LabPage`` on a page of its own that a module's tests share (one notebook run, several checks)."""
    page = browser.new_page()
    yield LabPage(page, lab)
    page.close()
