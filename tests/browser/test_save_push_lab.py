"""The save and push panel in a real JupyterLab: a token typed into its password field pushes to a stand-in
that requires it, the panel then gives way to a static line and the record of the commit, and the token is in
neither the page nor the notebook file Lab saves (which holds no widget output to fail once reopened).

The Lab's kernels talk to the session's Hub stand-in (the ``hub_server`` of the test plugin, in this
process), so ``hub_token`` makes that server require a token for every write during this test, and only
this test. The kernels have no token of their own (the plugin unsets ``HF_TOKEN``): the typed one is the
only one there is.

JupyterLab only: Notebook 7 draws these widgets with the same widget manager (its pages, records, copy
buttons, cancel and layouts are tested in Notebook 7 too, in the other browser tests), and running both cost
about 17 s each of the suite.
"""

import secrets

import pytest

expect = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed").expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RECORD = ".hf-notebook-record"
PANEL_CELL = "%save_model model"
SOURCES = ["%load_ext hf_notebook", "%load_model tiny/llama --device-map cpu --as model", PANEL_CELL]
PUSH_TIMEOUT_MS = 60_000


def test_panel_pushes_with_a_typed_token_and_forgets_it(notebook, hub_server, hub_store, hub_token, artifacts,
                                                        tmp_path):
    page = notebook.page
    repo_id = f"user/panel-push-{secrets.token_hex(4)}"
    path = notebook.write(f"{notebook.shot_prefix}save_push_panel.ipynb", SOURCES)
    notebook.open(path)
    try:
        notebook.run_all()
        cell = notebook.code_cell(PANEL_CELL)
        panel = cell.locator(".jp-OutputArea .jupyter-widgets").first
        record = cell.locator(f".jp-OutputArea {RECORD}")
        expect(panel).to_contain_text("Save and push")
        expect(cell).to_contain_text("nothing saved or pushed yet")
        expect(cell).not_to_contain_text("Error displaying widget")

        repo = notebook.text_field(panel, "repo")
        token = panel.locator("input[type='password']")
        push = panel.get_by_role("button", name="Push")
        expect(repo).to_have_count(1)
        expect(token).to_have_count(1)

        # The stand-in really requires the token: a wrong one is refused before anything is sent.
        # Save first: its record stays when the push that follows ends the panel (each action its own record).
        notebook.text_field(panel, "folder").fill(str(tmp_path / "saved"))
        panel.get_by_role("button", name="Save").click()
        expect(record.filter(has_text="saved model to")).to_have_count(1, timeout=PUSH_TIMEOUT_MS)

        repo.fill(repo_id)
        token.fill("hf_not_the_right_token")
        token.press("Enter")  # typed, not pushed: the kernel takes it and empties the field at once
        expect(token).to_have_value("")
        expect(panel).to_contain_text("pushing with the token typed in this panel")
        push.click()
        expect(panel).to_contain_text("Not pushed: The Hub did not accept the token", timeout=PUSH_TIMEOUT_MS)
        expect(token).to_have_value("")
        assert not hub_store.exists(repo_id)

        token.fill(hub_token)
        push.click()
        # The push is the last step: the panel gives way to one static line, its records stay below it.
        expect(cell).to_contain_text(f"Save and push panel for model: closed (saved to {tmp_path / 'saved'}; "
                                     f"pushed to {repo_id} at ", timeout=PUSH_TIMEOUT_MS)
        sha = hub_store.resolve(repo_id, "main")
        expect(cell).to_contain_text(f"pushed to {repo_id} at {sha[:12]})")
        expect(cell.locator(".jupyter-widgets")).to_have_count(0)  # nothing left that needs the kernel to draw

        # The static records beside the panel: the save's, and the push's with the full commit sha and the line
        # that loads it back.
        expect(record).to_have_count(2)
        expect(record.filter(has_text="saved model to")).to_have_count(1)
        pushed = record.filter(has_text=f"pushed to {repo_id}")
        expect(pushed).to_contain_text(sha)
        expect(pushed).to_contain_text(f"%load_model {repo_id}@{sha} --as model")
        expect(cell.locator(".widget-hprogress, .progress-bar")).to_have_count(0)  # no bar left behind
        assert hub_token not in page.content()

        # Save with Ctrl+S, as a user would, and read the file the server wrote.
        saved = notebook.lab.root_dir / path
        cell.locator(".jp-InputPrompt").click()  # focus the notebook (command mode), not a widget's input
        page.keyboard.press("Control+s")
        page.wait_for_function(
            "() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000, polling=200)
        text = saved.read_text(encoding="utf-8")
        assert sha in text  # the record was saved...
        assert hub_token not in text  # ...and the token nowhere: not in an output, not in widget state
        assert "application/vnd.jupyter.widget-view+json" not in text  # reopened, no "Error displaying widget"
        assert "hf_not_the_right_token" not in text

        notebook.shut_down_kernel()  # reopened without the kernel: both records, no widget error
        notebook.open(path)
        cell = notebook.code_cell(PANEL_CELL)
        expect(cell.locator(f".jp-OutputArea {RECORD}")).to_have_count(2)
        expect(page.get_by_text("Error displaying widget")).to_have_count(0)
    finally:
        cell = notebook.code_cell(PANEL_CELL)
        if cell.count():
            cell.evaluate("cell => cell.scrollIntoView({block: 'end'})")
        page.screenshot(path=artifacts / f"{notebook.shot_prefix}save-push-panel.png")
