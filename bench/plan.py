"""Plan benchmark: a warm ``plan_model`` (safetensors headers from the header cache) against a cold one
(every header read by Range requests), on a 70B-shaped checkpoint served by the in-process Hub stand-in.

One table, each warm figure against the cold one measured in the same run, cold and warm runs
interleaved (the header cache is emptied before each cold run; config and index stay cached, as after
any first plan), medians of ``--repeat`` runs after one unmeasured plan (imports). Rows:

- the whole plan, through a server that honours ``Range`` and through one that ignores it (answers
  200 with the whole file, as some mirrors and proxies do);
- the header step alone (``remote_headers``), the same two ways;
- for reference, the plan of the same checkpoint from a local folder.

Target (printed, not asserted): a warm plan < 0.3 s. The stand-in answers on loopback, so every
request here costs well under a millisecond more than on a real network: the cold figures are a
lower bound of what a remote server costs (the issue measured 0.47-0.60 s through one).

    python bench/plan.py [--model llama-70b] [--repeat 7]

Nothing is kept: the checkpoint (header-only shards), the stand-in's store and the HF cache live in
a temporary folder.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import busy_seconds, start_hub

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's hf_notebook, wherever the bench is started from

WARM_TARGET = 0.3  # seconds for a warm plan
BUDGET = {0: "80GiB", "cpu": "100GiB"}
COLS = (("case", 34, "<"), ("cold", 10, ">"), ("warm", 10, ">"), ("warm/cold", 10, ">"),
        ("header GETs", 12, ">"), ("bytes", 16, ">"), ("noise", 7, ">"))


def publish(server, work: Path, model: str) -> tuple[str, Path]:
    """A header-only checkpoint of ``model`` (BIG_CONFIGS) committed into the stand-in: (repo id, its folder)."""
    from hf_notebook.testing.models import BIG_CONFIGS, synthetic_checkpoint

    folder = synthetic_checkpoint(BIG_CONFIGS[model](), work / model)
    repo = f"big/{model}"
    server.store.create_repo(repo)
    server.store.commit(repo, {p.name: p for p in folder.iterdir()}, message="synthetic headers")
    return repo, folder


def header_gets(server, repo: str) -> int:
    return sum(1 for method, path in server.requests
               if method == "GET" and path.startswith(f"/{repo}/resolve/") and path.endswith(".safetensors"))


def timed(server, repo: str, action) -> tuple[float, int, int, object]:
    """(seconds, header GETs, file bytes served, result) of ``action()``, after a gc outside the clock."""
    gc.collect()
    server.reset_counters()
    t0 = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - t0
    return seconds, header_gets(server, repo), server.bytes_served(repo), result


def measure(server, repo: str, action, forget, repeat: int) -> dict:
    """Cold (after ``forget()``) and warm runs of ``action``, interleaved; medians and what they fetched."""
    runs, results = {"cold": [], "warm": []}, []
    for _ in range(repeat):
        forget()
        for kind in ("cold", "warm"):
            seconds, gets, nbytes, result = timed(server, repo, action)
            runs[kind].append((seconds, gets, nbytes))
            results.append(result)
    return {kind: (statistics.median(s for s, _, _ in rows), max(g for _, g, _ in rows), max(b for _, _, b in rows),
                   [s for s, _, _ in rows]) for kind, rows in runs.items()} | {
        "same": all(result == results[0] for result in results)}


def noise(*samples: list[float]) -> str:
    return f"{max((max(s) - min(s)) / statistics.median(s) for s in samples):.0%}"


def row(case: str, m: dict) -> str:
    (cold, cold_gets, cold_bytes, cold_s), (warm, warm_gets, warm_bytes, warm_s) = m["cold"], m["warm"]
    cells = (case, f"{cold * 1000:.0f} ms", f"{warm * 1000:.0f} ms", f"{warm / cold:.2f}x",
             f"{cold_gets} -> {warm_gets}", f"{cold_bytes} -> {warm_bytes}", noise(cold_s, warm_s))
    return " ".join(f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, COLS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama-70b", help="a BIG_CONFIGS shape (default llama-70b)")
    parser.add_argument("--repeat", type=int, default=7, help="cold and warm runs of each row (default 7)")
    args = parser.parse_args()
    started, busy0 = time.perf_counter(), busy_seconds()
    cpu0 = time.process_time()
    with tempfile.TemporaryDirectory(prefix="hf_notebook-bench-plan-") as tmp:
        work = Path(tmp)
        server = start_hub(work)  # before anything imports huggingface_hub
        try:
            lines, context = run(server, work, args.model, args.repeat)
        finally:
            server.stop()
    print(context + "\n")
    head = " ".join(f"{name:{align}{width}}" for name, width, align in COLS).rstrip()
    print("\n".join([head, "-" * len(head), *lines]))
    if busy0 is not None:
        wall = time.perf_counter() - started
        others = max(0.0, busy_seconds() - busy0 - (time.process_time() - cpu0)) / wall
        print(f"\nother processes kept {others:.2f} of {os.cpu_count()} cores busy on average during the bench"
              + ("; times are disturbed" if others > 0.2 else ""))
    print(f"bench took {time.perf_counter() - started:.0f} s")


def run(server, work: Path, model: str, repeat: int) -> tuple[list[str], str]:
    from hf_notebook.core.api import plan_model
    from hf_notebook.core.hub.header_cache import FOLDER
    from hf_notebook.core.hub.headers import remote_headers

    repo, folder = publish(server, work, model)
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    cache = work / "hf-home" / "hub" / ("models--" + repo.replace("/", "--")) / FOLDER

    def forget() -> None:
        shutil.rmtree(cache, ignore_errors=True)  # our own temp HF cache's header entries

    def plan():
        return plan_model(repo, dtype="bfloat16", max_memory=BUDGET)

    first = plan()  # imports, config and index into the cache: paid by neither side
    sha = server.store.resolve(repo, "main")
    lines, warm_plans = [], []
    for label, ignore in (("Range honoured", False), ("Range ignored", True)):
        server.ignore_range = ignore
        m = measure(server, repo, plan, forget, repeat)
        lines.append(row(f"plan_model, {label}", m))
        warm_plans.append(m["warm"][0])
        lines.append(row(f"  headers only, {label}", measure(
            server, repo, lambda: remote_headers(repo, sha, shards), forget, repeat)))
        if not m["same"]:
            lines.append(f"{'':4}(the warm plan differs from the cold one!)")
    server.ignore_range = False
    local = [timed(server, repo, lambda: plan_model(str(folder), dtype="bfloat16", max_memory=BUDGET,
                                                         no_verify=True))[0]
             for _ in range(repeat)]
    lines.append(f"{'plan_model, local folder':<34} {statistics.median(local) * 1000:>10.0f} ms (reference)")
    worst = max(warm_plans)
    lines.append(f"\nwarm plan < {WARM_TARGET} s: {'met' if worst < WARM_TARGET else 'MISSED'} "
                 f"(slowest of the two servers' medians: {worst * 1000:.0f} ms)")
    nbytes = sum((folder / s).stat().st_size for s in shards)
    context = (f"{model}: {len(shards)} header-only shards ({nbytes / 1e6:.1f} MB of headers), "
               f"{first.headers.total_params / 1e9:.1f}B parameters; stand-in on loopback; "
               f"medians of {repeat} cold and {repeat} warm runs, interleaved")
    return lines, context


if __name__ == "__main__":
    main()
