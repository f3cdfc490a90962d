"""Fixtures of the reliability tier."""

import os
from pathlib import Path

import pytest


def publish_wide_llama(hub_store, repo_id, folder, max_shard_size=None, xet=True):
    """A llama with a 32k vocabulary (~17 MB float32), saved to ``folder`` and published as ``repo_id``: Xet-stored
    as on the real Hub, or LFS-only (``xet=False``: older repos and other servers, the plain HTTP path)."""
    import transformers

    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, vocab_size=32000,
                                      tie_word_embeddings=False, architectures=["LlamaForCausalLM"])
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    transformers.LlamaForCausalLM(config).save_pretrained(folder, **kwargs)
    hub_store.create_repo(repo_id, xet=xet)
    hub_store.commit(repo_id, {p.name: p for p in folder.iterdir()}, message="wide")
    return repo_id, folder


@pytest.fixture
def wide_repo(hub_store, hub_repo_id, tmp_path):
    """The wide llama in one ~17 MB shard."""
    return publish_wide_llama(hub_store, hub_repo_id, tmp_path / "wide")


@pytest.fixture
def big_repo(hub_store, hub_repo_id, tmp_path):
    """The wide llama in three ~6 MB shards."""
    return publish_wide_llama(hub_store, hub_repo_id, tmp_path / "big", max_shard_size="6MB")


@pytest.fixture(params=["xet", "lfs"])
def big_repo_both(request, hub_store, hub_repo_id, tmp_path):
    """The big repo on each of the client's two download paths: Xet (hf_xet) and plain HTTP (an LFS-only repo)."""
    return publish_wide_llama(hub_store, hub_repo_id, tmp_path / "big", max_shard_size="6MB",
                              xet=request.param == "xet")


@pytest.fixture
def big_lfs_repo(hub_store, hub_repo_id, tmp_path):
    """The big repo, LFS-only: the plain HTTP path (huggingface_hub's ``http_get``)."""
    return publish_wide_llama(hub_store, hub_repo_id, tmp_path / "big", max_shard_size="6MB", xet=False)


@pytest.fixture
def twins(hub_store, hub_repo_id, tmp_path):
    """Two Xet-stored repos with the same weights (a model and its mirror, say): (repo a, repo b, folder)."""
    a, folder = publish_wide_llama(hub_store, hub_repo_id + "-a", tmp_path / "a", max_shard_size="6MB")
    hub_store.create_repo(hub_repo_id + "-b")
    hub_store.commit(hub_repo_id + "-b", {p.name: p for p in folder.iterdir()}, message="mirror")
    return a, hub_repo_id + "-b", folder


def flip_a_byte(path) -> None:
    """Change one byte inside the last tensor's data of the file behind ``path`` (its size and header kept)."""
    blob = Path(os.path.realpath(path))
    blob.chmod(0o600)  # a shared Xet blob is read-only
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0xFF
    blob.write_bytes(bytes(data))


@pytest.fixture
def flip():
    """``flip(path)``: tamper with a file in place, keeping its size (see ``flip_a_byte``)."""
    return flip_a_byte
