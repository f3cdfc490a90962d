"""A Jupyter server extension: a notebook saved while one of hf_notebook's panels is open reopens without a
widget error.

A live panel's output is a widget view. Once the kernel that drew it is gone, JupyterLab and Notebook 7 show
"Error displaying widget: model not found" there; they never fall back to the output's text. Each panel's
output carries in its metadata the line that stands for it in a saved file (``{"hf_notebook": {"saved":
line}}``, see :func:`hf_notebook.ui.record.show_panel`). Before the server writes a notebook, :func:`keep_records`
puts that line in place of the widget view. The open page keeps its live panel; only the file changes, so a
page reloaded while the kernel runs shows the line too (run the cell again for the panel). Outputs of other
widgets are left as they are.

The same hook empties every password field in the notebook's saved widget state (``metadata.widgets``, written
by "Save Widget State Automatically" and by nbclient): the save and push panel takes a token out of its field as
soon as the kernel gets it, but a field the kernel has not answered yet (a busy kernel) still holds what was
typed, and no password belongs in a file.

Installed with the package (``etc/jupyter/jupyter_server_config.d/hf_notebook.json``); ``jupyter server
extension list`` names it. Importing this module imports nothing heavy (no IPython, no torch).
"""

from __future__ import annotations

from html import escape
from typing import Any

from hf_notebook.ui.style import MUTED  # a closed panel's line, as ``end_panel`` writes it

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
KEY = "hf_notebook"  # the output metadata of a live panel: {"saved": the line a saved file shows instead}


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "hf_notebook.server_hook"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    serverapp.contents_manager.register_pre_save_hook(keep_records)


def keep_records(model: dict, **_: Any) -> None:
    """``ContentsManager`` pre-save hook: each open hf_notebook panel of a notebook becomes its saved line, and
    no password field's value is kept in the saved widget state."""
    content = model.get("content") if model.get("type") == "notebook" else None
    if not isinstance(content, dict):
        return
    forget_passwords(content.get("metadata"))
    for cell in content.get("cells") or []:
        for output in (cell.get("outputs") or []) if isinstance(cell, dict) else []:
            line = saved_line(output)
            if line is not None:
                output["data"] = {"text/html": f"<div style='{MUTED}'>{escape(line)}</div>", "text/plain": line}
                output["metadata"] = {k: v for k, v in output["metadata"].items() if k != KEY}


def saved_line(output: Any) -> str | None:
    """The line that stands for this output in a saved file, if it is an open hf_notebook panel."""
    if not isinstance(output, dict) or not isinstance(output.get("data"), dict):
        return None
    mark = (output.get("metadata") or {}).get(KEY) if isinstance(output.get("metadata"), dict) else None
    if WIDGET_VIEW not in output["data"] or not isinstance(mark, dict) or not isinstance(mark.get("saved"), str):
        return None
    return mark["saved"]


def forget_passwords(metadata: Any) -> None:
    """Empty the value of every password field in a notebook's saved widget state (``metadata.widgets``)."""
    widgets = metadata.get("widgets") if isinstance(metadata, dict) else None
    saved = widgets.get(WIDGET_STATE) if isinstance(widgets, dict) else None
    models = saved.get("state") if isinstance(saved, dict) else None
    for entry in models.values() if isinstance(models, dict) else ():
        state = entry.get("state") if isinstance(entry, dict) else None
        if isinstance(state, dict) and entry.get("model_name") == "PasswordModel" and state.get("value"):
            state["value"] = ""
