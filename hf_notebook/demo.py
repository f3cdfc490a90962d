"""Try hf_notebook without the Hub: tiny models served by a local Hub stand-in.

``python -m hf_notebook.demo`` executes ``notebooks/quickstart.ipynb`` headless and writes
the executed notebook and an HTML export to ``build/demo/``.
``python -m hf_notebook.demo --lab`` opens JupyterLab on ``notebooks/`` instead, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
WORK = ROOT / "build" / "demo"
CELL_TIMEOUT = 120  # seconds; a tiny model loads in a few


def tiny_hub(work: Path):
    """Publish the tiny models into a fresh store under ``work``; returns its (unstarted) server.

    Commit shas differ on every start, so the Hub cache under ``work`` is emptied as well.
    """
    from hf_notebook.core.quiet import import_transformers

    import_transformers()  # without optional backends' import chatter
    from hf_notebook.testing.hub import HubServer, RepoStore
    from hf_notebook.testing.models import publish_tiny_models

    for folder in ("hub", "hf_home"):
        shutil.rmtree(work / folder, ignore_errors=True)
    store = RepoStore(work / "hub")
    publish_tiny_models(store)
    return HubServer(store)


def hub_env(endpoint: str, hf_home: Path) -> dict[str, str]:
    """This process's environment, pointed at the stand-in with a Hub cache of its own. The client keeps
    its defaults: large files come and go through Xet storage (hf_xet, against the stand-in's own), as on
    the real Hub. Pushes carry a token, as the real Hub wants one; the stand-in started here accepts any."""
    return {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(hf_home),
            "HF_TOKEN": os.environ.get("HF_TOKEN") or "hf_standin_demo_token",
            "HF_HUB_DISABLE_TELEMETRY": "1", "JUPYTER_PREFER_ENV_PATH": "1"}


def execute_notebook(path: Path, env: dict[str, str]):
    """Run every cell of ``path`` in a fresh ``python3`` kernel started with ``env``.

    Returns ``(notebook, error)``: the notebook with outputs (and widget state) as far as it
    ran, and the ``CellExecutionError`` that stopped it, or None.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from traitlets.config import Config

    nb = nbformat.read(path, as_version=4)
    # The venv's kernelspec: jupyter_client runs a spec's "python" as sys.executable. Local sockets
    # (ipc), not TCP: nothing listens on the network, and the kernel has no encryption warning to print.
    with tempfile.TemporaryDirectory(prefix="hf_notebook-kernel-") as sockets:
        ipc = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}})
        client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT, config=ipc,
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute(env=env, cwd=str(path.parent))
        except CellExecutionError as exc:
            client.set_widgets_metadata()  # keep the panels drawn so far, the failed one included
            return _drop_unused_widget_state(nb), exc
    return _drop_unused_widget_state(nb), None


def _drop_unused_widget_state(nb):
    """Forget the widget state when no output shows a widget any more.

    nbclient keeps the state of every widget a kernel ever made, closed ones too; our panels end
    as static records, so without this a saved notebook carries hundreds of kB of dead models.
    """
    views = [o for c in nb.cells for o in c.get("outputs", ())
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    if not views:
        nb.metadata.pop("widgets", None)
    return nb


def export(nb, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Write ``nb`` as ``stem.ipynb`` and ``stem.html`` into ``out_dir``."""
    import nbformat
    from nbconvert import HTMLExporter

    out_dir.mkdir(parents=True, exist_ok=True)
    ipynb, html = out_dir / f"{stem}.ipynb", out_dir / f"{stem}.html"
    nbformat.write(nb, ipynb)
    body, _ = HTMLExporter().from_notebook_node(nb)
    html.write_text(body, encoding="utf-8")
    return ipynb, html


def run_demo() -> int:
    """Execute the quickstart against the stand-in; 1 if a cell failed."""
    started = time.perf_counter()
    with tiny_hub(WORK) as hub:
        print(f"Hub stand-in with tiny models: {hub.endpoint}", flush=True)
        nb, error = execute_notebook(NOTEBOOK, hub_env(hub.endpoint, WORK / "hf_home"))
    ipynb, html = export(nb, WORK, NOTEBOOK.stem)
    if error is not None:
        print(f"\nA cell failed:\n{error}", file=sys.stderr)
    else:
        print(f"all cells ran; done in {time.perf_counter() - started:.0f} s")
    print(f"executed notebook: {ipynb}")
    print(f"html: {html}")
    return 0 if error is None else 1


# --------------------------------------------------------------------------- JupyterLab


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_lab(root_dir: Path, env: dict[str, str], *, port: int, token: str, log: IO[bytes]) -> subprocess.Popen:
    """Start JupyterLab on 127.0.0.1:``port`` serving ``root_dir``, its output to ``log``; returns once it answers."""
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--port-retries=0", f"--ServerApp.root_dir={root_dir}", f"--IdentityProvider.token={token}",
           "--expose-app-in-browser", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    # A session of its own: Ctrl-C reaches only us, and we stop Lab without its y/n prompt.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    wait_for_lab(proc, f"http://127.0.0.1:{port}/api/status?token={token}")
    return proc


def wait_for_lab(proc: subprocess.Popen, status_url: str, timeout: float = 60) -> None:
    """Poll ``status_url`` until Lab answers; raise if it exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with status {proc.returncode}")
        try:
            urllib.request.urlopen(status_url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    stop(proc)
    raise TimeoutError(f"JupyterLab did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    """Terminate ``proc`` (SIGTERM lets Lab shut its kernels down), then kill if it lingers."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_lab() -> int:
    """Serve the stand-in and JupyterLab on ``notebooks/`` until Ctrl-C (or SIGTERM)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # runs the clean-up below too
    port, token = free_port(), secrets.token_hex(16)
    with tiny_hub(WORK) as hub, open(WORK / "lab.log", "wb") as log:
        lab = start_lab(NOTEBOOK.parent, hub_env(hub.endpoint, WORK / "hf_home"), port=port, token=token, log=log)
        try:
            print(f"Hub stand-in with tiny models: {hub.endpoint}")
            print(f"JupyterLab's log: {log.name}")
            print(f"JupyterLab: http://127.0.0.1:{port}/lab/tree/{NOTEBOOK.name}?token={token}")
            print("Press Ctrl-C to stop.", flush=True)
            lab.wait()
        except KeyboardInterrupt:
            print("\nstopping JupyterLab and the stand-in")
        finally:
            stop(lab)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_notebook.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--lab", action="store_true", help="open JupyterLab on notebooks/ instead (until Ctrl-C)")
    args = parser.parse_args(argv)
    return run_lab() if args.lab else run_demo()


if __name__ == "__main__":
    sys.exit(main())
