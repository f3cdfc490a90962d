"""Where hf_notebook's load spends time beyond ``from_pretrained`` itself.

Instruments, from the outside (no edit to hf_notebook), the steps hf_notebook adds around
transformers' ``from_pretrained`` and the main steps inside it, in fresh processes on the
``make bench`` checkpoint, and prints each in ms and as a share of ``from_pretrained``'s
wall time.

Four kinds of run:

- cold: as in ``make bench``, not instrumented: ~1,100 lazy imports (transformers' loading
  code, the model's module) happen inside the call, most of its wall time.
- cold-timed: a first load in the process, instrumented. Installing the wrappers imports
  transformers' loading modules first, so what is left is the model's own module import
  and every first-call cost: the first load in a notebook, less the shared import time.
- cold-hf: a first load as in make bench, with only hf_notebook's own steps timed (so
  nothing is imported early): a step that first touches the model's module or
  transformers' config code pays that import, which from_pretrained would pay otherwise.
- warm: a tiny llama is loaded first the same way (``from_pretrained`` or ``load_model``),
  so imports and first-call caches are paid before the clock: a second load in a session.

Steps are shown from cold-hf, cold-timed and warm runs, as ms and as a share of
``from_pretrained``'s wall (cold as in ``make bench``, and warm). Also shown: wall and CPU
time of each kind, the garbage collector's time in the load, and A/B runs (load_model with
the collector paused; with glibc's mmap threshold left alone) that hf_notebook could adopt.

Steps are timed with perf_counter wrappers put on functions by name; a name that is gone
(hf_notebook being refactored) shows as "n/a". Times are nested: a step's time includes the
steps it calls. Steps run in transformers' loader threads (the safe_open wrappers, madvise)
are summed over threads: thread time, not wall time.

    python bench/profile_load.py [--size-gb 1.9] [--repeat 3] [--src DIR] [--cprofile DIR]
    python bench/profile_load.py --cases offload --skip-device-map --merge   # redo one case
    python bench/profile_load.py --report-only                               # reprint the saved runs

Takes about 3 minutes per case and 2 for the device_map check at --repeat 3 on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import load as bench  # noqa: E402  (bench/load.py: the checkpoint and device maps)

# --------------------------------------------------------------------------------------
# child: one load in this fresh process, instrumented; prints one JSON line
# --------------------------------------------------------------------------------------

# (module, attribute or Class.method, label). Functions are replaced in every module that
# imported them by name, so a call through any of those names is timed.
HF_TARGETS = [
    ("hf_notebook.core.api", "_read_config", "read config (AutoConfig)"),
    ("hf_notebook.core.hub.resolve", "resolve", "resolve"),
    ("hf_notebook.core.hub.fetch", "fetch_config", "fetch_config"),
    ("hf_notebook.core.hub.fetch", "fetch_weights", "fetch_weights"),
    ("hf_notebook.core.hub.fetch", "source_files", "source_files"),
    ("hf_notebook.core.devices.plan", "plan_placement", "plan_placement"),
    ("hf_notebook.core.devices.plan", "model_class_for", "model_class_for"),
    ("hf_notebook.core.devices.plan", "build_meta_model", "build_meta_model"),
    ("hf_notebook.core.devices.plan", "_bytes_by_kind", "_bytes_by_kind"),
    ("hf_notebook.core.devices.plan", "_module_bytes", "_module_bytes"),
    ("hf_notebook.core.devices.plan", "_blocks", "_blocks"),
    ("hf_notebook.core.devices.plan", "check_devices_exist", "check_devices_exist"),
    ("hf_notebook.core.weights.load", "materialize", "materialize"),
    ("hf_notebook.core.weights.load", "_shard_counters", "_shard_counters"),
    ("hf_notebook.core.hub.headers", "local_headers", "local_headers"),
    ("hf_notebook.core.api", "_check_offload_space", "_check_offload_space"),
    ("hf_notebook.core.devices.offloaded", "rewrites_weights", "rewrites_weights"),
    ("hf_notebook.core.weights.load", "_fix_mmap_threshold", "pin mmap threshold"),
    ("hf_notebook.core.libc", "pin_mmap_threshold", "pin mmap threshold"),
    ("hf_notebook.core.weights.load", "_dontneed", "madvise"),
    ("hf_notebook.core.libc", "dontneed", "madvise"),
    ("hf_notebook.core.weights.load", "_ObservedHandle.get_slice", "wrapped get_slice"),
    ("hf_notebook.core.weights.load", "_LazyTensor.__getitem__", "wrapped getitem"),
    ("hf_notebook.core.weights.load", "_ShardCounter.add", "counter.add"),
    ("hf_notebook.core.weights.load", "_PageReleaser.read", "releaser.read"),
    ("hf_notebook.core.weights.load", "_PageReleaser.finish", "releaser.finish"),
    ("hf_notebook.core.devices.placement", "measure_placement", "measure_placement"),
    ("hf_notebook.core.api", "_summary_map", "_summary_map"),
]
TF_TARGETS = [
    ("transformers.models.auto.configuration_auto", "AutoConfig.from_pretrained", "AutoConfig.from_pretrained"),
    ("transformers.modeling_utils", "PreTrainedModel.from_pretrained", "from_pretrained"),
    ("transformers.modeling_utils", "_get_resolved_checkpoint_files", "resolve checkpoint files"),
    ("transformers.modeling_utils", "_get_dtype", "_get_dtype"),
    ("transformers.integrations.accelerate", "_get_device_map", "_get_device_map"),
    ("transformers.integrations.accelerate", "compute_module_sizes", "compute_module_sizes"),
    ("transformers.integrations.accelerate", "get_max_memory", "get_max_memory"),
    ("transformers.modeling_utils", "PreTrainedModel._load_pretrained_model", "_load_pretrained_model"),
    ("transformers.modeling_utils", "caching_allocator_warmup", "caching_allocator_warmup"),
    ("transformers.integrations.accelerate", "accelerate_disk_offload", "accelerate_disk_offload"),
    ("transformers.core_model_loading", "convert_and_load_state_dict_in_model", "convert_and_load"),
    ("transformers.modeling_utils", "PreTrainedModel._finalize_model_loading", "_finalize_model_loading"),
    ("transformers.generation.utils", "GenerationMixin.adjust_generation_fn", "generation config"),
    ("transformers.integrations.accelerate", "accelerate_dispatch", "accelerate_dispatch"),
]


def child_main(argv: list[str]) -> None:
    import contextlib
    import importlib
    import io
    import resource
    import shutil
    import threading
    from collections import defaultdict

    spec = json.loads(argv[0])
    which, mode, folder, dtype, device_map = (spec[k] for k in ("which", "mode", "folder", "dtype", "device_map"))

    import torch
    import transformers  # noqa: F401  (imported before the clock, as from_pretrained needs it)
    from transformers import AutoModelForCausalLM

    import hf_notebook.core.api as api

    def hf_load(path, dtype, device_map, offload_folder, on_event):
        # The one call into hf_notebook: if load_model's signature changes, adapt it here.
        return api.load_model(path, dtype=dtype, device_map=device_map, offload_folder=offload_folder,
                              on_event=on_event, no_verify=True)  # save_pretrained's folder: no manifest

    def load(path, offload_folder, on_event=None, dm=device_map):
        if which == "from_pretrained":
            return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), device_map=dm,
                                                        offload_folder=offload_folder), None
        result = hf_load(path, dtype, dm, offload_folder, on_event)
        return result.model, result

    if spec.get("no_pin"):  # A/B: leave glibc's mmap threshold alone (before any load pins it)
        import hf_notebook.core.weights.load  # noqa: F401  (imported so its module can be looked up below)
        for modname in ("hf_notebook.core.libc", "hf_notebook.core.weights.load"):
            mod = sys.modules.get(modname)
            for attr in ("pin_mmap_threshold", "_fix_mmap_threshold"):
                if mod is not None and hasattr(mod, attr):
                    setattr(mod, attr, lambda: None)

    if mode == "warm":  # pay imports and first-call caches on a tiny model of the same kind
        with tempfile.TemporaryDirectory() as tmp:
            load(spec["tiny"], tmp, None, spec.get("tiny_map") or "cpu")
        import gc
        gc.collect()

    # -- instrumentation ------------------------------------------------------------
    totals, counts = defaultdict(float), defaultdict(int)
    local = threading.local()

    @contextlib.contextmanager
    def span(label):
        stack = getattr(local, "stack", None)
        if stack is None:
            stack = local.stack = []
        path = "/".join(stack + [label])
        stack.append(label)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            totals[path] += time.perf_counter() - t0
            counts[path] += 1
            stack.pop()

    def timed(func, label):
        def wrapper(*args, **kwargs):
            with span(label):
                return func(*args, **kwargs)
        wrapper.__wrapped__ = func
        wrapper.__name__ = getattr(func, "__name__", label)
        return wrapper

    found, missing = [], []

    def patch(modname, attr, label):
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            missing.append(f"{modname}:{attr}")
            return
        if "." in attr:
            cls_name, meth = attr.split(".")
            cls = getattr(mod, cls_name, None)
            raw = cls.__dict__.get(meth) if cls is not None else None
            if raw is None:
                missing.append(f"{modname}:{attr}")
                return
            if isinstance(raw, classmethod):
                setattr(cls, meth, classmethod(timed(raw.__func__, label)))
            elif isinstance(raw, staticmethod):
                setattr(cls, meth, staticmethod(timed(raw.__func__, label)))
            else:
                setattr(cls, meth, timed(raw, label))
            found.append(label)
            return
        original = getattr(mod, attr, None)
        if original is None:
            missing.append(f"{modname}:{attr}")
            return
        wrapped = timed(original, label)
        for name, module in list(sys.modules.items()):
            if module is None or not name.startswith(("hf_notebook", "transformers")):
                continue
            for key, value in list(vars(module).items()):
                if value is original:
                    setattr(module, key, wrapped)
        found.append(label)

    # "cold" stays as make bench runs it; "cold-hf" times hf_notebook's steps only (importing
    # nothing of transformers early); "cold-timed" and "warm" time transformers' steps too.
    instrument = mode in ("cold-timed", "warm")
    if which != "from_pretrained" and mode != "cold":
        importlib.import_module("hf_notebook.core.weights.load")
        importlib.import_module("hf_notebook.core.devices.placement")
        for target in HF_TARGETS:
            patch(*target)
    for target in TF_TARGETS if instrument else ():
        patch(*target)

    # (g) the meta-model build: a span around transformers' init contexts, outermost.
    if instrument:
        from transformers.modeling_utils import PreTrainedModel
        raw_init_context = PreTrainedModel.__dict__["get_init_context"].__func__

        def get_init_context(cls, *args, **kwargs):
            return [span("meta-model build")] + list(raw_init_context(cls, *args, **kwargs))
        PreTrainedModel.get_init_context = classmethod(get_init_context)

    # Raw safetensors reads, timed under whatever wraps them (hf_notebook's wrappers or none).

    class RawSlice:
        __slots__ = ("_s",)

        def __init__(self, s):
            self._s = s

        def __getitem__(self, index):
            with span("raw getitem"):
                return self._s[index]

        def __getattr__(self, name):
            return getattr(self._s, name)

    class RawHandle:
        def __init__(self, h):
            self._h = h

        def get_slice(self, key):
            with span("raw get_slice"):
                s = self._h.get_slice(key)
            return RawSlice(s)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._h.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self._h, name)

    if instrument and spec.get("raw_proxies", True):
        from transformers import modeling_utils
        raw_safe_open = modeling_utils.safe_open
        modeling_utils.safe_open = lambda *a, **k: RawHandle(raw_safe_open(*a, **k))

    on_event, sink = None, None
    if spec.get("renderer"):
        from hf_notebook.ui.text import TextRenderer
        sink = io.StringIO()
        renderer = TextRenderer(sink)
        on_event = timed(renderer, "renderer")

    profiler = None
    if spec.get("cprofile"):
        import cProfile
        profiler = cProfile.Profile()

    import gc
    gc_time, gc_start = [0.0, 0], [0.0]

    def on_gc(phase, info):
        if phase == "start":
            gc_start[0] = time.perf_counter()
        else:
            gc_time[0] += time.perf_counter() - gc_start[0]
            gc_time[1] += 1

    offload = tempfile.mkdtemp(prefix="bench-offload-")
    if spec.get("no_gc"):  # A/B: what load_model would gain by pausing the garbage collector
        gc.disable()
    gc.callbacks.append(on_gc)
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    if profiler:
        profiler.enable()
    t0 = time.perf_counter()
    with span("total"):
        model, result = load(folder, offload, on_event)
    wall = time.perf_counter() - t0
    if profiler:
        profiler.disable()
        profiler.dump_stats(spec["cprofile"])
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    gc.callbacks.remove(on_gc)
    gc.enable()
    shutil.rmtree(offload, ignore_errors=True)
    out = {"wall": wall, "gc": gc_time[0], "gc_runs": gc_time[1],
           "spans": {k: [totals[k], counts[k]] for k in totals}, "missing": missing, "found": found,
           "minflt": usage1.ru_minflt - usage0.ru_minflt, "majflt": usage1.ru_majflt - usage0.ru_majflt,
           "cpu": (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime),
           "stages": dict(getattr(result, "timings", {}) or {}) if result is not None else {},
           "events_lines": sink.getvalue().count("\n") if sink is not None else 0}
    print(json.dumps(out))


# --------------------------------------------------------------------------------------
# parent: runs the children, takes medians, prints the report
# --------------------------------------------------------------------------------------

class Parent:
    def __init__(self, args):
        self.args = args
        self.runner = bench.Runner(args.src.resolve())
        self.cprofile = args.cprofile

    def child(self, **spec) -> dict:
        code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import profile_load; "
                "profile_load.child_main(sys.argv[1:])")
        return self.runner.run(code, json.dumps(spec))

    def runs(self, specs: dict[str, dict], repeat: int) -> dict[str, list[dict]]:
        """Each spec ``repeat`` times, round-robin (rotating the order) against drift."""
        out = {name: [] for name in specs}
        names = list(specs)
        for i in range(repeat):
            order = names[i % len(names):] + names[:i % len(names)]
            for name in order:
                out[name].append(self.child(**specs[name]))
        return out


def med(runs: list[dict], path_match=None, key=None) -> float:
    """Median over runs of a span total (summed over paths ``path_match`` accepts), or of ``key``."""
    values = []
    for r in runs:
        if key is not None:
            values.append(r[key])
        else:
            values.append(sum(t for p, (t, _) in r["spans"].items() if path_match(p.split("/"))))
    return statistics.median(values)


def has(runs, path_match) -> bool:
    """Some run timed it, or it was wrapped but never called (then it counts as 0)."""
    return any(path_match(p.split("/")) for r in runs for p in r["spans"]) or any(
        path_match(["total", label]) or path_match([label]) for r in runs for label in r.get("found", []))


def leaf(label, inside=None, outside=None, top=False):
    """Match spans whose last element is ``label`` (optionally under ``inside``, not under ``outside``)."""
    def match(parts):
        if parts[-1] != label:
            return False
        if top and len(parts) != 2:  # directly under "total"
            return False
        if inside is not None and inside not in parts[:-1]:
            return False
        if outside is not None and outside in parts[:-1]:
            return False
        return True
    return match


def under(label, parent_label):
    """Spans ``.../parent_label/label`` (the direct child)."""
    return lambda parts: len(parts) >= 2 and parts[-1] == label and parts[-2] == parent_label


def report_case(title: str, runs: dict) -> None:
    """One case: wall and CPU totals, then each step in a first load (cold, cold-timed) and a second (warm)."""
    ch_ours = runs.get("coldhf_ours") or runs["coldt_ours"]
    ct_base, ct_ours, w_base, w_ours = runs["coldt_base"], runs["coldt_ours"], runs["warm_base"], runs["warm_ours"]
    fp_cold = med(runs["cold_base"], key="wall")
    fp_warm = med(w_base, leaf("total"))  # the timed call

    def one(v, denom):
        return f"{'n/a':>7} {'':>6}" if v is None else f"{v * 1000:7.1f} {v / denom * 100:5.1f}%"

    def cells(ch, ct, w):
        return f"{one(ch, fp_cold)}  {one(ct, fp_cold)}  {one(w, fp_warm)}"

    def value(rs, match):
        return med(rs, match) if has(rs, match) else None

    def item(label, match, note=""):
        vals = [value(rs, match) for rs in (ch_ours, ct_ours, w_ours)]
        print(f"  {label:52} {cells(*vals)}  {note}".rstrip())

    def line(label, ch, ct, w, note=""):
        print(f"  {label:52} {cells(ch, ct, w)}  {note}".rstrip())

    def per_run(rs, fn):
        return statistics.median(fn({p: t for p, (t, _) in r["spans"].items()}) for r in rs)

    print(f"\n== {title} ==")
    print(f"  {'medians, ms':30} {'cold (make bench)':>22} {'cold-timed':>22} {'warm':>22}")
    print(f"  {'':30} {'wall':>10} {'cpu':>11} {'wall':>10} {'cpu':>11} {'wall':>10} {'cpu':>11}")
    for name, kinds in (("from_pretrained alone", ("cold_base", "coldt_base", "warm_base")),
                        ("hf_notebook load_model", ("cold_ours", "coldt_ours", "warm_ours"))):
        cells_ = "".join(f" {med(runs[k], key='wall') * 1000:10.1f} {med(runs[k], key='cpu') * 1000:11.1f}"
                         for k in kinds)
        print(f"  {name:30}{cells_}")
    ratio = "".join(f" {med(runs[o], key='wall') / med(runs[b], key='wall'):9.3f}x "
                    f"{med(runs[o], key='cpu') / med(runs[b], key='cpu'):10.3f}x"
                    for b, o in (("cold_base", "cold_ours"), ("coldt_base", "coldt_ours"), ("warm_base", "warm_ours")))
    print(f"  {'ratio':30}{ratio}")
    if "gc" in runs["cold_base"][0]:
        gcs = "".join(f" {med(runs[k], key='gc') * 1000:10.1f} {med(runs[k], key='gc_runs'):11.0f}"
                      for k in ("cold_base", "coldt_base", "warm_base"))
        print(f"  {'garbage collection, alone':30}{gcs}   (ms, collections)")
        gco = "".join(f" {med(runs[k], key='gc') * 1000:10.1f} {med(runs[k], key='gc_runs'):11.0f}"
                      for k in ("cold_ours", "coldt_ours", "warm_ours"))
        print(f"  {'garbage collection, ours':30}{gco}")
    if runs.get("cold_ours_nogc"):
        v, c = med(runs["cold_ours_nogc"], key="wall"), med(runs["cold_ours_nogc"], key="cpu")
        print(f"  {'A/B: load_model, gc paused':30} {v * 1000:10.1f} {c * 1000:11.1f}   = "
              f"{v / fp_cold:.3f}x from_pretrained's cold wall ({v / med(runs['cold_ours'], key='wall') - 1:+.1%} "
              f"vs load_model as is)")
    print(f"\n  {'hf_notebook steps (medians)':52} {'cold':>14}  {'cold-timed':>14}  {'warm':>14}")
    print(f"  {'':52} {'ms':>7} {'%cold':>6}  {'ms':>7} {'%cold':>6}  {'ms':>7} {'%warm':>6}")
    line("load_model, total", *(med(rs, leaf("total")) for rs in (ch_ours, ct_ours, w_ours)))

    def fp_inside(spans):
        fp = [t for p, t in spans.items() if p.split("/")[-1] == "from_pretrained"]
        if fp:
            return sum(fp)
        # cold: from_pretrained itself is not wrapped; it is materialize less hf_notebook's steps in it
        own = ("_shard_counters", "pin mmap threshold", "model_class_for", "releaser.finish")
        return (sum(t for p, t in spans.items() if p == "total/materialize")
                - sum(t for p, t in spans.items() if p.startswith("total/materialize/") and p.count("/") == 2
                      and p.split("/")[-1] in own))
    line("  from_pretrained inside it", *(per_run(rs, fp_inside) for rs in (ch_ours, ct_ours, w_ours)))
    line("  hf_notebook's own time (total - from_pretrained)",
         *(per_run(rs, lambda sp: sp.get("total", 0.0) - fp_inside(sp)) for rs in (ch_ours, ct_ours, w_ours)),
         "per-run differences")

    def shared(sp):  # steps that, cold, pay imports / first-call caches from_pretrained would pay anyway
        return sum(t for p, t in sp.items() if p in ("total/read config (AutoConfig)",
                                                      "total/plan_placement/model_class_for")
                   or p.endswith("/rewrites_weights"))
    line("    of it, less the steps carrying shared first-call costs",
         *(per_run(rs, lambda sp: sp.get("total", 0.0) - fp_inside(sp) - shared(sp))
           for rs in (ch_ours, ct_ours, w_ours)), "config read, model_class_for, rewrites_weights")
    for stage in w_ours[0]["stages"]:
        vals = [statistics.median(r["stages"].get(stage, 0.0) for r in rs) for rs in (ch_ours, ct_ours, w_ours)]
        line(f"  stage {stage!r} (load_model's own timing)", *vals,
             "includes from_pretrained" if stage == "load" else "")
    print("  (a) plan")
    item("  plan_placement", leaf("plan_placement", outside="from_pretrained"))
    item("    model_class_for", under("model_class_for", "plan_placement"),
         "cold: imports the model's module (from_pretrained would)")
    item("    build_meta_model", under("build_meta_model", "plan_placement"))
    item("      of which cls(config) under get_init_context", leaf("meta-model build", inside="build_meta_model"))
    item("    _get_device_map", under("_get_device_map", "plan_placement"))
    item("    get_max_memory", under("get_max_memory", "plan_placement"))
    item("    compute_module_sizes (direct call)", under("compute_module_sizes", "plan_placement"))
    item("    _bytes_by_kind / _module_bytes",
         lambda p: p[-1] in ("_bytes_by_kind", "_module_bytes") and "plan_placement" in p)
    item("    _blocks", under("_blocks", "plan_placement"))
    item("  check_devices_exist", leaf("check_devices_exist"))
    print("  (b) config / resolve")
    item("  resolve", leaf("resolve"))
    item("  read config (AutoConfig.from_pretrained)", leaf("read config (AutoConfig)"),
         "cold: imports transformers' config code (from_pretrained would)")
    item("  fetch_config / source_files / fetch_weights",
         lambda p: p[-1] in ("fetch_config", "source_files", "fetch_weights"))
    print("  (c) shard headers and counters")
    item("  local_headers (reads every shard's header)", leaf("local_headers", outside="_shard_counters"))
    item("  _shard_counters (counters, announce)", leaf("_shard_counters"))
    item("    of which local_headers", leaf("local_headers", inside="_shard_counters"))
    print("  (c') offload folder check")
    item("  _check_offload_space", leaf("_check_offload_space"))
    item("    of which rewrites_weights (transformers' conversion mapping)", leaf("rewrites_weights"),
         "first call builds transformers' mapping, which from_pretrained then reuses")
    print("  (d) placement after load")
    item("  measure_placement", leaf("measure_placement"))
    item("  _summary_map", leaf("_summary_map"))
    print("  (e) safe_open wrapping / progress (summed over loader threads)")

    def overhead(rs, outer, inner_labels):
        if not has(rs, leaf(outer)):
            return None
        if not any(leaf(x, inside=outer)(p.split("/")) for r in rs for p in r["spans"] for x in inner_labels[:1]):
            return None  # the raw reads were not timed in these runs
        return per_run(rs, lambda sp: sum(t for p, t in sp.items() if leaf(outer)(p.split("/")))
                       - sum(t for p, t in sp.items() for x in inner_labels if leaf(x, inside=outer)(p.split("/"))))
    line("  wrapped get_slice, minus the raw read",
         *(overhead(rs, "wrapped get_slice", ["raw get_slice"]) for rs in (ch_ours, ct_ours, w_ours)))
    line("  wrapped getitem, minus the raw read and madvise",
         *(overhead(rs, "wrapped getitem", ["raw getitem", "madvise"]) for rs in (ch_ours, ct_ours, w_ours)))
    item("    of which counter.add (event built; on_event=None)", leaf("counter.add"))
    item("  pin mmap threshold (mallopt)", leaf("pin mmap threshold"))
    text = runs.get("text_ours")
    if text:
        r_w, t_w = med(text, leaf("renderer")), med(text, leaf("total"))
        line("  time inside a TextRenderer (warm runs)", None, None, r_w,
             f"= {r_w / t_w * 100:.2f}% of that load; its cpu {med(text, key='cpu') / med(w_ours, key='cpu') - 1:+.1%} "
             f"vs on_event=None")
    print("  (f) page release")
    item("  madvise(MADV_DONTNEED), all calls", leaf("madvise"))
    item("  releaser.read + finish (incl. madvise)", lambda p: p[-1] in ("releaser.read", "releaser.finish"))

    def after(sp):
        return (sum(t for p, t in sp.items() if p.split("/")[-1] == "_load_pretrained_model")
                - sum(t for p, t in sp.items() if p.split("/")[-1] == "convert_and_load"))
    line("  _load_pretrained_model after convert_and_load, alone", None, per_run(ct_base, after),
         per_run(w_base, after), "closing the shards (munmap)")
    line("  _load_pretrained_model after convert_and_load, ours", None, per_run(ct_ours, after), per_run(w_ours, after),
         "pages already released")
    no_pin = runs.get("no_pin_ours")
    if no_pin:
        line("  A/B: glibc mmap threshold NOT pinned: load_model", None, None, med(no_pin, leaf("total")),
             f"cpu {med(no_pin, key='cpu') / med(w_ours, key='cpu') - 1:+.1%} vs pinned")
    print(f"  minor page faults (warm): from_pretrained {med(w_base, key='minflt'):.0f}, "
          f"load_model {med(w_ours, key='minflt'):.0f}")
    print("  (g) transformers' steps inside from_pretrained")
    print(f"  {'':52} {'alone: cold-timed':>17} {'warm':>14}  | inside load_model: cold-timed / warm (ms)")
    for label in ("meta-model build", "AutoConfig.from_pretrained", "resolve checkpoint files", "_get_dtype",
                  "_get_device_map", "_load_pretrained_model", "caching_allocator_warmup", "accelerate_disk_offload",
                  "convert_and_load", "_finalize_model_loading", "generation config", "accelerate_dispatch"):
        b = leaf(label, inside="total" if label == "AutoConfig.from_pretrained" else "from_pretrained")
        o = leaf(label, inside="from_pretrained")
        if not (has(w_base, b) or has(w_ours, o)):
            continue
        bc, bw = value(ct_base, b), value(w_base, b)
        oc, ow = value(ct_ours, o), value(w_ours, o)
        ours_txt = "-" if ow is None else f"{(oc or 0) * 1000:.1f} / {ow * 1000:.1f}"
        print(f"  {label:52} {one(bc, fp_cold):>17}  {one(bw, fp_warm)}  | {ours_txt}")
    missing = sorted({m for r in w_ours for m in r["missing"]})
    if missing:
        print(f"  (names not found, so not timed: {', '.join(missing)})")


def collect(args, folder: Path) -> dict:
    """Run every kind of child ``args.repeat`` times; the raw runs, by case."""
    tiny = bench.build_tiny(folder.parent / "tiny-llama")
    bench.warm_page_cache(folder)
    parent = Parent(args)
    maps = bench.device_maps(folder)
    data = {"folder": str(folder), "src": str(parent.runner.src), "repeat": args.repeat, "cases": {},
            "device_map": {}, "n_map": len(maps["offload"])}
    cases = {"float32": ("float32", "cpu", "cpu"), "bfloat16": ("bfloat16", "cpu", "cpu"),
             "offload": ("float32", maps["offload"], bench.device_maps(tiny)["offload"])}
    for case in args.cases.split(","):
        dtype, device_map, tiny_map = cases[case]
        common = dict(folder=str(folder), dtype=dtype, device_map=device_map, tiny=str(tiny), tiny_map=tiny_map)
        specs = {
            "cold_base": dict(common, which="from_pretrained", mode="cold"),
            "cold_ours": dict(common, which="hf_notebook", mode="cold"),
            "coldt_base": dict(common, which="from_pretrained", mode="cold-timed"),
            "coldt_ours": dict(common, which="hf_notebook", mode="cold-timed"),
            "coldhf_ours": dict(common, which="hf_notebook", mode="cold-hf"),
            "cold_ours_nogc": dict(common, which="hf_notebook", mode="cold", no_gc=True),
            "warm_base": dict(common, which="from_pretrained", mode="warm"),
            "warm_ours": dict(common, which="hf_notebook", mode="warm"),
            "text_ours": dict(common, which="hf_notebook", mode="warm", renderer=True),
        }
        if dtype == "bfloat16":
            specs["no_pin_ours"] = dict(common, which="hf_notebook", mode="warm", no_pin=True)
        parent.child(**specs["cold_base"])  # settle caches
        data["cases"][case] = parent.runs(specs, args.repeat)
        if args.cprofile:
            args.cprofile.mkdir(parents=True, exist_ok=True)
            out = args.cprofile / f"load_model-{case}-warm.pstats"
            parent.child(**dict(specs["warm_ours"], cprofile=str(out.resolve()), raw_proxies=False))
            print(f"(cProfile of a warm load_model, {case}, written to {out})")
    if not args.skip_device_map:
        full = {k: "cpu" for k in maps["offload"]}
        for dtype in [d for d in ("float32", "bfloat16") if d in args.cases.split(",")]:
            specs = {}
            for name, dm in (("'cpu'", "cpu"), ("{'': 'cpu'}", {"": "cpu"}), ("full dict", full)):
                common = dict(folder=str(folder), dtype=dtype, device_map=dm, tiny=str(tiny), which="from_pretrained")
                specs[name + " warm"] = dict(common, mode="warm")
                specs[name + " cold"] = dict(common, mode="cold-timed")
            data["device_map"][dtype] = parent.runs(specs, args.repeat)
    return data


def report(data: dict) -> None:
    print(f"checkpoint {data['folder']}; hf_notebook from {data['src']}; medians of {data['repeat']} "
          f"fresh processes per kind of run. Columns: ms, % of from_pretrained's wall cold (as in make bench), "
          f"% of it warm (modules imported first)")
    titles = {"float32": "cpu, float32 (no conversion)", "bfloat16": "cpu, float32 -> bfloat16",
              "offload": f"cpu + disk ({bench.DISK_LAYERS} layers), float32"}
    for case, runs in data["cases"].items():
        report_case(titles.get(case, case), runs)
    if data["device_map"]:
        print(f"\n== device_map given to from_pretrained: 'cpu' vs {{'': 'cpu'}} vs a full dict "
              f"({data['n_map']} entries, all cpu) ==")
        print(f"  {'device_map':14} {'dtype':9} {'warm ms':>8} {'coldt ms':>8}  {'_get_device_map':>15} "
              f"{'caching_warmup':>15} {'convert_and_load':>17}")
        for dtype, runs in data["device_map"].items():
            for name in ("'cpu'", "{'': 'cpu'}", "full dict"):
                w, c = runs[name + " warm"], runs[name + " cold"]
                parts = [med(w, leaf(x, inside="from_pretrained")) * 1000
                         for x in ("_get_device_map", "caching_allocator_warmup", "convert_and_load")]
                print(f"  {name:14} {dtype:9} {med(w, leaf('total')) * 1000:8.1f} {med(c, leaf('total')) * 1000:8.1f}  "
                      f"{parts[0]:15.2f} {parts[1]:15.2f} {parts[2]:17.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.9)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--src", type=Path, default=ROOT, help="folder holding the hf_notebook package to profile")
    parser.add_argument("--cases", default="float32,bfloat16,offload",
                        help="comma-separated subset of float32, bfloat16 (both device_map cpu), offload")
    parser.add_argument("--skip-device-map", action="store_true", help="skip the device_map dict-vs-'cpu' check")
    parser.add_argument("--cprofile", type=Path, default=None,
                        help="also write a cProfile of one warm hf_notebook load per case into this folder")
    parser.add_argument("--runs-file", type=Path, default=ROOT / "build" / "bench" / "profile-runs.json",
                        help="where the raw runs are saved (and read from with --report-only)")
    parser.add_argument("--report-only", action="store_true", help="print the report of the saved runs")
    parser.add_argument("--merge", action="store_true",
                        help="keep the saved runs of cases not redone this time (with --cases)")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.report_only:
        data = json.loads(args.runs_file.read_text())
    else:
        folder = args.folder or ROOT / "build" / "bench" / f"llama-fp32-{args.size_gb:g}gb"
        bench.build_checkpoint(folder, args.size_gb)
        data = collect(args, folder)
        if args.merge and args.runs_file.exists():  # keep the saved cases this run did not redo
            saved = json.loads(args.runs_file.read_text())
            data["cases"] = {**saved.get("cases", {}), **data["cases"]}
            data["device_map"] = {**saved.get("device_map", {}), **data["device_map"]}
        args.runs_file.parent.mkdir(parents=True, exist_ok=True)
        args.runs_file.write_text(json.dumps(data))
    report(data)
    print(f"\nprofile took {time.perf_counter() - started:.0f} s (raw runs: {args.runs_file})")


if __name__ == "__main__":
    main()
