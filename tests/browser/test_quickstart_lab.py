"""The quickstart in a real JupyterLab and Chromium: the load panels render and fill in."""

import pytest

expect = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed").expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RUN_TIMEOUT_MS = 180_000  # the whole notebook: three tiny loads and a generate


def open_notebook(page, url: str) -> None:
    """Open ``url`` and return once its kernel is really idle (see the notes on the idle race)."""
    page.goto(url)
    page.wait_for_function("() => window.jupyterapp?.shell.currentWidget?.sessionContext", timeout=60_000)
    page.evaluate("""async () => {
        const panel = window.jupyterapp.shell.currentWidget;
        await panel.context.ready;
        await panel.sessionContext.ready;
    }""")
    expect(page.locator("#jp-main-statusbar")).to_contain_text("Python 3 (ipykernel) | Idle", timeout=60_000)


def run_all_cells(page) -> None:
    """Run every cell, as Run > Run All Cells does; fail with the stderr shown if a cell fails."""
    page.evaluate("""() => {
        window.jupyterapp.commands.execute('notebook:run-all-cells').then(ok => { window.runAll = {ok}; });
    }""")
    result = page.wait_for_function("() => window.runAll", timeout=RUN_TIMEOUT_MS, polling=500).json_value()
    if result["ok"] is not True:
        stderr = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        pytest.fail("a cell failed:\n" + "\n".join(stderr.all_inner_texts()))


def test_quickstart_load_panels_render(lab, page, tiny_hub, artifacts):
    sha = tiny_hub["llama"].commits["main"]
    open_notebook(page, lab.url("quickstart.ipynb"))
    first_load = page.locator(".jp-CodeCell").filter(has_text="%load_model tiny/llama --as model")
    panel = first_load.locator(".jp-OutputArea .jupyter-widgets").first
    try:
        run_all_cells(page)
        panel.scroll_into_view_if_needed()
        expect(panel).to_contain_text(f"pinned: tiny/llama@{sha}")
        expect(panel).to_contain_text(f"model = tiny/llama@{sha[:12]}")  # the finished summary...
        expect(panel).to_contain_text("lm_head")  # ...with its device map...
        expect(panel).to_contain_text("CPU RAM:")  # ...and bytes per device
        offload_panel = page.locator(".jp-CodeCell").filter(has_text="--as offloaded").locator(".jupyter-widgets")
        expect(offload_panel.first).to_contain_text("disk (offload):")
        expect(page.locator(".jp-OutputArea-output").filter(has_text="same logits as `model`: True")).to_have_count(1)
        expect(page.get_by_text("Error displaying widget")).to_have_count(0)
    finally:
        page.screenshot(path=artifacts / "quickstart.png")
