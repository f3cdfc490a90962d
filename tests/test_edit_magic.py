"""``%edit_device_map``: the non-interactive form (--set, --export), plans, and bad input that
changes nothing."""

import json

import pytest
import torch
from IPython.core.error import UsageError

IDS = torch.tensor([[2, 7, 1, 8, 2, 8]])


def out(model):
    with torch.no_grad():
        return model(IDS).logits


@pytest.fixture
def m(shell, tiny_hub, hf_cache, capsys):
    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    capsys.readouterr()
    return shell.user_ns["m"]


def test_set_moves_layers_in_place_and_prints_the_new_map(shell, m, loaded, capsys):
    before = out(m)
    shell.run_line_magic("edit_device_map", "m --set model.layers.0-1=disk --set lm_head=disk")
    text = capsys.readouterr().out
    assert "Re-dispatched in place" in text and "cpu → disk" in text
    assert "model.layers.0-1  (2 modules)  disk" in text  # the record, with the new map
    assert shell.user_ns["m"] is m and m.hf_device_map["model.layers.1"] == "disk" and m.hf_device_map["lm_head"] == "disk"
    assert torch.equal(out(m), before)
    shell.run_line_magic("models", "m")
    assert "re-dispatched" in capsys.readouterr().out
    assert loaded.get("m").placement.bytes_by_device["disk"] > 0


@pytest.mark.parametrize("sets, words", [
    ("--set model.layers.9=disk", "no module 'model.layers.9'"),
    ("--set model.layers.0-5=disk", "out of range"),
    ("--set model.layers.0.mlp=disk", "must stay whole"),
    ("--set lm_head=cuda:0", "not a device on offer"),
    ("--set lm_head", "Cannot read --set"),
    ("--set lm_head=disk --set lm_head=cpu", "both"),
])
def test_bad_sets_change_nothing(shell, m, loaded, sets, words):
    before_map, before_placement = dict(m.hf_device_map), loaded.get("m").placement
    with pytest.raises(UsageError, match=words):
        shell.run_line_magic("edit_device_map", f"m {sets} --set model.norm=disk")
    assert m.hf_device_map == before_map and loaded.get("m").placement is before_placement
    assert not loaded.get("m").edits


def test_over_budget_is_refused_with_the_numbers(shell, tiny_hub, hf_cache, loaded):
    shell.run_line_magic("load_model", "tiny/llama --max-memory cpu=300KB --as m")
    m = shell.user_ns["m"]
    before = dict(m.hf_device_map)
    with pytest.raises(UsageError, match="cpu would hold 427.3 kB, 127.3 kB over its budget of 300.0 kB"):
        shell.run_line_magic("edit_device_map", "m --set model=cpu --set lm_head=cpu")
    assert m.hf_device_map == before


def test_export_writes_the_map_and_puts_the_load_line_at_the_next_prompt(shell, m, tmp_path, capsys):
    path = tmp_path / "map.json"
    shell.run_line_magic("edit_device_map", f"m --set model.layers.1=disk --export {path}")
    written = json.loads(path.read_text())
    assert written == m.hf_device_map and written["model.layers.1"] == "disk"
    line = shell.rl_next_input  # what set_next_input queued: a terminal's next prompt
    assert line.startswith("%load_model tiny/llama@") and f"--device-map @{path}" in line
    assert f"Wrote {path}" in capsys.readouterr().out
    shell.run_line_magic("load_model", line[len("%load_model "):].replace("--as m", "--as again"))
    assert shell.user_ns["again"].hf_device_map == m.hf_device_map


def test_an_edited_plan_is_what_the_next_load_of_it_uses(shell, tiny_hub, hf_cache, capsys):
    shell.run_line_magic("plan_model", "tiny/llama --max-memory cpu=300KB --as p")
    plan = shell.user_ns["p"]
    assert plan.device_map["model.layers"] == "disk"
    shell.run_line_magic("edit_device_map", "p --set model.layers.0=cpu")
    assert "edited by hand" in capsys.readouterr().out
    assert shell.user_ns["p"] is plan and plan.device_map["model.layers.0"] == "cpu"
    shell.run_line_magic("load_model", "p --as m")
    assert shell.user_ns["m"].hf_device_map == plan.device_map


def test_without_set_a_terminal_gets_the_text_form(shell, m, capsys):
    shell.run_line_magic("edit_device_map", "m")
    text = capsys.readouterr().out
    assert "Device map · m = tiny/llama@" in text and "model.layers.0-1" in text
    assert "%edit_device_map m --set MODULES=DEVICE" in text


def test_unknown_names(shell, tiny_hub, hf_cache):
    shell.user_ns["x"] = 3
    with pytest.raises(UsageError, match="neither a model loaded by hf_notebook .* nor a plan"):
        shell.run_line_magic("edit_device_map", "x --set lm_head=disk")


def test_help_lists_the_flags(shell):
    doc = shell.find_line_magic("edit_device_map").__doc__
    assert "--set MODULES=DEVICE" in doc and "--export FILE.json" in doc


def test_python_objects_open_the_editor(tiny_hub, hf_cache):
    from hf_notebook import edit_device_map
    from hf_notebook.core.api import load_model, plan_model
    from hf_notebook.ui.editor import DeviceMapEditor

    assert isinstance(edit_device_map(load_model("tiny/llama", device_map="cpu")), DeviceMapEditor)
    assert isinstance(edit_device_map(plan_model("tiny/llama")), DeviceMapEditor)


def test_an_offload_folder_made_for_an_edit_is_removed_with_the_model(shell, m, loaded):
    import os

    with torch.no_grad():  # changed since the load, so moving them to disk writes them (else read in place)
        for param in m.model.layers[0].parameters():
            param.data = param.data.clone()
    shell.run_line_magic("edit_device_map", "m --set model.layers.0=disk")
    folder = loaded.get("m").offload_folder
    assert folder and os.listdir(folder)
    shell.run_line_magic("unload_model", "m")
    assert not os.path.exists(folder)


def test_the_terminal_editor_names_the_line_that_applies_not_a_button(shell, tiny_hub, hf_cache, capsys):
    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    capsys.readouterr()
    shell.run_line_magic("edit_device_map", "m")
    out = capsys.readouterr().out
    assert "(loaded: %edit_device_map m --set MODULES=DEVICE moves it in place)" in out and "Apply" not in out


def test_the_editor_and_the_record_agree_on_a_buffer_only_module(shell, tiny_hub, hf_cache):
    """model.rotary_emb (buffers only) mapped to disk: both say disk for the module and count its buffers on
    cpu, where accelerate keeps them (the record measures the tensors; the editor plans from the map)."""
    from hf_notebook import edit_device_map
    from hf_notebook.magics import instance

    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    shell.run_line_magic("edit_device_map", "m --set model.rotary_emb=disk --set model.layers.1=disk")
    result = instance(shell).session.get("m")
    editor = edit_device_map(result, name="m")
    record = result.placement
    rotary = record.group_of("model.rotary_emb")
    assert (rotary.device, rotary.buffers_on) == ("disk", "cpu")
    assert editor.draft.placement().group_of("model.rotary_emb").device == "disk"
    assert editor.draft.totals()["cpu"] == record.devices["cpu"].nbytes  # one number, from both sources
    from hf_notebook.ui.record import load_record

    assert "disk, its buffers on cpu" in load_record(result).text  # and the record says why


def test_export_in_jupyter_adds_no_cell(shell, m, tmp_path, capsys):
    """A notebook run again must not grow a cell per run: in a kernel the line is printed, not inserted."""
    shell.kernel = object()  # what ipykernel's shell has
    try:
        shell.rl_next_input = None
        shell.run_line_magic("edit_device_map", f"m --export {tmp_path / 'map.json'}")
        assert shell.rl_next_input is None and "this line loads it" in capsys.readouterr().out
    finally:
        del shell.kernel


def test_layers_puts_the_first_layers_on_the_fastest_device(shell, m, loaded, capsys):
    """--layers N: the slider from a line (terminal, scripts): on a cpu machine the first N layers stay on cpu and
    the rest go to disk, in place; max picks the most that fit; a bad count changes nothing."""
    before = out(m)
    shell.run_line_magic("edit_device_map", "m --layers 1")
    assert "Re-dispatched in place" in capsys.readouterr().out
    assert (m.hf_device_map["model.layers.0"], m.hf_device_map["model.layers.1"]) == ("cpu", "disk")
    assert torch.equal(out(m), before)
    shell.run_line_magic("edit_device_map", "m --layers max")  # no budget given: everything fits on cpu
    assert {m.hf_device_map[f"model.layers.{i}"] for i in (0, 1)} == {"cpu"}
    with pytest.raises(UsageError, match="Cannot read --layers 'two'"):
        shell.run_line_magic("edit_device_map", "m --layers two")
    assert {m.hf_device_map[f"model.layers.{i}"] for i in (0, 1)} == {"cpu"}
    assert "--layers N|max" in shell.find_line_magic("edit_device_map").__doc__


@pytest.mark.parametrize("repo, layers", [("tiny/gpt2", "transformer.h"), ("tiny/qwen2", "model.layers")])
@pytest.mark.parametrize("how, moved", [("--set {layers}.0=disk", "0"), ("--layers 1", "1")])
def test_a_bound_plan_of_a_tied_embedding_model_can_be_edited(shell, tiny_hub, hf_cache, capsys, repo, layers, how,
                                                              moved):
    """The tied lm_head (0 B: its tensor is the embedding's) stays placed, with its embedding."""
    shell.run_line_magic("plan_model", f"{repo} --as p")
    p = shell.user_ns["p"]
    assert p.device_map == {"": "cpu"}
    capsys.readouterr()
    shell.run_line_magic("edit_device_map", f"p {how.format(layers=layers)}")
    text = capsys.readouterr().out
    assert p.device_map[f"{layers}.{moved}"] == "disk" and p.device_map["lm_head"] == "cpu"
    assert "lm_head" in text and "does not place" not in text


def test_a_one_device_map_that_leaves_the_head_out_loads_and_edits(shell, tiny_hub, hf_cache, loaded, capsys):
    """transformers puts what a one-device map leaves out on cpu: the map, the record and edits say so."""
    shell.run_line_magic("load_model", """tiny/llama --device-map '{"model": "cpu"}' --as m""")
    m = shell.user_ns["m"]
    text = capsys.readouterr().out
    assert m.hf_device_map == {"model": "cpu", "lm_head": "cpu"} and m.lm_head.weight.device.type == "cpu"
    assert "(whole model)" not in text and "lm_head" in text
    before = out(m)
    shell.run_line_magic("edit_device_map", "m --set model.layers.0=disk --set lm_head=disk")
    assert m.hf_device_map["model.layers.0"] == "disk" and m.hf_device_map["lm_head"] == "disk"
    assert torch.equal(out(m), before)


def test_more_layers_than_the_model_has_is_refused_not_clamped(shell, tiny_hub, hf_cache):
    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    with pytest.raises(UsageError, match="(?s)--layers 7: the model has 2 numbered layers.*Give 0 to 2"):
        shell.run_line_magic("edit_device_map", "m --layers 7")
