"""The look every panel and record shares, in one place: the theme's colours with their fallbacks, the CSS
bits more than one module uses, the memory plot's palette; and the two chores every live panel repeats
(assign only the traits that changed, close a widget tree). Why the colours are spelled so: ``ui/record.py``.
"""

from __future__ import annotations

from typing import Any


def color(var: str, plain: str) -> str:
    """The theme's colour ``var``; before it ``plain`` alone, for renderers that drop ``var()`` (JupyterLab's
    sanitizer drops every declaration holding one)."""
    return f"color:{plain};color:var({var},{plain})"


# Muted text has no plain colour: where var() is dropped it keeps the theme's text colour.
MUTED = "color:var(--jp-ui-font-color2,#777)"
OK = color("--jp-success-color0", "#388e3c")
WARN = color("--jp-warn-color0", "#e65100")
DANGER = color("--jp-error-color1", "#e53935")
# Left rules of the record boxes: the theme's colour, with a fallback that shows on light and dark.
RULE = "var(--jp-border-color1,#9e9e9e)"
RULE_OK = "var(--jp-success-color1,#388e3c)"
RULE_WARN = "var(--jp-warn-color1,#e65100)"
RULE_DANGER = "var(--jp-error-color1,#e53935)"
PANEL_BORDER = "1px solid var(--jp-border-color2,#ccc)"  # the box around an interactive panel

MONO = "font-family:var(--jp-code-font-family,monospace)"
ANYWHERE = "overflow-wrap:anywhere"  # a long name (file, module) wraps in its column instead of being cut

# The memory figure (matplotlib): parameters and buffers, within budget and over it.
PLOT_PARAMS, PLOT_BUFFERS = "#1f77b4", "#aec7e8"
PLOT_OVER, PLOT_OVER_BUFFERS = "#d62728", "#ff9896"
PLOT_KV, PLOT_STEP = "#2ca02c", "#98df8a"  # a --context plan's KV cache and step beside the weights
PLOT_OVER_KV, PLOT_OVER_STEP = "#b2182b", "#f4a582"
PLOT_OVER_TEXT = "#e53935"  # readable on a light and a dark page
PLOT_INK = "#888888"  # text, axes and the budget mark: a grey that reads on a light and a dark page


def set_changed(widget: Any, **traits: Any) -> None:
    """Assign the traits whose values differ (an unchanged value sends no comm message)."""
    for key, value in traits.items():
        if getattr(widget, key) != value:
            setattr(widget, key, value)


def walk(widget: Any):
    """A widget and all its descendants."""
    yield widget
    for child in getattr(widget, "children", ()):
        yield from walk(child)


def close_all(widget: Any) -> None:
    """Close a widget, its descendants and their layouts and styles (each one a comm the kernel keeps)."""
    import ipywidgets as W

    for each in list(walk(widget)):
        for part in (getattr(each, "layout", None), getattr(each, "style", None), each):
            if isinstance(part, W.Widget):
                part.close()
