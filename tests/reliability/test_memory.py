"""An interrupted load gives its memory back: RSS returns to within 10 MB of where it was."""

import gc

import pytest
import torch

from hf_notebook.core.events import ShardProgress
from hf_notebook.core.unload import process_rss


@pytest.fixture(scope="module")
def medium_folder(tmp_path_factory):
    """A ~230 MB float32 llama in three shards."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                         num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False,
                         architectures=["LlamaForCausalLM"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("medium")
    model.save_pretrained(folder, max_shard_size="80MB")
    del model
    gc.collect()
    return folder


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from hf_notebook.testing.models import save_model

    return save_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rss_comes_back_after_ctrl_c_mid_load(shell, medium_folder, tiny_folder, monkeypatch, dtype):
    import io

    from hf_notebook import ui
    from hf_notebook.ui.text import TextRenderer

    class Interrupting(TextRenderer):
        def __call__(self, event):
            super().__call__(event)
            if isinstance(event, ShardProgress) and event.index == min(2, event.count - 1) and event.tensors_done == 1:
                raise KeyboardInterrupt  # two shards in: ~150 MB materialized

    monkeypatch.setattr(ui, "make_renderer", lambda *a, **k: Interrupting(io.StringIO()))
    warm = f"{medium_folder} --dtype {dtype} --as warm"  # first, one full load and unload: imports, caches
    monkeypatch.setattr(ui, "make_renderer", lambda *a, **k: TextRenderer(io.StringIO()))
    shell.run_line_magic("load_model", warm)
    shell.run_line_magic("unload_model", "warm")
    monkeypatch.setattr(ui, "make_renderer", lambda *a, **k: Interrupting(io.StringIO()))
    shell.run_cell(f"%load_model {tiny_folder} --dtype {dtype} --as m")  # IPython's first traceback imports a lot
    gc.collect()
    baseline = process_rss()
    outcome = shell.run_cell(f"%load_model {medium_folder} --dtype {dtype} --as m")  # as a notebook runs it:
    assert isinstance(outcome.error_in_exec, KeyboardInterrupt)  # IPython keeps the error it showed (sys.last_value)
    del outcome
    gc.collect()
    grown = process_rss() - baseline
    assert grown < 10 * 2**20, f"RSS stayed {grown / 2**20:.1f} MiB higher"
