"""The panels issue point by point, as a user reads them in a real JupyterLab and Notebook 7.

- Words and records (in the dark theme, where `--plot` must not be a white slab): a fresh kernel's first load counts its imports; the record and the editor agree on a
  buffer-only module; a filled device says what accelerate keeps free; a reused name says the old model was
  released; no lock note for another choice of weights; ``%models`` names the quantization; a misspelt repo
  gets "did you mean"; ``--no-offload`` gives the budget that fits, and no "fastest device" on a cpu machine.
- Panels end as records: the editor (what Apply will move, the changed row marked, a Move example this model
  has, Apply, Export with a Copy button in the record beside it, Done) and the save and push panel (who
  pushes, its own words, Save, Done) leave records that a saved notebook, reopened without its kernel, shows
  with no widget error. Saved while they are open, the file has a line for each in place of its widget (the
  page keeps them live), and that file reopens with no widget error either.

Each test ends by measuring its notebook at 1280, 700 and 400 px in the light and the dark theme (the checks of
``measure_layout.js``: nothing cut, sticking out or scrolled sideways, tables reflowed, names broken at their
separators, text that reads), with a screenshot of each (``*points-*-{light,dark}-{1280,700,400}px.png``).
"""

import json
import re

import pytest
from layout_checks import POINT_LAYOUTS, REFLOW, measure_every_layout, problems, summary

expect = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed").expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RECORD = ".hf-notebook-record"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
OFFLOADED = "%load_model tiny/llama --max-memory cpu=300KB --as off"
PLAN = "%plan_model tiny/mixtral --max-memory cpu=400KB --plot"
AGAIN = "%load_model tiny/llama --device-map cpu --dtype bfloat16 --as model"
QUANTIZED = "%load_model tiny/llama --quantize int8-weight --device-map cpu --as q"
WORDS = ["%load_ext hf_notebook", OFFLOADED, PLAN, "%load_model tiny/llama --device-map cpu --as model", AGAIN,
         QUANTIZED, "%models"]


def row_of(record, page, module: str):
    return record.locator("tr").filter(has=page.locator("code", has_text=re.compile(rf"^{re.escape(module)}$")))


def test_the_words_and_records_a_user_reads(front_end, artifacts):
    """Read in the dark theme: the --plot figure is drawn for the page it is on, not a bright white slab."""
    notebook, page = front_end, front_end.page
    notebook.open(notebook.write(f"{notebook.shot_prefix}points_words.ipynb", WORDS))
    page.evaluate("t => window.jupyterapp.commands.execute('apputils:change-theme', {theme: t})", "JupyterLab Dark")
    try:
        expect(page.locator("body[data-jp-theme-light='false']")).to_have_count(1)
        notebook.run_all()
        read_the_words(notebook, artifacts)
    finally:
        page.evaluate("t => window.jupyterapp.commands.execute('apputils:change-theme', {theme: t})",
                      "JupyterLab Light")


def read_the_words(notebook, artifacts) -> None:
    import io

    from PIL import Image, ImageStat

    page = notebook.page

    first = notebook.code_cell(OFFLOADED).locator(RECORD)  # the kernel's first load: its imports shown and counted
    expect(first.locator("tr", has_text="time")).to_contain_text(re.compile(r"\(import \d+\.\d+ s"))
    rotary = row_of(first, page, "model.rotary_emb")  # offloaded, its buffers stay where it runs: said so
    expect(rotary.locator("td").nth(1)).to_have_text("disk, its buffers on cpu")

    plan = notebook.code_cell(PLAN).locator(RECORD)
    expect(plan).to_contain_text("kept free by accelerate for the largest layer")
    image = notebook.code_cell(PLAN).locator(".jp-OutputArea img")
    expect(image).to_have_count(1)
    shot = Image.open(io.BytesIO(image.screenshot())).convert("L")
    shot.save(artifacts / f"{notebook.shot_prefix}dark_plot.png")
    assert ImageStat.Stat(shot).mean[0] < 110, "the plot is a bright slab on a dark page"
    expect(plan).to_contain_text(re.compile(r"--max-memory cpu=\d+(\.\d+)?MB"))
    expect(plan).not_to_contain_text("MiB")

    again = notebook.code_cell(AGAIN).locator(".jp-OutputArea")
    expect(again).to_contain_text(re.compile(r"model held tiny/llama@\w+ .*it was released\."))
    expect(again).not_to_contain_text("Note:")  # another choice of weights: its own lock entry, no note
    expect(again).not_to_contain_text("Lock file")
    expect(notebook.code_cell("%models").locator(RECORD)).to_contain_text("int8 weight-only (torchao)")

    typo = notebook.run_new_cell("%plan_model tiny/lama", fails=True)
    expect(typo.locator(".jp-OutputArea")).to_contain_text("Did you mean tiny/llama?")
    refused = notebook.run_new_cell("%plan_model tiny/llama --max-memory cpu=300KB --no-offload", fails=True)
    output = refused.locator(".jp-OutputArea")
    expect(output).to_contain_text("does not fit on cpu:")
    expect(output).to_contain_text("--max-memory cpu=1MB")
    expect(output).not_to_contain_text("fastest")
    expect(output).not_to_contain_text("Traceback")  # a UsageError: one message, no frames
    expect(page.get_by_text("Error displaying widget")).to_have_count(0)
    page.screenshot(path=artifacts / f"{notebook.shot_prefix}points_words.png", full_page=True)
    read_at_every_width(notebook, artifacts, "points-words")


def read_at_every_width(notebook, artifacts, tag: str) -> None:
    """Every record (and panel) of the notebook measured at 1280, 700 and 400 px in both themes: no problem."""
    found = measure_every_layout(notebook, artifacts, f"{notebook.shot_prefix}{tag}", layouts=POINT_LAYOUTS)
    assert len(found) == 6 and all(m["records"] for m in found.values()), summary(found)
    bad = problems(found, owners={"record", "widget"}) + problems(found, owners={"record", "widget"}, kinds=REFLOW)
    assert not bad, f"{len(bad)} problems:\n" + "\n".join(bad) + f"\n({summary(found)})"


EDITOR = "%edit_device_map model"
SAVE = "%save_model model"
OPEN_EDITOR = "Device-map editor on model: open when this notebook was saved. %edit_device_map model opens it again."
OPEN_SAVE = "Save and push panel for model: open when this notebook was saved. %save_model model opens it again."
PANELS = ["%load_ext hf_notebook", "%load_model tiny/llama --max-memory cpu=300KB --as model", EDITOR, SAVE]


def test_panels_end_as_records_that_a_reopened_notebook_shows(front_end, lab, artifacts, tmp_path):
    notebook, page = front_end, front_end.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=f"http://127.0.0.1:{lab.port}")
    name = f"{notebook.shot_prefix}points_panels.ipynb"
    notebook.open(notebook.write(name, PANELS))
    notebook.run_all()
    # saved while the editor and the save panel are open: the file has a line for each in place of its widget
    # (hf_notebook's Jupyter server extension), the page keeps them live (all that follows uses them)
    saved = notebook.save()
    assert [o for c in saved["cells"] for o in c.get("outputs", []) if WIDGET_VIEW in o.get("data", {})] == []
    texts = ["".join(o.get("data", {}).get("text/plain", "")) for c in saved["cells"] for o in c.get("outputs", [])]
    assert [t for t in texts if "open when this notebook was saved" in t] == [OPEN_EDITOR, OPEN_SAVE]
    opened = f"{notebook.shot_prefix}points_open.ipynb"
    (lab.root_dir / opened).write_text(json.dumps(saved), encoding="utf-8")  # reopened at the end

    cell = notebook.code_cell(EDITOR)
    editor = cell.locator(".jp-OutputArea .jupyter-widgets").first
    record = cell.locator(f".jp-OutputArea {RECORD}").first  # the model's; an Export adds its own below

    def row(module: str):
        return editor.locator(".widget-hbox").filter(
            has=page.locator("code", has_text=re.compile(rf"^{re.escape(module)}$")))

    def select(module: str):
        return row(module).locator("select")

    # the editor and the record say the same of a buffer-only module
    expect(select("model.rotary_emb")).to_have_value(re.compile(r"^disk"))
    expect(row_of(record, page, "model.rotary_emb").locator("td").nth(1)).to_have_text("disk, its buffers on cpu")
    expect(notebook.text_field(editor, "Move")).to_have_attribute("placeholder", "model.layers.1")  # 2 layers here
    expect(editor).to_contain_text("layers on")  # the slider: first layers on the fastest device

    lm_head = select("lm_head")
    lm_head.select_option(label=next(o for o in lm_head.locator("option").all_inner_texts() if "(cpu)" in o))
    expect(editor).to_contain_text("Apply moves lm_head (65.5 kB) disk → cpu.")
    expect(row("lm_head")).to_contain_text("●")  # the changed row is marked, no other
    expect(editor.locator(".widget-hbox", has_text="●").locator("select")).to_have_count(1)
    editor.get_by_role("button", name="Apply").click()
    expect(editor).to_contain_text("Re-dispatched in place", timeout=30_000)
    expect(row_of(record, page, "lm_head").locator("td").nth(1)).to_have_text("cpu")

    editor.get_by_role("button", name="Export").click()
    exported = cell.locator(RECORD, has_text="wrote the device map to")
    expect(exported).to_have_count(1)
    line = exported.locator("pre")
    expect(line).to_contain_text("--device-map @")
    copy = exported.locator("button")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("() => navigator.clipboard.readText()") == line.text_content()
    # the "layers on" slider: all layers on cpu do not fit its 300 kB, and "Most that fit" finds how many do
    handle, track = editor.locator(".widget-slider .noUi-handle"), editor.locator(".widget-slider .noUi-target")
    handle.scroll_into_view_if_needed()
    start, end = handle.bounding_box(), track.bounding_box()
    page.mouse.move(start["x"] + start["width"] / 2, start["y"] + start["height"] / 2)
    page.mouse.down()  # dragged to the far right, as a user does
    page.mouse.move(end["x"] + end["width"] + 20, start["y"] + start["height"] / 2, steps=8)
    page.mouse.up()
    note = editor.locator(".widget-html", has_text="layers on CPU RAM (cpu), the rest on disk")
    expect(note).to_contain_text("2 of 2 layers on CPU RAM (cpu), the rest on disk (offload): cpu would hold 427.1 kB, "
                                 "127.1 kB over its budget of 300.0 kB")
    editor.get_by_role("button", name="Most that fit").click()
    expect(note).to_contain_text(re.compile(r"^[01] of 2 layers on CPU RAM \(cpu\), the rest on disk \(offload\): fits$"))
    editor.get_by_role("button", name="Done").click()
    expect(cell).to_contain_text("Device-map editor on model: closed, 1 change applied.")

    cell = notebook.code_cell(SAVE)
    panel = cell.locator(".jp-OutputArea .jupyter-widgets").first
    expect(panel).to_contain_text("No Hugging Face token")  # who would push: nobody is logged in here
    expect(panel).to_contain_text("replace an existing folder")
    notebook.text_field(panel, "folder").fill(str(tmp_path / "saved"))
    save = panel.get_by_role("button", name="Save")
    save.click()
    expect(cell.locator(RECORD)).to_contain_text("saved model to", timeout=60_000)
    save.click()  # again, into the folder it just wrote: refused in the panel's own words
    expect(panel).to_contain_text("replace an existing folder”", timeout=30_000)
    expect(panel).not_to_contain_text("--overwrite")
    panel.get_by_role("button", name="Done").click()
    expect(cell).to_contain_text(f"Save and push panel for model: closed (saved to {tmp_path / 'saved'}).")
    expect(cell.locator(RECORD)).to_have_count(1)
    page.screenshot(path=artifacts / f"{notebook.shot_prefix}points_panels.png", full_page=True)
    read_at_every_width(notebook, artifacts, "points-panels")

    notebook.save()
    notebook.shut_down_kernel()
    notebook.open(name)  # no kernel has these widgets now: every panel must be a record
    expect(page.get_by_text("Error displaying widget")).to_have_count(0)
    editor_cell, save_cell = notebook.code_cell(EDITOR), notebook.code_cell(SAVE)
    expect(editor_cell).to_contain_text("Device-map editor on model: closed, 1 change applied.")
    expect(row_of(editor_cell.locator(RECORD).first, page, "lm_head").locator("td").nth(1)).to_have_text("cpu")
    expect(editor_cell.locator(RECORD, has_text="wrote the device map to")).to_have_count(1)
    expect(save_cell.locator(RECORD)).to_contain_text("saved model to")
    expect(page.locator(".jupyter-widgets")).to_have_count(0)

    notebook.open(opened)  # the copy saved with both panels open: their lines, the records, no widget error
    expect(page.get_by_text("Error displaying widget")).to_have_count(0)
    expect(page.locator(".jupyter-widgets")).to_have_count(0)
    expect(notebook.code_cell(EDITOR)).to_contain_text(OPEN_EDITOR)
    expect(notebook.code_cell(EDITOR).locator(RECORD)).to_have_count(1)  # the model's record below the line
    expect(notebook.code_cell(SAVE)).to_contain_text(OPEN_SAVE)


def test_notebooks_in_one_folder_share_a_lock_without_notes_about_each_other(notebook):
    """In JupyterLab (the lock and its notes are the kernel's, the same in any front end). Two tutorials in one
    folder load the same repo, one in full, one in bfloat16: each kind of load is its own lock entry, so neither
    prints a note about the other's (a quantized one: the words test)."""
    first = notebook.write(f"{notebook.shot_prefix}lock_first.ipynb",
                           ["%load_ext hf_notebook", "%load_model tiny/llama --device-map cpu --as a"])
    second = notebook.write(f"{notebook.shot_prefix}lock_second.ipynb",
                            ["%load_ext hf_notebook", "%load_model tiny/llama --device-map cpu --dtype bfloat16 --as b"])
    for path in (first, second):  # the second would note how the first loaded, were they one entry
        notebook.open(path)
        notebook.run_all()
        outputs = notebook.panel.locator(".jp-OutputArea")
        expect(outputs.filter(has_text="✓")).to_have_count(1)
        for text in outputs.all_inner_texts():
            assert "Note:" not in text and "Lock file" not in text and '{"' not in text, text
        notebook.shut_down_kernel()


def test_the_device_map_tutorial_adds_no_cell_when_run(front_end):
    """Run All: the tutorial's Export prints its line, it does not insert a cell (which every run would add)."""
    notebook, page = front_end, front_end.page
    notebook.open("device_map_editor.ipynb")
    cells = notebook.panel.locator(".jp-Notebook .jp-Cell")
    count = cells.count()
    notebook.run_all()
    expect(cells).to_have_count(count)
    expect(page.get_by_text("Error displaying widget")).to_have_count(0)

