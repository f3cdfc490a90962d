"""The notebooks run top to bottom in a real kernel against the Hub stand-in.

Each notebook is executed once with nbclient (widget state kept, as in a browser); the tests
then read what a user would see: cell errors, printed text, and the load panels' contents.
``pytest --nbval-lax notebooks/`` checks the ``# NBVAL_CHECK_OUTPUT`` cells on its own.
"""

import os
import re

import pytest

from hf_notebook.demo import ROOT, execute_notebook

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def executed(tiny_hub, tmp_path_factory):
    """Run each notebook once, with a Hub cache of its own; name -> (notebook, error or None)."""
    runs = {}
    for path in NOTEBOOKS:
        env = {**os.environ, "HF_HUB_CACHE": str(tmp_path_factory.mktemp("hf-cache"))}
        runs[path.name] = execute_notebook(path, env)
    return runs


def code_cell(nb, startswith):
    """The first code cell whose source starts with ``startswith``."""
    return next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(startswith))


def panel_text(nb, cell):
    """The text of the widgets a cell displayed, read from the stored widget state: tags dropped, spaces collapsed."""
    state = nb.metadata.widgets[WIDGET_STATE]["state"]

    def texts(model_id):
        widget = state[model_id]["state"]
        own = [widget["value"]] if isinstance(widget.get("value"), str) else []
        return own + [t for child in widget.get("children", []) for t in texts(child.removeprefix("IPY_MODEL_"))]

    ids = [out.data[WIDGET_VIEW]["model_id"] for out in cell.outputs if WIDGET_VIEW in out.get("data", {})]
    return " ".join(re.sub(r"<[^>]+>", " ", " ".join(t for model_id in ids for t in texts(model_id))).split())


def printed(cell):
    return "".join(out.text for out in cell.outputs if out.output_type == "stream" and out.name == "stdout")


@pytest.mark.parametrize("name", [p.name for p in NOTEBOOKS])
def test_notebook_runs_without_errors(executed, name):
    nb, error = executed[name]
    assert error is None, str(error)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


def test_quickstart_floating_load_shows_pin_and_placement(executed, tiny_hub):
    nb, _ = executed["quickstart.ipynb"]
    text = panel_text(nb, code_cell(nb, "%load_model tiny/llama --as model"))
    main = tiny_hub["llama"].commits["main"]
    assert f"pinned: tiny/llama@{main}" in text  # the spelling to copy into the notebook
    assert f"model = tiny/llama@{main[:12]} (float32" in text
    assert "lm_head cpu" in text and "CPU RAM:" in text  # the placement summary


def test_quickstart_tag_load_resolves_the_tag(executed, tiny_hub):
    nb, _ = executed["quickstart.ipynb"]
    text = panel_text(nb, code_cell(nb, "%load_model tiny/llama@v1"))
    assert tiny_hub["llama"].commits["v1"][:12] in text and "bfloat16" in text
    assert "pinned:" not in text  # a tag is taken as a pin: nothing to copy


def test_quickstart_disk_offload_gives_the_same_logits(executed):
    nb, _ = executed["quickstart.ipynb"]
    text = panel_text(nb, code_cell(nb, "%load_model tiny/llama --device-map"))
    assert "model.layers.0 cpu" in text and "model.layers.1 disk" in text
    out = printed(code_cell(nb, "# NBVAL_CHECK_OUTPUT\nprint(offloaded.hf_device_map)"))
    assert "'model.layers.1': 'disk'" in out and "same logits as `model`: True" in out


def test_quickstart_is_saved_without_run_outputs():
    """Only the checked cells keep a (stable) reference output for nbval; no widget state is saved."""
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    unchecked = [c for c in nb.cells if c.cell_type == "code" and "NBVAL_CHECK_OUTPUT" not in c.source]
    assert "widgets" not in nb.metadata
    assert all(not c.outputs and c.execution_count is None for c in unchecked)
