"""The lock file (record, --locked, drift, --update, %lock --check) and offline at call time
(three ways, not one request)."""

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from IPython.core.error import UsageError

from hf_notebook.testing.models import build_model, model_files, save_model
from hf_notebook.testing.tamper import swap_cached_shard


@pytest.fixture
def repo(hub_store, hub_repo_id, tmp_path):
    """A repo of our own whose main branch the test may move: (repo id, {label: sha}, folders)."""
    folders = {seed: save_model("llama", tmp_path / f"seed{seed}", seed=seed) for seed in (1, 2)}
    hub_store.create_repo(hub_repo_id)
    files = {name: path.read_bytes() for name, path in model_files(folders[1]).items()}
    shas = {"first": hub_store.commit(hub_repo_id, files, message="first")}
    return hub_repo_id, shas, folders


def move_main(hub_store, repo_id, folder):
    weights = {n: p.read_bytes() for n, p in model_files(folder).items() if n.endswith(".safetensors")}
    return hub_store.commit(repo_id, weights, message="retrained")


def lock_path(shell):
    from hf_notebook.magics import instance

    return Path(instance(shell).lock_file)


def test_a_load_records_the_pin_and_every_file(shell, repo, hf_cache):
    repo_id, shas, _ = repo
    shell.run_line_magic("load_model", f"{repo_id}@main --as m")
    text = lock_path(shell).read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=1, sort_keys=True) + "\n"  # stable and diff-friendly
    entry = data["models"][f"{repo_id}@main"]
    assert entry["sha"] == shas["first"] and entry["revision"] == "main"
    assert entry["class"] == "LlamaForCausalLM" and entry["dtype"] == "float32"
    assert {"transformers", "torch", "hf_notebook"} <= set(entry["versions"])
    assert "config.json" in entry["files"] and any(n.endswith(".safetensors") for n in entry["files"])
    from huggingface_hub import hf_hub_download

    for name, facts in entry["files"].items():
        data = Path(hf_hub_download(repo_id, name, revision=shas["first"])).read_bytes()
        assert facts == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_locked_after_a_restart_loads_the_same_sha_even_when_main_moved(shell, repo, hub_store, hf_cache, capsys):
    repo_id, shas, folders = repo
    shell.run_line_magic("load_model", f"{repo_id} --as m")
    want = {k: v.clone() for k, v in shell.user_ns["m"].state_dict().items()}
    shell.run_line_magic("unload_ext", "hf_notebook")  # a restarted kernel: nothing loaded, same lock file
    shell.run_line_magic("load_ext", "hf_notebook")
    shell.run_line_magic("load_model", f"{repo_id} --locked --as m")
    got = shell.user_ns["m"].state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items())
    new = move_main(hub_store, repo_id, folders[2])
    shell.user_ns.pop("again", None)
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"{repo_id} --locked --as again")
    assert shas["first"] in str(info.value) and new in str(info.value) and "--update" in str(info.value)
    assert "again" not in shell.user_ns


def test_a_plain_load_after_drift_says_so_and_update_moves_the_lock(shell, repo, hub_store, hf_cache, capsys):
    repo_id, shas, folders = repo
    shell.run_line_magic("load_model", f"{repo_id} --as m")
    new = move_main(hub_store, repo_id, folders[2])
    capsys.readouterr()
    shell.run_line_magic("load_model", f"{repo_id} --as m")
    out = capsys.readouterr().out
    assert f"the lock file pins {repo_id}@main to {shas['first'][:12]}" in out
    assert json.loads(lock_path(shell).read_text())["models"][f"{repo_id}@main"]["sha"] == shas["first"]
    shell.run_line_magic("load_model", f"{repo_id} --update --as m")
    out = capsys.readouterr().out
    assert f"{repo_id}@main updated\n" in out  # a short table: what moved, one row each
    assert f"\n  sha    {shas['first'][:12]} → {new[:12]}\n" in out and "\n  files  5 changed\n" in out
    assert json.loads(lock_path(shell).read_text())["models"][f"{repo_id}@main"]["sha"] == new


def test_lock_check_reports_drift_and_the_cache(shell, repo, hub_store, hf_cache, capsys):
    repo_id, shas, folders = repo
    shell.run_line_magic("load_model", f"{repo_id} --as m")
    capsys.readouterr()
    shell.run_line_magic("lock", "")
    assert f"{repo_id}@main" in capsys.readouterr().out
    shell.run_line_magic("lock", "--check")
    out = capsys.readouterr().out
    assert "1 of 1 entries as locked" in out and "same" in out and "complete" in out
    move_main(hub_store, repo_id, folders[2])
    entry = json.loads(lock_path(shell).read_text())["models"][f"{repo_id}@main"]
    from huggingface_hub import try_to_load_from_cache

    shard = next(n for n in entry["files"] if n.endswith(".safetensors"))
    blob = os.path.realpath(try_to_load_from_cache(repo_id, shard, revision=shas["first"]))
    with open(blob, "r+b") as f:  # flip a byte deep inside: same size, other content
        f.seek(os.path.getsize(blob) - 5)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    shell.run_line_magic("lock", "--check")
    out = capsys.readouterr().out
    assert "need attention" in out and "moved" in out and f"hash differs: {shard}" in out


@pytest.mark.parametrize("how", ["flag", "config", "environment"])
def test_offline_at_call_time_sends_no_request(shell, tiny_hub, hf_cache, hub_server, monkeypatch, how):
    shell.run_line_magic("load_model", "tiny/gpt2 --as m")
    want = {k: v.clone() for k, v in shell.user_ns["m"].state_dict().items()}
    hub_server.reset_counters()
    flag = ""
    if how == "flag":
        flag = "--offline"
    elif how == "config":
        shell.run_line_magic("config", "HFNotebook.offline = True")
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set in the running kernel, long after huggingface_hub's import
    shell.run_line_magic("load_model", f"tiny/gpt2 {flag} --as again")
    shell.run_line_magic("plan_model", f"tiny/gpt2 {flag}")
    shell.run_line_magic("load_model", f"tiny/gpt2 {flag} --locked --as locked")  # the locked sha, no drift check
    assert hub_server.requests == []
    got = shell.user_ns["again"].state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items())


def test_unsetting_hf_hub_offline_goes_online_again_even_if_it_was_set_at_import(shell, tiny_hub, hf_cache,
                                                                                  hub_server, monkeypatch):
    """A kernel whose first load imported huggingface_hub while HF_HUB_OFFLINE=1 (so its setting froze at
    offline): once the user unsets the variable, the next load goes online and huggingface_hub with it."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as its import while the variable was set leaves it
    with pytest.raises(UsageError, match="Offline, and tiny/gpt2 is not in the cache"):
        shell.run_line_magic("load_model", "tiny/gpt2 --as m")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    shell.run_line_magic("load_model", "tiny/gpt2 --as m")
    assert "m" in shell.user_ns and hub_server.requests and constants.HF_HUB_OFFLINE is False


def test_hf_home_set_after_the_import_moves_the_whole_cache_there(shell, tiny_hub, hf_cache, tmp_path,
                                                                   monkeypatch):
    """A notebook whose first cell set HF_HOME after huggingface_hub was imported (by %load_ext's background
    import, say): the next load's files go under the new HF_HOME, Hub cache and Xet cache alike, as a fresh
    process would put them; nothing lands in the old cache."""
    from huggingface_hub import constants

    for name in ("HF_HOME", "HF_HUB_CACHE", "HF_ASSETS_CACHE", "HF_XET_CACHE", "HF_TOKEN_PATH",
                 "HF_STORED_TOKENS_PATH"):
        monkeypatch.setattr(constants, name, getattr(constants, name))  # restored after the test
    home = tmp_path / "new-home"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(home))
    shell.run_line_magic("load_model", "tiny/llama --as m")
    assert (home / "hub" / "models--tiny--llama").is_dir() and list(hf_cache.iterdir()) == []
    assert (home / "xet").is_dir()  # where hf_xet put its own cache: the same HF_HOME
    assert constants.HF_TOKEN_PATH == str(home / "token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shell.run_line_magic("load_model", "tiny/llama --as again")  # offline, from the new cache
    assert "again" in shell.user_ns
    monkeypatch.delenv("HF_HOME")  # unset again: back to the default, as a fresh process would have it
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(UsageError, match="not in the cache"):
        shell.run_line_magic("load_model", "tiny/llama --as m")
    assert constants.HF_HUB_CACHE == str(tmp_path / "xdg" / "huggingface" / "hub")


def test_offline_cache_miss_names_the_files_and_the_command(shell, repo, hf_cache, hub_server):
    repo_id, shas, _ = repo
    with pytest.raises(UsageError, match=f"(?s)not in the cache.*hf download {repo_id} --revision {shas['first']}"):
        shell.run_line_magic("load_model", f"{repo_id}@{shas['first']} --offline --as m")
    shell.run_line_magic("plan_model", f"{repo_id}@{shas['first']}")  # online: the config and headers, no weights
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"{repo_id}@{shas['first']} --offline --as m")
    text = str(info.value)
    assert f"file(s) of {repo_id}@{shas['first']} are not in the cache: model-00001-of-" in text
    assert f"hf download {repo_id} --revision {shas['first']}" in text
    assert "m" not in shell.user_ns
    assert "m" not in shell.user_ns


def test_locked_and_update_are_for_hub_models(shell, tmp_path):
    build_model("llama").save_pretrained(tmp_path / "local")
    with pytest.raises(UsageError, match="local folder has no Hub revision"):
        shell.run_line_magic("load_model", f"{tmp_path / 'local'} --locked")
    with pytest.raises(UsageError, match="give one of them"):
        shell.run_line_magic("load_model", "tiny/llama --locked --update")


def test_an_entry_that_changes_only_its_options_says_which(shell, repo, hf_cache, capsys):
    repo_id, _, _ = repo
    shell.run_line_magic("load_model", f"{repo_id} --as m")
    capsys.readouterr()
    shell.run_line_magic("load_model", f"{repo_id} --attn-implementation eager --as m")
    out = capsys.readouterr().out
    assert f"{repo_id}@main updated\n  options  none → --attn-implementation eager\n" in out


def test_each_choice_of_weights_has_its_own_entry(shell, repo, hf_cache, capsys):
    """A full, a bfloat16 and a quantized load of one revision are three entries: none rewrites another, and
    no note is printed for any of them."""
    repo_id, _, _ = repo
    capsys.readouterr()
    for extra in ("", "--dtype bfloat16", "--quantize int8-weight --device-map cpu"):
        shell.run_line_magic("load_model", f"{repo_id} {extra} --as m")
    out = capsys.readouterr().out
    assert "Lock file" not in out and "Note:" not in out
    keys = set(json.loads(lock_path(shell).read_text())["models"])
    assert keys == {f"{repo_id}@main", f"{repo_id}@main --dtype bfloat16", f"{repo_id}@main --quantize int8-weight"}
    shell.run_line_magic("load_model", f"{repo_id} --dtype bfloat16 --locked --as m")  # found by the same key


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_locked_refuses_a_file_other_than_the_one_the_lock_recorded(shell, repo, hf_cache, monkeypatch, offline):
    """--locked pins the files too: a cache changed behind the lock's back (a self-consistent blob swap) is
    refused, offline, where the lock file is the only record, and online."""
    repo_id, shas, _ = repo
    shell.run_line_magic("load_model", f"{repo_id} --as m")
    name = swap_cached_shard(hf_cache, repo_id)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(UsageError) as info:
            shell.run_line_magic("load_model", f"{repo_id} --locked --as again")
        assert f"{name}: its sha256 is" in str(info.value) and "as the lock file records" in str(info.value)
    else:  # online the damaged copy is fetched again, and the fresh one is the recorded one
        shell.run_line_magic("load_model", f"{repo_id} --locked --as again")
        got, want = shell.user_ns["again"].state_dict(), shell.user_ns["m"].state_dict()
        assert all(torch.equal(got[k], v) for k, v in want.items())
    assert offline is ("again" not in shell.user_ns)


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_locked_refuses_a_lock_entry_whose_hash_was_edited(shell, repo, hf_cache, monkeypatch, offline):
    repo_id, shas, _ = repo
    shell.run_line_magic("load_model", f"{repo_id} --as m")
    data = json.loads(lock_path(shell).read_text())
    entry = data["models"][f"{repo_id}@main"]
    name = next(n for n in entry["files"] if n.endswith(".safetensors"))
    entry["files"][name]["sha256"] = "0" * 64
    lock_path(shell).write_text(json.dumps(data))
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"{repo_id} --locked --as again")
    assert name in str(info.value) and "not 000000000000… as the lock file records" in str(info.value)
    assert "again" not in shell.user_ns
    assert json.loads(lock_path(shell).read_text())["models"][f"{repo_id}@main"]["files"][name]["sha256"] == "0" * 64
    if not offline:  # a plain load records what the Hub's hash vouches for, not the edited one
        shell.run_line_magic("load_model", f"{repo_id} --as m")
        fixed = json.loads(lock_path(shell).read_text())["models"][f"{repo_id}@main"]["files"][name]["sha256"]
        assert fixed != "0" * 64


@pytest.mark.parametrize("edit", ["file removed", "files removed", "files empty"])
def test_locked_refuses_files_the_entry_does_not_list(shell, repo, hf_cache, monkeypatch, edit):
    """An entry edited to vouch for less: what it does not list is not trusted, offline where nothing else is."""
    repo_id, shas, _ = repo
    shell.run_line_magic("load_model", f"{repo_id} --as m")
    data = json.loads(lock_path(shell).read_text())
    entry = data["models"][f"{repo_id}@main"]
    name = swap_cached_shard(hf_cache, repo_id)
    if edit == "file removed":
        del entry["files"][name]
    elif edit == "files removed":
        del entry["files"]
    else:
        entry["files"] = {}
    lock_path(shell).write_text(json.dumps(data))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    first = name if edit == "file removed" else "config.json"  # the first file read that the entry does not list
    with pytest.raises(UsageError, match=f"(?s){first}: it is not among the files the lock file records.*%lock --check"):
        shell.run_line_magic("load_model", f"{repo_id} --locked --as again")
    assert "again" not in shell.user_ns
