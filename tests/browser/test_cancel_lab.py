"""Stopping a running load in a real JupyterLab and Notebook 7: the load panel's Cancel button clicked while a
throttled download runs ends the cell at once with the one-line cancelled record (the click reaches the busy kernel
through a subshell); the kernel's own interrupt (the toolbar's stop button) on the next load ends it the same way,
with one error line, no frames. The records and the error read at 1280, 700 and 400 px in both themes."""

import pytest
from layout_checks import POINT_LAYOUTS, REFLOW, measure_every_layout, problems, summary

expect = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed").expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LOAD = "%load_model tiny/llama --force-download --as m"  # fetched again in each front end: throttled
AGAIN = "%load_model tiny/llama --force-download --as m2"

# A cell added at the end and started, without waiting for it to finish (as Shift+Enter does).
START_NEW_CELL = """source => {
    const app = window.jupyterapp, notebook = app.shell.currentWidget.content;
    notebook.activeCellIndex = notebook.widgets.length - 1;
    app.commands.execute('notebook:insert-cell-below').then(() => {
        notebook.activeCell.model.sharedModel.setSource(source);
        app.commands.execute('notebook:run-cell');
    });
}"""


def test_cancel_and_the_kernel_interrupt_stop_a_running_load(front_end, hub_server, artifacts):
    notebook, page = front_end, front_end.page
    sources = ["%load_ext hf_notebook", "import transformers  # the imports done: the click lands in the download", LOAD]
    notebook.open(notebook.write(f"{notebook.shot_prefix}cancel.ipynb", sources))
    hub_server.throttle_bytes_per_s = 40_000  # the tiny llama's 430 kB take about 11 s
    try:
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        cell = notebook.code_cell(LOAD)
        cancel = cell.get_by_role("button", name="Cancel")
        expect(cancel).to_be_visible(timeout=30_000)
        expect(cell).to_contain_text("fetch", timeout=20_000)  # the download is under way
        cancel.click()
        output = cell.locator(".jp-OutputArea")
        expect(output).to_contain_text("cancelled during fetch", timeout=5_000)  # well before 11 s
        expect(cell).not_to_contain_text("Traceback")
        expect(page.get_by_text("Error displaying widget")).to_have_count(0)
        page.screenshot(path=artifacts / f"{notebook.shot_prefix}cancelled.png")
        hub_server.throttle_bytes_per_s = None
        printed = notebook.run_new_cell("print('m' in dir())").locator(".jp-OutputArea-output")
        expect(printed).to_contain_text("False")

        hub_server.throttle_bytes_per_s = 40_000
        page.evaluate(START_NEW_CELL, AGAIN)
        cell = notebook.code_cell(AGAIN)
        expect(cell).to_contain_text("fetch", timeout=30_000)
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:interrupt-kernel')")
        output = cell.locator(".jp-OutputArea")
        expect(output).to_contain_text("cancelled during fetch", timeout=5_000)
        expect(output).to_contain_text("KeyboardInterrupt: The load of tiny/llama cancelled during fetch; nothing was "
                                       "bound. Run the cell again")
        errors = output.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        for text in (output.inner_text(), *errors.all_inner_texts()):
            assert "Traceback" not in text and "magics.py" not in text and "raise " not in text, text
        assert output.inner_text().count("KeyboardInterrupt") == 1
        expect(page.get_by_text("Error displaying widget")).to_have_count(0)
        hub_server.throttle_bytes_per_s = None
        found = measure_every_layout(notebook, artifacts, f"{notebook.shot_prefix}stopped", layouts=POINT_LAYOUTS)
        assert all(m["records"].get(LOAD) == 1 and m["records"].get(AGAIN) == 1 for m in found.values()), \
            summary(found)
        bad = problems(found, owners={"record"}) + problems(found, owners={"record"}, kinds=REFLOW)
        assert not bad, f"{len(bad)} problems:\n" + "\n".join(bad) + f"\n({summary(found)})"
    finally:
        hub_server.throttle_bytes_per_s = None
