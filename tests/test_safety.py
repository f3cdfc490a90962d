"""Safe defaults: pickle only with --allow-pickle (weights_only), remote code only from a full sha,
listed with its hashes and recorded in the lock file."""

import hashlib
import io
import json

import pytest
import torch
from IPython.core.error import UsageError

from hf_notebook.testing.custom_code import custom_model_files
from hf_notebook.testing.models import build_model, model_files, save_model


@pytest.fixture
def pickle_repo(hub_store, hub_repo_id, tmp_path):
    """A repo with only pytorch_model.bin weights."""
    folder = save_model("llama", tmp_path / "llama", seed=3)
    files = {n: p.read_bytes() for n, p in model_files(folder).items() if not n.endswith((".safetensors", ".json"))
             or n in ("config.json", "generation_config.json")}
    buffer = io.BytesIO()
    torch.save(build_model("llama", seed=3).state_dict(), buffer)
    files["pytorch_model.bin"] = buffer.getvalue()
    hub_store.create_repo(hub_repo_id)
    hub_store.commit(hub_repo_id, files, message="pickle only")
    return hub_repo_id


def test_pickle_is_refused_by_default_and_loaded_with_the_flag(shell, pickle_repo, hf_cache):
    with pytest.raises(UsageError, match="(?s)only pickle files.*--allow-pickle loads it with torch.load"):
        shell.run_line_magic("load_model", f"{pickle_repo} --as m")
    assert "m" not in shell.user_ns
    shell.run_line_magic("load_model", f"{pickle_repo} --allow-pickle --as m")
    want = build_model("llama", seed=3).state_dict()
    got = shell.user_ns["m"].state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items())


def test_pickle_is_loaded_weights_only(shell, pickle_repo, hf_cache, monkeypatch):
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real(*a, **k))
    shell.run_line_magic("load_model", f"{pickle_repo} --allow-pickle --as m")
    assert calls and all(flag is True for flag in calls)


@pytest.fixture
def code_repo(hub_store, hub_repo_id):
    hub_store.create_repo(hub_repo_id)
    files = custom_model_files(seed=1)
    sha = hub_store.commit(hub_repo_id, files, message="model with its own code")
    return hub_repo_id, sha, files


def test_remote_code_needs_the_flag(shell, code_repo, hf_cache):
    repo_id, sha, _ = code_repo
    with pytest.raises(UsageError, match="(?s)custom code from its repo.*full commit sha"):
        shell.run_line_magic("load_model", f"{repo_id}@{sha} --as m")


@pytest.mark.parametrize("revision", ["", "@main", "@SHORT"])
def test_remote_code_is_refused_on_a_branch_or_short_sha(shell, code_repo, hf_cache, revision):
    repo_id, sha, _ = code_repo
    revision = revision.replace("SHORT", sha[:10])
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"{repo_id}{revision} --trust-remote-code --as m")
    assert "can change that code under you" in str(info.value)
    assert f"%load_model {repo_id}@{sha} --trust-remote-code" in str(info.value)
    assert "m" not in shell.user_ns


def test_remote_code_loads_from_a_full_sha_listed_and_locked(shell, code_repo, hf_cache, capsys):
    from hf_notebook.magics import instance

    repo_id, sha, files = code_repo
    shell.run_line_magic("load_model", f"{repo_id}@{sha} --trust-remote-code --as m")
    model = shell.user_ns["m"]
    assert type(model).__name__ == "TinyModelForCausalLM"
    out = capsys.readouterr().out
    for name in ("configuration_tiny.py", "modeling_tiny.py"):
        digest = hashlib.sha256(files[name]).hexdigest()
        assert f"{name} (sha256 {digest[:12]}" in out
    entry = json.loads(open(instance(shell).lock_file).read())["models"][f"{repo_id}@{sha}"]
    assert entry["code"] == {n: hashlib.sha256(files[n]).hexdigest() for n in ("configuration_tiny.py",
                                                                                 "modeling_tiny.py")}
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 64)


@pytest.fixture
def tokenized_repo(hub_store, hub_repo_id, tmp_path):
    from hf_notebook.testing.custom_code import tokenizer_files

    folder = save_model("llama", tmp_path / "llama", seed=4)
    files = {n: p.read_bytes() for n, p in model_files(folder).items()} | tokenizer_files()
    hub_store.create_repo(hub_repo_id)
    return hub_repo_id, hub_store.commit(hub_repo_id, files, message="with a tokenizer")


def test_tokenizer_from_the_same_pinned_sha_and_locked(shell, tokenized_repo, hf_cache):
    from hf_notebook.magics import instance

    repo_id, sha = tokenized_repo
    shell.run_line_magic("load_model", f"{repo_id} --tokenizer --as m")
    tokenizer = shell.user_ns["m_tokenizer"]
    assert tokenizer("w1 w2 w3")["input_ids"] == [3, 4, 5]
    shell.run_line_magic("load_model", f"{repo_id} --tokenizer tok --as m")
    assert shell.user_ns["tok"]("w7")["input_ids"] == [9]
    entry = json.loads(open(instance(shell).lock_file).read())["models"][f"{repo_id}@main"]
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(entry["files"])


def test_tokenizer_missing_fails_before_the_weights_and_binds_nothing(shell, tiny_hub, hf_cache, hub_server):
    hub_server.reset_counters()
    with pytest.raises(UsageError, match="has no tokenizer files"):
        shell.run_line_magic("load_model", "tiny/llama --tokenizer --as m")
    assert "m" not in shell.user_ns and "m_tokenizer" not in shell.user_ns


def test_a_hub_answering_another_commit_than_the_full_sha_asked_runs_and_fetches_nothing(
        shell, code_repo, hub_store, hub_server, hf_cache, tmp_path):
    """A broken mirror or a tampering proxy answers the audited sha with another commit, whose code would run:
    refused before any file is fetched, and nothing is bound."""
    repo_id, audited, files = code_repo
    marker = tmp_path / "ran"
    evil = dict(files)
    evil["modeling_tiny.py"] = files["modeling_tiny.py"] + f"\nopen({str(marker)!r}, 'w').close()\n".encode()
    other = hub_store.commit(repo_id, evil, message="not what was audited")
    hub_server.answer_commit = {audited: other}
    hub_server.reset_counters()
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"{repo_id}@{audited} --trust-remote-code --as m")
    assert f"Asked for commit {audited}" in str(info.value) and f"answered commit {other}" in str(info.value)
    assert "Nothing was downloaded" in str(info.value)
    assert not marker.exists() and "m" not in shell.user_ns
    assert hub_server.bytes_served(repo_id) == 0
    assert not list(hf_cache.rglob("modeling_tiny.py"))


def test_a_short_sha_or_a_name_answered_with_an_unrelated_commit_is_refused(shell, tiny_hub, hub_store, hub_server,
                                                                           hf_cache):
    v1, main = hub_store.resolve("tiny/llama", "v1"), hub_store.resolve("tiny/llama", "main")
    hub_server.answer_commit = {v1[:10]: main}
    with pytest.raises(UsageError, match=f"(?s)Asked for '{v1[:10]}'.*answered commit {main}.*neither"):
        shell.run_line_magic("load_model", f"tiny/llama@{v1[:10]} --as m")
    assert "m" not in shell.user_ns


def test_a_repo_without_a_commit_says_so(shell, hub_store, hub_repo_id, hf_cache):
    hub_store.create_repo(hub_repo_id)
    with pytest.raises(UsageError, match=f"(?s){hub_repo_id} has no commit yet.*Push files to the repo first"):
        shell.run_line_magic("load_model", f"{hub_repo_id} --as m")
    with pytest.raises(UsageError, match="has no commit yet"):
        shell.run_line_magic("plan_model", hub_repo_id)
    assert "m" not in shell.user_ns


@pytest.mark.parametrize("asked, answered", [("v1", "main"), ("main", "v1"), ("refs/pr/1", "v1")])
def test_a_tag_branch_or_pr_answered_with_another_commit_is_refused(shell, tiny_hub, hub_store, hub_server, hf_cache,
                                                                   asked, answered):
    """The name's own commit (the repo's refs) against the commit the Hub answered for it."""
    real, other = hub_store.resolve("tiny/llama", asked), hub_store.resolve("tiny/llama", answered)
    hub_server.answer_commit = {asked: other}
    with pytest.raises(UsageError, match=f"(?s)tiny/llama@{asked} points to commit {real}.*answered commit {other}"):
        shell.run_line_magic("load_model", f"tiny/llama@{asked} --as m")
    assert "m" not in shell.user_ns
