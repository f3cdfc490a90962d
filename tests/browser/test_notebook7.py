"""Jupyter Notebook 7 (not Lab) in Chromium: a load ends as its record, a plan draws its figure, %models lists it;
the device-map editor's Apply moves a module to disk, and the save/push panel pushes with a typed token it forgets.

Notebook 7 is another front end on the same server (``/notebooks/<path>``), with its own shell and page: the
panels must end there exactly as in Lab, with no progress bar left behind and the full sha in the records.
The editor and panel tests repeat ``test_editor_lab.py`` and ``test_save_push_lab.py`` in Notebook 7.
"""

import re
import secrets

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
        assert figure.evaluate("img => img.complete && img.naturalWidth > 100"), "the memory figure did not load"

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


EDITOR_CELL = "%edit_device_map model"
PANEL_CELL = "%save_model model"
CPU_LOAD = "%load_model tiny/llama --device-map cpu --as model"
MODULE = "lm_head"  # its own row in tiny/llama's editor (not in a range, not tied to the embeddings)
PUSH_TIMEOUT_MS = 60_000


def run_new_cell(notebook7, source: str):
    """Add a code cell at the end, run it (as Shift+Enter does) and return it once it has run."""
    ok = notebook7.page.evaluate("""async source => {
        const app = window.jupyterapp, notebook = app.shell.currentWidget.content;
        notebook.activeCellIndex = notebook.widgets.length - 1;
        await app.commands.execute('notebook:insert-cell-below');
        notebook.activeCell.model.sharedModel.setSource(source);
        return await app.commands.execute('notebook:run-cell');
    }""", source)
    assert ok is True, f"the new cell failed: {source!r}"
    return notebook7.code_cell(source)


def named(page, name: str):
    """A ``<code>`` holding exactly ``name`` (a module's name in the editor's rows and the record's table)."""
    return page.locator("code", has_text=re.compile(rf"^{re.escape(name)}$"))


def test_notebook7_editor_apply_moves_lm_head_to_disk(notebook7, artifacts):
    page = notebook7.page
    notebook7.open(notebook7.write("notebook7_editor.ipynb", ["%load_ext hf_notebook", CPU_LOAD, EDITOR_CELL]))
    try:
        assert "/notebooks/notebook7_editor.ipynb" in page.url and "/lab" not in page.url  # Notebook 7, not Lab
        notebook7.run_all()
        cell = notebook7.code_cell(EDITOR_CELL)
        editor = cell.locator(".jp-OutputArea .jupyter-widgets").first
        record = cell.locator(f".jp-OutputArea {RECORD}")
        expect(editor).to_contain_text("Device map")
        expect(cell).not_to_contain_text("Error displaying widget")
        expect(record).to_have_count(1)
        expect(record).to_contain_text("CPU RAM (cpu)")
        expect(record).not_to_contain_text("disk")  # loaded with --device-map cpu: nothing offloaded yet

        # The row is an HBox holding the module's name (in a <code>) and its device <select>.
        row = editor.locator(".widget-hbox").filter(has=named(page, MODULE))
        expect(row).to_have_count(1)
        select = row.locator("select")
        disk = next(label for label in select.locator("option").all_inner_texts() if "disk" in label)
        select.select_option(label=disk)

        apply = editor.get_by_role("button", name="Apply")
        expect(apply).to_be_enabled()
        apply.click()
        expect(editor).to_contain_text("Re-dispatched in place", timeout=30_000)
        expect(apply).to_be_disabled()  # the applied map is the editor's new starting point
        expect(select).to_have_value(re.compile(r"^disk"))

        # The static record beside the widget (updated through its display id) shows the new placement.
        expect(record).to_have_count(1)
        placed = record.locator("tr").filter(has=named(page, MODULE))
        expect(placed.locator("td").nth(1)).to_have_text("disk")  # module | device | bytes
        expect(record).to_contain_text("disk (offload)")
        expect(record).to_contain_text("re-dispatched")

        # And the model itself moved: ask the kernel.
        printed = run_new_cell(notebook7, "print(model.hf_device_map)").locator(".jp-OutputArea-output")
        expect(printed).to_contain_text(f"'{MODULE}': 'disk'")
        expect(printed).to_contain_text("'cpu'")  # the rest stayed
        expect(page.get_by_text("Error displaying widget")).to_have_count(0)
    finally:  # the editor, its record and (once there) the printed map, bottom-aligned in the view
        last = notebook7.code_cells().last
        if last.count():
            last.evaluate("cell => cell.scrollIntoView({block: 'end'})")
        page.screenshot(path=artifacts / "notebook7-editor.png")


def text_field(panel, page, description: str):
    """The ``<input>`` of the panel's ipywidgets Text whose label is ``description``."""
    label = page.locator("label", has_text=re.compile(rf"^{re.escape(description)}$"))
    return panel.locator(".widget-text").filter(has=label).locator("input")


def test_notebook7_panel_pushes_with_a_typed_token_and_forgets_it(notebook7, hub_store, hub_token, artifacts):
    page = notebook7.page
    repo_id = f"user/notebook7-push-{secrets.token_hex(4)}"
    path = notebook7.write("notebook7_save_push.ipynb", ["%load_ext hf_notebook", CPU_LOAD, PANEL_CELL])
    notebook7.open(path)
    try:
        assert f"/notebooks/{path}" in page.url and "/lab" not in page.url  # Notebook 7, not Lab
        notebook7.run_all()
        cell = notebook7.code_cell(PANEL_CELL)
        panel = cell.locator(".jp-OutputArea .jupyter-widgets").first
        record = cell.locator(f".jp-OutputArea {RECORD}")
        expect(panel).to_contain_text("Save and push")
        expect(cell).to_contain_text("nothing saved or pushed yet")
        expect(cell).not_to_contain_text("Error displaying widget")

        repo = text_field(panel, page, "repo")
        token = panel.locator("input[type='password']")
        push = panel.get_by_role("button", name="Push")
        expect(repo).to_have_count(1)
        expect(token).to_have_count(1)

        # hub_token makes the stand-in require the token for writes; the kernel has none of its own.
        repo.fill(repo_id)
        token.fill(hub_token)
        push.click()
        expect(panel).to_contain_text(f"✓ pushed to {repo_id} at ", timeout=PUSH_TIMEOUT_MS)
        sha = hub_store.resolve(repo_id, "main")
        expect(panel).to_contain_text(f"✓ pushed to {repo_id} at {sha[:12]}")
        expect(token).to_have_value("")  # read once, emptied before anything was sent
        expect(push).to_be_enabled()

        # The static record beside the panel: the full commit sha and the line that loads it back.
        expect(record).to_have_count(1)
        expect(record).to_contain_text(f"pushed to {repo_id}")
        expect(record).to_contain_text(sha)
        expect(record).to_contain_text(f"%load_model {repo_id}@{sha} --as model")
        expect(panel.locator(PROGRESS)).to_have_count(0)  # no bar left behind
        assert hub_token not in page.content()

        # Save with Ctrl+S, as a user would in Notebook 7, and read the file the server wrote.
        cell.locator(".jp-InputPrompt").click()  # focus the notebook (command mode), not a widget's input
        page.keyboard.press("Control+s")
        page.wait_for_function(
            "() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000, polling=200)
        text = (notebook7.lab.root_dir / path).read_text(encoding="utf-8")
        assert sha in text  # the record was saved...
        assert hub_token not in text  # ...and the token nowhere: not in an output, not in widget state
    finally:
        cell = notebook7.code_cell(PANEL_CELL)
        if cell.count():
            cell.evaluate("cell => cell.scrollIntoView({block: 'end'})")
        page.screenshot(path=artifacts / "notebook7-save-push.png")
