"""Static records in a real JupyterLab: many loads in a row each end as a record (no stale progress bar), and a
saved notebook reopened without the kernel that made it still shows them (no "Error displaying widget")."""

import os
import shutil

import pytest

expect = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed").expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RECORD = ".hf-notebook-record"  # the root of a finished panel's static record
PROGRESS = ".widget-hprogress, .widget-vprogress, .progress-bar"  # an ipywidgets 8 progress bar
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
LOADS = 12  # run twice: the stale-bar race this guards against showed up in about 2 loads of 12


def many_loads_sources() -> list[str]:
    """``%load_model`` cells; every third one with a CPU budget that puts most of the model on disk, in shards."""
    return ["%load_ext hf_notebook"] + [
        f"%load_model tiny/llama{' --max-memory cpu=300KB' if i % 3 == 2 else ''} --as m{i}" for i in range(LOADS)]


def assert_cell_shows_record(cell, name: str, sha: str, *, disk: bool) -> None:
    record = cell.locator(f".jp-OutputArea {RECORD}")
    expect(record).to_have_count(1)
    expect(record).to_contain_text(f"✓ {name} = tiny/llama@{sha[:12]}")
    expect(record).to_contain_text(sha)
    expect(record).to_contain_text("CPU RAM (cpu)")
    if disk:
        expect(record).to_contain_text("disk (offload)")
    expect(cell.locator(PROGRESS)).to_have_count(0)
    expect(cell.locator(".jupyter-widgets")).to_have_count(0)
    expect(cell).not_to_contain_text("Error displaying widget")


def assert_saved_outputs_are_records(nb: dict, sha: str) -> None:
    """In the file: each load cell's one display output is text/html + text/plain, nothing for the widget manager."""
    loads = [c for c in nb["cells"] if "".join(c["source"]).startswith("%load_model")]
    assert len(loads) == LOADS
    for i, cell in enumerate(loads):
        shown = [o for o in cell["outputs"] if o["output_type"] != "stream"]
        assert [o["output_type"] for o in shown] == ["display_data"], shown
        data = shown[0]["data"]
        assert set(data) == {"text/html", "text/plain"}, f"m{i}: {sorted(data)}"
        text = "".join(data["text/plain"])
        assert text.startswith(f"✓ m{i} = tiny/llama@{sha[:12]}") and f"tiny/llama@{sha} " in text
    assert not [o for c in nb["cells"] for o in c.get("outputs", []) if WIDGET_VIEW in o.get("data", {})]


def test_many_loads_in_a_row_each_end_as_a_record_and_survive_reopening(notebook, tiny_hub, artifacts):
    page = notebook.page
    sha = tiny_hub["llama"].commits["main"]
    path = notebook.write("many_loads.ipynb", many_loads_sources())
    notebook.open(path)
    cells = notebook.code_cells()
    try:
        for _ in range(2):  # the second Run All replaces each cell's record and reloads every name
            notebook.run_all()
            expect(cells).to_have_count(LOADS + 1)
            for i in range(LOADS):
                assert_cell_shows_record(cells.nth(i + 1), f"m{i}", sha, disk=i % 3 == 2)
            # nothing anywhere still drawing progress (an 'info' bar is the running/unknown-total style)
            expect(notebook.panel.locator(PROGRESS)).to_have_count(0)
            expect(notebook.panel.locator(".progress-bar-info")).to_have_count(0)
            expect(page.get_by_text("Error displaying widget")).to_have_count(0)
        cells.nth(LOADS).scroll_into_view_if_needed()
        page.screenshot(path=artifacts / "many_loads.png")

        assert_saved_outputs_are_records(notebook.save(), sha)
        notebook.shut_down_kernel()
        # Reopen the file Lab saved: Lab reloaded, a fresh kernel without any of the old widget models.
        notebook.open(path)
        cells = notebook.code_cells()
        expect(cells).to_have_count(LOADS + 1)
        for i in range(LOADS):
            assert_cell_shows_record(cells.nth(i + 1), f"m{i}", sha, disk=i % 3 == 2)
        expect(page.get_by_text("Error displaying widget")).to_have_count(0)
    finally:
        page.screenshot(path=artifacts / "many_loads_reopened.png")


def test_notebook_executed_headless_reopens_with_its_records(notebook, lab, tiny_hub, artifacts, tmp_path):
    """The quickstart as ``make demo`` writes it (nbclient, widget state and all), opened in Lab: records, no errors."""
    import nbformat

    from hf_notebook.demo import NOTEBOOK, execute_notebook

    page = notebook.page
    main, v1 = tiny_hub["llama"].commits["main"], tiny_hub["llama"].commits["v1"]
    copy = tmp_path / "run" / NOTEBOOK.name  # run in a folder of its own: its lock file stays there
    copy.parent.mkdir()
    shutil.copyfile(NOTEBOOK, copy)
    nb, error = execute_notebook(copy, {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf-cache")})
    assert error is None, str(error)
    nbformat.write(nb, lab.root_dir / "quickstart-executed.ipynb")
    notebook.open("quickstart-executed.ipynb")
    try:
        first = notebook.code_cell("%load_model tiny/llama --as model").locator(RECORD)
        expect(first).to_contain_text(f"model = tiny/llama@{main[:12]}")
        expect(first).to_contain_text(main)
        expect(first).to_contain_text("CPU RAM (cpu)")
        first.scroll_into_view_if_needed()
        page.screenshot(path=artifacts / "quickstart_reopened.png")
        expect(notebook.code_cell("--as model_v1").locator(RECORD)).to_contain_text(f"{v1} (tag v1)")
        expect(notebook.code_cell("--as offloaded").locator(RECORD)).to_contain_text("disk (offload)")
        expect(notebook.code_cell("%plan_model tiny/mixtral").locator(RECORD)).to_contain_text("Plan for tiny/mixtral")
        expect(notebook.code_cell("%unload_model model_v1").locator(RECORD)).to_contain_text("unloaded model_v1")
        expect(notebook.panel.locator(".jupyter-widgets")).to_have_count(0)
        expect(page.get_by_text("Error displaying widget")).to_have_count(0)
    finally:
        page.screenshot(path=artifacts / "quickstart_reopened_end.png")
