"""Fixtures of the reliability tier."""

import pytest


def publish_wide_llama(hub_store, repo_id, folder, max_shard_size=None):
    """A llama with a 32k vocabulary (~17 MB float32), saved to ``folder`` and published as ``repo_id``."""
    import transformers

    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, vocab_size=32000,
                                      tie_word_embeddings=False, architectures=["LlamaForCausalLM"])
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    transformers.LlamaForCausalLM(config).save_pretrained(folder, **kwargs)
    hub_store.create_repo(repo_id)
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
