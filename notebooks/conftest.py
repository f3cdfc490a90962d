"""``pytest --nbval-lax notebooks/``: the notebooks' kernels talk to a local Hub stand-in.

The stand-in serves the tiny models; ``HF_ENDPOINT`` and a fresh ``HF_HOME`` are put in this
process's environment before nbval starts a kernel, which inherits them. Run it on its own,
not together with ``tests/`` (whose plugin points ``HF_ENDPOINT`` at its own stand-in).
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_HUB = pytest.StashKey[object]()


def pytest_configure(config):
    if not (config.getoption("nbval") or config.getoption("nbval_lax")):
        return
    from hf_notebook.demo import hub_env, tiny_hub

    work = Path(tempfile.mkdtemp(prefix="hf-notebook-nbval-"))
    hub = tiny_hub(work).start()
    config.stash[_HUB] = (hub, work, dict(os.environ))
    os.environ.update(hub_env(hub.endpoint, work / "hf_home"))


def pytest_unconfigure(config):
    if _HUB not in config.stash:
        return
    hub, work, saved_env = config.stash[_HUB]
    hub.stop()
    os.environ.clear()
    os.environ.update(saved_env)
    shutil.rmtree(work, ignore_errors=True)
