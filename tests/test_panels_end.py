"""Every panel ends as records a saved notebook keeps: Done (or a push, the last step) replaces the live widget
by a static line, each action leaves its own record, and no output is left that needs the widget's model."""

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
                    entry[1] = data
            return
        kept.append([display_id, data])

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
    assert all(WIDGET not in data for _, data in outputs)
    closed, record = (data["text/plain"] for _, data in outputs)
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
    assert all(WIDGET not in data for _, data in outputs)
    closed, records = (data["text/plain"] for _, data in outputs)
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
