"""The notebooks run top to bottom in a real kernel against the Hub stand-in.

Each notebook is executed once with nbclient, written to disk with nbformat and read back: the
tests read what a reader of the saved file meets. Every panel must end as a static record
(``text/html`` + ``text/plain``, no widget view), since a widget output shows nothing (or
"Error displaying widget") once its kernel is gone; see /work/shared/notes/static-record.md.
``pytest --nbval-lax notebooks/`` checks the ``# NBVAL_CHECK_OUTPUT`` cells on its own.
"""

import json
import os
import re
import shutil
import warnings

import pytest

from hf_notebook.demo import ROOT, execute_notebook

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
QUICKSTART = ROOT / "notebooks" / "quickstart.ipynb"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
RECORD_MIME = {"text/html", "text/plain"}
EDITOR = re.compile(r"^%edit_device_map \w+\s*$")  # no --set/--export: the widget
WIDGET_REPRS = ("VBox(", "HBox(", "FloatProgress(", "HTML(value=")  # a widget's text/plain fallback

pytestmark = [pytest.mark.slow, pytest.mark.notebooks]


@pytest.fixture(scope="module")
def executed(tiny_hub, tmp_path_factory):
    """Run each notebook once with a Hub cache of its own, save it, read it back.

    name -> (saved notebook as read back, error or None, path of the saved file).
    """
    import nbformat

    runs = {}
    for path in NOTEBOOKS:
        work = tmp_path_factory.mktemp(path.stem)
        copy = work / "run" / path.name  # run in a folder of its own: what a notebook writes (a lock file) stays there
        copy.parent.mkdir()
        shutil.copyfile(path, copy)
        nb, error = execute_notebook(copy, {**os.environ, "HF_HUB_CACHE": str(work / "hf-cache")})
        saved = work / path.name
        nbformat.write(nb, saved)
        runs[path.name] = (nbformat.read(saved, as_version=4), error, saved)
    return runs


@pytest.fixture(scope="module")
def quickstart(executed):
    nb, error, _ = executed["quickstart.ipynb"]
    assert error is None, str(error)
    return nb


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def code_cell(nb, startswith):
    """The first code cell whose source starts with ``startswith``."""
    return next(c for c in code_cells(nb) if c.source.startswith(startswith))


def load_cell(nb, name):
    """The ``%load_model ... --as name`` cell."""
    return next(c for c in code_cells(nb) if c.source.startswith("%load_model") and c.source.endswith(f"--as {name}"))


def records(cell):
    """The cell's outputs that are hf_notebook records (display data whose HTML has the record's root)."""
    return [o for o in cell.outputs
            if o.output_type == "display_data" and "hf-notebook-record" in o.data.get("text/html", "")]


def the_record(cell):
    """The one record a load cell ends with, checked to be static: (html, text)."""
    found = records(cell)
    assert len(found) == 1, f"expected one record, got {len(found)}: {cell.outputs}"
    assert set(found[0].data) == RECORD_MIME, f"a record is text/html + text/plain only, got {sorted(found[0].data)}"
    return found[0].data["text/html"], found[0].data["text/plain"]


def printed(cell):
    return "".join(out.text for out in cell.outputs if out.output_type == "stream" and out.name == "stdout")


@pytest.mark.parametrize("name", [p.name for p in NOTEBOOKS])
def test_notebook_runs_without_errors(executed, name):
    import nbformat

    nb, error, _ = executed[name]
    assert error is None, str(error)
    assert not [o for c in code_cells(nb) for o in c.outputs if o.output_type == "error"]
    nbformat.validate(nb)  # the saved file is a valid notebook


@pytest.mark.parametrize("name", [p.name for p in NOTEBOOKS])
def test_no_saved_output_is_a_widget(executed, name):
    """Panels, plans, %models and %unload_model all leave static outputs: nothing needs the widget manager."""
    nb, _, _ = executed[name]
    for cell in code_cells(nb):
        outputs = cell.outputs
        if EDITOR.match(cell.source):  # the editor stays interactive; the record beside it is what readers see
            found = records(cell)
            assert len(found) == 1 and set(found[0].data) == RECORD_MIME, cell.outputs
            outputs = [o for o in outputs if WIDGET_VIEW not in o.get("data", {})]
        for out in outputs:
            data = out.get("data", {})
            assert WIDGET_VIEW not in data, f"widget view left in {cell.source!r}"
            plain = data.get("text/plain", "")
            assert not any(r in plain for r in WIDGET_REPRS), f"widget repr in {cell.source!r}: {plain[:200]}"


@pytest.mark.parametrize("name, ref", [("model", "main"), ("model_v1", "v1"), ("offloaded", "main")])
def test_quickstart_load_cells_end_in_a_static_record(quickstart, tiny_hub, name, ref):
    sha = tiny_hub["llama"].commits[ref]
    cell = load_cell(quickstart, name)
    assert [o.output_type for o in cell.outputs if o.output_type != "stream"] == ["display_data"]
    html, text = the_record(cell)
    assert re.search(rf"<code[^>]*>{sha}</code>", html), "the full commit sha, in a <code>"
    assert "CPU RAM" in html and f"{name} = tiny/llama@{sha[:12]}" in html
    lines = text.splitlines()
    assert lines[0] == f"✓ {name} = tiny/llama@{sha[:12]}"
    assert re.search(rf"^  commit +{sha} \(", text, re.M)
    assert re.search(r"^  device +resident +offloaded +total$", text, re.M)
    assert re.search(r"^  CPU RAM \(cpu\) ", text, re.M)
    again = lines[lines.index("load it again:") + 1]
    assert again.startswith(f"  %load_model tiny/llama@{sha} --dtype ") and again.endswith(f" --as {name}")


def test_quickstart_floating_load_records_the_pin(quickstart, tiny_hub):
    main = tiny_hub["llama"].commits["main"]
    _, text = the_record(load_cell(quickstart, "model"))
    assert f"commit  {main} (default branch, can move)" in text  # a moving branch, and what it was
    assert re.search(r"^  lm_head +cpu ", text, re.M)  # the placement
    assert f"%load_model tiny/llama@{main} --dtype float32 --as model" in text  # the spelling to copy


def test_quickstart_tag_load_resolves_the_tag(quickstart, tiny_hub):
    v1 = tiny_hub["llama"].commits["v1"]
    _, text = the_record(load_cell(quickstart, "model_v1"))
    assert f"{v1} (tag v1)" in text and "can move" not in text  # a tag is taken as a pin
    assert re.search(r"^  dtype +bfloat16$", text, re.M)


def test_quickstart_disk_offload_gives_the_same_logits(quickstart):
    _, text = the_record(load_cell(quickstart, "offloaded"))
    assert re.search(r"^  model\.layers\.0 +cpu ", text, re.M) and re.search(r"^  model\.layers\.1 +disk ", text, re.M)
    assert re.search(r"^  disk \(offload\) ", text, re.M)
    out = printed(code_cell(quickstart, "# NBVAL_CHECK_OUTPUT\nprint(offloaded.hf_device_map)"))
    assert "'model.layers.1': 'disk'" in out and "same logits as `model`: True" in out


def test_quickstart_plan_models_and_unload_leave_records(quickstart, tiny_hub):
    v1 = tiny_hub["llama"].commits["v1"]
    plan = records(code_cell(quickstart, "%plan_model tiny/mixtral"))
    assert len(plan) == 1 and plan[0].data["text/plain"].startswith("Plan for tiny/mixtral@")
    assert [o for o in code_cell(quickstart, "%plan_model tiny/mixtral").outputs if "image/png" in o.get("data", {})]
    listing = records(next(c for c in code_cells(quickstart) if c.source.strip() == "%models"))
    assert len(listing) == 1
    names = [line.split()[0] for line in listing[0].data["text/plain"].splitlines()[1:]]
    assert names == ["model", "model_v1", "offloaded"]
    _, text = the_record(code_cell(quickstart, "%models offloaded"))
    assert text.startswith("✓ offloaded = tiny/llama@")
    unloaded = records(code_cell(quickstart, "%unload_model model_v1"))
    assert len(unloaded) == 1 and unloaded[0].data["text/plain"].startswith(f"unloaded model_v1 (tiny/llama@{v1})")


def test_quickstart_html_export_shows_the_records_without_javascript(executed, tiny_hub):
    """``nbconvert`` of the saved file, offline: the facts are in the page's visible text, not in a widget script."""
    import nbformat
    from bs4 import BeautifulSoup
    from nbconvert import HTMLExporter

    _, _, saved = executed["quickstart.ipynb"]
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(saved, as_version=4))
    soup = BeautifulSoup(body, "html.parser")
    assert not soup.find_all("script", type=WIDGET_VIEW), "a widget view needs the widget manager from a CDN"
    for tag in soup(["script", "style", "template", "noscript"]):
        tag.decompose()
    visible = " ".join(soup.get_text(" ").split())
    main, v1 = tiny_hub["llama"].commits["main"], tiny_hub["llama"].commits["v1"]
    for expected in (main, v1, f"model = tiny/llama@{main[:12]}", f"offloaded = tiny/llama@{main[:12]}",
                     "CPU RAM (cpu)", "disk (offload)", f"%load_model tiny/llama@{main} --dtype float32 --as model"):
        assert expected in visible, f"{expected!r} is not in the export's visible text"
    assert len(soup.select(".hf-notebook-record")) >= 6  # three loads, a plan, %models offloaded, an unload


def test_quickstart_is_saved_without_run_outputs():
    """Only the checked cells keep a (stable) reference output for nbval; no widget state is saved; every
    cell has an id (nbformat 4.5), so reading it raises no MissingIDFieldWarning."""
    import nbformat

    raw = json.loads(QUICKSTART.read_text(encoding="utf-8"))
    assert (raw["nbformat"], raw["nbformat_minor"]) >= (4, 5)
    ids = [c.get("id") for c in raw["cells"]]
    assert all(ids) and len(set(ids)) == len(ids), f"missing or repeated cell ids: {ids}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nb = nbformat.read(QUICKSTART, as_version=4)
        nbformat.validate(nb)
    unchecked = [c for c in code_cells(nb) if "NBVAL_CHECK_OUTPUT" not in c.source]
    assert "widgets" not in nb.metadata
    assert all(not c.outputs and c.execution_count is None for c in unchecked)


@pytest.mark.parametrize("name", [p.name for p in NOTEBOOKS])
def test_no_library_chatter_is_saved(executed, name):
    """Expected messages of the libraries (offloading notices, optional kernels they cannot load) are not
    saved as red stderr blocks that read like errors: the records say what happened."""
    nb, _, _ = executed[name]
    chatter = [(c.source[:60], o.text[:200]) for c in code_cells(nb) for o in c.outputs if o.get("name") == "stderr"]
    assert not chatter, chatter
