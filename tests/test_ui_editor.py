"""The device-map editor widget, driven from Python as a user drives it: selectors, the range
action, Apply / Undo / Reset / Export; asserting the map, totals, messages and the model."""

import html
import json
import re

import pytest
import torch

from hf_notebook.core.api import load_model
from hf_notebook.core.devices.plan import plan_placement
from hf_notebook.testing.models import build_model, make_config
from hf_notebook.ui.editor import DeviceMapEditor

IDS = torch.tensor([[3, 1, 4, 1, 5]])


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    model = build_model("llama")
    model.save_pretrained(folder, max_shard_size="100KB")
    with torch.no_grad():
        return folder, model(IDS).logits


def row(editor, label):
    return next(r for r in editor.rows.values() if r.label == label)


def test_rows_collapse_ranges_and_expand_to_layers(llama_folder):
    result = load_model(str(llama_folder[0]), no_verify=True, device_map="cpu", name="m")
    editor = DeviceMapEditor(result)
    assert [r.label for r in editor.rows.values()] == [
        "model.embed_tokens", "model.layers.0-1", "model.norm", "model.rotary_emb", "lm_head"]
    layers = row(editor, "model.layers.0-1")
    assert layers.select.value == "cpu" and [o[1] for o in layers.select.options] == ["cpu", "disk"]
    layers.toggle.click()
    assert [c.label for c in layers.children] == ["model.layers.0", "model.layers.1"]
    assert layers.box.layout.display == "flex"
    assert editor.apply_button.disabled and "no changes yet" in editor.status.value


def test_a_selector_moves_a_row_and_totals_follow(llama_folder):
    result = load_model(str(llama_folder[0]), no_verify=True, device_map="cpu", name="m")
    editor = DeviceMapEditor(result)
    head = editor.draft.structure.bytes["lm_head"]
    cpu_before = editor.draft.totals()["cpu"]
    row(editor, "lm_head").select.value = "disk"
    assert editor.draft.device_of("lm_head") == "disk"
    assert editor.draft.totals() == {"cpu": cpu_before - head, "disk": head}
    assert "disk (offload): <span style=''>65.5 kB of" in editor.totals.value
    assert not editor.apply_button.disabled
    layer_row = row(editor, "model.layers.0-1")
    layer_row.expand()
    layer_row.children[1].select.value = "disk"  # one layer out of a range
    assert [r.label for r in editor.rows.values()][1:3] == ["model.layers.0", "model.layers.1"]


def test_the_range_action_and_its_refusals(llama_folder):
    result = load_model(str(llama_folder[0]), no_verify=True, device_map="cpu", name="m")
    editor = DeviceMapEditor(result)
    assert editor.move_range("model.layers.0-1", "disk")
    assert [editor.draft.device_of(f"model.layers.{i}") for i in (0, 1)] == ["disk", "disk"]
    before = dict(editor.draft.map)
    assert not editor.move_range("model.layers.0-9", "cpu")
    assert "out of range" in editor.status.value and editor.draft.map == before
    assert not editor.move_range("model.layers.0.mlp", "cpu")
    assert "must stay whole" in editor.status.value and editor.draft.map == before


def test_over_budget_disables_apply_and_says_why():
    plan = plan_placement(make_config("llama"), dtype="float32", max_memory={"cpu": 300_000})
    editor = DeviceMapEditor(plan)
    assert editor.draft.devices == ("cpu", "disk")
    editor.move_range("model", "cpu")
    assert editor.apply_button.disabled
    assert "cpu would hold" in editor.status.value and "over its budget of 300.0 kB" in editor.status.value
    assert "#e53935" in editor.totals.value  # the over-budget total is highlighted
    editor.undo()
    assert editor.draft.problems() == [] and "over its budget" not in editor.status.value


def test_apply_redispatches_in_place_and_updates_the_record(llama_folder):
    folder, want = llama_folder
    result = load_model(str(folder), no_verify=True, device_map="cpu", name="m")
    editor = DeviceMapEditor(result)
    row(editor, "model.layers.0-1").select.value = "disk"
    assert editor.apply()
    assert result.model.hf_device_map["model.layers.0"] == "disk"
    assert "Re-dispatched in place: 295.9 kB cpu → disk (nothing written: read in place from the checkpoint)" \
        in editor.status.value
    assert "disk" in editor.record().text and "re-dispatched" in editor.record().text
    with torch.no_grad():
        assert torch.equal(result.model(IDS).logits, want)
    assert editor.apply_button.disabled  # the applied map is the new starting point
    editor.reset("auto")  # back to the automatic plan: everything on cpu
    assert editor.draft.map == {"": "cpu"} and not editor.apply_button.disabled
    assert editor.apply() and result.model.hf_device_map == {"": "cpu"}


def test_undo_and_reset_buttons(llama_folder):
    result = load_model(str(llama_folder[0]), no_verify=True, device_map="cpu", name="m")
    editor = DeviceMapEditor(result)
    row(editor, "lm_head").select.value = "disk"
    row(editor, "model.norm").select.value = "disk"
    editor.undo_button.click()
    assert editor.draft.device_of("model.norm") == "cpu" and editor.draft.device_of("lm_head") == "disk"
    assert row(editor, "model.norm").select.value == "cpu"  # the selector shows the undone state
    editor.reset_button.click()
    assert not editor.draft.changed and editor.apply_button.disabled


def test_export_writes_json_and_shows_the_load_line(llama_folder, tmp_path):
    from hf_notebook.core.options import parse_device_map

    result = load_model(str(llama_folder[0]), no_verify=True, device_map="cpu", name="m")
    editor = DeviceMapEditor(result)
    row(editor, "lm_head").select.value = "disk"
    path = tmp_path / "map.json"
    line = editor.export(str(path))
    assert parse_device_map(f"@{path}") == editor.draft.map
    assert json.loads(path.read_text())["lm_head"] == "disk"
    assert line.startswith("%load_model ") and f"--device-map @{path}" in line and line.endswith("--as m")
    assert f"@{path}" in editor.export_line.value
    record = editor.record().bundle()  # the static record beside the editor keeps the line (its Copy button there)
    assert f"  {line}" in record["text/plain"] and "class='hf-notebook-copy'" in record["text/html"]
    assert line in html.unescape(re.sub(r"<[^>]+>", "", record["text/html"]))
    assert editor.export(str(tmp_path / "missing" / "map.json")) is None
    assert "cannot write" in editor.export_line.value  # said where Export is


def test_apply_on_a_plan_updates_the_plan_in_place():
    plan = plan_placement(make_config("llama"), dtype="float32", max_memory={"cpu": 300_000})
    auto = dict(plan.device_map)
    editor = DeviceMapEditor(plan)
    editor.move_range("model.layers.0", "cpu")
    assert editor.apply() and "The plan now uses this map" in editor.status.value
    assert plan.device_map["model.layers.0"] == "cpu" and plan.edits == [auto]
    assert "edited by hand" in editor.record().text
    editor.reset("auto")
    assert editor.draft.map == auto


def test_text_form_for_terminals(llama_folder):
    result = load_model(str(llama_folder[0]), no_verify=True, device_map="cpu", name="m")
    editor = DeviceMapEditor(result)  # one editor: each takes its own snapshot of free memory when it opens
    text = repr(editor)
    assert "model.layers.0-1" in text and "cpu: 427.3 kB" in text
    bundle = editor._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and bundle["text/plain"] == text


def test_apply_replays_its_own_edits_on_a_map_moved_elsewhere(llama_folder):
    """An editor opened before another cell moved the model must not undo that move."""
    from hf_notebook.core.api import apply_device_map, device_map_editor

    result = load_model(str(llama_folder[0]), no_verify=True, device_map="cpu", name="m")
    editor = DeviceMapEditor(result)
    other = device_map_editor(result)
    other.set("model.layers.0-1", "disk")
    apply_device_map(result, other.map)  # e.g. %edit_device_map m --set model.layers.0-1=disk in another cell
    row(editor, "lm_head").select.value = "disk"
    assert editor.apply()
    assert result.model.hf_device_map["model.layers.0"] == "disk" and result.model.hf_device_map["lm_head"] == "disk"


def test_changes_reuse_rows_instead_of_building_widgets():
    """Each widget is a comm to the front end: editing must not pile them up."""
    from ipywidgets.widgets.widget import _instances

    plan = plan_placement(make_config("llama"), dtype="float32", max_memory={"cpu": 300_000})
    editor = DeviceMapEditor(plan)
    for _ in range(2):  # warm up: the pool grows to the most rows shown at once
        editor.move_range("model.layers.0", "cpu")
        editor.move_range("model.layers.1", "cpu")
        editor.undo()
        editor.undo()
    before = len(_instances)
    for _ in range(10):
        editor.move_range("model.layers.0", "cpu")
        editor.move_range("model.layers.1", "cpu")
        editor.undo()
        editor.undo()
    assert len(_instances) == before
    editor.close()
    assert len(_instances) < before


def test_the_editor_lists_what_apply_will_move_and_marks_those_rows(tiny_hub, hf_cache):
    from hf_notebook.core.api import load_model
    from hf_notebook.ui.editor import DeviceMapEditor

    editor = DeviceMapEditor(load_model("tiny/llama", device_map="cpu"), name="m")
    assert editor.range_text.placeholder == "model.layers.1"  # a range this model has (2 layers)
    assert "no changes yet" in editor.status.value
    assert editor.move([("lm_head", "disk")])
    assert "Apply moves lm_head (65.5 kB) cpu → disk." in editor.status.value
    marked = [row for row in editor.rows.values() if "●" in row.name.value]
    assert [row.label for row in marked] == ["lm_head"]
    assert editor.apply() and not any("●" in row.name.value for row in editor.rows.values())


def test_the_layers_slider_spreads_layers_and_says_if_they_fit():
    """The "layers on GPU" slider of a plan for a GPU machine: n first layers on cuda:0, the rest on cpu; the
    note and the totals say whether that fits; "Most that fit" picks the largest n within every budget."""
    config = make_config("llama")
    config.num_hidden_layers = 6
    plan = plan_placement(config, dtype="float32", max_memory={0: 400_000, "cpu": 10**7})
    editor = DeviceMapEditor(plan, name="p")
    draft = editor.draft
    assert (draft.fastest, draft.slower) == ("cuda:0", "cpu") and len(draft.layers) == 6
    assert editor.slider.max == 6 and editor.slider.description == "layers on cuda:0"
    editor.slider.value = 0  # the user drags the slider
    assert editor.draft.layers_on_fastest() == 0
    assert {str(editor.draft.device_of(layer)) for layer in draft.layers} == {"cpu"}
    assert "0 of 6 layers on GPU 0 (cuda:0), the rest on CPU RAM (cpu): fits" in editor.slider_note.value
    editor.slider.value = 6
    assert editor.draft.layers_on_fastest() == 6
    assert "over its budget" in editor.slider_note.value and editor.apply_button.disabled
    editor.fit_button.click()
    most = editor.slider.value
    assert 0 < most < 6 and not editor.draft.problems()
    editor.put_layers(most + 1)  # one more layer does not fit
    assert editor.draft.problems()
    editor.undo_button.click()  # the slider follows the draft back
    assert editor.slider.value == most


def test_the_slider_counts_the_kv_cache_of_a_context_plan(tiny_hub, hf_cache):
    """With --context, the KV cache and step count against the budget too: fewer layers fit."""
    from hf_notebook.core.api import plan_model

    weights = DeviceMapEditor(plan_model("tiny/llama", dtype="float32", max_memory="cpu=450KB"), name="w")
    room = DeviceMapEditor(plan_model("tiny/llama", dtype="float32", max_memory="cpu=450KB", context=64), name="c")
    assert (weights.draft.fastest, weights.draft.slower) == ("cpu", "disk")
    assert room.draft.most_layers_that_fit() < weights.draft.most_layers_that_fit()
