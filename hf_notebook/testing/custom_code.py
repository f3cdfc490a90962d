"""A tiny model with its own code (``auto_map``), as repos that need ``trust_remote_code`` ship it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

CONFIGURATION = '''from transformers import PretrainedConfig


class TinyConfig(PretrainedConfig):
    model_type = "tiny-custom"

    def __init__(self, vocab_size=64, hidden_size=16, num_blocks=2, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_blocks = num_blocks
        super().__init__(**kwargs)
'''

MODELING = '''import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_tiny import TinyConfig


class TinyBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.mix = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x):
        return x + torch.tanh(self.mix(x))


class TinyModelForCausalLM(PreTrainedModel):
    config_class = TinyConfig
    base_model_prefix = "tiny"
    _no_split_modules = ["TinyBlock"]

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList([TinyBlock(config) for _ in range(config.num_blocks)])
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids, **kwargs):
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x)
        return CausalLMOutput(logits=self.head(x))
'''

AUTO_MAP = {"AutoConfig": "configuration_tiny.TinyConfig", "AutoModelForCausalLM": "modeling_tiny.TinyModelForCausalLM"}


def custom_model_files(seed: int = 0) -> dict[str, bytes]:
    """The files of a repo whose model class lives in the repo: code, config with ``auto_map``, weights."""
    import torch
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "configuration_tiny.py").write_text(CONFIGURATION)
        (folder / "modeling_tiny.py").write_text(MODELING)
        config = {"model_type": "tiny-custom", "vocab_size": 64, "hidden_size": 16, "num_blocks": 2,
                  "architectures": ["TinyModelForCausalLM"], "auto_map": AUTO_MAP}
        (folder / "config.json").write_text(json.dumps(config))
        config_cls = get_class_from_dynamic_module(AUTO_MAP["AutoConfig"], str(folder))
        model_cls = get_class_from_dynamic_module(AUTO_MAP["AutoModelForCausalLM"], str(folder))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_cls(config_cls(vocab_size=64, hidden_size=16, num_blocks=2))
        out = folder / "saved"
        model.save_pretrained(out)
        files = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".safetensors"}
        config["dtype"] = "float32"
        files["config.json"] = json.dumps(config, indent=2).encode()
        files["configuration_tiny.py"] = CONFIGURATION.encode()
        files["modeling_tiny.py"] = MODELING.encode()
        return files


def tokenizer_files(size: int = 256) -> dict[str, bytes]:
    """A word-level fast tokenizer (``w0`` .. ``wN``) as ``save_pretrained`` writes it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, **{f"w{i}": i + 2 for i in range(size - 2)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir()}
