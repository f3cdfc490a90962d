"""Shared fixtures. The plugin starts the local Hub stand-in and isolates HF_HOME/HF_ENDPOINT
before anything imports huggingface_hub, so no test module may import it at top level."""

import pytest

pytest_plugins = ["hf_notebook.testing.pytest_plugin"]


def pytest_configure(config):
    """Ctrl-C raises KeyboardInterrupt in this process, however the suite was started. A shell without job
    control starts a background job (``make test &``) with SIGINT ignored, and Python then installs no
    handler of its own: the tests that press Ctrl-C (a real SIGINT to the main thread) would wait out the
    whole download instead, as no notebook user's kernel ever does."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tiny_hub(hub_store, tmp_path_factory):
    """The tiny models of every architecture, published once into the session's stand-in."""
    from hf_notebook.testing.models import publish_tiny_models

    return publish_tiny_models(hub_store, workdir=tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def shell(tmp_path_factory):
    """A real InteractiveShell with the extension loaded; module state reset around each test.
    Its lock file is a fresh one of the test's own."""
    from IPython.core.interactiveshell import InteractiveShell

    sh = InteractiveShell.instance()
    sh.run_line_magic("load_ext", "hf_notebook")
    lock = tmp_path_factory.mktemp("lock") / "hf_notebook.lock.json"
    sh.run_line_magic("config", f"HFNotebook.lock_file = {str(lock)!r}")
    yield sh
    sh.run_line_magic("unload_ext", "hf_notebook")  # the registry goes with the extension's instance
    sh.config.pop("HFNotebook", None)  # %config values live on the shell, not on the magics
    for name in [n for n in sh.user_ns if not n.startswith("_") and n not in sh.user_ns_hidden]:
        sh.user_ns.pop(name, None)


@pytest.fixture(scope="session")
def medium_folder(tmp_path_factory):
    """A ~230 MB float32 llama in three shards: big enough that memory given back shows in the RSS."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                         num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False,
                         architectures=["LlamaForCausalLM"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("medium")
    model.save_pretrained(folder, max_shard_size="80MB")
    return folder


@pytest.fixture
def loaded(shell):
    """The shell's registry of loaded models (name -> LoadResult)."""
    from hf_notebook.magics import instance

    return instance(shell).registry


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip where CUDA is absent (CI, most laptops)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
