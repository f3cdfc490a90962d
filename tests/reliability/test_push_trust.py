"""A push publishes exactly the folder: a file changed since its save (same size) or a link out of the folder
is refused before anything is sent."""

import os

import pytest
from IPython.core.error import UsageError


@pytest.fixture
def saved(shell, tiny_hub, hf_cache, hub_token, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", hub_token)
    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    out = tmp_path / "out"
    shell.run_line_magic("save_model", f"m {out} --max-shard-size 100KB")
    return out


def test_a_same_size_edit_after_the_save_is_refused(shell, saved, hub_server, flip):
    shard = sorted(saved.glob("model-*.safetensors"))[0]
    flip(shard)
    hub_server.reset_counters()
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("push_model", f"--from {saved} user/tampered")
    assert shard.name in str(info.value) and "changed" in str(info.value) and "nothing was pushed" in str(info.value)
    assert not hub_server.requests  # refused before the first request


def test_a_link_out_of_the_folder_is_refused(shell, saved, hub_server, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the Hub")
    os.symlink(secret, saved / "notes.txt")
    hub_server.reset_counters()
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("push_model", f"--from {saved} user/linked")
    assert "notes.txt" in str(info.value) and "outside the folder" in str(info.value)
    assert not hub_server.requests
