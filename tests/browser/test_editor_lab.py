"""The device-map editor in a real JupyterLab: pick disk in one row's selector, Apply, and the model really moves.

The widget only forwards to the core; this checks the part unit tests cannot: that the rendered ``<select>``
reaches the kernel, that Apply re-dispatches the loaded model there, and that the static record beside the
widget (updated through its display id) shows the new placement in the page.

JupyterLab only: Notebook 7 draws these widgets with the same widget manager (its pages, records, copy
buttons, cancel and layouts are tested in Notebook 7 too, in the other browser tests), and running both cost
about 17 s each of the suite.
"""

import re

import pytest

expect = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed").expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RECORD = ".hf-notebook-record"
EDITOR_CELL = "%edit_device_map model"
MODULE = "lm_head"  # its own row (not part of a range, not tied to the embeddings in tiny/llama)
SOURCES = ["%load_ext hf_notebook", "%load_model tiny/llama --device-map cpu --as model", EDITOR_CELL]


def test_editor_apply_moves_a_module_to_disk(notebook, artifacts):
    page = notebook.page
    notebook.open(notebook.write(f"{notebook.shot_prefix}editor_apply.ipynb", SOURCES))
    try:
        notebook.run_all()
        cell = notebook.code_cell(EDITOR_CELL)
        editor = cell.locator(".jp-OutputArea .jupyter-widgets").first
        record = cell.locator(f".jp-OutputArea {RECORD}")
        expect(editor).to_contain_text("Device map")
        expect(cell).not_to_contain_text("Error displaying widget")
        expect(record).to_have_count(1)
        expect(record).to_contain_text("CPU RAM (cpu)")
        expect(record).not_to_contain_text("disk")  # loaded with --device-map cpu: nothing offloaded yet

        # The row is an HBox holding the module's name (in a <code>) and its device <select>.
        row = editor.locator(".widget-hbox").filter(
            has=page.locator("code", has_text=re.compile(rf"^{re.escape(MODULE)}$")))
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

        # The static record beside the widget was updated to the new placement.
        expect(record).to_have_count(1)
        placed = record.locator("tr").filter(has=page.locator("code", has_text=re.compile(rf"^{re.escape(MODULE)}$")))
        expect(placed.locator("td").nth(1)).to_have_text("disk")  # module | device | bytes
        expect(record).to_contain_text("disk (offload)")
        expect(record).to_contain_text("re-dispatched")

        # And the model itself moved: ask the kernel.
        printed = notebook.run_new_cell("print(model.hf_device_map)").locator(".jp-OutputArea-output")
        expect(printed).to_contain_text(f"'{MODULE}': 'disk'")
        expect(printed).to_contain_text("'cpu'")  # the rest stayed
        expect(page.get_by_text("Error displaying widget")).to_have_count(0)
    finally:  # the editor, its record and (once there) the printed map, bottom-aligned in the view
        last = notebook.code_cells().last
        if last.count():
            last.evaluate("cell => cell.scrollIntoView({block: 'end'})")
        page.screenshot(path=artifacts / f"{notebook.shot_prefix}editor-applied.png")
