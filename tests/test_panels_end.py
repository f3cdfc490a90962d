"""Every panel ends as records a saved notebook keeps: Done (or a push, the last step) replaces the live widget
by a static line, each action leaves its own record, and no output is left that needs the widget's model."""

import re

import pytest

WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture
def outputs(shell, monkeypatch):
    """The cell's outputs as a saved notebook keeps them: displays appended, ``update_display`` applied in place."""
    kept: list[list] = []

    def publish(data, metadata=None, source=None, *, transient=None, update=False, **_):
        display_id = (transient or {}).get("display_id")
        if update:
            for entry in kept:
                if entry[0] == display_id:
                    entry[1:] = [data, metadata or {}]
            return
        kept.append([display_id, data, metadata or {}])

    monkeypatch.setattr(shell.display_pub, "publish", publish)
    return kept


def test_the_editor_ends_as_records_with_the_applied_map(shell, tiny_hub, hf_cache, outputs, tmp_path):
    from hf_notebook import edit_device_map
    from hf_notebook.magics import instance

    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    editor = edit_device_map(instance(shell).session.get("m"), name="m")
    editor.display()
    assert WIDGET in outputs[0][1]
    assert editor.move([("model.layers.1", "disk")]) and editor.apply()
    assert "model.layers.1" in outputs[0][1]["text/plain"] and "disk" in outputs[0][1]["text/plain"]  # not stale
    assert editor.export(str(tmp_path / "no-such-dir" / "map.json")) is None
    assert "Not exported" in editor.export_line.value and "Not applied" not in editor.status.value
    editor.done()
    assert all(WIDGET not in data for _, data, _ in outputs)
    closed, record = (data["text/plain"] for _, data, _ in outputs)
    assert closed == "Device-map editor on m: closed, 1 change applied. %edit_device_map m opens it again."
    assert "disk" in record and editor.widget.comm is None


def test_the_save_and_push_panel_keeps_a_record_per_action(shell, tiny_hub, hf_cache, hub_server, hub_token,
                                                         outputs, tmp_path, monkeypatch):
    from hf_notebook.magics import instance
    from hf_notebook.ui.save_push import SavePushPanel

    monkeypatch.setenv("HF_TOKEN", hub_token)
    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    panel = SavePushPanel(instance(shell).session, "m")
    panel.display()
    panel.folder.value = str(tmp_path / "saved")
    assert panel.save() is not None
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    panel.folder.value, panel.overwrite.value = str(tmp_path / "other"), False
    assert panel.save() is None and "--overwrite" not in panel.status.value  # the panel's words, not a flag's
    panel.folder.value = str(tmp_path / "saved")
    panel.repo.value = "user/ends"
    pushed = panel.push()
    assert pushed is not None and panel.closed  # the push was the last step: the panel gave way to its records
    assert all(WIDGET not in data for _, data, _ in outputs)
    closed, records = (data["text/plain"] for _, data, _ in outputs)
    assert closed.startswith("Save and push panel for m: closed (saved to ") and "pushed to user/ends" in closed
    assert records.count("saved m to") == 1 and "user/ends" in records  # the save's record and the push's


def test_the_push_panel_says_who_pushes_and_where_they_may_write(shell, tiny_hub, hf_cache, hub_server, hub_token,
                                                                monkeypatch):
    from hf_notebook.magics import instance
    from hf_notebook.testing.hub.payloads import USER
    from hf_notebook.ui.save_push import SavePushPanel

    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(hf_cache.parent / "no-login"))
    nobody = SavePushPanel(instance(shell).session, "m")
    assert "No Hugging Face token" in nobody.who.value
    monkeypatch.setenv("HF_TOKEN", hub_token)
    panel = SavePushPanel(instance(shell).session, "m")
    assert f"logged in as {USER} (write token)" in panel.who.value
    panel.repo.value = f"{USER}/new-model"
    assert f"can write to {USER}/" in panel.who.value
    panel.repo.value = "someone-else/x"
    assert "cannot write to someone-else/" in panel.who.value and hub_token not in panel.who.value
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "Offline" in SavePushPanel(instance(shell).session, "m").who.value


def saved(outputs: list) -> list[dict]:
    """The outputs as the Jupyter server writes them to the file (its pre-save hook applied)."""
    from hf_notebook.server_hook import keep_records

    cells = [{"cell_type": "code", "outputs": [{"output_type": "display_data", "data": dict(data),
                                                "metadata": dict(metadata)} for _, data, metadata in outputs]}]
    model = {"type": "notebook", "content": {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}}
    keep_records(model, path="x.ipynb", contents_manager=None)
    return model["content"]["cells"][0]["outputs"]


def test_panels_saved_while_open_are_a_line_in_the_file_and_live_on_the_page(shell, tiny_hub, hf_cache, outputs):
    """An editor and a save panel left open (no Done), then the notebook saved: the file has each panel's line in
    place of its widget, the page still has the widgets (and an Apply keeps the line); a user's own widget in the
    same notebook is saved as it is."""
    import ipywidgets

    from hf_notebook import edit_device_map
    from hf_notebook.magics import instance
    from hf_notebook.ui.save_push import SavePushPanel

    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    editor = edit_device_map(instance(shell).session.get("m"), name="m")
    editor.display()
    assert editor.move([("model.layers.1", "disk")]) and editor.apply()  # the output is redrawn: its line stays
    SavePushPanel(instance(shell).session, "m").display()
    shell.display_pub.publish(ipywidgets.IntSlider()._repr_mimebundle_(), transient={"display_id": "mine"})
    assert [WIDGET in data for _, data, _ in outputs] == [True, False, True, False, True]  # the page's

    file = saved(outputs)
    assert [WIDGET in o["data"] for o in file] == [False, False, False, False, True]  # the user's slider stays
    assert file[0]["data"]["text/plain"] == ("Device-map editor on m: open when this notebook was saved. "
                                             "%edit_device_map m opens it again.")
    assert file[2]["data"]["text/plain"] == ("Save and push panel for m: open when this notebook was saved. "
                                             "%save_model m opens it again.")
    assert "disk" in file[1]["data"]["text/plain"]  # the record of the applied map, below the editor
    assert all("hf_notebook" not in o["metadata"] for o in file)
    editor.done()
    assert all(WIDGET not in o["data"] and o["data"] == data for o, (_, data, _) in zip(saved(outputs)[:2], outputs))


def test_the_saved_line_is_text_whatever_the_metadata_says():
    """A notebook from elsewhere with crafted metadata: the hook writes its line escaped, and leaves outputs it
    does not know (no widget view, a malformed mark) as they are."""
    from hf_notebook.server_hook import keep_records

    crafted = {"output_type": "display_data", "data": {WIDGET: {"model_id": "x"}, "text/plain": "w"},
               "metadata": {"hf_notebook": {"saved": "<img src=x onerror=alert(1)>"}}}
    odd = [{"output_type": "display_data", "data": {"text/plain": "t"}, "metadata": {"hf_notebook": {"saved": "s"}}},
           {"output_type": "display_data", "data": {WIDGET: {}}, "metadata": {"hf_notebook": "s"}},
           {"output_type": "stream", "name": "stdout", "text": "hi"}]
    model = {"type": "notebook", "content": {"cells": [{"cell_type": "code", "outputs": [crafted, *odd]},
                                                       {"cell_type": "markdown", "source": ""}]}}
    before = [dict(o) for o in odd]
    keep_records(model)
    assert crafted["data"]["text/html"].count("<") == 2 and "&lt;img" in crafted["data"]["text/html"]
    assert odd == before
    keep_records({"type": "file", "content": "text"})  # not a notebook: nothing to do


def test_the_jupyter_server_extension_is_enabled_where_the_package_is_installed():
    """``make venv`` (and Binder's postBuild, and a wheel's data files) enable ``hf_notebook.server_hook``."""
    import re
    import subprocess
    import sys

    found = subprocess.run([sys.executable, "-m", "jupyter", "server", "extension", "list"], capture_output=True,
                           text=True, timeout=120)
    listing = re.sub(r"\x1b\[[0-9;]*m", "", found.stdout + found.stderr)
    assert re.search(r"hf_notebook\.server_hook\s+enabled", listing), listing
    assert re.search(r"hf_notebook\.server_hook\s+OK", listing), listing


@pytest.fixture
def widget_shell(shell, monkeypatch):
    """The shell drawing panels as a kernel does (widgets), its outputs kept as a saved notebook keeps them."""
    shell.run_line_magic("config", "HFNotebook.display = 'widget'")
    return shell


def test_a_failed_push_ends_as_a_record_in_text_and_html(widget_shell, tiny_hub, hf_cache, hub_server, hub_token,
                                                          outputs, monkeypatch):
    """The bar of a push the Hub refuses gives way to a record that says what happened in ``text/plain`` and
    ``text/html`` alike (nbclient keeps both), and no widget."""
    from IPython.core.error import UsageError

    monkeypatch.setenv("HF_TOKEN", hub_token)
    widget_shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    outputs.clear()
    with pytest.raises(UsageError, match="cannot create or write repos under 'me'"):
        widget_shell.run_line_magic("push_model", "m me/x")
    (_, data, _), = outputs
    assert WIDGET not in data and set(data) == {"text/html", "text/plain"}
    assert data["text/plain"] == "✗ push to me/x failed before anything was uploaded"
    assert "✗ push to me/x failed before anything was uploaded" in data["text/html"]
    outputs.clear()
    hub_server.errors = {"/commit/": [507]}  # refused after the upload
    with pytest.raises(UsageError, match="507"):
        widget_shell.run_line_magic("push_model", "m user/refused-commit")
    (_, data, _), = outputs
    assert WIDGET not in data and data["text/plain"].startswith("✗ push to user/refused-commit failed\n")
    assert re.search(r"uploaded +\S+ \S+ of \S+ \S+, (\d+) of \1 files? complete", data["text/plain"]), data
    assert "user/refused-commit failed" in data["text/html"] and "complete" in data["text/html"]
    assert hub_token not in str(outputs)


@pytest.mark.parametrize("repo", ["bad//repo", "owner/na..me"])
def test_a_malformed_repo_id_is_refused_before_any_panel(widget_shell, tiny_hub, hf_cache, hub_server, hub_token,
                                                          outputs, monkeypatch, repo):
    from IPython.core.error import UsageError

    monkeypatch.setenv("HF_TOKEN", hub_token)
    widget_shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    outputs.clear()
    hub_server.reset_counters()
    with pytest.raises(UsageError, match=f"'{re.escape(repo)}' is not a valid repo id: ") as info:
        widget_shell.run_line_magic("push_model", f"m {repo}")
    assert "Write it as owner/name" in str(info.value) and "repo_type" not in str(info.value)
    assert outputs == [] and hub_server.requests == []


def test_no_password_is_kept_in_a_saved_notebooks_widget_state(shell, tiny_hub, hf_cache):
    """The server's pre-save hook empties password fields in ``metadata.widgets`` (the widget state Lab saves):
    a field the kernel has not emptied yet (busy), or anyone's own password widget; other values stay."""
    import json

    import ipywidgets

    from hf_notebook.server_hook import keep_records

    mine = ipywidgets.Password(value="hf_typedbutnotsenttothekernel")
    kept = ipywidgets.Text(value="a note")
    state = ipywidgets.Widget.get_manager_state(widgets=[mine, kept])
    assert "hf_typedbutnotsenttothekernel" in json.dumps(state)
    model = {"type": "notebook", "content": {"cells": [], "nbformat": 4, "nbformat_minor": 5, "metadata": {
        "widgets": {"application/vnd.jupyter.widget-state+json": state}}}}
    keep_records(model)
    saved = model["content"]["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert "hf_typedbutnotsenttothekernel" not in json.dumps(model)
    assert saved[mine.model_id]["state"]["value"] == "" and saved[kept.model_id]["state"]["value"] == "a note"
    models = {"x": "not a model", "y": {"model_name": "PasswordModel"}}
    odd = {"type": "notebook", "content": {"cells": [], "metadata": {"widgets": {
        "application/vnd.jupyter.widget-state+json": {"state": models}}}}}
    keep_records(odd)  # malformed state: left as it is, no error
    mine.close()
    kept.close()
