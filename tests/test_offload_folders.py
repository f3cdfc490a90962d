"""A shared offload folder (``%config HFNotebook.offload_folder``): each model's offloaded weights live in a
folder of its own inside it, so no model overwrites or deletes another's, and a user's own files stay as
they were. Nothing the tool did not write is overwritten or removed."""

import os

import pytest
import torch

IDS = torch.tensor([[2, 7, 1, 8, 2, 8]])
LAYER = "model.layers.0"
WEIGHT = "model.layers.0.mlp.down_proj.weight"


def out(model):
    with torch.no_grad():
        return model(IDS).logits


def changed(model, value):
    """A weight changed since the load (fine-tuned, say): moving it to disk writes it to the offload folder."""
    with torch.no_grad():
        model.get_parameter(WEIGHT).data = torch.full_like(model.get_parameter(WEIGHT), value)


@pytest.fixture
def shared(shell, tiny_hub, hf_cache, tmp_path):
    folder = tmp_path / "offload"
    folder.mkdir()
    shell.run_line_magic("config", f"HFNotebook.offload_folder = {str(folder)!r}")
    return folder


def test_two_models_sharing_an_offload_folder_keep_their_own_weights(shell, shared, loaded):
    shell.run_line_magic("load_model", "tiny/llama@v1 --device-map cpu --as a")
    shell.run_line_magic("load_model", "tiny/llama@main --device-map cpu --as b")
    a, b = shell.user_ns["a"], shell.user_ns["b"]
    changed(a, 0.01)
    changed(b, -0.02)
    want_a, want_b = out(a), out(b)
    shell.run_line_magic("edit_device_map", f"a --set {LAYER}=disk")
    shell.run_line_magic("edit_device_map", f"b --set {LAYER}=disk")
    assert torch.equal(out(a), want_a) and torch.equal(out(b), want_b)
    folder_a, folder_b = loaded.get("a").offload_folder, loaded.get("b").offload_folder
    assert folder_a != folder_b and {os.path.dirname(folder_a), os.path.dirname(folder_b)} == {str(shared)}
    shell.run_line_magic("edit_device_map", f"b --set {LAYER}=cpu")
    assert torch.equal(out(a), want_a) and torch.equal(out(b), want_b)
    assert os.listdir(folder_b) == [] and os.listdir(folder_a)
    shell.run_line_magic("edit_device_map", f"a --set {LAYER}=cpu")
    assert torch.equal(out(a), want_a) and os.listdir(folder_a) == []
    shell.run_line_magic("unload_model", "a")
    shell.run_line_magic("unload_model", "b")
    assert os.listdir(shared) == []  # the folders of their own went with them


def test_a_users_file_of_the_same_name_is_left_alone(shell, shared, loaded):
    mine = shared / f"{WEIGHT}.safetensors"
    mine.write_bytes(b"the user's own file")
    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as a")
    a = shell.user_ns["a"]
    changed(a, 0.01)
    want = out(a)
    shell.run_line_magic("edit_device_map", f"a --set {LAYER}=disk")
    assert torch.equal(out(a), want) and mine.read_bytes() == b"the user's own file"
    shell.run_line_magic("edit_device_map", f"a --set {LAYER}=cpu")
    assert torch.equal(out(a), want) and mine.read_bytes() == b"the user's own file"
    shell.run_line_magic("unload_model", "a")
    assert [p.name for p in shared.iterdir()] == [mine.name] and mine.read_bytes() == b"the user's own file"


def test_loads_that_offload_into_a_shared_folder_keep_their_own_weights(shell, shared, loaded):
    """transformers writes the weights it converts as it loads (mixtral's experts) to the offload folder under
    fixed names: two loads sharing the folder each write into a folder of their own."""
    mine = shared / "mine.txt"
    mine.write_text("the user's own file")
    shell.run_line_magic("load_model", "tiny/mixtral@v1 --max-memory cpu=100KB --as a")
    want_a = out(shell.user_ns["a"])
    shell.run_line_magic("load_model", "tiny/mixtral@main --max-memory cpu=100KB --as b")
    folder_a, folder_b = loaded.get("a").offload_folder, loaded.get("b").offload_folder
    assert folder_a != folder_b and os.listdir(folder_a) and os.listdir(folder_b)
    assert not torch.equal(out(shell.user_ns["b"]), want_a)
    assert torch.equal(out(shell.user_ns["a"]), want_a)
    shell.run_line_magic("unload_model", "b")
    assert torch.equal(out(shell.user_ns["a"]), want_a)
    shell.run_line_magic("unload_model", "a")
    assert [p.name for p in shared.iterdir()] == ["mine.txt"] and mine.read_text() == "the user's own file"


def test_a_file_the_move_did_not_write_is_not_overwritten(tmp_path):
    """Called with a folder that already holds a file of the name a weight would be written under: refused,
    the file as it was, every weight back where it was."""
    from hf_notebook.core.devices.redispatch import redispatch
    from hf_notebook.core.errors import HfNotebookError
    from hf_notebook.testing.models import build_model

    model = build_model("llama")
    model.hf_device_map = {"": "cpu"}
    want = out(model)
    mine = tmp_path / f"{WEIGHT}.safetensors"
    mine.write_bytes(b"the user's own file")
    with pytest.raises(HfNotebookError, match="already exists.*never overwrites") as info:
        redispatch(model, {"": "cpu", LAYER: "disk"}, offload_folder=str(tmp_path))
    assert isinstance(info.value, FileExistsError) and info.value.hint
    assert mine.read_bytes() == b"the user's own file" and [p.name for p in tmp_path.iterdir()] == [mine.name]
    assert model.hf_device_map == {"": "cpu"} and torch.equal(out(model), want)
