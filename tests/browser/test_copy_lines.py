"""Copy buttons on the lines a record asks the user to copy ("load it again", the Export's "on the other host"), in a
real JupyterLab and Notebook 7: a click puts exactly the line on the clipboard, live and in the saved notebook reopened
(trusted: Lab signed it). An untrusted copy of it shows the lines without any button (scripts do not run there), and
nothing of the script as text."""

import json
import re

import pytest

expect = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed").expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LOAD = "%load_model tiny/llama --as m"


def clipboard_after_click(page, button) -> str:
    page.evaluate("() => navigator.clipboard.writeText('(nothing copied)')")
    button.click()
    expect(button).to_have_text("Copied")
    return page.evaluate("() => navigator.clipboard.readText()")


def assert_buttons_copy_their_lines(notebook, export: str) -> None:
    page = notebook.page
    for source, label, start in [(LOAD, "load it again:", "%load_model tiny/llama@"),
                                 (export, "on the other host:", "%load_model ")]:
        output = notebook.code_cell(source).locator(".jp-OutputArea")
        expect(output).to_contain_text(label)
        line = output.locator("pre").last
        button = output.locator("button")  # by role and name it would be gone while it says "Copied"
        expect(button).to_have_count(1)
        expect(button).to_have_text("Copy")
        copied = clipboard_after_click(page, button)
        assert copied == line.text_content() and copied.startswith(start), (copied, line.text_content())
        assert "\n" not in copied and "Copy" not in copied
        expect(output).not_to_contain_text("function(")  # the script is never shown as text


def test_copy_buttons_copy_the_line_live_reopened_and_not_when_untrusted(front_end, lab, artifacts, tmp_path):
    notebook, page = front_end, front_end.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=f"http://127.0.0.1:{lab.port}")
    bundle = tmp_path / "bundle"
    export = f"%export_model tiny/llama --to {bundle}"
    name = f"{notebook.shot_prefix}copy_lines.ipynb"
    notebook.open(notebook.write(name, ["%load_ext hf_notebook", LOAD, export]))
    notebook.run_all()
    assert_buttons_copy_their_lines(notebook, export)
    page.screenshot(path=artifacts / f"{notebook.shot_prefix}copy_lines.png")

    saved = notebook.save()
    notebook.shut_down_kernel()
    notebook.open(name)  # the file Lab saved and signed: trusted, its scripts run again
    assert_buttons_copy_their_lines(notebook, export)

    saved["cells"].append({"cell_type": "markdown", "metadata": {}, "source": "changed elsewhere"})
    untrusted = f"{notebook.shot_prefix}copy_lines_untrusted.ipynb"  # a file from elsewhere: no signature
    (lab.root_dir / untrusted).write_text(json.dumps(saved), encoding="utf-8")
    notebook.open(untrusted)
    for source in (LOAD, export):
        output = notebook.code_cell(source).locator(".jp-OutputArea")
        expect(output.locator("pre").last).to_have_text(re.compile(r"^%load_model \S"))
        expect(output.get_by_role("button")).to_have_count(0)  # no dead button
        expect(output).not_to_contain_text("function(")
