"""Records and panels at wide, medium, narrow and phone widths, in the light and the dark theme, in a real JupyterLab.

One notebook runs once: a load that offloads, a second load, a plan with its figure, ``%models``, ``%lock`` and
``%lock --check``, the device-map editor (its Export line shown), the save panel after a Save, and a load panel
that has not finished. Then, for each theme and width (1280 px with the file browser open; 700 px without it and
with it, the reported case; 400 px), the page is measured in the browser:

- nothing in an output reaches past the output area's right edge, nothing is cut by a hidden overflow, and
  nothing needs sideways scrolling, at any width (headless Chromium draws no scrollbar: a box that scrolls
  looks cut);
- every cell of a record's table shows all of its content, inside its table, apart from the next cell; each
  column is where its header is, so a table too wide for the output reflows (the header and every row wrap at
  the same cells: stacked rows under the same labels) and a table that fits stays one line per row;
- a name (a repo id like ``tiny/llama@4edaf8693df3``, a module, a file) breaks only after ``/ . - _`` or
  before ``@``, never in five-letter pieces;
- each device dropdown of the editor is on the same visual row as its module's name;
- each ``%load_model org/name@<sha> ...`` line wraps inside its ``<pre>``, can be selected, and copies back as
  the one line it is;
- a size (``717 B``, ``65.5 kB``) never breaks between its number and its unit;
- text reads: its contrast with what it is drawn on is at least ``MIN_CONTRAST``.

The records are then opened from a copy of the notebook that is not trusted (as a file from a colleague or a
download is), where JupyterLab sanitizes their HTML, and measured again. Screenshots go to artifacts/browser/
(``layout-*.png``); with ``HF_NOTEBOOK_DOCS=1`` the README's pictures are written to docs/ as well.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest
from layout_checks import (DARK, LAYOUTS, LIGHT, REFLOW, measure, measure_every_layout, problems, set_layout,
                           set_theme, summary, tables_by_cell, wait_settled)

expect = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed").expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RECORD = ".hf-notebook-record"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
DOCS = Path(__file__).resolve().parents[2] / "docs"
DOCS_MAX_BYTES = 150_000

LOAD = "%load_model tiny/llama --max-memory cpu=300KB --as model"
SMALL = "%load_model tiny/llama --as small"
PLAN = "%plan_model tiny/mixtral --max-memory cpu=400KB --plot"
MODELS = "%models"
LOCK, LOCK_CHECK = "%lock", "%lock --check"
EDITOR = "%edit_device_map model"
SAVE = "%save_model model"
LIVE = """\
# a load panel that has not finished: a cached file, a download under way, a shard loading
from hf_notebook.core.events import FileProgress, Resolved, ShardProgress, StageDone, StageStarted
from hf_notebook.ui.progress import LoadPanel

live = LoadPanel()
live.display()
SHA = "0123456789abcdef" * 2 + "01234567"
for event in [StageStarted("resolve", "tiny/llama"), Resolved("tiny/llama", None, SHA, "branch"),
              StageDone("resolve", 0.1), StageStarted("config"), FileProgress("config.json", 717, 717, cached=True),
              StageDone("config", 0.1), StageStarted("fetch"),
              FileProgress("generation_config.json", 137, 137, cached=True),
              FileProgress("model-00001-of-00002.safetensors", 400_000_000, 1_000_000_000),
              FileProgress("model-00002-of-00002.safetensors", 0, 717_000_000), StageDone("fetch", 3.0),
              StageStarted("load"), ShardProgress("model-00001-of-00002.safetensors", 0, 2, 7, 7, 700, 700)]:
    live(event)"""
LIVE_CELL = LIVE.splitlines()[0]
SOURCES = ["%load_ext hf_notebook", LOAD, SMALL, PLAN, MODELS, LOCK, LOCK_CHECK, EDITOR, SAVE, LIVE]
RECORD_CELLS = {LOAD: 1, SMALL: 1, PLAN: 1, MODELS: 1, LOCK: 1, LOCK_CHECK: 1, EDITOR: 2, SAVE: 1}  # each ends with
# The tables of each record cell: (module, device) groups and bytes per device of a load; the same for a plan;
# one for %models, %lock, %lock --check, the editor's record (a load record; its Export adds a record of its own, no
# table) and the save record's files.
TABLE_CELLS = {LOAD: 2, SMALL: 2, PLAN: 2, MODELS: 1, LOCK: 1, LOCK_CHECK: 1, EDITOR: 2, SAVE: 1}

def click_and_wait(cell, button: str, text: str) -> None:
    cell.locator(".jp-OutputArea .jupyter-widgets").first.get_by_role("button", name=button).click()
    expect(cell).to_contain_text(text, timeout=60_000)


def docs_screenshots(notebook) -> list[Path]:
    """The README's pictures, each cropped to its panel: load record, plan with its figure, editor, save panel."""
    page = notebook.page
    set_layout(page, 1000, False, height=2000)
    DOCS.mkdir(exist_ok=True)
    shots = {
        "load-record.png": [notebook.code_cell(LOAD).locator(RECORD)],
        "plan-with-plot.png": [notebook.code_cell(PLAN).locator(RECORD),
                               notebook.code_cell(PLAN).locator(".jp-OutputArea img")],
        "device-map-editor.png": [notebook.code_cell(EDITOR).locator(".jp-OutputArea .jupyter-widgets").first],
        "save-panel.png": [notebook.code_cell(SAVE).locator(".jp-OutputArea .jupyter-widgets").first,
                           notebook.code_cell(SAVE).locator(RECORD)],
    }
    written = []
    for name, parts in shots.items():
        parts[0].evaluate("el => el.scrollIntoView({block: 'start'})")
        wait_settled(page)
        boxes = [p.bounding_box() for p in parts]
        left, top = min(b["x"] for b in boxes) - 4, min(b["y"] for b in boxes) - 4
        right, bottom = max(b["x"] + b["width"] for b in boxes) + 4, max(b["y"] + b["height"] for b in boxes) + 1
        path = DOCS / name
        page.screenshot(path=path, clip={"x": left, "y": top, "width": right - left, "height": bottom - top})
        assert path.stat().st_size < DOCS_MAX_BYTES, f"{path} is {path.stat().st_size} bytes"
        written.append(path)
    return written


@pytest.fixture(scope="module")
def rendered(module_notebook, lab, tiny_hub, artifacts):
    """The notebook run once and measured in every theme and layout, trusted and (reopened) untrusted."""
    notebook, page, found = module_notebook, module_notebook.page, {}
    try:
        notebook.open(notebook.write(f"layouts-{secrets.token_hex(3)}.ipynb", SOURCES))
        notebook.run_all()
        click_and_wait(notebook.code_cell(SAVE), "Save", "✓ saved to")
        if os.environ.get("HF_NOTEBOOK_DOCS") == "1":
            docs_screenshots(notebook)
        click_and_wait(notebook.code_cell(EDITOR), "Export", "load it with")
        found["trusted"] = measure_every_layout(notebook, artifacts, "layout-trusted")

        # The same outputs in a file Lab has not signed: their HTML is sanitized (and no widget can show).
        set_layout(page, 1280, True)
        nb = notebook.save()
        for cell in nb["cells"]:
            cell["outputs"] = [o for o in cell.get("outputs", []) if WIDGET_VIEW not in o.get("data", {})]
        nb["metadata"].pop("widgets", None)
        nb["metadata"].pop("signature", None)
        # Trust is the server's record of each signed file's digest: a byte-identical copy would be trusted too
        # (the saved file has no widget view left to strip since the server extension replaces open panels).
        nb["metadata"]["copied_from"] = "a colleague"
        untrusted = f"untrusted-{secrets.token_hex(3)}.ipynb"
        (lab.root_dir / untrusted).write_text(json.dumps(nb), encoding="utf-8")
        notebook.open(untrusted)
        assert page.evaluate("() => window.jupyterapp.shell.currentWidget.content.model.cells.get(1).trusted") is False
        found["untrusted"] = measure_every_layout(notebook, artifacts, "layout-untrusted")
        yield found
    finally:
        set_theme(page, LIGHT)  # the theme is a user setting, kept by the server: later tests get the light one
        set_layout(page, 1280, True)


def test_records_fit_wrap_and_read_at_every_width_in_both_themes(rendered):
    found = rendered["trusted"]
    for m in found.values():
        assert {cell: m["records"].get(cell, 0) for cell in RECORD_CELLS} == RECORD_CELLS
    widths = {layout: m["outputWidth"] for (theme, layout), m in found.items()}
    assert widths["phone"] < 300 < widths["narrow"] <= 400 < widths["medium"] < widths["wide"], widths
    bad = problems(found, owners={"record"}) + problems(found, owners={"widget"}, cells={LIVE_CELL})
    assert not bad, f"{len(bad)} problems:\n" + "\n".join(bad) + f"\n({summary(found)})"


def test_untrusted_records_fit_wrap_and_read_too(rendered):
    """JupyterLab's sanitizer keeps few styles (no var(), no overflow-wrap:anywhere, no <style>): still nothing
    sticks out, scrolls or is cut, and everything reads."""
    found = rendered["untrusted"]
    for m in found.values():
        assert {cell: m["records"].get(cell, 0) for cell in RECORD_CELLS} == RECORD_CELLS
    bad = problems(found, owners={"record", "other"})
    assert not bad, f"{len(bad)} problems:\n" + "\n".join(bad) + f"\n({summary(found)})"


def test_editor_and_save_panels_fit_and_read(rendered):
    found = rendered["trusted"]
    bad = [p for p in problems(found, owners={"widget"}, cells={EDITOR, SAVE}) if "[pre]" not in p]
    assert not bad, f"{len(bad)} problems:\n" + "\n".join(bad)


def test_editor_export_line_wraps_at_spaces(rendered):
    bad = [p for p in problems(rendered["trusted"], owners={"widget"}, cells={EDITOR}) if "[pre]" in p]
    assert not bad, f"{len(bad)} problems:\n" + "\n".join(bad)


@pytest.mark.parametrize("trust", ["trusted", "untrusted"])
def test_record_tables_reflow_and_nothing_is_cut(rendered, trust):
    """Every cell of every record table whole (no cell narrower than its content, none past its table, none on
    top of the next one) and in its header's place, at 1280, 700 (with and without the file browser) and 400 px,
    in both themes; trusted and sanitized alike, since the technique uses only styles the sanitizer keeps. The
    reflow is really used: at 400 px the tables wider than the output wrap their rows, at 1280 px none does."""
    found = rendered[trust]
    for (theme, layout), m in found.items():
        counts = {cell: len(ts) for cell, ts in tables_by_cell(m).items()}
        assert counts == TABLE_CELLS, f"{theme}, {layout}: {counts}"
    bad = problems(found, owners={"record"}, kinds={"cell", "align"})
    assert not bad, f"{len(bad)} problems:\n" + "\n".join(bad) + f"\n({summary(found)})"
    for theme in (LIGHT, DARK):
        wide, phone = tables_by_cell(found[theme, "wide"]), tables_by_cell(found[theme, "phone"])
        assert all(t["lines"] == 1 for ts in wide.values() for t in ts), wide
        stacked = {cell for cell, ts in phone.items() if any(t["lines"] > 1 for t in ts)}
        assert {PLAN, MODELS, LOCK} <= stacked, phone  # five or six columns in under 300 px
        for layout in LAYOUTS:  # never wider than the output
            m = found[theme, layout]
            assert all(t["width"] <= m["outputWidth"] for t in m["tables"]), (layout, m["tables"])


@pytest.mark.parametrize("trust", ["trusted", "untrusted"])
def test_names_in_tables_break_only_at_their_separators(rendered, trust):
    """``%models``' repo column (``tiny/llama@4edaf8693df3``), module and file names: whole, or broken after
    ``/ . - _`` or before ``@``; never in five-character fragments."""
    bad = problems(rendered[trust], owners={"record"}, kinds={"fragment"})
    assert not bad, f"{len(bad)} problems:\n" + "\n".join(bad)


def test_editor_dropdowns_stay_beside_their_module_names(rendered):
    """At every width each device dropdown is on the visual row of its module's name (the name wraps, the row
    grows taller), and the names break only at their separators."""
    found = rendered["trusted"]
    for (theme, layout), m in found.items():
        assert m["editorRows"] >= 5, f"{theme}, {layout}: {m['editorRows']} editor rows measured"
    bad = problems(found, owners={"widget"}, cells={EDITOR}, kinds={"row", "fragment"})
    assert not bad, f"{len(bad)} problems:\n" + "\n".join(bad)


NOTEBOOK7_SOURCES = ["%load_ext hf_notebook", LOAD, MODELS, EDITOR]
NOTEBOOK7_WIDTHS = (1280, 700, 400)


def test_notebook7_tables_and_editor_rows_at_700_and_400_px(notebook7, tiny_hub, artifacts):
    """The same checks in Jupyter Notebook 7 (reported: at 400 px it put every dropdown on its own line): a load
    record, ``%models`` and the editor, at 1280, 700 and 400 px in both themes; nothing sticks out, scrolls or is
    cut, every table cell is whole and under its header, names break at their separators, and each dropdown is
    on its module's row."""
    page = notebook7.page
    notebook7.open(notebook7.write(f"notebook7-layouts-{secrets.token_hex(3)}.ipynb", NOTEBOOK7_SOURCES))
    found = {}
    try:
        notebook7.run_all()
        for theme in (LIGHT, DARK):
            set_theme(page, theme)
            for width in NOTEBOOK7_WIDTHS:
                page.set_viewport_size({"width": width, "height": 900})
                wait_settled(page)
                found[theme, f"{width} px"] = m = measure(notebook7)
                page.set_viewport_size({"width": width, "height": min(m["height"] + 200, 9000)})
                wait_settled(page)
                page.screenshot(path=artifacts / f"notebook7-layout-{theme.split()[-1].lower()}-{width}.png")
    finally:
        set_theme(page, LIGHT)
    for (theme, layout), m in found.items():
        assert {cell: m["records"].get(cell, 0) for cell in (LOAD, MODELS, EDITOR)} == {LOAD: 1, MODELS: 1, EDITOR: 1}
        assert {cell: len(ts) for cell, ts in tables_by_cell(m).items()} == {LOAD: 2, MODELS: 1, EDITOR: 2}
        assert m["editorRows"] >= 5, f"{theme}, {layout}: {m['editorRows']} editor rows measured"
    bad = (problems(found, owners={"record"}) + problems(found, owners={"record"}, kinds=REFLOW)
           + [p for p in problems(found, owners={"widget"}, cells={EDITOR}) if "[pre]" not in p]
           + problems(found, owners={"widget"}, cells={EDITOR}, kinds={"row", "fragment"}))
    assert not bad, f"{len(bad)} problems:\n" + "\n".join(bad) + f"\n({summary(found)})"
    narrowest = {theme: found[theme, "400 px"] for theme in (LIGHT, DARK)}
    assert all(t["lines"] > 1 for m in narrowest.values() for t in m["tables"] if t["cell"] == MODELS), narrowest
