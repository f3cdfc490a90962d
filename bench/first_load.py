"""The first load in a fresh kernel: what the user waits for, with and without the background import warm-up.

Each run is a fresh process holding an IPython shell. ``cold``: ``%load_ext`` then ``%load_model`` at once,
so the load's ``import`` stage pays for torch, transformers and accelerate. ``warmed``: the shell looks like a
Jupyter kernel, so ``%load_ext`` starts those imports in the background; the run then waits as a user reading
and typing would (until they are done) before the same ``%load_model``. The figure is the ``%load_model``
cell's wall time; medians of ``--repeat`` runs of each, interleaved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_tiny  # noqa: E402

CHILD = """
import json, sys, threading, time
from IPython.core.interactiveshell import InteractiveShell
import io
sh = InteractiveShell.instance()
if sys.argv[2] == "warmed":
    sh.kernel = object()  # what ipykernel's shell has
t0 = time.perf_counter()
sh.run_line_magic("load_ext", "hf_notebook")
load_ext = time.perf_counter() - t0
for t in threading.enumerate():
    if t.name == "hf_notebook-warm-imports":
        t.join()  # the user reads and types meanwhile
from hf_notebook import ui
from hf_notebook.ui.text import TextRenderer
ui.make_renderer = lambda *a, **k: TextRenderer(io.StringIO())
t0 = time.perf_counter()
sh.run_line_magic("load_model", f"{sys.argv[1]} --no-verify --as m")
print(json.dumps({"load_ext": load_ext, "load": time.perf_counter() - t0}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="hf_notebook-bench-first-"))
    folder = build_tiny(work / "tiny")
    runs: dict[str, list[dict]] = {"cold": [], "warmed": []}
    for _ in range(args.repeat):
        for kind in runs:
            out = subprocess.run([sys.executable, "-c", CHILD, str(folder), kind], capture_output=True, text=True,
                                 check=True, cwd=work)
            runs[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    cold = statistics.median(r["load"] for r in runs["cold"])
    warmed = statistics.median(r["load"] for r in runs["warmed"])
    ext = max(r["load_ext"] for rs in runs.values() for r in rs)
    print("| first %load_model in a fresh kernel | cold (imports in the load) | warmed up after %load_ext | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| tiny llama, median of {args.repeat} | {cold:.2f} s | {warmed:.2f} s | {warmed / cold:.2f}x |")
    print(f"\n%load_ext took at most {ext * 1000:.0f} ms in every run (the warm-up runs after it returns); "
          f"bench took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
