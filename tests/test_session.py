"""The Session: the Python API has what the magics have (the lock file, --locked, plans, the save guard),
and the magics are a Session with a parser in front."""

import json

import pytest
import torch

from hf_notebook.core.errors import LockError, NotLoadedError, OptionError, SaveError
from hf_notebook.core.session import Session, Settings
from hf_notebook.testing.models import model_files, save_model


@pytest.fixture
def repo(hub_store, hub_repo_id, tmp_path):
    """A repo whose main branch the test moves: (repo id, first sha, a second folder of weights)."""
    folders = {seed: save_model("llama", tmp_path / f"seed{seed}", seed=seed) for seed in (1, 2)}
    hub_store.create_repo(hub_repo_id)
    first = hub_store.commit(hub_repo_id, {n: p.read_bytes() for n, p in model_files(folders[1]).items()})
    return hub_repo_id, first, folders[2]


def session(tmp_path, **settings):
    return Session(Settings(lock_file=str(tmp_path / "lock.json"), **settings), namespace={})


def test_the_python_api_keeps_a_lock_file_and_holds_to_it(repo, hub_store, hf_cache, tmp_path):
    repo_id, first, second = repo
    s = session(tmp_path)
    loaded = s.load(repo_id, name="m", device_map="cpu")
    assert loaded.sha == first and loaded.lock.outcome == "recorded"
    assert json.loads((tmp_path / "lock.json").read_text())["models"][f"{repo_id}@main"]["sha"] == first
    assert s.namespace["m"] is loaded.model and s.get("m") is loaded

    moved = hub_store.commit(repo_id, {n: p.read_bytes() for n, p in model_files(second).items()
                                       if n.endswith(".safetensors")}, message="retrained")
    with pytest.raises(LockError) as info:  # the Hub moved: --locked refuses, naming both commits
        s.load(repo_id, name="again", locked=True)
    assert first in str(info.value) and moved in str(info.value) and "again" not in s.namespace
    plain = s.load(repo_id, name="plain")  # a plain load takes the new commit and leaves the lock as it is
    assert plain.sha == moved and plain.lock.outcome == "kept" and plain.lock.old_sha == first
    assert s.load(repo_id, name="locked", locked=True, offline=True).sha == first  # offline: the lock alone
    updated = s.load(repo_id, name="m", update=True)
    assert updated.lock.outcome == "updated" and updated.lock.sha == moved and updated.lock.changes
    assert s.load(repo_id, name="m", locked=True).sha == moved
    with pytest.raises(OptionError):
        s.load(repo_id, locked=True, update=True)


def test_a_plan_loads_with_its_options_and_edited_map_and_overrides_win(tiny_hub, hf_cache, tmp_path):
    s = session(tmp_path)
    plan = s.plan("tiny/llama", dtype="bfloat16", device_map="cpu", kw={"output_attentions": True})
    s.edit(plan, ["model.layers.1=disk"])  # edited after planning: the load follows the edit
    result = s.load(plan, name="m", kw={"use_cache": False})
    assert result.dtype == "bfloat16" and result.device_map["model.layers.1"] == "disk"
    assert result.options.extra == {"output_attentions": True, "use_cache": False}
    assert s.load(plan, name="n", dtype="float32").dtype == "float32"
    s.namespace["p"] = plan  # a plan bound in the namespace loads by its name, as %load_model p does
    assert s.load("p", name="o").plan.source == plan.source  # the pinned source


def test_names_unload_and_the_save_guard(tiny_hub, hf_cache, tmp_path):
    s = session(tmp_path)
    first = s.load("tiny/llama", name="m", device_map="cpu")
    s.namespace["alias"] = first.model
    with pytest.raises(NotLoadedError) as info:
        s.get("nope")
    assert "loaded: m" in str(info.value)
    saved = s.save("m", str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "config.json").exists()
    again = s.load(saved.folder, name="copy")  # a folder this session wrote: its manifest is checked
    with pytest.raises(SaveError):  # never into a folder a loaded model reads from
        s.save("m", saved.folder, overwrite=True)
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), first.model.state_dict().values()))
    report = s.unload("m")
    assert set(report.removed_names) == {"m", "alias"} and not report.still_referenced
    assert s.registry.names() == ["copy"]


def test_the_magics_are_the_shells_session(shell, tiny_hub, hf_cache):
    from hf_notebook.magics import instance

    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    s = instance(shell).session
    assert s.namespace is shell.user_ns and s.get("m").model is shell.user_ns["m"]
    shell.run_line_magic("config", "HFNotebook.dtype = 'bfloat16'")  # settings are read at each call
    assert s.load("tiny/llama", name="b", device_map="cpu").dtype == "bfloat16"
    assert "b" in shell.user_ns


def test_the_configurable_has_every_setting_with_the_same_default():
    from dataclasses import fields

    from hf_notebook.magics import HFNotebook

    traits = HFNotebook.class_traits(config=True)
    for f in fields(Settings):
        assert f.name in traits and traits[f.name].default() == f.default, f.name


def test_the_lock_entry_records_the_options_that_change_what_is_read(tiny_hub, hf_cache, tmp_path):
    s = session(tmp_path)
    s.load("tiny/llama", name="m", device_map="cpu", attn_implementation="eager",
           kw={"output_attentions": True}, offline=False)
    entry = s.lock_entries()["tiny/llama@main"]
    assert entry["options"] == ["--attn-implementation", "eager", "--kw", "output_attentions=true"]
    assert "--device-map" not in entry["options"]  # where it goes is this machine's business, not the lock's
    again = s.load("tiny/llama", name="m", device_map="cpu", update=True)
    assert again.lock.outcome == "updated" and "options" in dict(again.lock.changes)
    assert "options" not in s.lock_entries()["tiny/llama@main"]


def test_a_load_under_a_used_name_says_the_old_model_was_released(shell, tiny_hub, hf_cache, capsys):
    import weakref

    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    first = weakref.ref(shell.user_ns["m"])
    capsys.readouterr()
    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --dtype bfloat16 --as m")
    out = capsys.readouterr().out
    assert "m held tiny/llama@" in out and "on cpu); it was released." in out and first() is None
    keep = shell.user_ns["keep"] = shell.user_ns["m"]  # another name for it: not released, and said so
    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    assert "something else still refers to it" in capsys.readouterr().out and keep is not None
