"""%models lists what was loaded; %unload_model frees it, and the process really shrinks."""

import copy
import gc
import os
import weakref
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from hf_notebook.core.unload import process_rss


def test_models_lists_pins_and_bytes(shell, loaded, tiny_hub, hf_cache, capsys):
    shell.run_line_magic("load_model", "tiny/llama@v1 --as a")
    shell.run_line_magic("load_model", "tiny/gpt2 --dtype bfloat16 --as b")
    capsys.readouterr()
    shell.run_line_magic("models", "")
    out = capsys.readouterr().out
    assert [name for name, _ in loaded.items()] == ["a", "b"]
    assert f"tiny/llama@{tiny_hub['llama'].commits['v1'][:12]}" in out
    assert "GPT2LMHeadModel" in out and "bfloat16" in out and "cpu" in out


def test_unload_frees_memory(shell, loaded, medium_folder, capsys):
    gc.collect()
    baseline = process_rss()
    shell.run_line_magic("load_model", f"{medium_folder} --no-verify --dtype bfloat16 --as big")
    resident = loaded.get("big").placement.bytes_by_device["cpu"]
    assert resident > 100e6
    shell.user_ns["alias"] = shell.user_ns["big"]  # a second name must not keep it alive
    rss_loaded = process_rss()
    assert rss_loaded - baseline > 0.8 * resident
    capsys.readouterr()
    shell.run_line_magic("unload_model", "big")
    out = capsys.readouterr().out
    assert "big" not in shell.user_ns and "alias" not in shell.user_ns and loaded.get("big") is None
    assert rss_loaded - process_rss() > 0.8 * resident  # the memory really came back
    assert "unloaded big" in out and "alias" in out


def test_unload_unknown_name(shell):
    with pytest.raises(UsageError, match="%models"):
        shell.run_line_magic("unload_model", "nothing_here")


def test_models_name_shows_the_measured_views(shell, loaded, tiny_hub, hf_cache, tmp_path, capsys):
    shell.run_line_magic("load_model", f"tiny/llama --max-memory cpu=300KB --offload-folder {tmp_path} --as m")
    capsys.readouterr()
    shell.run_line_magic("models", "m")
    out = capsys.readouterr().out
    placement = loaded.get("m").placement
    assert "disk" in out and "cpu" in out
    from hf_notebook.core.units import format_bytes

    assert format_bytes(placement.bytes_by_device["disk"]) in out
    with pytest.raises(UsageError, match="%models"):
        shell.run_line_magic("models", "nope")


@pytest.mark.parametrize("display", ["text", "widget"])
def test_deleting_a_models_last_name_frees_it_and_its_offload_folder(shell, loaded, tiny_hub, hf_cache, tmp_path,
                                                                      capsys, display):
    """A notebook user frees a model as any Python object: ``del model``, even with its panels and editor shown.
    %models then no longer lists it."""
    shell.run_line_magic("config", f"HFNotebook.display = {display!r}")
    offload = tmp_path / "offload"
    shell.run_line_magic("load_model", f"tiny/llama --max-memory cpu=300KB --offload-folder {offload} --as m")
    shell.run_line_magic("load_model", "tiny/gpt2 --as keep")
    shell.run_line_magic("models", "m")
    shell.run_line_magic("edit_device_map", "m")  # the editor panel (a widget in Jupyter) holds the model's record
    model = weakref.ref(shell.user_ns["m"])
    folder = loaded.get("m").offload_folder
    assert os.path.isdir(folder) and loaded.get("m").placement.bytes_by_device.get("disk")
    gc.disable()  # the cell's end frees it: an offloaded model (accelerate's hooks) is a cycle, which only the
    try:          # cyclic collector frees, maybe long after
        shell.run_cell("del m")
    finally:
        gc.enable()
    assert model() is None and not os.path.exists(folder) and os.listdir(offload) == []
    capsys.readouterr()
    shell.run_line_magic("models", "")
    out = capsys.readouterr().out
    assert "keep" in out and "tiny/llama" not in out
    assert loaded.names() == ["keep"]
    with pytest.raises(UsageError, match="freed when its last name went"):
        shell.run_line_magic("unload_model", "m")


def test_a_model_deleted_by_name_gives_its_memory_back(shell, loaded, medium_folder):
    gc.collect()
    baseline = process_rss()
    shell.run_line_magic("load_model", f"{medium_folder} --no-verify --dtype bfloat16 --as big")
    resident = loaded.get("big").placement.bytes_by_device["cpu"]
    rss_loaded = process_rss()
    assert rss_loaded - baseline > 0.8 * resident
    shell.run_cell("big = None")  # a new value drops the model as del does; the cell's end gives memory back
    assert rss_loaded - process_rss() > 0.8 * resident and loaded.names() == []


def test_unload_removes_only_the_folder_it_made(shell, loaded, tiny_hub, hf_cache, tmp_path):
    """The model's own offload folder goes at %unload_model, even while a forgotten reference keeps the model
    (its hooks are gone: it reads nothing there any more); a folder put in its place is not ours to delete."""
    offload = tmp_path / "offload"
    shell.run_line_magic("load_model", f"tiny/llama --max-memory cpu=300KB --offload-folder {offload} --as m")
    shell.run_line_magic("load_model", f"tiny/llama --max-memory cpu=300KB --offload-folder {offload} --as n")
    kept = [shell.user_ns["m"]]  # a list the user forgot
    folder_m, folder_n = loaded.get("m").offload_folder, loaded.get("n").offload_folder
    shell.run_line_magic("unload_model", "m")
    assert not os.path.exists(folder_m) and kept
    os.rename(folder_n, folder_n + ".moved")
    os.mkdir(folder_n)
    (Path(folder_n) / "notes.txt").write_text("a user's own file")
    shell.run_line_magic("unload_model", "n")
    assert (Path(folder_n) / "notes.txt").read_text() == "a user's own file"


def test_the_python_api_without_a_namespace_holds_the_model_it_returns(tiny_hub, hf_cache, tmp_path):
    from hf_notebook import Session, Settings

    session = Session(Settings(lock_file=""))
    model = weakref.ref(session.load("tiny/llama", name="m").model)
    gc.collect()
    assert model() is not None and session.get("m").model is model()  # no name holds it: the session does
    namespace = {}
    noted = Session(Settings(lock_file=""), namespace=namespace).load("tiny/llama", name="n")
    copied = copy.deepcopy(noted)  # held weakly (a notebook's record): a copy holds a copy of the model
    assert copied.model is not None and copied.model is not namespace["n"] and copied.repo_id == "tiny/llama"
    session.unload("m")
    assert model() is None


def test_reload_ext_keeps_the_models_still_bound(shell, loaded, tiny_hub, hf_cache, capsys):
    from hf_notebook.magics import instance

    shell.run_line_magic("load_model", "tiny/llama --as a")
    shell.run_line_magic("load_model", "tiny/gpt2 --as b")
    model = weakref.ref(shell.user_ns["a"])
    shell.run_line_magic("reload_ext", "hf_notebook")
    shell.user_ns["b"] = "something else"  # rebound after the reload: not b's model any more
    assert instance(shell).registry.names() == ["a"]
    capsys.readouterr()
    shell.run_line_magic("unload_model", "a")
    assert "unloaded a" in capsys.readouterr().out and model() is None and "a" not in shell.user_ns


def test_a_model_freed_by_its_del_gives_its_memory_back_at_the_cells_end(shell, loaded, tiny_hub, hf_cache,
                                                                         monkeypatch):
    """A model on one device has no hooks: `del` frees it at once, and the cell's end still gives its memory back
    (malloc's free pages, the CUDA cache), once."""
    from hf_notebook.core import unload

    calls = []
    monkeypatch.setattr(unload, "release_memory", lambda: calls.append(1))
    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    shell.run_cell("x = 1")
    assert calls == []  # nothing let go of: nothing to do
    shell.run_cell("del m")
    shell.run_cell("y = 2")
    assert calls == [1] and loaded.names() == []


def test_an_offloaded_model_held_by_an_alias_goes_when_the_alias_goes(shell, loaded, tiny_hub, hf_cache, tmp_path):
    offload = tmp_path / "offload"
    shell.run_line_magic("load_model", f"tiny/llama --max-memory cpu=300KB --offload-folder {offload} --as m")
    model, folder = weakref.ref(shell.user_ns["m"]), loaded.get("m").offload_folder
    gc.disable()  # only the cells' ends collect
    try:
        for cell in ("alias = m", "del m", "z = 3"):
            shell.run_cell(cell)
            assert model() is not None and os.path.isdir(folder)  # the alias still holds it
        assert loaded.names() == ["alias"] and loaded.get("alias").name == "alias"  # %models lists it by that name
        shell.run_cell("del alias")
    finally:
        gc.enable()
    assert model() is None and not os.path.exists(folder) and loaded.names() == []


def test_a_panels_record_of_a_model_freed_since_says_so(tiny_hub, hf_cache, tmp_path):
    """The save panel and the editor keep the load's record; once `del` freed the model, using them says so."""
    from hf_notebook import Session, Settings
    from hf_notebook.core.errors import NotLoadedError

    namespace = {}
    session = Session(Settings(lock_file=""), namespace=namespace)
    record = session.load("tiny/llama", name="m")
    del namespace["m"]
    gc.collect()
    for action in (lambda: session.save(record, str(tmp_path / "out")), lambda: session.edit(record, ["lm_head=disk"])):
        with pytest.raises(NotLoadedError, match="m is no longer loaded"):
            action()
    assert not (tmp_path / "out").exists()


def test_a_model_renamed_in_the_notebook_is_unloaded_by_its_new_name(shell, loaded, tiny_hub, hf_cache, capsys):
    shell.run_line_magic("load_model", "tiny/llama --as m")
    shell.run_line_magic("load_model", "tiny/gpt2 --as other")
    shell.run_cell("renamed = m\ndel m")
    assert loaded.names() == ["renamed", "other"]
    capsys.readouterr()
    shell.run_line_magic("models", "")
    assert "renamed" in capsys.readouterr().out
    shell.run_line_magic("unload_model", "renamed")
    assert "renamed" not in shell.user_ns and loaded.names() == ["other"]
