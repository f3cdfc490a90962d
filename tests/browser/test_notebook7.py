"""Jupyter Notebook 7 (not Lab) in Chromium: a load ends as its record, a plan draws its figure, %models lists it.

Notebook 7 is another front end on the same server (``/notebooks/<path>``), with its own shell and page: the
panels must end there exactly as in Lab, with no progress bar left behind and the full sha in the records.
The editor and the save/push panel run in both front ends (``front_end``): ``test_editor_lab.py``,
``test_save_push_lab.py``.
"""


import pytest

expect = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed").expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RECORD = ".hf-notebook-record"
PROGRESS = ".widget-hprogress, .widget-vprogress, .progress-bar"  # an ipywidgets 8 progress bar
LOAD = "%load_model tiny/llama --as model"
PLAN = "%plan_model tiny/mixtral --max-memory cpu=400KB --plot"
MODELS = "%models"
SOURCES = ["%load_ext hf_notebook", LOAD, PLAN, MODELS]


def test_notebook7_runs_a_load_a_plan_and_models_to_their_records(notebook7, tiny_hub, artifacts):
    page = notebook7.page
    llama, mixtral = tiny_hub["llama"].commits["main"], tiny_hub["mixtral"].commits["main"]
    notebook7.open(notebook7.write("notebook7.ipynb", SOURCES))
    try:
        expect(page.locator("#main-panel, .jp-NotebookPanel").first).to_be_visible()
        assert "/notebooks/notebook7.ipynb" in page.url and "/lab" not in page.url  # Notebook 7, not Lab
        notebook7.run_all()

        load = notebook7.code_cell(LOAD).locator(f".jp-OutputArea {RECORD}")
        expect(load).to_have_count(1)
        expect(load).to_contain_text(f"model = tiny/llama@{llama[:12]}")
        expect(load).to_contain_text(llama)  # the full pin...
        expect(load).to_contain_text(f"%load_model tiny/llama@{llama} --dtype float32 --as model")  # ...to copy
        expect(notebook7.code_cell(LOAD).locator(".jupyter-widgets")).to_have_count(0)  # the live panel is gone
        load.evaluate("record => record.scrollIntoView({block: 'start'})")
        page.screenshot(path=artifacts / "notebook7-load.png")

        plan = notebook7.code_cell(PLAN)
        expect(plan.locator(RECORD)).to_contain_text(f"Plan for tiny/mixtral@{mixtral}")
        expect(plan.locator(RECORD)).to_contain_text("disk (offload)")
        figure = plan.locator(".jp-OutputArea img")
        expect(figure).to_have_count(1)
        expect(figure).to_have_js_property("complete", True)  # retried until the image has loaded
        assert figure.evaluate("img => img.naturalWidth > 100"), "the memory figure did not load"

        models = notebook7.code_cell(MODELS).locator(RECORD)
        expect(models).to_contain_text(f"tiny/llama@{llama[:12]}")
        expect(models).to_contain_text("LlamaForCausalLM")

        # the final state: nothing still drawing progress, no widget that failed to render
        expect(notebook7.panel.locator(PROGRESS)).to_have_count(0)
        expect(notebook7.panel.locator(".jupyter-widgets")).to_have_count(0)
        expect(page.get_by_text("Error displaying widget")).to_have_count(0)
        saved = notebook7.save()
        assert llama in "".join("".join(o.get("data", {}).get("text/plain", "")) for c in saved["cells"]
                                for o in c.get("outputs", []))
    finally:
        notebook7.code_cells().last.evaluate("cell => cell.scrollIntoView({block: 'end'})")
        page.screenshot(path=artifacts / "notebook7.png", full_page=True)
