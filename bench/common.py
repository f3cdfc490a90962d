"""What the benchmarks share: a random float32 llama built fast, and how busy the machine was."""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import time
from pathlib import Path


def random_llama(hidden: int, intermediate: int, layers: int, vocab: int = 32000):
    """A float32 ``LlamaForCausalLM`` with random weights, built on meta and filled in place (fast, no init)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=16, num_key_value_heads=16, vocab_size=vocab, tie_word_embeddings=False,
                         architectures=["LlamaForCausalLM"], dtype="float32")
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.02)
    return model


def save_built(model, folder: Path, **kwargs) -> None:
    """``save_pretrained`` into a side folder, then renamed: a build cut short is never taken for a finished one."""
    from transformers.utils import logging

    tmp = folder.with_name(folder.name + ".partial")
    for stale in (tmp, folder):
        shutil.rmtree(stale, ignore_errors=True)
    logging.disable_progress_bar()
    model.save_pretrained(tmp, **kwargs)
    tmp.rename(folder)


def build_tiny(folder: Path) -> Path:
    """A tiny llama (same architecture, a few shards), built once: loaded or saved first in a measured process,
    so the measured step pays for no import."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=5, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=256, tie_word_embeddings=False,
                         architectures=["LlamaForCausalLM"], dtype="float32")
    torch.manual_seed(0)
    save_built(LlamaForCausalLM(config), folder, max_shard_size="100KB")
    return folder


def start_hub(work: Path):
    """The Hub stand-in in this process, ``HF_*`` pointed at it before huggingface_hub is imported."""
    import sys

    if "huggingface_hub" in sys.modules:
        raise SystemExit("a bench must point HF_ENDPOINT at the stand-in before huggingface_hub is imported")
    from hf_notebook.testing.hub import HubServer

    server = HubServer(work / "hub").start()
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        os.environ.pop(name, None)
    loopback = "127.0.0.1,localhost"
    os.environ.update(HF_ENDPOINT=server.endpoint, HF_HOME=str(work / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
                      NO_PROXY=loopback, no_proxy=loopback, TRANSFORMERS_VERBOSITY="error")
    return server


def busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds this process's finished children used."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def print_footer(others: list[float], misses: int, started: float) -> None:
    """How busy other processes kept the machine during the runs, and the verdict."""
    if others:
        busy, worst = statistics.mean(others), max(others)
        print(f"\nother processes kept {busy:.2f} of {os.cpu_count()} cores busy on average during the runs "
              f"(worst run {worst:.2f})" + ("; wall times are disturbed: trust 'cpu x' (CPU time ratio) more"
                                             if busy > 0.2 else ""))
    verdict = "all targets met" if not misses else f"{misses} target(s) missed"
    print(f"\n{verdict}; bench took {time.perf_counter() - started:.0f} s")
