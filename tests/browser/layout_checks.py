"""Measuring a notebook's outputs at several widths and in both themes, in Lab or Notebook 7 (the checks are
``measure_layout.js``'s; see ``test_layouts_lab.py`` for what each kind of problem means)."""

from __future__ import annotations

from pathlib import Path

LIGHT, DARK = "JupyterLab Light", "JupyterLab Dark"
MIN_CONTRAST = 3.0  # WCAG's floor for large text; black text on the dark theme is about 1.1, #b71c1c 2.9
SCROLL_ALLOWED: set[str] = set()  # where a table may scroll sideways inside its own box: nowhere, tables reflow
REFLOW = {"cell", "align", "fragment", "row"}  # the kinds of problem the reflow checks report
# name: (viewport width, Lab's file browser open). 'narrow' is the reported case: Lab at 700 px beside its file
# browser, an output about 330 px wide; 'phone' (400 px, an output under 300 px) is narrower than a table of numbers.
LAYOUTS = {"wide": (1280, True), "medium": (700, False), "narrow": (700, True), "phone": (400, False)}
# The three widths the panels issue names, as each front end shows them (Notebook 7 has no file browser beside).
POINT_LAYOUTS = {"1280 px": (1280, True), "700 px": (700, True), "400 px": (400, False)}

# Runs in the page: every problem in the notebook's outputs (see the file for the kinds).
MEASURE = (Path(__file__).parent / "measure_layout.js").read_text(encoding="utf-8")

# True once the open notebook's box, its height and the theme's colours stayed the same for 5 frames in a row.
SETTLED = """() => {
    const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook') || document.body;
    const box = nb.getBoundingClientRect(), style = getComputedStyle(document.body);
    const sig = [innerWidth, box.x, box.width, nb.scrollHeight, style.backgroundColor,
                 style.getPropertyValue('--jp-layout-color0')].join();
    const last = window.__hfLayout;
    window.__hfLayout = {sig, same: last && last.sig === sig ? last.same + 1 : 0};
    return window.__hfLayout.same >= 5;
}"""


def wait_settled(page) -> None:
    """Wait until the layout stops changing (a resize, a theme or a side panel has been laid out)."""
    page.evaluate("() => { window.__hfLayout = null; }")
    page.wait_for_function(SETTLED, polling="raf", timeout=30_000)


def set_theme(page, theme: str) -> None:
    page.evaluate("t => window.jupyterapp.commands.execute('apputils:change-theme', {theme: t})", theme)
    page.wait_for_function("t => document.body.dataset.jpThemeName === t", arg=theme, timeout=30_000)
    wait_settled(page)  # the theme's stylesheet applied


def set_layout(page, width: int, file_browser: bool, height: int = 900) -> None:
    """The viewport's size, and in JupyterLab its file browser open or closed (Notebook 7 has none beside)."""
    page.set_viewport_size({"width": width, "height": height})
    page.evaluate("open => { const shell = window.jupyterapp.shell; if (!shell.expandLeft) return; "
                  "open ? shell.expandLeft('filebrowser') : shell.collapseLeft(); }", file_browser)
    wait_settled(page)  # the panels laid out again


def measure(notebook) -> dict:
    return notebook.page.evaluate(MEASURE, [notebook.panel.get_attribute("id"), MIN_CONTRAST])


def measure_every_layout(notebook, artifacts: Path, tag: str, themes=(LIGHT, DARK), layouts=None) -> dict:
    """{(theme, layout): measurements}, and a screenshot of the whole notebook for each (``tag-theme-layout.png``).
    Leaves the light theme and the wide layout, as the next test expects."""
    page, found = notebook.page, {}
    try:
        for theme in themes:
            set_theme(page, theme)
            for layout, (width, file_browser) in (layouts or LAYOUTS).items():
                set_layout(page, width, file_browser)
                found[theme, layout] = measure(notebook)
                # the whole notebook in one picture: a viewport as tall as its content
                set_layout(page, width, file_browser, height=min(found[theme, layout]["height"] + 160, 9000))
                notebook.panel.evaluate("panel => panel.querySelectorAll('.jp-WindowedPanel-outer, .jp-Notebook')"
                                        ".forEach(e => { e.scrollTop = 0; })")
                page.screenshot(path=artifacts / f"{tag}-{theme.split()[-1].lower()}-{layout.replace(' ', '')}.png")
    finally:
        set_theme(page, LIGHT)  # the theme is a user setting, kept by the server: later tests get the light one
        set_layout(page, 1280, True)
    return found


def problems(found: dict, *, owners: set[str], cells: set[str] | None = None,
             scroll_allowed: set[str] = SCROLL_ALLOWED, kinds: set[str] | None = None) -> list[str]:
    """Every problem of these owners (record, widget), cells and kinds (all but ``REFLOW``'s unless named), but
    sideways scrolling where it is allowed."""
    out = []
    for (theme, layout), m in found.items():
        for p in m["problems"]:
            if p["owner"] not in owners or (cells is not None and p["cell"] not in cells):
                continue
            if (p["kind"] not in kinds) if kinds is not None else (p["kind"] in REFLOW):
                continue
            if p["kind"] == "scroll" and layout in scroll_allowed:
                continue
            out.append(f"{theme}, {layout} ({m['outputWidth']} px output) [{p['kind']}] {p['cell']}: {p['what']}")
    return out


def summary(found: dict) -> str:
    return "; ".join(f"{t.split()[-1]} {layout}: {m['outputWidth']} px, lowest contrast {m['lowest']:.1f}"
                     for (t, layout), m in found.items())


def tables_by_cell(m: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for t in m["tables"]:
        found.setdefault(t["cell"], []).append(t)
    return found
