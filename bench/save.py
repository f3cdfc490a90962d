"""Save / push benchmark: hf_notebook's save_model and push_folder against save_pretrained and upload_folder.

One table, every row against a baseline measured in the same run. Each save runs in a fresh
process: load_model loads the ~1.2 GB float32 llama (warm page cache), a tiny llama is saved the
same way first (so that no import is paid inside the measured save), then the measured save.
Wall rows show medians of ``--repeat`` processes, baseline and hf_notebook interleaved so that
drift hits both alike. Targets:

- save wall <= 1.1x ``model.save_pretrained`` (same loaded model, same shard size), with the
  manifest's sha256 of every file computed inside ours;
- peak extra RSS during the save <= 128 MB (1 MB = 10^6 bytes) whatever the shard size and
  where the model sits: on cpu in one shard (the default 50GB), on cpu in 200MB shards, and
  mostly on disk (``device_map="auto", max_memory={"cpu": "300MB"}``). RSS is VmRSS, file-backed
  pages included (as users watch it): the peak is the larger of VmRSS sampled every 5 ms in a
  thread and VmHWM after a reset (``/proc/self/clear_refs``) just before the save; "extra" is
  that peak minus VmRSS just before the save. The worst of the hf_notebook runs is set against
  the target; the baseline (save_pretrained in the same kind of process) is shown next to it;
- ``dtype="bfloat16"``: wall <= 0.8x and extra RSS <= 0.2x of ``model.to(torch.bfloat16)`` +
  ``save_pretrained`` (the baseline's extra RSS includes the converted copy it keeps);
- push: upload throughput (GB/s) of ``push_folder`` to the in-process Hub stand-in, no slower
  than huggingface_hub's ``HfApi().upload_folder`` of the same folder (1.0x: this bench's own
  floor), and no file re-read to hash it (calls of ``huggingface_hub.lfs.sha_fileobj`` counted:
  0 for push_folder). Large files go through Xet storage, as on the Hub (the stand-in's hf_xet
  local CAS). Each push runs in a fresh process with its own stand-in on an empty store, so no
  deduplication skips an upload (the bench checks that every large file was uploaded, and reads
  its bytes back from the store against the sha256 the manifest gives it);
- every saved copy is checked: each tensor of the folder, read back, is torch.equal to the
  model's (to its bfloat16 conversion for bfloat16 saves; offloaded weights are read from the
  checkpoint the model holds them in), same names, same dtypes; for hf_notebook the manifest
  lists every file with its size and the sha256 of its bytes.

    python bench/save.py [--repeat 3] [--only save,push] [--case cpu,disk,...] [--quick] [-v]

The llama (hidden 1024, 18 layers, vocab 32000, untied, float32) is built once under
build/bench/ and reused. ``--quick`` is a smoke test: one process per side and case.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import build_tiny, busy_seconds, children_cpu, print_footer, random_llama, save_built

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

WALL_TARGET = 1.1  # save_model wall / save_pretrained wall, at most
RSS_TARGET = 128e6  # peak extra RSS during save_model, bytes, at most
BF16_WALL_TARGET = 0.8  # --dtype bfloat16: wall / (to(bfloat16) + save_pretrained), at most
BF16_RSS_TARGET = 0.2  # --dtype bfloat16: extra RSS / the baseline's, at most
PUSH_TARGET = 1.0  # push_folder GB/s / upload_folder GB/s, at least (this bench's floor)
CPU_BUDGET = "300MB"  # max_memory for the model that sits mostly on disk
LAYERS = 18
GB, MB = 1e9, 1e6
INFO = 48  # indent of the lines under a table row

# (key, label, where the model sits, max_shard_size, dtype)
CASES = (
    ("cpu", "cpu, 1 shard (default 50GB)", "cpu", "50GB", None),
    ("cpu-200mb", "cpu, 200MB shards", "cpu", "200MB", None),
    ("disk", f"mostly disk (cpu {CPU_BUDGET}), 1 shard", "disk", "50GB", None),
    ("bf16", "cpu, -> bfloat16, 1 shard", "cpu", "50GB", "bfloat16"),
)


def build_llama(folder: Path) -> Path:
    """A float32 llama of ~1.19 GB (random weights) in 300MB shards, built once."""
    if (folder / "config.json").exists():
        return folder
    model = random_llama(1024, 2816, LAYERS)
    save_built(model, folder, max_shard_size="300MB")
    return folder


# One save in a fresh process. Everything both sides need is imported, and a tiny llama loaded and
# saved the same way, before the clock starts; then the measured save, then the check of the copy.
SAVE_CHILD = r"""
import gc, hashlib, json, os, resource, shutil, sys, tempfile, threading, time
spec = json.loads(sys.argv[1])
import torch, transformers
from safetensors import safe_open
from hf_notebook.core.api import load_model
from hf_notebook.core.weights.save import MANIFEST, save_model

PAGE = os.sysconf("SC_PAGE_SIZE")


def vm(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current VmRSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class Sampler(threading.Thread):
    # VmRSS every 5 ms; the peak seen.
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.samples, self.stop = 0, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, vm("VmRSS"))
            self.samples += 1
            self.stop.wait(0.005)

    def close(self):
        self.stop.set()
        self.join()
        self.peak = max(self.peak, vm("VmRSS"))


def load(folder, where):
    if where == "cpu":
        return load_model(folder, device_map="cpu", offline=True, no_verify=True)
    return load_model(folder, device_map="auto", max_memory={"cpu": spec["cpu_budget"]}, offline=True,
                      no_verify=True)


def save(result, out, shard, dtype):
    # The one call into each side: if save_model's signature changes, adapt it here.
    if spec["which"] == "save_pretrained":
        model = result.model
        if dtype:
            model.to(getattr(torch, dtype))
        model.save_pretrained(out, max_shard_size=shard)
        return None
    return save_model(result, out, max_shard_size=shard, dtype=dtype)


def cleanup(result):
    if result.owns_offload_folder and result.offload_folder:
        shutil.rmtree(result.offload_folder, ignore_errors=True)


# Not measured: every module the save path imports, with a tiny llama loaded the same way.
warm = load(spec["tiny"], spec["where"] if spec["where"] == "cpu" else "cpu")
with tempfile.TemporaryDirectory(dir=spec["scratch"]) as tmp:
    save(warm, os.path.join(tmp, "tiny"), spec["shard"], spec["dtype"])
cleanup(warm)
del warm

result = load(spec["folder"], spec["where"])
model = result.model
on_disk = sorted(n for n, t in model.state_dict().items() if t.device.type == "meta")
out = spec["out"]
gc.collect()
before = vm("VmRSS")
hwm_reset = reset_hwm()
sampler = Sampler()
sampler.start()
usage = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
saved = save(result, out, spec["shard"], spec["dtype"])
seconds = time.perf_counter() - t0
used = resource.getrusage(resource.RUSAGE_SELF)
sampler.close()
hwm = vm("VmHWM") if hwm_reset else 0
after = vm("VmRSS")
cpu = (used.ru_utime + used.ru_stime) - (usage.ru_utime + usage.ru_stime)

# The check: every tensor read back from the saved folder equals the model's (converted to the
# saved dtype); weights the model keeps on disk are read from the checkpoint it reads them from.
source = {}
for path in sorted(os.listdir(spec["folder"])):
    if path.endswith(".safetensors"):
        with safe_open(os.path.join(spec["folder"], path), framework="pt") as f:
            source.update({k: os.path.join(spec["folder"], path) for k in f.keys()})
state = model.state_dict()
out_dtype = getattr(torch, spec["dtype"]) if spec["dtype"] else torch.float32
problems, checked, names, shards = [], 0, set(), sorted(p for p in os.listdir(out) if p.endswith(".safetensors"))
for shard in shards:
    with safe_open(os.path.join(out, shard), framework="pt") as f:
        for name in f.keys():
            names.add(name)
            got = f.get_tensor(name)
            ref = state.get(name)
            if ref is None or ref.device.type == "meta":
                with safe_open(source[name], framework="pt") as g:
                    ref = g.get_tensor(name)
            if ref.is_floating_point():
                ref = ref.to(out_dtype)
            if got.dtype != ref.dtype or not torch.equal(got, ref):
                problems.append(f"{shard}:{name} differs")
            checked += 1
if names != set(source):
    problems.append(f"names: {len(names - set(source))} extra, {len(set(source) - names)} missing")
if len(shards) > 1:
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        index = json.load(f)["weight_map"]
    if set(index) != names:
        problems.append("the index does not list the saved tensors")
with open(os.path.join(out, "config.json")) as f:
    config_dtype = json.load(f).get("dtype")
if config_dtype != str(out_dtype).removeprefix("torch."):
    problems.append(f"config.json says dtype {config_dtype}")
manifest_files = 0
if saved is not None:  # hf_notebook: the manifest lists every file, its size and its sha256
    with open(os.path.join(out, MANIFEST), "rb") as f:
        text = f.read()
    if hashlib.sha256(text).hexdigest() != saved.manifest_sha256:
        problems.append("SaveResult.manifest_sha256 is not the manifest's sha256")
    listed = json.loads(text)["files"]
    present = sorted(p for p in os.listdir(out) if p != MANIFEST)
    if sorted(listed) != present:
        problems.append(f"manifest lists {sorted(listed)}, the folder holds {present}")
    for name, facts in listed.items():
        sha, path = hashlib.sha256(), os.path.join(out, name)
        with open(path, "rb") as f:
            while chunk := f.read(16 << 20):
                sha.update(chunk)
        if facts["size"] != os.path.getsize(path) or facts["sha256"] != sha.hexdigest():
            problems.append(f"manifest: {name} size/sha256 differ from the file")
        manifest_files += 1
size = sum(os.path.getsize(os.path.join(out, p)) for p in shards)
cleanup(result)
if not spec["keep"]:
    shutil.rmtree(out, ignore_errors=True)
print(json.dumps({"seconds": seconds, "cpu": cpu, "before": before, "after": after, "sampled": sampler.peak,
                  "hwm": hwm, "peak": max(sampler.peak, hwm), "extra": max(sampler.peak, hwm) - before,
                  "samples": sampler.samples, "hwm_reset": hwm_reset, "on_disk": len(on_disk), "checked": checked,
                  "problems": problems[:5], "shards": len(shards), "bytes": size, "manifest_files": manifest_files,
                  "threads": torch.get_num_threads()}))
"""

# One push in a fresh process, with its own Hub stand-in on an empty store (in this process, as the
# tests run it): a tiny folder is pushed the same way first (imports, connections), then the measured
# push of the saved folder. huggingface_hub.lfs.sha_fileobj is counted: each call reads a file to hash it.
PUSH_CHILD = r"""
import json, os, sys, time
spec = json.loads(sys.argv[1])
from hf_notebook.testing.hub import HubServer

server = HubServer(spec["store"]).start()
server.token = "hf_bench_save_push_token"
for name in ("HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN_PATH"):
    os.environ.pop(name, None)
loopback = "127.0.0.1,localhost"
os.environ.update(HF_ENDPOINT=server.endpoint, HF_HOME=os.path.join(spec["store"], "hf-home"), HF_TOKEN=server.token,
                  HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                  NO_PROXY=loopback, no_proxy=loopback)
import huggingface_hub
import huggingface_hub.lfs as lfs
from huggingface_hub import HfApi
from hf_notebook.core.hub.push import push_folder
from hf_notebook.core.weights.save import MANIFEST

hashed = {"calls": 0, "bytes": 0}
sha_fileobj = lfs.sha_fileobj


def counting(fileobj, *args, **kwargs):
    start = fileobj.tell()
    digest = sha_fileobj(fileobj, *args, **kwargs)
    hashed["calls"] += 1
    hashed["bytes"] += fileobj.tell() - start
    return digest


lfs.sha_fileobj = counting


def push(folder, repo):
    # The one call into each side.
    if spec["which"] == "upload_folder":
        api = HfApi()
        api.create_repo(repo, exist_ok=True)
        return api.upload_folder(folder_path=folder, repo_id=repo, commit_message="bench").oid
    return push_folder(folder, repo, token=server.token).commit_sha


push(spec["tiny"], "user/bench-warm")
server.reset_counters()
hashed.update(calls=0, bytes=0)
repo = f"user/bench-{spec['which'].replace('_', '-')}"
t0 = time.perf_counter()
sha = push(spec["folder"], repo)
seconds = time.perf_counter() - t0

# The check: every file of the folder is in the commit; each large file was uploaded (through Xet storage, as
# on the Hub, or PUT to LFS) and is stored under the sha256 the manifest gives it: its bytes are read back from
# the store (rebuilt from the Xet CAS) and checked against that sha256.
with open(os.path.join(spec["folder"], MANIFEST)) as f:
    listed = json.load(f)["files"]
problems, lfs_bytes, lfs_files, ways = [], 0, 0, set()
committed = set(server.store.list_files(repo, sha))
for name in sorted(os.listdir(spec["folder"])):
    if name not in committed:
        problems.append(f"{name} not committed")
        continue
    entry = server.store.entry(repo, sha, name)
    if entry.lfs is not None:
        lfs_files += 1
        lfs_bytes += entry.size
        if entry.lfs.oid != listed.get(name, {}).get("sha256"):
            problems.append(f"{name}: stored as {entry.lfs.oid}, the manifest says {listed.get(name)}")
        through_xet = server.store.xet.find(entry.lfs.oid) is not None
        ways.add("Xet" if through_xet else "LFS")
        if entry.lfs.oid not in server.lfs_uploads and not through_xet:
            problems.append(f"{name}: not uploaded (the store had it)")
        elif server.store.lfs_path(entry.lfs.oid) is None:  # rebuilt from the CAS and checked against its sha256
            problems.append(f"{name}: its bytes cannot be read back")
server.stop()
print(json.dumps({"seconds": seconds, "lfs_bytes": lfs_bytes, "lfs_files": lfs_files, "puts": len(server.lfs_uploads),
                  "ways": sorted(ways),
                  "sha_calls": hashed["calls"], "sha_bytes": hashed["bytes"], "problems": problems[:5],
                  "committed": len(committed)}))
"""


class Runner:
    """Runs children in fresh processes; keeps how busy other processes kept the machine meanwhile."""

    def __init__(self, scratch: Path, verbose: bool):
        self.scratch, self.verbose = scratch, verbose
        path = [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        self.env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1", TQDM_DISABLE="1",
                        HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=os.pathsep.join(path))
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)  # byte-compiled modules, as users have them
        self.env["PYTHONPYCACHEPREFIX"] = str(ROOT / "build" / "bench" / "pycache")
        self.others: list[float] = []  # cores kept busy by other processes during each child

    def run(self, code: str, spec: dict, env: dict | None = None) -> dict:
        os.sync()  # the previous child's writes are not flushed inside this one's clock
        busy0, children0, t0 = busy_seconds(), children_cpu(), time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                             check=False, env={**self.env, **(env or {})}, cwd=self.scratch)
        busy1, children1, t1 = busy_seconds(), children_cpu(), time.perf_counter()
        if busy0 is not None and busy1 is not None:
            self.others.append(max(0.0, (busy1 - busy0) - (children1 - children0)) / (t1 - t0))
        if out.returncode != 0:
            sys.stderr.write(out.stderr[-4000:])
            raise SystemExit(f"bench child failed ({spec.get('which')} {spec.get('case', '')}): exit {out.returncode}")
        run = json.loads(out.stdout.strip().splitlines()[-1])
        if self.verbose:
            print(f"  {spec.get('case', 'push')} {spec['which']}: {run['seconds']:.3f} s"
                  + (f", extra RSS {run['extra'] / MB:.0f} MB" if "extra" in run else "")
                  + f" (process {t1 - t0:.1f} s)", flush=True)
        return run


def save_runs(runner: Runner, case: tuple, folder: Path, tiny: Path, repeat: int, keep: Path | None) -> tuple:
    """``repeat`` fresh-process saves of each side, interleaved (a b b a ...); the first of ours kept at ``keep``."""
    key, _, where, shard, dtype = case
    runs = {"save_pretrained": [], "hf_notebook": []}
    for i in range(repeat):
        for which in (("save_pretrained", "hf_notebook") if i % 2 == 0 else ("hf_notebook", "save_pretrained")):
            kept = keep is not None and which == "hf_notebook" and not runs[which]
            out = keep if kept else runner.scratch / f"saved-{key}-{which}-{i}"
            spec = dict(case=key, which=which, folder=str(folder), tiny=str(tiny), where=where, shard=shard,
                        dtype=dtype, cpu_budget=CPU_BUDGET, out=str(out), keep=kept, scratch=str(runner.scratch))
            runs[which].append(runner.run(SAVE_CHILD, spec))
    return runs["save_pretrained"], runs["hf_notebook"]


def push_runs(runner: Runner, folder: Path, tiny: Path, repeat: int) -> tuple:
    runs = {"upload_folder": [], "push_folder": []}
    for i in range(repeat):
        for which in (("upload_folder", "push_folder") if i % 2 == 0 else ("push_folder", "upload_folder")):
            store = runner.scratch / f"store-{which}-{i}"
            try:
                runs[which].append(runner.run(PUSH_CHILD, dict(which=which, folder=str(folder), tiny=str(tiny),
                                                               store=str(store)), env={"HF_HUB_OFFLINE": "0"}))
            finally:
                shutil.rmtree(store, ignore_errors=True)
    return runs["upload_folder"], runs["push_folder"]


def sha256_rate() -> float:
    """GB/s of hashlib's sha256 on this machine (one thread, bytes in memory)."""
    import hashlib

    data = os.urandom(64 << 20)
    t0 = time.perf_counter()
    for _ in range(4):
        hashlib.sha256(data).digest()
    return 4 * len(data) / (time.perf_counter() - t0) / GB


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def noise(*sides: list[dict], key: str = "seconds") -> float:
    return max((max(r[key] for r in s) - min(r[key] for r in s)) / median(s, key) for s in sides)


class Table:
    """Rows and notes kept until :meth:`show`."""

    COLS = (("check", 47, "<"), ("baseline", 14, ">"), ("hf_notebook", 14, ">"), ("measured", 9, ">"),
            ("target", 9, ">"), ("", 4, "<"), ("cpu x", 6, ">"), ("noise", 6, ">"))

    def __init__(self):
        self.misses, self.lines = 0, []

    def row(self, check, baseline, ours, measured, target, ok: bool, spread: float | None = None, cpu: str = ""):
        self.misses += not ok
        spread_text = f"{spread * 100:.0f}%" if spread is not None else ""
        cells = (check, baseline, ours, measured, target, "PASS" if ok else "MISS", cpu, spread_text)
        self.lines.append(" ".join(f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, self.COLS)))

    def note(self, text: str) -> None:
        self.lines.append(f"{'':{INFO}}({text})")

    def show(self) -> None:
        head = " ".join(f"{name:{align}{width}}" for name, width, align in self.COLS).rstrip()
        print("\n".join([head, "-" * len(head), *self.lines]), flush=True)


def mb(n: float) -> str:
    return f"{n / MB:.0f} MB"


def save_rows(table: Table, case: tuple, base: list[dict], ours: list[dict]) -> None:
    _, label, _, _, dtype = case
    wall_target = BF16_WALL_TARGET if dtype else WALL_TARGET
    ratio = median(ours, "seconds") / median(base, "seconds")
    cpu = f"{median(ours, 'cpu') / median(base, 'cpu'):.3f}"
    table.row(f"wall: {label}", f"{median(base, 'seconds'):.3f} s", f"{median(ours, 'seconds'):.3f} s",
              f"{ratio:.3f}x", f"<= {wall_target:.1f}x", ratio <= wall_target, noise(base, ours), cpu)
    table.note(f"save_pretrained {[round(r['seconds'], 2) for r in base]} s, hf_notebook "
               f"{[round(r['seconds'], 2) for r in ours]} s; {ours[0]['bytes'] / GB:.3f} GB in {ours[0]['shards']} "
               f"shard(s)" + (f"; {ours[0]['on_disk']} weights on disk" if ours[0]["on_disk"] else "")
               + ("; baseline = model.to(torch.bfloat16) + save_pretrained" if dtype else ""))
    worst = max(r["extra"] for r in ours)
    base_extra = median(base, "extra")
    if dtype:
        share = worst / base_extra
        table.row(f"extra RSS: {label}", mb(base_extra), mb(worst), f"{share:.3f}x", f"<= {BF16_RSS_TARGET:.1f}x",
                  share <= BF16_RSS_TARGET, noise(ours, key="extra") if worst > 4 * MB else None)
        table.note(f"also against {mb(RSS_TARGET)}: {'within' if worst <= RSS_TARGET else 'OVER'}")
    else:
        table.row(f"extra RSS: {label}", mb(base_extra), mb(worst), mb(worst), f"<= {mb(RSS_TARGET)}",
                  worst <= RSS_TARGET)
    table.note(f"worst of {len(ours)}; hf_notebook {[round(r['extra'] / MB) for r in ours]} MB over "
               f"{mb(median(ours, 'before'))} before; save_pretrained {[round(r['extra'] / MB) for r in base]} MB "
               f"over {mb(median(base, 'before'))}, {mb(median(base, 'after') - median(base, 'before'))} still "
               f"held after; hf_notebook's absolute peak RSS, 5 ms samples / VmHWM: "
               f"{', '.join(mb(r['sampled']) + ' / ' + mb(r['hwm']) for r in ours)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per side and case (default 3)")
    parser.add_argument("--only", default="save,push", help="comma-separated subset of: save, push")
    parser.add_argument("--case", default=",".join(c[0] for c in CASES),
                        help=f"comma-separated save cases (default all: {', '.join(c[0] for c in CASES)})")
    parser.add_argument("--quick", action="store_true", help="a smoke test: one process per side and case")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every run as it ends")
    args = parser.parse_args()
    if args.quick:
        args.repeat = 1
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    only = set(args.only.split(","))
    if not only or only - {"save", "push"}:
        parser.error("--only takes save, push or both")
    cases = [c for c in CASES if c[0] in args.case.split(",")]
    if not cases or set(args.case.split(",")) - {c[0] for c in CASES}:
        parser.error(f"--case takes some of: {', '.join(c[0] for c in CASES)}")
    started = time.perf_counter()
    folder = build_llama(ROOT / "build" / "bench" / f"llama-fp32-save-{LAYERS}l")
    tiny = build_tiny(ROOT / "build" / "bench" / "tiny-llama")
    for path in sorted(folder.glob("*.safetensors")):  # warm page cache, as after a first load
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass
    scratch = Path(tempfile.mkdtemp(prefix="hf_notebook-bench-save-"))
    runner = Runner(scratch, args.verbose)
    table, checks, results = Table(), [], {}
    try:
        push_source = scratch / "push-source"
        if "push" in only and ("save" not in only or "cpu" not in {c[0] for c in cases}):  # a folder to push
            runner.run(SAVE_CHILD, dict(case="cpu", which="hf_notebook", folder=str(folder), tiny=str(tiny),
                                        where="cpu", shard="50GB", dtype=None, cpu_budget=CPU_BUDGET,
                                        out=str(push_source), keep=True, scratch=str(scratch)))
        runner.others.clear()
        if "save" in only:
            for case in cases:
                keep = push_source if case[0] == "cpu" and "push" in only else None
                results[case[0]] = save_runs(runner, case, folder, tiny, args.repeat, keep)
                save_rows(table, case, *results[case[0]])
            runs = [r for base, ours in results.values() for r in base + ours]
            problems = [p for r in runs for p in r["problems"]]
            tensors = {r["checked"] for r in runs}
            manifests = sum(1 for base, ours in results.values() for r in ours if r["manifest_files"])
            ok = not problems and all(r["hwm_reset"] for r in runs)
            table.row("every saved copy equal to the model", "-", f"{len(runs)} copies", "OK" if ok else "FAIL",
                      "OK", ok)
            table.note(f"{'/'.join(map(str, sorted(tensors)))} tensors each, read back and torch.equal to the model's "
                       f"(bfloat16: to its conversion); hf_notebook's {manifests} manifests list every file with "
                       f"its size and sha256, all re-hashed" + (f"; {problems[:3]}" if problems else ""))
            checks.append(ok)
        if "push" in only:
            base, ours = push_runs(runner, push_source, tiny, args.repeat)
            base_rate = statistics.median(r["lfs_bytes"] / r["seconds"] / GB for r in base)
            ours_rate = statistics.median(r["lfs_bytes"] / r["seconds"] / GB for r in ours)
            ratio = ours_rate / base_rate
            problems = [p for r in base + ours for p in r["problems"]]
            table.row("push: upload GB/s to the Hub stand-in", f"{base_rate:.3f} GB/s", f"{ours_rate:.3f} GB/s",
                      f"{ratio:.3f}x", f">= {PUSH_TARGET:.1f}x", ratio >= PUSH_TARGET and not problems,
                      noise(base, ours))
            ways = "/".join(sorted({w for r in base + ours for w in r["ways"]}))
            table.note(f"{ours[0]['lfs_bytes'] / GB:.3f} GB in {ours[0]['lfs_files']} large file(s) through {ways}, "
                       f"{ours[0]['committed']} files committed; baseline = HfApi().upload_folder of the same folder; "
                       f"push_folder {[round(r['seconds'], 2) for r in ours]} s, upload_folder "
                       f"{[round(r['seconds'], 2) for r in base]} s; every large file uploaded, read back and equal "
                       f"to the manifest's sha256: {'yes' if not problems else problems[:3]}")
            rehashed = max(r["sha_calls"] for r in ours)
            table.row("push: files re-read to hash them", f"{median(base, 'sha_calls'):.0f} reads",
                      f"{rehashed} reads", f"{max(r['sha_bytes'] for r in ours) / GB:.3f} GB", "0", rehashed == 0)
            table.note(f"calls of huggingface_hub.lfs.sha_fileobj during the push (bytes hashed: upload_folder "
                       f"{median(base, 'sha_bytes') / GB:.3f} GB, push_folder "
                       f"{max(r['sha_bytes'] for r in ours) / GB:.3f} GB)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    threads = {r["threads"] for base, ours in results.values() for r in base + ours}
    threads = f" (torch intra-op threads: {'/'.join(map(str, sorted(threads)))})" if threads else ""
    rate = sha256_rate()
    model_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    print(f"model: {folder} ({model_bytes / GB:.2f} GB float32, {len(list(folder.glob('*.safetensors')))} shards), "
          f"warm page cache, loaded by load_model in each process\n"
          f"wall: median of {args.repeat} fresh processes per side, interleaved{threads}; RSS: VmRSS sampled every "
          f"5 ms and VmHWM reset before the save; baselines measured in the same run\n"
          f"sha256 here: {rate:.2f} GB/s on one core, {model_bytes / GB / rate:.2f} s of CPU for the model's bytes "
          f"(hf_notebook hashes in a second thread while writing: wall parity needs a core free for it)\n")
    table.show()
    print_footer(runner.others, table.misses, started)


if __name__ == "__main__":
    main()
