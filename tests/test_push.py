"""``%push_model`` against the stand-in: one commit through LFS, read back at the shown sha; a card;
resume after an interrupted upload; the token checked first and never shown."""

import json
import os

import pytest
import torch
from IPython.core.error import UsageError


@pytest.fixture
def token(hub_token, monkeypatch):
    """A write token the stand-in requires, given the way a user's login gives it (HF_TOKEN)."""
    monkeypatch.setenv("HF_TOKEN", hub_token)
    return hub_token


@pytest.fixture
def lfs_tier(hub_server, monkeypatch):
    """A Hub without Xet storage (older deployments, other servers) and a client that uploads through LFS:
    huggingface_hub 2.4 sends every large upload through Xet whenever hf_xet is installed, with no negotiation,
    so only a client with Xet off can push there. The Xet twin of each such test keeps every default."""
    from huggingface_hub import constants

    hub_server.xet = False
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)


def loaded(shell, spec="tiny/llama", name="m", extra=""):
    shell.run_line_magic("load_model", f"{spec} --device-map cpu --as {name} {extra}")
    return shell.user_ns[name]


def commit_of(text):
    line = next(x for x in text.splitlines() if x.strip().startswith("commit"))
    return line.split()[-1]


@pytest.mark.parametrize("path", ["xet", "lfs"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_push_then_load_back_at_the_shown_sha(shell, tiny_hub, hf_cache, hub_server, token, capsys, arch, path,
                                              request):
    if path == "lfs":
        request.getfixturevalue("lfs_tier")
    model = loaded(shell, f"tiny/{arch}")
    capsys.readouterr()
    shell.run_line_magic("push_model", f"m user/{arch}-copy --max-shard-size 100KB")
    text = capsys.readouterr().out
    sha = commit_of(text)
    assert len(sha) == 40 and f"%load_model user/{arch}-copy@{sha} --as m" in text
    assert f"/user/{arch}-copy/commit/{sha}" in text
    route = ".git/info/lfs/objects/batch" if path == "lfs" else "/xet-write-token/main"
    assert any(p.endswith(route) for _, p in hub_server.requests)  # weights went through LFS or Xet storage
    shell.run_line_magic("load_model", f"user/{arch}-copy@{sha} --device-map cpu --as back")
    back = shell.user_ns["back"].state_dict()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    assert token not in text


def test_a_model_card_is_written_when_there_is_none(shell, tiny_hub, hf_cache, hub_server, token, capsys):
    from huggingface_hub import hf_hub_download

    loaded(shell)
    capsys.readouterr()
    shell.run_line_magic("push_model", "m user/carded")
    sha = commit_of(capsys.readouterr().out)
    card = open(hf_hub_download("user/carded", "README.md", revision=sha)).read()
    assert "base_model: tiny/llama" in card and "library_name: transformers" in card
    assert tiny_hub["llama"].commits["main"] in card and "float32" in card


def fresh_weights(model):
    """New bytes, so the stand-in (which keeps LFS objects across repos) has none of them yet."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)


def test_an_interrupted_push_resumes_with_what_is_missing(shell, tiny_hub, hf_cache, hub_server, token, work_dir,
                                                          lfs_tier):
    fresh_weights(loaded(shell))
    shell.run_line_magic("save_model", f"m {work_dir / 'out'} --max-shard-size 100KB")
    shards = [f for f in (work_dir / "out").iterdir() if f.suffix == ".safetensors"]
    assert len(shards) >= 3
    hub_server.errors = {"/lfs-upload/": [507]}  # one upload fails (insufficient storage): no retry
    with pytest.raises(UsageError, match="507"):
        shell.run_line_magic("push_model", f"--from {work_dir / 'out'} user/resumed")
    first = list(hub_server.lfs_uploads)
    assert len(first) < len(shards)
    hub_server.reset_counters()
    shell.run_line_magic("push_model", f"--from {work_dir / 'out'} user/resumed")
    second = list(hub_server.lfs_uploads)
    assert not set(first) & set(second) and len(first) + len(second) == len(shards)


def test_a_push_that_failed_at_its_commit_runs_again_through_xet(shell, tiny_hub, hf_cache, hub_server, token,
                                                                 work_dir):
    """The twin of the test above with every default on: weights go through Xet storage; a push that fails
    after its upload (the commit refused: insufficient storage) leaves no commit, and running it again
    publishes exactly the folder."""
    model = loaded(shell)
    fresh_weights(model)
    shell.run_line_magic("save_model", f"m {work_dir / 'out'} --max-shard-size 100KB")
    hub_server.errors = {"/commit/": [507]}
    with pytest.raises(UsageError, match="507"):
        shell.run_line_magic("push_model", f"--from {work_dir / 'out'} user/resumed-xet")
    assert any("/xet-write-token/" in p for _, p in hub_server.requests)
    shell.run_line_magic("push_model", f"--from {work_dir / 'out'} user/resumed-xet")
    shell.run_line_magic("load_model", "user/resumed-xet --device-map cpu --as back")
    back = shell.user_ns["back"].state_dict()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_known_hashes_are_not_read_again(shell, tiny_hub, hf_cache, hub_server, token, work_dir, monkeypatch):
    import huggingface_hub.lfs as lfs

    loaded(shell)
    shell.run_line_magic("save_model", f"m {work_dir / 'out'} --max-shard-size 100KB")
    reads = []
    real = lfs.sha_fileobj
    monkeypatch.setattr(lfs, "sha_fileobj", lambda f, *a, **k: reads.append(f) or real(f, *a, **k))
    shell.run_line_magic("push_model", f"--from {work_dir / 'out'} user/hashed")
    assert reads == []  # every file's sha256 came from the manifest


@pytest.mark.parametrize("setup, line, words", [
    ("none", "m user/x", "No Hugging Face token"),
    ("wrong", "m user/x", "did not accept the token"),
    ("read", "m user/x", "can only read"),
    ("write", "m someone-else/x", "cannot create or write repos under 'someone-else'"),
    ("write", "m not a repo", "not a valid repo id|unrecognized arguments"),
    ("write", "m noowner", "has no owner"),
    ("write", "m bad//repo", "'bad//repo' is not a valid repo id: it has 2 slashes"),
    ("write", "m user/hf_Canary1234567890abcdefXYZ", "The repo id holds something shaped like a Hugging Face token"),
    ("write", "m user/x --branch hf_Canary1234567890abcdefXYZ", "--branch holds something shaped like a"),
    ("write", "m user/x --tag hf_Canary1234567890abcdefXYZ", "--tag holds something shaped like a"),
    ("write", "m user/x --message 'oops hf_Canary1234567890abcdefXYZ'", "--message holds something shaped like a"),
    ("write", "m /name", "its owner is empty"),
    ("write", "m user/x --tag v1..2", "'v1..2' is not a valid tag name"),
    ("write", "m user/x --branch 'a b'", "'a b' is not a valid branch name"),
])
def test_push_refusals_before_any_upload(shell, tiny_hub, hf_cache, hub_server, hub_token, monkeypatch, setup, line,
                                         words):
    loaded(shell)
    if setup == "none":
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_HOME", str(hf_cache.parent / "empty-home"))  # no stored login either
    else:
        monkeypatch.setenv("HF_TOKEN", "hf_wrongwrongwrongwrong" if setup == "wrong" else hub_token)
    hub_server.token_role = "read" if setup == "read" else "write"
    hub_server.reset_counters()
    with pytest.raises(UsageError, match=words) as info:
        shell.run_line_magic("push_model", line)
    assert not [r for r in hub_server.requests if r[0] in ("POST", "PUT") and "whoami" not in r[1]]
    assert hub_token not in str(info.value) and "hf_wrongwrong" not in str(info.value)
    assert "repo_type" not in str(info.value)  # our words, not the client's


def test_a_tag_that_exists_is_refused_before_anything_is_committed(shell, tiny_hub, hf_cache, hub_server, hub_store,
                                                                   token, capsys):
    """Tagging is the push's last step: a tag the repo already has is found before the commit, so the branch does
    not move and running the cell again cannot pile up commits."""
    loaded(shell)
    shell.run_line_magic("push_model", "m user/tag-taken --tag v1 --branch b1")
    before = hub_store.refs("user/tag-taken")
    capsys.readouterr()
    hub_server.reset_counters()
    for _ in range(2):  # the same answer each time: nothing was made
        with pytest.raises(UsageError, match="user/tag-taken already has a tag 'v1'") as info:
            shell.run_line_magic("push_model", "m user/tag-taken --tag v1")
        assert f"on commit {before['tags']['v1']}" in str(info.value) and "nothing was pushed" in str(info.value)
        assert "--tag v2" in str(info.value)  # the next step: another tag
    assert hub_store.refs("user/tag-taken") == before
    assert not [r for r in hub_server.requests if r[0] in ("POST", "PUT")]
    out = capsys.readouterr().out
    assert out.count("✗ push to user/tag-taken failed before anything was uploaded") == 2 and "0 B" not in out


def test_a_tag_taken_while_the_push_ran_says_the_commit_it_made(shell, tiny_hub, hf_cache, hub_server, hub_store,
                                                                token, capsys):
    """Another push takes the tag between the check and the tag step: the commit stands, and the error says
    which commit that is, that only the tag is missing, and not to run the cell again; its record is shown."""
    import threading
    import time

    loaded(shell)
    shell.run_line_magic("push_model", "m user/tag-raced --branch b1 --message 'another commit'")
    hub_server.answer_delay = {"/tag/": 2.0}

    def other_push():  # while our tag request waits, someone else's tag lands
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("/tag/" in p for _, p in hub_server.requests):
            time.sleep(0.01)
        hub_store.create_tag("user/tag-raced", "v1", revision="b1")

    other = threading.Thread(target=other_push)
    other.start()
    capsys.readouterr()
    try:
        with pytest.raises(UsageError) as info:
            shell.run_line_magic("push_model", "m user/tag-raced --tag v1")
    finally:
        other.join()
    refs = hub_store.refs("user/tag-raced")
    sha, text = refs["branches"]["main"], str(info.value)
    assert refs["tags"]["v1"] == refs["branches"]["b1"] != sha
    assert f"as commit {sha}, but the tag 'v1' was not made" in text and "Only the tag is missing" in text
    assert "Do not run the cell again" in text and f"revision='{sha}'" in text and "tag='v2'" in text
    out = capsys.readouterr().out
    assert commit_of(out) == sha and f"%load_model user/tag-raced@{sha}" in out  # the commit's record
    assert "✗ tag 'v1' not made: the commit above stands" in out
    assert token not in text + out


def test_a_tag_the_hub_refuses_after_the_commit_says_the_commit_it_made(shell, tiny_hub, hf_cache, hub_server,
                                                                       hub_store, token):
    loaded(shell)
    hub_server.errors = {"/tag/": [400]}
    with pytest.raises(UsageError, match="The Hub answered 400") as info:
        shell.run_line_magic("push_model", "m user/tag-refused --tag v1")
    sha = hub_store.refs("user/tag-refused")["branches"]["main"]
    assert f"as commit {sha}, but the tag 'v1' was not made" in str(info.value)
    assert f"create_tag('user/tag-refused', tag='v1', revision='{sha}')" in str(info.value)
    assert "Run the cell again" not in str(info.value)


def test_branch_pr_tag_private_message(shell, tiny_hub, hf_cache, hub_server, hub_store, token, capsys):
    loaded(shell)
    capsys.readouterr()
    shell.run_line_magic("push_model", "m user/opts --private --message 'first cut' --tag v0")
    sha = commit_of(capsys.readouterr().out)
    assert hub_store.is_private("user/opts")
    shell.run_line_magic("push_model", "m user/opts --branch exp")
    text = capsys.readouterr().out
    assert "(exp)" in text
    shell.run_line_magic("push_model", "m user/opts --create-pr")
    text = capsys.readouterr().out
    assert "refs/pr/" in text and "/discussions/" in text
    from huggingface_hub import HfApi

    refs = HfApi().list_repo_refs("user/opts")
    assert [t.target_commit for t in refs.tags if t.name == "v0"] == [sha]
    assert "exp" in [b.name for b in refs.branches]
    assert HfApi().list_repo_commits("user/opts", revision=sha)[0].title == "first cut"


def test_the_panel_clears_the_token_and_keeps_it_out_of_everything(shell, tiny_hub, hf_cache, hub_server, hub_token,
                                                                   monkeypatch, capsys, work_dir):
    from hf_notebook.magics import instance
    from hf_notebook.ui.save_push import SavePushPanel

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(work_dir / "no-login"))
    loaded(shell)
    magics = instance(shell)
    panel = SavePushPanel(magics.session, "m")
    panel.repo.value = "someone-else/x"
    panel.token.value = hub_token
    assert panel.push() is None and "cannot create or write" in panel.status.value
    assert panel.token.value == ""  # read once, cleared at once
    panel.folder.value = str(work_dir / "saved")
    assert panel.save() is not None and (work_dir / "saved" / "config.json").exists()
    panel.repo.value, panel.token.value = "user/from-panel", hub_token
    states = [json.dumps([w.get_state() for w in walk(panel.widget)], default=str)]  # as a saved notebook keeps it
    pushed = panel.push()
    assert pushed is not None and pushed.repo_id == "user/from-panel" and panel.token.value == ""
    assert panel.files.children == () and panel.closed  # no bar left behind; the panel gave way to its records
    assert not panel.has_token  # pushed: forgotten
    seen = [*states, repr(pushed), str(shell.display_formatter.format(pushed)), panel.status.value,
            capsys.readouterr().out]
    assert all(hub_token not in s for s in seen)


def test_a_token_typed_but_not_pushed_is_in_no_widget_state(shell, tiny_hub, hf_cache, hub_server, hub_token,
                                                            monkeypatch, work_dir):
    """A token typed in the panel's field and not pushed yet: the front end sends it (Enter, or leaving the field),
    the panel takes it and empties the field; no widget state (the kernel's, a saved notebook's) and no message
    to a front end holds it. The push then uses it."""
    import ipywidgets

    from hf_notebook.magics import instance
    from hf_notebook.ui.save_push import SavePushPanel

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(work_dir / "no-login"))
    loaded(shell)
    panel = SavePushPanel(instance(shell).session, "m")
    sent = []  # what the kernel sends to front ends
    monkeypatch.setattr(ipywidgets.Widget, "_send",
                        lambda self, msg, buffers=None: sent.append(json.dumps(msg, default=str)))
    assert panel.token.continuous_update is False  # sent when typed, not key by key
    panel.token.set_state({"value": hub_token})  # what the front end sends
    assert panel.has_token and "token typed in this panel" in panel.who.value
    assert panel.token.value == "" and "a token is set" in panel.token.placeholder
    assert hub_token not in json.dumps(ipywidgets.Widget.get_manager_state(), default=str)
    assert any('"value": ""' in m for m in sent)  # the front end's field emptied too
    assert sent and all(hub_token not in m for m in sent)
    panel.repo.value = "user/typed-token"
    pushed = panel.push()
    assert pushed is not None and pushed.repo_id == "user/typed-token" and not panel.has_token
    assert all(hub_token not in m for m in sent)


def test_a_token_can_be_forgotten_before_the_push(shell, tiny_hub, hf_cache, hub_server, hub_token, monkeypatch,
                                                  work_dir):
    from hf_notebook.magics import instance
    from hf_notebook.ui.save_push import SavePushPanel

    monkeypatch.setenv("HF_TOKEN", hub_token)
    loaded(shell)
    panel = SavePushPanel(instance(shell).session, "m")
    assert panel.forget_button.layout.display == "none"
    panel.token.value = "hf_typedtypedtypedtyped"
    assert panel.has_token and panel.forget_button.layout.display != "none"
    panel.forget_button.click()
    assert not panel.has_token and "logged in as" in panel.who.value and panel.forget_button.layout.display == "none"



def walk(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from walk(child)


@pytest.fixture
def work_dir(tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def test_a_push_through_xet_reports_every_file(shell, tiny_hub, hf_cache, hub_server, hub_store, token, work_dir,
                                               monkeypatch):
    """With hf_xet on (the real Hub's path), weights go to Xet storage through the real hf_xet, which reads
    the files itself: the per-file progress comes from its reports. The stand-in's write token names
    a local CAS of its own; the commit then names the files by sha256, and the stand-in finds them there."""
    import hashlib

    import huggingface_hub.constants

    from hf_notebook.core.events import FileProgress
    from hf_notebook.core.hub.push import push_folder

    model = loaded(shell)
    shell.run_line_magic("save_model", f"m {work_dir / 'out'} --max-shard-size 100KB")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", False)
    hub_server.reset_counters()
    events = []
    pushed = push_folder(work_dir / "out", "user/via-xet", token=token, on_event=events.append)
    shards = sorted(p.name for p in (work_dir / "out").iterdir() if p.suffix == ".safetensors")
    paths = [path for _, path in hub_server.requests]
    assert "/api/models/user/via-xet/xet-write-token/main" in paths
    assert not hub_server.lfs_uploads and not any("/info/lfs/" in path for path in paths)
    for name in shards:  # in the CAS, under the sha256 the commit named
        assert hub_store.xet.find(hashlib.sha256((work_dir / "out" / name).read_bytes()).hexdigest())
    last = {}
    for event in events:
        if isinstance(event, FileProgress):
            assert event.done >= last.get(event.filename, 0)  # monotonic per file
            last[event.filename] = event.done
    assert {n: last.get(n) for n in shards} == {n: os.path.getsize(work_dir / "out" / n) for n in shards}
    assert pushed.uploaded is None
    shell.run_line_magic("load_model", f"user/via-xet@{pushed.commit_sha} --device-map cpu --as back")
    back = shell.user_ns["back"].state_dict()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
