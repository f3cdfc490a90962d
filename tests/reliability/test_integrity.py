"""A cached file that is not what its name says is found, named, and repaired online or refused offline."""

import os
from pathlib import Path

import pytest
import torch
from IPython.core.error import UsageError

from hf_notebook.testing.models import build_model


def weights_equal(model, expected):
    a, b = model.state_dict(), expected.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _cached_shard(hf_cache, sha, index=1) -> Path:
    snapshot = next(hf_cache.glob(f"models--tiny--llama/snapshots/{sha}"))
    return sorted(snapshot.glob("model-*.safetensors"))[index]


def _flip_a_byte(path: Path) -> None:
    """Change one byte inside the last tensor's data (the header stays valid, the size too)."""
    blob = Path(os.path.realpath(path))
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0xFF
    blob.write_bytes(bytes(data))


@pytest.fixture
def cached_llama(shell, tiny_hub, hf_cache):
    repo = tiny_hub["llama"]
    sha = repo.commits["main"]
    shell.run_line_magic("load_model", f"tiny/llama@{sha} --as first")
    return sha, build_model("llama", seed=repo.seeds["main"])


def test_a_flipped_byte_is_repaired_online(shell, cached_llama, hf_cache, hub_server):
    sha, expected = cached_llama
    victim = _cached_shard(hf_cache, sha)
    _flip_a_byte(victim)
    hub_server.reset_counters()
    shell.run_line_magic("load_model", f"tiny/llama@{sha} --as again")
    assert weights_equal(shell.user_ns["again"], expected)
    assert 0 < hub_server.bytes_served("tiny/llama") <= victim.stat().st_size  # only the damaged file again


def test_a_truncated_shard_is_repaired_online(shell, cached_llama, hf_cache, hub_server):
    sha, expected = cached_llama
    victim = _cached_shard(hf_cache, sha, 2)
    blob = Path(os.path.realpath(victim))
    blob.write_bytes(blob.read_bytes()[:-1000])
    shell.run_line_magic("load_model", f"tiny/llama@{sha} --as again")
    assert weights_equal(shell.user_ns["again"], expected)


def test_offline_a_damaged_file_is_named_with_the_repair(shell, cached_llama, hf_cache, hub_server):
    sha, _ = cached_llama
    victim = _cached_shard(hf_cache, sha)
    _flip_a_byte(victim)
    hub_server.reset_counters()
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"tiny/llama@{sha} --offline --as broken")
    message = str(info.value)
    assert victim.name in message and "damaged" in message and "--force-download" in message
    assert "broken" not in shell.user_ns and not hub_server.requests


def test_a_warm_load_hashes_nothing(shell, cached_llama, monkeypatch):
    from hf_notebook.core import integrity

    sha, _ = cached_llama
    calls = []
    real = integrity.digest_of
    monkeypatch.setattr(integrity, "digest_of", lambda *a: calls.append(a) or real(*a))
    shell.run_line_magic("load_model", f"tiny/llama@{sha} --as warm")
    assert calls == []
