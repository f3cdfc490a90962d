"""%export_model bundles: exported from the cache, verified before loading (sizes always, sha256
once), loaded with no network in a fresh process; the hf-cache layout read by plain transformers."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from IPython.core.error import UsageError

from hf_notebook.core.weights.save import MANIFEST

DEAD_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there: any request fails at once


def run(code, **env):
    """Python in a fresh process; returns stdout (raises with stderr on failure)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def digest(state):
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode() + state[k].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


STATE_DIGEST = """
import hashlib, torch
def digest(state):
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode() + state[k].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
"""


@pytest.fixture
def exported(shell, tiny_hub, hf_cache, tmp_path, capsys):
    shell.run_line_magic("export_model", f"tiny/llama --to {tmp_path / 'bundle'}")
    return tmp_path / "bundle", capsys.readouterr().out


def test_export_writes_the_files_a_manifest_and_how_to_load(exported, tiny_hub):
    folder, out = exported
    sha = tiny_hub["llama"].commits["main"]
    assert f"exported tiny/llama@{sha}" in out and "downloaded" in out
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["source"] == f"tiny/llama@{sha}" and manifest["layout"] == "folder"
    assert "config.json" in manifest["files"] and any(n.endswith(".safetensors") for n in manifest["files"])
    for name, facts in manifest["files"].items():
        data = (folder / name).read_bytes()
        assert facts == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert f"%load_model {folder}" in (folder / "BUNDLE.md").read_text()


def test_a_second_export_copies_from_the_cache(exported, shell, tmp_path, hub_server, capsys):
    hub_server.reset_counters()
    shell.run_line_magic("export_model", f"tiny/llama --to {tmp_path / 'again'}")
    assert "all from the cache" in capsys.readouterr().out
    assert hub_server.bytes_served() == 0


def test_the_bundle_loads_in_a_fresh_process_with_no_hub(exported, shell):
    folder, _ = exported
    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    want = digest(shell.user_ns["m"].state_dict())
    got = run(STATE_DIGEST + f"""
from hf_notebook.core.api import load_model
print(digest(load_model({str(folder)!r}, device_map="cpu").model.state_dict()))
""", **DEAD_HUB)
    assert got.strip() == want


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove", "fifo", "folder"])
def test_a_tampered_bundle_is_refused_naming_the_file(exported, shell, damage):
    folder, _ = exported
    shard = sorted(folder.glob("*.safetensors"))[0]
    if damage == "flip":
        data = bytearray(shard.read_bytes())
        data[-3] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif damage == "fifo":  # reading it to hash it would wait for a writer forever
        shard.unlink()
        os.mkfifo(shard)
    elif damage == "folder":
        shard.unlink()
        shard.mkdir()
    else:
        shard.unlink()
    with pytest.raises(UsageError, match=f"{shard.name} (in|is missing)"):
        shell.run_line_magic("load_model", f"{folder} --as m")
    assert "m" not in shell.user_ns


def test_hashes_are_checked_once(exported, shell, monkeypatch):
    from hf_notebook.core import manifest

    folder, _ = exported
    shell.run_line_magic("load_model", f"{folder} --as m")
    calls = []
    real = manifest.digest_of
    monkeypatch.setattr(manifest, "digest_of", lambda *a: calls.append(1) or real(*a))
    shell.run_line_magic("load_model", f"{folder} --as again")
    assert calls == []  # sizes checked again, contents remembered


def test_the_hf_cache_layout_loads_with_plain_transformers_offline(shell, tiny_hub, hf_cache, tmp_path):
    sha = tiny_hub["qwen2"].commits["main"]
    shell.run_line_magic("export_model", f"tiny/qwen2 --to {tmp_path / 'cache'} --layout hf-cache")
    shell.run_line_magic("load_model", "tiny/qwen2 --device-map cpu --as m")
    want = digest(shell.user_ns["m"].state_dict())
    got = run(STATE_DIGEST + f"""
from transformers import AutoModelForCausalLM
print(digest(AutoModelForCausalLM.from_pretrained("tiny/qwen2", revision={sha!r}).state_dict()))
""", HF_HUB_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", **DEAD_HUB)
    assert got.strip() == want


def test_export_refusals(shell, tiny_hub, hf_cache, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UsageError, match="not an empty folder"):
        shell.run_line_magic("export_model", f"tiny/llama --to {tmp_path / 'full'}")
    with pytest.raises(UsageError, match="local folder"):
        shell.run_line_magic("export_model", f"{tmp_path} --to {tmp_path / 'out'}")
    with pytest.raises(UsageError, match="not in the cache"):
        shell.run_line_magic("export_model", f"tiny/gpt2 --to {tmp_path / 'out'} --offline")
    assert not (tmp_path / "out").exists()


def _hf_cache_bundle(shell, tmp_path):
    shell.run_line_magic("export_model", f"tiny/qwen2 --to {tmp_path / 'cache'} --layout hf-cache")
    return tmp_path / "cache"


def test_an_hf_cache_bundle_changed_after_export_is_refused_by_its_manifest(shell, tiny_hub, hf_cache, tmp_path,
                                                                           monkeypatch):
    """A blob swapped for another and renamed to its new sha256, the snapshot link moved to it: the cache is
    self-consistent, and only the bundle's manifest tells. An offline load from it checks every file."""
    from huggingface_hub import constants

    from hf_notebook.testing.tamper import swap_cached_shard

    bundle = _hf_cache_bundle(shell, tmp_path)
    sha = tiny_hub["qwen2"].commits["main"]
    name = swap_cached_shard(bundle, "tiny/qwen2")
    monkeypatch.setenv("HF_HUB_CACHE", str(bundle))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(bundle))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match=f"(?s){name}: its sha256 is .* as the bundle's manifest records.*"
                                         "copy it again from its source"):
        shell.run_line_magic("load_model", f"tiny/qwen2@{sha} --as m")
    assert "m" not in shell.user_ns


def test_an_unchanged_hf_cache_bundle_loads_offline_checked(shell, tiny_hub, hf_cache, tmp_path, monkeypatch):
    from huggingface_hub import constants

    bundle = _hf_cache_bundle(shell, tmp_path)
    sha = tiny_hub["qwen2"].commits["main"]
    monkeypatch.setenv("HF_HUB_CACHE", str(bundle))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(bundle))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shell.run_line_magic("load_model", f"tiny/qwen2@{sha} --as m")
    assert "m" in shell.user_ns


def test_an_hf_cache_bundle_given_as_a_folder_says_how_to_load_it(shell, tiny_hub, hf_cache, tmp_path):
    bundle = _hf_cache_bundle(shell, tmp_path)
    with pytest.raises(UsageError, match=f"(?s)is an hf-cache bundle of tiny/qwen2@.*HF_HUB_CACHE={bundle}"):
        shell.run_line_magic("load_model", f"{bundle} --as m")
