"""ui/progress.py, ui/text.py, make_renderer: python-side widget tests (no browser)."""

from __future__ import annotations

import io
import threading
from types import SimpleNamespace

import pytest

from hf_notebook.core.api import LoadResult
from hf_notebook.core.errors import LoadError
from hf_notebook.core.events import Failed, FileProgress, Resolved, ShardProgress, StageDone, StageStarted
from hf_notebook.core.hub.fetch import FileFacts
from hf_notebook.core.options import LoadOptions
from hf_notebook.core.devices.plan import Plan
from hf_notebook.ui import make_renderer
from hf_notebook.ui.progress import LoadPanel
from hf_notebook.ui.record import load_record, stopped_record
from hf_notebook.ui.text import TextRenderer

SHA = "0123456789abcdef0123456789abcdef01234567"
MB = 1_000_000
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


class FakeClock:
    def __init__(self, step: float = 0.0):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class Handle:
    """Stands in for IPython's DisplayHandle: records what the live output was replaced by."""

    def __init__(self):
        self.updates = []

    def update(self, obj):
        self.updates.append(obj._repr_mimebundle_())


@pytest.fixture(scope="module")
def placement():
    """A real Placement, measured on a tiny module tree shaped like a causal LM."""
    torch = pytest.importorskip("torch")
    from hf_notebook.core.devices.placement import measure_placement

    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.embed_tokens = torch.nn.Embedding(16, 8)
    model.model.layers = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(2))
    model.lm_head = torch.nn.Linear(8, 16, bias=False)
    model.lm_head.weight = model.model.embed_tokens.weight
    dm = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu", "lm_head": "cpu"}
    return measure_placement(model, dm)


@pytest.fixture(scope="module")
def result(placement):
    pin = Resolved("org/tiny", "main", SHA, "branch")
    plan = Plan(model_class="LlamaForCausalLM", dtype="bfloat16", device_map={"": "cpu"})
    files = (FileFacts("config.json", 700, True), *(FileFacts(n, MB, False) for n in SHARDS))
    return LoadResult(model=None, pin=pin, plan=plan, placement=placement, seconds=0.85,
                      options=LoadOptions.parse(dtype="bfloat16"), files=files, name="model",
                      timings={"resolve": 0.1, "config": 0.0, "plan": 0.0, "fetch": 0.5, "load": 0.25})


def load_events(result, shards: int = 2) -> list:
    events = [
        StageStarted("resolve", "org/tiny@main"),
        Resolved("org/tiny", "main", SHA, "branch"),
        StageDone("resolve", 0.1),
        StageStarted("config"),
        FileProgress("config.json", 700, 700, cached=True),
        StageDone("config", 0.0),
        StageStarted("fetch"),
    ]
    for name in SHARDS:
        events += [FileProgress(name, i * MB // 4, MB) for i in range(5)]
    events += [StageDone("fetch", 0.5), StageStarted("load")]
    for i in range(shards):
        events += [ShardProgress(SHARDS[i], i, shards, t, 4, t * MB // 4, MB) for t in range(1, 5)]
    events += [StageDone("load", 0.25, result)]
    return events


# -- LoadPanel ---------------------------------------------------------------------------
def test_panel_full_load_ends_in_the_static_record(result):
    panel = LoadPanel(clock=FakeClock(step=0.001))
    for event in load_events(result):
        panel(event)

    assert "0123456789ab" in panel.header.value
    assert f"org/tiny@{SHA}" in panel.header.value  # the pinned spelling for a floating branch
    assert panel.files.children == ()  # finished files fold into the download row
    assert panel.download_bar.value == panel.download_bar.max == 2 * MB
    assert "2 files" in panel.download_info.value  # the weights, not the config read while planning
    assert panel.load_bar.value == panel.load_bar.max == 2 and panel.load_bar.bar_style == "success"
    assert "2/2 shards" in panel.load_info.value and "2.00\u00a0MB / 2.00\u00a0MB" in panel.load_info.value
    assert "load ✓" in panel.stages.value

    panel._handle = handle = Handle()
    panel.finish(load_record(result))
    (bundle,) = handle.updates
    assert set(bundle) == {"text/html", "text/plain"}  # no widget view: a saved notebook keeps this
    assert SHA in bundle["text/html"] and "model.layers.0-1" in bundle["text/html"] and "CPU RAM" in bundle["text/html"]
    assert bundle["text/plain"].startswith("✓ model = org/tiny@0123456789ab")
    assert f"%load_model org/tiny@{SHA} --dtype bfloat16 --as model" in bundle["text/plain"]
    assert panel.widget.comm is None and panel.load_bar.comm is None  # the live widgets are closed
    assert repr(panel) == bundle["text/plain"]
    panel(ShardProgress(SHARDS[0], 0, 2, 1, 4, MB // 4, MB))  # a straggler changes nothing
    assert repr(panel) == bundle["text/plain"]


def test_progress_is_monotonic_when_events_overtake_each_other():
    """Loader threads emit from several shards; an older event arriving late must not move a bar back."""
    panel = LoadPanel()
    for t in (1, 3, 2, 4, 3):
        panel(ShardProgress(SHARDS[1], 1, 2, t, 4, t * MB // 4, MB))
    panel(ShardProgress(SHARDS[0], 0, 2, 4, 4, MB, MB))
    assert panel.state.shards[1].tensors_done == 4
    assert [s.index for s in panel.state.shards.values()] == [0, 1]  # listed in shard order
    assert panel.load_bar.value == panel.load_bar.max == 2 and panel.load_bar.bar_style == "success"


def test_panel_failure_is_shown_once_and_escaped(result):
    panel = LoadPanel()
    for event in load_events(result)[:9]:
        panel(event)
    token = "hf_" + "a" * 34
    error = LoadError(f"<script>alert(1)</script> with {token}", hint="retry & see")
    panel(Failed("fetch", error))
    panel._handle = handle = Handle()
    panel.finish(stopped_record(panel.state))
    (bundle,) = handle.updates
    assert bundle["text/plain"].startswith("✗ org/tiny @ main -> 0123456789ab: failed during fetch")
    assert "config.json" in bundle["text/plain"]  # what did complete
    # the reason is not repeated here: the UsageError right below the panel says it
    assert "alert" not in bundle["text/plain"] and "<script>" not in bundle["text/html"]
    assert token not in bundle["text/html"] + bundle["text/plain"] + repr(panel)
    assert "--jp-error-color1" in bundle["text/html"] and "✓" not in bundle["text/plain"]


def test_panel_cancelled(result):
    panel = LoadPanel()
    for event in load_events(result)[:12]:
        panel(event)
    panel(Failed("fetch", KeyboardInterrupt()))
    record = stopped_record(panel.state)
    assert record.text.startswith("■ org/tiny @ main -> 0123456789ab: cancelled during fetch")


def test_panel_rate_limits_progress_but_not_endings():
    clock = FakeClock(step=0.0001)  # 1000 events within 0.1 s of fake time
    panel = LoadPanel(clock=clock, min_interval=0.1)
    start = panel.redraws
    for i in range(1000):
        panel(FileProgress("model.safetensors", i * 1000, 1_000_000))
    assert panel.redraws - start <= 3
    panel(FileProgress("model.safetensors", 999_000, 1_000_000, cached=False))
    assert panel.state.files["model.safetensors"].done == 999_000
    before = panel.redraws
    panel(FileProgress("model.safetensors", 1_000_000, 1_000_000))  # an ending draws at once
    assert panel.redraws == before + 1
    assert panel.files.children == ()  # the finished file's row is folded away at once


def test_panel_redraws_about_ten_times_a_second():
    clock = FakeClock(step=0.002)  # 1000 events over 2 s
    panel = LoadPanel(clock=clock, min_interval=0.1)
    for i in range(1000):
        panel(ShardProgress("s.safetensors", 0, 1, i, 1000, i, 1000))
    assert 15 <= panel.redraws <= 25


def test_panel_is_thread_safe():
    panel = LoadPanel()
    names = [f"model-{i}.safetensors" for i in range(4)]

    def feed(name):
        for i in range(1, 200):
            panel(FileProgress(name, i * 100, 20_000))

    threads = [threading.Thread(target=feed, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    panel(StageStarted("fetch"))  # an ending: draws what the rate limit held back
    assert len(panel.files.children) == 4
    assert all(row.children[1].value == 19_900 for row in panel.files.children)


def test_panel_unknown_size_shows_info_bar():
    panel = LoadPanel()
    panel(StageStarted("fetch"))
    panel(FileProgress("README.md", 300, None))
    bar = panel.files.children[0].children[1]
    assert (bar.bar_style, bar.value, bar.max) == ("info", 1.0, 1.0)
    panel(FileProgress("empty.txt", 0, 0))
    panel(StageDone("fetch", 0.3))  # sizes that never came are done when the stage is
    assert panel.files.children == () and panel.download_bar.bar_style == "success"


def test_panel_header_for_local_folder_and_pinned_sha():
    panel = LoadPanel()
    panel(Resolved("/data/my-model", None, "local", "local"))
    assert "(local folder)" in panel.header.value and "pinned" not in panel.header.value
    assert "→" not in panel.header.value
    panel = LoadPanel()
    panel(Resolved("org/<tiny>", SHA[:7], SHA, "sha"))
    assert "org/&lt;tiny&gt;" in panel.header.value and "pinned" not in panel.header.value


# -- TextRenderer ------------------------------------------------------------------------
def test_text_non_tty_is_short_and_exact(result):
    out = io.StringIO()
    renderer = TextRenderer(out, clock=FakeClock(step=0.001))
    renderer.display()
    for event in load_events(result):
        renderer(event)
    renderer.finish(load_record(result))
    assert out.getvalue().splitlines() == [
        "resolved org/tiny @ main -> 0123456789ab",
        f"pinned: org/tiny@{SHA} (branch main, can move)",
        "resolve done in 0.10 s",
        "  cached config.json (700 B)",
        "config done in 0.00 s",
        "  fetched 2 files (2.00 MB)",  # one line per stage, whatever the number of shards
        "fetch done in 0.50 s",
        "  loaded 2 shards (8 tensors, 2.00 MB)",
        "load done in 0.25 s",
        *load_record(result).text.splitlines(),
    ]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_text_unknown_size_finishes_with_fetch():
    out = io.StringIO()
    renderer = TextRenderer(out)
    renderer(StageStarted("fetch"))
    renderer(FileProgress("README.md", 300, None))
    assert out.getvalue() == ""
    renderer(StageDone("fetch", 1.0))
    assert out.getvalue().splitlines() == ["  fetched README.md (300 B)", "fetch done in 1.00 s"]


def test_text_counts_say_one_tensor_and_many_tensors():
    out = io.StringIO()
    renderer = TextRenderer(out)
    renderer(ShardProgress("model.safetensors", 0, 1, 1, 1, 512, 512))
    renderer(StageDone("load", 0.5))
    assert out.getvalue().splitlines() == ["  loaded 1 shard (1 tensor, 512 B)", "load done in 0.50 s"]
    out = io.StringIO()
    renderer = TextRenderer(out)
    renderer(ShardProgress("model-00001-of-00002.safetensors", 0, 2, 1, 1, 512, 512))
    renderer(ShardProgress("model-00002-of-00002.safetensors", 1, 2, 3, 3, MB, MB))
    renderer(StageDone("load", 0.5))
    assert out.getvalue().splitlines()[0] == "  loaded 2 shards (4 tensors, 1.00 MB)"


def test_records_count_one_file_in_the_singular():
    from hf_notebook.ui.record import export_record, save_record

    one = SimpleNamespace(name="config.json", size=717, sha256="0" * 64)
    saved = SimpleNamespace(name="m", folder="/tmp/m", source=f"org/tiny@{SHA}", dtype="float32", files=[one],
                            nbytes=717, replaced=False, seconds=0.1, manifest_sha256="1" * 64)
    record = save_record(saved)
    assert "  files     1 file, 717 B" in record.text.splitlines() and "1 files" not in record.text
    assert "1 file, 717\u00a0B" in record.html  # and the size on one line
    saved.files, saved.nbytes = [one, one], 1434
    assert "2 files, 1.43 kB" in save_record(saved).text
    exported = SimpleNamespace(repo_id="org/tiny", sha=SHA, folder="/tmp/b", layout="folder", files=["config.json"],
                               nbytes=717, downloaded=[], seconds=0.1)
    assert "1 file, 717 B; all from the cache" in export_record(exported).text


def test_panel_rows_wrap_rather_than_clip():
    """A narrow output: no part of a file row is cut off (overflow hidden) or kept at a fixed share; sizes keep
    their unit on the same line (checked in a browser by tests/browser/test_layouts_lab.py)."""
    panel = LoadPanel(min_interval=0.0)
    panel(StageStarted("fetch"))
    panel(FileProgress("model-00001-of-00002.safetensors", 137, 1000))
    row, name, bar, info = panel._file_rows["model-00001-of-00002.safetensors"]
    assert row.layout.flex_flow == "row wrap"
    for part in (name, bar, info):
        assert part.layout.overflow in (None, "", "visible") and "%" not in (part.layout.flex or "")
    assert "model-00001-of-00002.safetensors" in name.value and "137\u00a0B / 1.00\u00a0kB" in info.value


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_text_tty_updates_one_line_in_place():
    out = _Tty()
    renderer = TextRenderer(out, clock=FakeClock(step=0.0001), min_interval=0.1)
    renderer(StageStarted("fetch"))
    for i in range(100):
        renderer(FileProgress("model.safetensors", i * 10_000, MB))
    renderer(FileProgress("model.safetensors", MB, MB))
    live = out.getvalue()
    assert renderer.redraws <= 3 and "\n" not in live and "\r  download " in live  # the whole download, in place
    renderer(StageDone("fetch", 1.0))
    value = out.getvalue()
    assert value.count("\n") == 2
    assert value.rstrip().splitlines()[-2:] == ["  fetched model.safetensors (1.00 MB)", "fetch done in 1.00 s"]


# -- make_renderer -----------------------------------------------------------------------
class ZMQInteractiveShell:  # named like ipykernel's shell; nothing else needed
    pass


def test_make_renderer_picks_by_shell():
    assert isinstance(make_renderer(object()), TextRenderer)
    assert isinstance(make_renderer(ZMQInteractiveShell()), LoadPanel)
    assert isinstance(make_renderer(SimpleNamespace(kernel=object())), LoadPanel)
    assert isinstance(make_renderer(), TextRenderer)  # plain pytest: no IPython running


def test_make_renderer_mode_forces_a_kind():
    assert isinstance(make_renderer(object(), mode="widget"), LoadPanel)
    assert isinstance(make_renderer(ZMQInteractiveShell(), mode="text"), TextRenderer)
    assert isinstance(make_renderer(ZMQInteractiveShell(), mode="auto", min_interval=0.5), LoadPanel)
    with pytest.raises(ValueError):
        make_renderer(mode="fancy")


def test_the_download_total_is_whole_from_the_first_frame():
    """16 shards, 4 downloading at once, 2 already cached: the total, the count and the bar are the whole fetch's
    from the first byte; a row per running download only; speed and time left once there is a rate."""
    from hf_notebook.core.events import FetchPlanned

    clock = FakeClock(step=0.01)
    panel = LoadPanel(clock=clock, min_interval=0.0)
    names = [f"model-{i:05d}-of-00016.safetensors" for i in range(1, 17)]
    panel(StageStarted("fetch"))
    panel(FileProgress("model.safetensors.index.json", 0, 10_600))  # read first: it names the shards
    assert panel.download_row.layout.display == "none" and len(panel.files.children) == 1  # its own row, no total
    panel(FileProgress("model.safetensors.index.json", 10_600, 10_600))
    panel(FetchPlanned(tuple((n, MB) for n in names), cached=frozenset(names[-2:])))
    assert panel.download_row.layout.display == "flex"
    assert panel.download_bar.max == 14 * MB and panel.download_bar.value == 0
    assert "0/14 files" in panel.download_info.value and "2 cached" in panel.download_info.value
    for name in names[:4]:
        for i in range(1, 60):
            panel(FileProgress(name, i * MB // 100, MB))
    assert len(panel.files.children) == 4
    assert panel.download_bar.max == 14 * MB  # not the 4 files that have started
    text = panel.download_info.value
    assert "0/14 files" in text and "left" in text and "/s" in text
    panel(FileProgress(names[0], MB, MB))
    assert len(panel.files.children) == 3 and "1/14 files" in panel.download_info.value
    for name in names[2:-2] + names[1:2]:
        panel(FileProgress(name, MB, MB))
    panel(StageDone("fetch", 1.0))
    assert panel.download_bar.value == panel.download_bar.max == 14 * MB
    assert "14 files" in panel.download_info.value and panel.files.children == ()
