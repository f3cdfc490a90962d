"""Load benchmark: hf_notebook's load_model against transformers' from_pretrained.

Each measurement runs in a fresh process (warm page cache, cold Python), the median of
``--repeat`` runs is reported, and every row prints the ratio to the baseline measured in
the same run. Targets (issue 3): wall <= 1.1x; peak extra RSS of float32 -> bfloat16 <= 1.3x
the size of the result.

    python bench/load.py [--size-gb 1.9] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DISK_LAYERS = 4  # last layers offloaded to disk in the offload case


def build_checkpoint(folder: Path, size_gb: float) -> Path:
    """A float32 llama of about ``size_gb`` GB in 4 shards (random weights, built once, cached)."""
    marker = folder / "model.safetensors.index.json"
    if marker.exists():
        return folder
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, vocab = 2048, 5632, 32000
    per_layer = 4 * hidden * hidden + 3 * hidden * inter
    layers = max(DISK_LAYERS + 1, round((size_gb * 1e9 / 4 - 2 * vocab * hidden) / per_layer))
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=16, num_key_value_heads=16, vocab_size=vocab,
                         tie_word_embeddings=False, architectures=["LlamaForCausalLM"], dtype="float32")
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.02)
    total = sum(p.numel() * 4 for p in model.parameters())
    model.save_pretrained(folder, max_shard_size=f"{total // 4 // 10**6 + 1}MB")
    return folder


def device_maps(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    n = config["num_hidden_layers"]
    offload = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    offload.update({f"model.layers.{i}": ("disk" if i >= n - DISK_LAYERS else "cpu") for i in range(n)})
    return {"cpu": "cpu", "offload": offload}


CHILD = r"""
import json, os, resource, sys, tempfile, time
import torch, transformers, hf_notebook.core.api as api
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
which, folder, dtype, device_map = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
offload = tempfile.mkdtemp(prefix="bench-offload-")
before = rss()
t0 = time.perf_counter()
if which == "from_pretrained":
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=getattr(torch, dtype), device_map=device_map, offload_folder=offload)
else:
    model = api.load_model(folder, dtype=dtype, device_map=device_map, offload_folder=offload).model
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
result = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type != "meta")
print(json.dumps({"seconds": seconds, "peak_extra": peak - before, "result": result}))
"""


def measure(which: str, folder: Path, dtype: str, device_map, repeat: int) -> dict:
    runs = []
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", CHILD, which, str(folder), dtype, json.dumps(device_map)],
                             capture_output=True, text=True, env=env, check=True, cwd=ROOT)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.9)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=ROOT / "build" / "bench" / "llama-fp32")
    args = parser.parse_args()
    folder = build_checkpoint(args.folder, args.size_gb)
    maps = device_maps(folder)
    cases = [("cpu, float32 (no conversion)", "float32", maps["cpu"]),
             ("cpu, float32 -> bfloat16", "bfloat16", maps["cpu"]),
             (f"cpu + disk ({DISK_LAYERS} layers), float32", "float32", maps["offload"])]
    for _, dtype, device_map in cases[:1]:  # warm the page cache
        measure("from_pretrained", folder, dtype, device_map, 1)
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e9
    print(f"checkpoint: {folder} ({size:.2f} GB float32, {len(list(folder.glob('*.safetensors')))} shards); "
          f"median of {args.repeat} fresh processes; baseline = transformers from_pretrained, same run\n")
    header = f"{'case':36} {'baseline s':>10} {'ours s':>8} {'time x':>7} {'base RSS/res':>12} {'ours RSS/res':>12}"
    print(header + "\n" + "-" * len(header))
    for label, dtype, device_map in cases:
        base = measure("from_pretrained", folder, dtype, device_map, args.repeat)
        ours = measure("hf_notebook", folder, dtype, device_map, args.repeat)
        print(f"{label:36} {base['seconds']:10.3f} {ours['seconds']:8.3f} {ours['seconds'] / base['seconds']:7.2f} "
              f"{base['peak_extra'] / base['result']:12.2f} {ours['peak_extra'] / ours['result']:12.2f}")


if __name__ == "__main__":
    main()
