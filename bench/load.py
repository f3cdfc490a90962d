"""Load benchmark: hf_notebook's load_model against transformers' from_pretrained.

One table, every row against a baseline measured in the same run. Each measurement runs
in a fresh process (warm page cache, cold Python); a row shows the median of ``--repeat``
processes, baseline and hf_notebook interleaved so that drift hits both alike (three times as
many for the modules-preloaded rows, the shortest loads, where the spread is widest). Targets:

- wall time <= 1.0x ``from_pretrained``: float32 to cpu (no conversion), float32 ->
  bfloat16 on cpu, cpu + disk offload;
- float32 -> bfloat16: peak extra RSS <= 1.1x the bytes of the result, for a load whose
  modules were imported first (a tiny llama loaded the same way beforehand: imports excluded
  on both sides, and the collector run once after them); the first load in a process is shown
  beside it ("info"), with the ~0.12 GB of Python modules it imports, the same for from_pretrained;
  the wall time of that load is a row of its own, against the same target;
- progress reporting costs < 2% of the load: the time spent inside a real ``TextRenderer``
  consuming the events, measured in the loading process (the wall time against
  ``on_event=None`` is shown too, but its noise is larger than the cost);
- ``%load_ext hf_notebook`` < 0.3 s, and imports none of torch, transformers, accelerate.

"noise" is the spread (max - min) / median of the wider of the two sides of a row: a
ratio closer to its target than that is within run-to-run noise. "cpu x" is the same ratio
for CPU time (user + system, all threads): much less disturbed by other processes than wall
time; the bench ends by saying how busy the machine was.

    python bench/load.py [--size-gb 4] [--repeat 5] [--src DIR] [--only wall,rss,progress,ext]
    python bench/load.py --device cuda [--size-gb 4]   # on a GPU machine

``--device cuda`` loads to ``cuda:0`` instead (float32, and float32 -> bfloat16): wall time against
``from_pretrained`` in the same run (target <= 1.0x), each side's GB/s, and the host -> device limit of
this machine measured with a plain pinned copy of the same bytes (the physical reference).

The checkpoint (random float32 llama) is built once under build/bench/ and reused.
``--src`` benchmarks the hf_notebook package found in DIR (another checkout) instead of
this one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import build_tiny, busy_seconds, children_cpu, print_footer, random_llama, save_built

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DISK_LAYERS = 4  # last layers offloaded to disk in the offload case
HEAVY = ("torch", "transformers", "accelerate")

INFO = 48  # indent of the lines under a table row
WALL_TARGET = 1.0  # hf_notebook's wall time / from_pretrained's, at most
RSS_TARGET = 1.1  # peak extra RSS / result bytes, float32 -> bfloat16
PROGRESS_TARGET = 0.02  # relative cost of a renderer consuming the events
LOAD_EXT_TARGET = 0.3  # seconds
PRELOADED_PAIRS = 3  # the modules-preloaded rows measure this many times --repeat pairs


def build_checkpoint(folder: Path, size_gb: float) -> Path:
    """A float32 llama of about ``size_gb`` GB in 4-5 shards (random weights, built once, cached)."""
    marker = folder / "model.safetensors.index.json"
    if marker.exists():
        return folder
    hidden, inter, vocab = _shape(size_gb)
    per_layer = 4 * hidden * hidden + 3 * hidden * inter
    layers = max(DISK_LAYERS + 1, round((size_gb * 1e9 / 4 - 2 * vocab * hidden) / per_layer))
    model = random_llama(hidden, inter, layers, vocab)
    total = sum(p.numel() * 4 for p in model.parameters())
    save_built(model, folder, max_shard_size=f"{total // 4 // 10**6 + 1}MB")
    return folder


def _shape(size_gb: float) -> tuple[int, int, int]:
    """(hidden, intermediate, vocab) of a llama whose embeddings leave room for layers at ``size_gb``: with
    hidden 2048 the embeddings and 5 layers alone are 1.55 GB, so smaller sizes get narrower models."""
    if size_gb < 0.6:
        return 768, 2048, 16000
    if size_gb < 2.5:
        return 1536, 4096, 32000
    return 2048, 5632, 32000


def device_maps(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    n = config["num_hidden_layers"]
    offload = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    offload.update({f"model.layers.{i}": ("disk" if i >= n - DISK_LAYERS else "cpu") for i in range(n)})
    return {"cpu": "cpu", "offload": offload}


# One load in a fresh process. Imports that both sides need (torch, transformers, the Auto
# class, hf_notebook's api) happen before the clock starts; lazy imports inside the call
# (the model's modules, ...) are paid by both sides alike. With "warm", a tiny llama is
# loaded the same way first, so the measured load finds every module imported already.
CHILD = r"""
import io, json, os, resource, shutil, sys, tempfile, time
import torch, transformers
from transformers import AutoModelForCausalLM
import hf_notebook.core.api as api


def load_with_hf_notebook(folder, dtype, device_map, offload_folder, on_event):
    # The one call into hf_notebook: if load_model's signature changes, adapt it here.
    result = api.load_model(folder, dtype=dtype, device_map=device_map, offload_folder=offload_folder,
                            on_event=on_event, no_verify=True)  # save_pretrained's folder: no manifest
    return result.model


def load(which, folder, dtype, device_map, offload_folder, on_event=None):
    if which == "from_pretrained":
        return AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), device_map=device_map,
                                                    offload_folder=offload_folder)
    return load_with_hf_notebook(folder, dtype, device_map, offload_folder, on_event)


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hwm():
    # This process's own peak RSS. Not ru_maxrss: Linux carries that across fork and exec, so a child of a big
    # parent (the bench that just built the checkpoint) reads the parent's size as its own peak.
    with open("/proc/self/status") as f:
        return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")), 0)


spec = json.loads(sys.argv[1])
which, folder, dtype, device_map = spec["which"], spec["folder"], spec["dtype"], spec["device_map"]
which, variant = (which.split("+") + [""])[:2]
counts = {"events": 0, "render_s": 0.0}
on_event, sink = None, None
if variant:  # the progress pair: both import the renderer's modules before the clock (more live objects
    from hf_notebook.ui.text import TextRenderer  # make every garbage collection in the load a bit slower)
if variant == "text":
    sink = io.StringIO()
    renderer = TextRenderer(sink)

    def on_event(event):
        t = time.perf_counter()
        renderer(event)
        counts["render_s"] += time.perf_counter() - t
        counts["events"] += 1

if spec.get("warm"):
    with tempfile.TemporaryDirectory() as tmp:
        load(which, spec["warm"], dtype, "cpu" if isinstance(device_map, str) else {"": "cpu"}, tmp)
    # The ~130,000 objects those imports made are still young, and the collector's next pass over them falls
    # wherever the count of new objects happens to reach its threshold: inside the measured load on one side, not
    # on the other (load_model raises the threshold while it runs; from_pretrained does not). That pass belongs
    # to the imports. In a notebook the cells between two loads make it; here one collection makes it, both sides.
    import gc
    gc.collect()
offload = tempfile.mkdtemp(prefix="bench-offload-")
before = rss()
usage = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
model = load(which, folder, dtype, device_map, offload, on_event)
if torch.cuda.is_available():
    torch.cuda.synchronize()  # copies to the GPU may still be in flight: the load ends when they do
seconds = time.perf_counter() - t0
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = (after.ru_utime + after.ru_stime) - (usage.ru_utime + usage.ru_stime)
peak = hwm() or after.ru_maxrss * 1024
result = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type != "meta")
if sink is not None and callable(getattr(renderer, "close", None)):
    renderer.close()
shutil.rmtree(offload, ignore_errors=True)
print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_extra": peak - before, "result": result, **counts,
                  "rendered_lines": sink.getvalue().count("\n") if sink is not None else 0}))
"""

LOAD_EXT_CHILD = r"""
import json, sys, time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
already = [m for m in %r if m in sys.modules]
t0 = time.perf_counter()
shell.run_line_magic("load_ext", "hf_notebook")
seconds = time.perf_counter() - t0
magics = shell.magics_manager.magics["line"]
print(json.dumps({"seconds": seconds, "already": already, "heavy": [m for m in %r if m in sys.modules],
                  "registered": "load_model" in magics}))
""" % (HEAVY, HEAVY)


# The physical reference of a load to the GPU: the same bytes copied host -> device from pinned memory
# (the fastest a load can put them there), best of a few copies after a warm-up.
H2D_CHILD = r"""
import json, sys, time
import torch
nbytes = int(sys.argv[1])
host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
device = torch.empty(nbytes, dtype=torch.uint8, device="cuda:0")
device.copy_(host, non_blocking=True)
torch.cuda.synchronize()
best = float("inf")
for _ in range(5):
    t0 = time.perf_counter()
    device.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    best = min(best, time.perf_counter() - t0)
print(json.dumps({"seconds": best, "gbps": nbytes / best / 1e9, "card": torch.cuda.get_device_name(0)}))
"""


class Runner:
    """Runs children in fresh processes with the hf_notebook of ``src`` first on the path."""

    def __init__(self, src: Path):
        self.src = src
        self.cwd = tempfile.mkdtemp(prefix="hf_notebook-bench-")  # not the repo: ``src`` decides the import
        path = [str(src)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        self.env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1", TQDM_DISABLE="1",
                        PYTHONPATH=os.pathsep.join(path))
        # Byte-compiled modules as a user has them, even where PYTHONDONTWRITEBYTECODE is set or
        # the source tree is not writable: children keep theirs under build/bench/pycache (the
        # first run fills it), so no child compiles hf_notebook's modules inside the timed load.
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.env["PYTHONPYCACHEPREFIX"] = str(ROOT / "build" / "bench" / "pycache")

        self.others: list[float] = []  # cores kept busy by other processes during each child

    def run(self, code: str, *args: str) -> dict:
        busy0, children0, t0 = busy_seconds(), children_cpu(), time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=self.env,
                             cwd=self.cwd)
        busy1, children1, t1 = busy_seconds(), children_cpu(), time.perf_counter()
        if busy0 is not None and busy1 is not None:
            self.others.append(max(0.0, (busy1 - busy0) - (children1 - children0)) / (t1 - t0))
        if out.returncode != 0:
            sys.stderr.write(out.stderr[-4000:])
            raise SystemExit(f"bench child failed ({' '.join(args)[:200]}): exit {out.returncode}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def load(self, which: str, folder: Path, dtype: str, device_map, warm: Path | None = None) -> dict:
        spec = dict(which=which, folder=str(folder), dtype=dtype, device_map=device_map,
                    warm=str(warm) if warm else None)
        return self.run(CHILD, json.dumps(spec))

    def pairs(self, a: str, b: str, folder: Path, dtype: str, device_map, repeat: int,
              warm: Path | None = None) -> tuple[list, list]:
        """``repeat`` runs of each of ``a`` and ``b``, interleaved (a b b a a b ...) against drift."""
        runs = {a: [], b: []}
        for i in range(repeat):
            for which in ((a, b) if i % 2 == 0 else (b, a)):
                runs[which].append(self.load(which, folder, dtype, device_map, warm))
        return runs[a], runs[b]


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def noise(*sides: list[dict], key: str = "seconds") -> float:
    return max((max(r[key] for r in s) - min(r[key] for r in s)) / median(s, key) for s in sides)


def warm_page_cache(folder: Path) -> None:
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass


class Table:
    COLS = (("check", 47, "<"), ("baseline", 14, ">"), ("hf_notebook", 14, ">"), ("measured", 9, ">"),
            ("target", 9, ">"), ("", 4, "<"), ("cpu x", 6, ">"), ("noise", 6, ">"))

    def __init__(self):
        self.misses = 0
        line = " ".join(f"{name:{align}{width}}" for name, width, align in self.COLS)
        print(line.rstrip() + "\n" + "-" * len(line.rstrip()), flush=True)

    def row(self, check, baseline, ours, measured, target, ok: bool | None, spread: float | None = None, cpu: str = ""):
        """One row; ``ok=None``: a figure shown beside the targets, with no target of its own ("info")."""
        self.misses += ok is False
        spread_text = f"{spread * 100:.0f}%" if spread is not None else ""
        verdict = "info" if ok is None else "PASS" if ok else "MISS"
        cells = (check, baseline, ours, measured, target, verdict, cpu, spread_text)
        print(" ".join(f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, self.COLS)), flush=True)


def cpu_ratio(base: list[dict], ours: list[dict]) -> str:
    """hf_notebook's CPU time (user + system, all threads) over the baseline's: less hurt by a busy machine."""
    return f"{median(ours, 'cpu') / median(base, 'cpu'):.3f}"


def rss_row(table: Table, when: str, base: list[dict], ours: list[dict], target: bool = True) -> None:
    base_ratio = median(base, "peak_extra") / median(base, "result")
    ours_ratio = median(ours, "peak_extra") / median(ours, "result")
    table.row(f"RSS: peak extra / result, {when}", f"{base_ratio:.2f}x", f"{ours_ratio:.2f}x", f"{ours_ratio:.2f}x",
              f"<= {RSS_TARGET:.2f}x" if target else "", ours_ratio <= RSS_TARGET if target else None,
              noise(ours, key="peak_extra"))
    print(f"{'':{INFO}}(float32 -> bfloat16; result {median(ours, 'result') / 1e9:.3f} GB; peak extra RSS: "
          f"from_pretrained {median(base, 'peak_extra') / 1e9:.3f} GB, hf_notebook "
          f"{median(ours, 'peak_extra') / 1e9:.3f} GB)")


def wall_row(table: Table, label: str, base: list[dict], ours: list[dict]) -> None:
    ratio = median(ours, "seconds") / median(base, "seconds")
    table.row(f"wall: {label}", f"{median(base, 'seconds'):.3f} s", f"{median(ours, 'seconds'):.3f} s",
              f"{ratio:.3f}x", f"<= {WALL_TARGET:.2f}x", ratio <= WALL_TARGET, noise(base, ours), cpu_ratio(base, ours))


def print_checkpoint(folder: Path, runner: Runner, repeat: int, where: str = "") -> None:
    shards = sorted(folder.glob("*.safetensors"))
    size = sum(p.stat().st_size for p in shards) / 1e9
    print(f"checkpoint: {folder} ({size:.2f} GB float32, {len(shards)} shards), warm page cache{where}\n"
          f"hf_notebook from {runner.src}; each value is the median of {repeat} fresh processes"
          f"{'' if where else f' ({PRELOADED_PAIRS * repeat} where modules are preloaded)'}; "
          f"baseline = transformers from_pretrained, same run\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=4, help="checkpoint size in float32 (default 4)")
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per measurement (>= 3)")
    parser.add_argument("--folder", type=Path, default=None,
                        help="checkpoint folder (default build/bench/llama-fp32-<size>gb)")
    parser.add_argument("--src", type=Path, default=ROOT, help="folder holding the hf_notebook package to bench")
    parser.add_argument("--only", default="wall,rss,progress,ext",
                        help="comma-separated subset of: wall, rss, progress, ext")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="load to cpu (default) or to cuda:0 (wall, GB/s and the host -> device limit)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every run")
    args = parser.parse_args()
    if args.repeat < 3:
        parser.error("--repeat must be at least 3")
    if args.device == "cuda":
        return cuda_main(args)
    only = set(args.only.split(","))
    folder = args.folder or ROOT / "build" / "bench" / f"llama-fp32-{args.size_gb:g}gb"
    started = time.perf_counter()
    build_checkpoint(folder, args.size_gb)
    maps = device_maps(folder)
    runner = Runner(args.src.resolve())
    warm_page_cache(folder)
    # Fill the byte-code cache (first run only) and settle the page cache; not measured.
    runner.load("from_pretrained", folder, "bfloat16", maps["cpu"])
    runner.load("hf_notebook+text", folder, "float32", maps["offload"])
    runner.run(LOAD_EXT_CHILD)
    runner.others.clear()

    print_checkpoint(folder, runner, args.repeat)
    table = Table()
    cases = [("cpu, float32 (no conversion)", "float32", maps["cpu"]),
             ("cpu, float32 -> bfloat16", "bfloat16", maps["cpu"]),
             (f"cpu + disk ({DISK_LAYERS} layers), float32", "float32", maps["offload"])]
    results = {}
    if only & {"wall", "rss"}:
        for label, dtype, device_map in cases:
            if "wall" not in only and dtype != "bfloat16":
                continue
            base, ours = runner.pairs("from_pretrained", "hf_notebook", folder, dtype, device_map, args.repeat)
            results[label] = (base, ours)
            if args.verbose:
                print(f"  {label}: from_pretrained {[round(r['seconds'], 3) for r in base]}, "
                      f"hf_notebook {[round(r['seconds'], 3) for r in ours]}")
            if "wall" in only:
                wall_row(table, label, base, ours)
    if "rss" in only:
        label = "cpu, float32 -> bfloat16"
        base, ours = results[label]
        # The first load also imports ~1,100 modules (transformers' loading code, the model's
        # module): memory that is the same for any model size and any loader. The target is on the
        # load with those imports excluded on both sides (the measure): the same load after
        # a tiny llama was loaded the same way in that process. The first load is shown beside it.
        rss_row(table, "first load", base, ours, target=False)
        # Three times the pairs: with imports excluded this is the shortest load of the bench, the one a fixed cost
        # decides, and its run-to-run spread (10-50% at 5 pairs) is as wide as the margin it is judged on.
        wbase, wours = runner.pairs("from_pretrained", "hf_notebook", folder, "bfloat16", maps["cpu"],
                                    PRELOADED_PAIRS * args.repeat, warm=build_tiny(folder.parent / "tiny-llama"))
        rss_row(table, "modules preloaded", wbase, wours)
        imports = [(median(first, "peak_extra") - median(warm, "peak_extra")) / 1e9
                   for first, warm in ((base, wbase), (ours, wours))]
        print(f"{'':{INFO}}(the first load's extra over this one, its imports: from_pretrained "
              f"{imports[0]:+.3f} GB, hf_notebook {imports[1]:+.3f} GB)")
        # The wall of that load: the issue's own measure (imports excluded on both sides), where a fixed cost of
        # hf_notebook (its meta model for the plan, the record) is not hidden behind seconds of imports.
        wall_row(table, "cpu, float32 -> bfloat16, modules preloaded", wbase, wours)
        pairwise = sorted(o["seconds"] / b["seconds"] for b, o in zip(wbase, wours))
        print(f"{'':{INFO}}({len(pairwise)} pairs; hf_notebook / from_pretrained within a pair: median "
              f"{statistics.median(pairwise):.3f}x, {sum(r <= WALL_TARGET for r in pairwise)} of {len(pairwise)} "
              f"at or under {WALL_TARGET:.1f}x, range {pairwise[0]:.3f}-{pairwise[-1]:.3f}x)")
    if "progress" in only:
        label, dtype, device_map = cases[0]  # the shortest load: the worst case for a fixed cost
        quiet, text = runner.pairs("hf_notebook+none", "hf_notebook+text", folder, dtype, device_map, args.repeat)
        cost = median(text, "seconds") / median(quiet, "seconds") - 1
        if args.verbose:
            print(f"  progress: on_event=None {[round(r['seconds'], 3) for r in quiet]}, "
                  f"TextRenderer {[round(r['seconds'], 3) for r in text]}")
        inside = median(text, "render_s")
        share = inside / median(text, "seconds")
        # Both sides build the same events (a load without a renderer still counts its tensors), so the
        # cost of progress reporting is the time spent inside the renderer: measured directly, in the
        # loading process. The wall difference of the two sides is shown too; it is within run noise.
        table.row("progress: time inside a TextRenderer", f"{median(quiet, 'seconds'):.3f} s",
                  f"{median(text, 'seconds'):.3f} s", f"{share * 100:.2f}%", f"< {PROGRESS_TARGET * 100:.0f}%",
                  share < PROGRESS_TARGET, noise(quiet, text), cpu_ratio(quiet, text))
        print(f"{'':{INFO}}({label}; {int(median(text, 'events'))} events, {int(median(text, 'rendered_lines'))} "
              f"lines rendered per load, {inside * 1000:.1f} ms inside the renderer; wall with it vs "
              f"on_event=None: {cost * 100:+.1f}%, within the noise)")
    if "ext" in only:
        runs = [runner.run(LOAD_EXT_CHILD) for _ in range(max(args.repeat, 5))]
        seconds = median(runs, "seconds")
        table.row("%load_ext hf_notebook", "-", f"{seconds:.3f} s", f"{seconds:.3f} s",
                  f"< {LOAD_EXT_TARGET:.1f} s", seconds < LOAD_EXT_TARGET and all(r["registered"] for r in runs),
                  noise(runs))
        heavy = sorted({m for r in runs for m in r["heavy"]})
        already = sorted({m for r in runs for m in r["already"]})
        table.row("%load_ext imports torch/transformers/accelerate", "-", ", ".join(heavy) or "none",
                  ", ".join(heavy) or "none", "none", not heavy)
        if already:
            print(f"{'':{INFO}}(note: {', '.join(already)} already imported by IPython itself)")
    print_footer(runner.others, table.misses, started)


def cuda_main(args) -> None:
    """Loads to ``cuda:0``: wall against from_pretrained, GB/s of each side, the pinned-copy limit."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench/load.py --device cuda needs a CUDA device (torch.cuda.is_available() is False here)")
    folder = args.folder or ROOT / "build" / "bench" / f"llama-fp32-{args.size_gb:g}gb"
    started = time.perf_counter()
    build_checkpoint(folder, args.size_gb)
    runner = Runner(args.src.resolve())
    warm_page_cache(folder)
    runner.load("from_pretrained", folder, "bfloat16", "cuda:0")  # byte-code cache, CUDA context: not measured
    runner.others.clear()
    print_checkpoint(folder, runner, args.repeat, ", to cuda:0")
    table = Table()
    for label, dtype in (("cuda:0, float32", "float32"), ("cuda:0, float32 -> bfloat16", "bfloat16")):
        base, ours = runner.pairs("from_pretrained", "hf_notebook", folder, dtype, "cuda:0", args.repeat)
        wall_row(table, label, base, ours)
        result = median(ours, "result")
        limit = runner.run(H2D_CHILD, str(int(result)))
        print(f"{'':{INFO}}({result / 1e9:.2f} GB on the GPU: from_pretrained {result / median(base, 'seconds') / 1e9:.2f}"
              f" GB/s, hf_notebook {result / median(ours, 'seconds') / 1e9:.2f} GB/s; pinned host -> device copy of "
              f"the same bytes {limit['gbps']:.2f} GB/s on {limit['card']})")
    print_footer(runner.others, table.misses, started)


if __name__ == "__main__":
    main()
