"""The quickstart in a real JupyterLab and Chromium: every load ends as its static record."""

import pytest

expect = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed").expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RECORD = ".hf-notebook-record"  # the root of a finished panel's static record
PROGRESS = ".widget-hprogress, .widget-vprogress, .progress-bar"  # an ipywidgets 8 progress bar


def test_quickstart_load_panels_end_in_records(notebook, tiny_hub, artifacts):
    page = notebook.page
    sha = tiny_hub["llama"].commits["main"]
    notebook.open("quickstart.ipynb")
    first_load = notebook.code_cell("%load_model tiny/llama --as model")
    try:
        notebook.run_all()
        record = first_load.locator(f".jp-OutputArea {RECORD}")
        expect(record).to_have_count(1)
        record.scroll_into_view_if_needed()
        expect(record).to_contain_text(f"model = tiny/llama@{sha[:12]}")  # the finished summary...
        expect(record).to_contain_text(f"{sha} (default branch, can move)")  # ...the full pin...
        expect(record).to_contain_text("lm_head")  # ...the device map...
        expect(record).to_contain_text("CPU RAM (cpu)")  # ...the bytes per device...
        expect(record).to_contain_text(f"%load_model tiny/llama@{sha} --dtype float32 --as model")  # ...what to copy
        expect(first_load.locator(".jupyter-widgets")).to_have_count(0)  # the live panel is gone
        offloaded = notebook.code_cell("--as offloaded").locator(RECORD)
        expect(offloaded).to_contain_text("disk (offload)")
        expect(notebook.code_cell("%unload_model model_v1").locator(RECORD)).to_contain_text("unloaded model_v1")
        same = notebook.panel.locator(".jp-OutputArea-output").filter(has_text="same logits as `model`: True")
        expect(same).to_have_count(1)
        expect(notebook.panel.locator(PROGRESS)).to_have_count(0)
        expect(page.get_by_text("Error displaying widget")).to_have_count(0)
    finally:
        page.screenshot(path=artifacts / "quickstart.png")
