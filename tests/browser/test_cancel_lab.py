"""The load panel's Cancel button in a real JupyterLab and Notebook 7: clicked while a throttled download runs, the
cell ends at once with the one-line cancelled record (the click reaches the busy kernel through a subshell)."""

import pytest

expect = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed").expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LOAD = "%load_model tiny/llama --force-download --as m"  # fetched again in each front end: throttled


def test_cancel_stops_a_running_load(front_end, hub_server, artifacts):
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
        hub_server.throttle_bytes_per_s = None
        printed = notebook.run_new_cell("print('m' in dir())").locator(".jp-OutputArea-output")
        expect(printed).to_contain_text("False")
    finally:
        hub_server.throttle_bytes_per_s = None
        page.screenshot(path=artifacts / f"{notebook.shot_prefix}cancelled.png")


def test_the_kernel_interrupt_ends_a_load_in_one_line(front_end, hub_server, artifacts):
    """The toolbar's stop button (Kernel > Interrupt) during a download: the record says cancelled and what a re-run
    reuses, and the error is one line, no frames, no source of ours."""
    notebook, page = front_end, front_end.page
    sources = ["%load_ext hf_notebook", "import transformers  # the imports done: the interrupt lands in the download",
               LOAD]
    notebook.open(notebook.write(f"{notebook.shot_prefix}interrupt.ipynb", sources))
    hub_server.throttle_bytes_per_s = 40_000
    try:
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        cell = notebook.code_cell(LOAD)
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
    finally:
        hub_server.throttle_bytes_per_s = None
        page.screenshot(path=artifacts / f"{notebook.shot_prefix}interrupted.png")
