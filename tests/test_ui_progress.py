"""ui/progress.py, ui/text.py, make_renderer: python-side widget tests (no browser)."""

from __future__ import annotations

import io
import threading
from types import SimpleNamespace

import pytest

from hf_notebook.core.errors import LoadError
from hf_notebook.core.events import (
    Failed,
    FileProgress,
    Message,
    Resolved,
    ShardProgress,
    StageDone,
    StageStarted,
)
from hf_notebook.ui import make_renderer
from hf_notebook.ui.progress import LoadPanel
from hf_notebook.ui.text import TextRenderer

SHA = "0123456789abcdef0123456789abcdef01234567"
MB = 1_000_000


class FakeClock:
    def __init__(self, step: float = 0.0):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture(scope="module")
def placement():
    """A real Placement, measured on a tiny module tree shaped like a causal LM."""
    torch = pytest.importorskip("torch")
    from hf_notebook.core.placement import measure_placement

    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.embed_tokens = torch.nn.Embedding(16, 8)
    model.model.layers = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(2))
    model.lm_head = torch.nn.Linear(8, 16, bias=False)
    model.lm_head.weight = model.model.embed_tokens.weight
    dm = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu", "lm_head": "cpu"}
    return measure_placement(model, dm)


def load_events(placement, shards: int = 2) -> list:
    result = SimpleNamespace(
        placement=placement, sha=SHA, repo_id="org/tiny", dtype="bfloat16",
        device_map={}, seconds=0.25, name="model",
    )
    events = [
        StageStarted("resolve", "org/tiny@main"),
        Resolved("org/tiny", "main", SHA, "branch"),
        StageDone("resolve", 0.1),
        StageStarted("fetch", "3 files"),
        FileProgress("config.json", 700, 700, cached=True),
    ]
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        events += [FileProgress(name, i * MB // 4, MB) for i in range(5)]
    events += [StageDone("fetch", 0.5), StageStarted("load")]
    for i in range(shards):
        name = f"model-0000{i + 1}-of-0000{shards}.safetensors"
        events += [ShardProgress(name, i, shards, t, 4, t * MB // 4, MB) for t in range(1, 5)]
    events += [Message("some weights were not used: <x>", "warning"), StageDone("load", 0.25, result)]
    return events


# -- LoadPanel ---------------------------------------------------------------------------
def test_panel_full_load(placement):
    panel = LoadPanel(clock=FakeClock(step=0.001))
    for event in load_events(placement):
        panel(event)
    panel.close()

    assert "0123456789ab" in panel.header.value
    assert f"org/tiny@{SHA}" in panel.header.value  # the pinned spelling for a floating branch
    rows = panel.files.children
    assert len(rows) == 3
    name, bar, info = rows[0].children
    assert "config.json" in name.value and "cached" in info.value and bar.layout.visibility == "hidden"
    for row in rows[1:]:
        _, bar, _ = row.children
        assert bar.value == bar.max == MB and bar.bar_style == "success"
    assert panel.download_bar.value == panel.download_bar.max == 2 * MB
    assert "1 cached" in panel.download_info.value
    assert panel.load_bar.value == panel.load_bar.max == 2
    assert "shard 2/2" in panel.load_info.value
    assert "load ✓" in panel.stages.value
    assert "model.layers.0-1" in panel.summary.value and "cpu" in panel.summary.value
    assert "CPU RAM" in panel.summary.value and "model = org/tiny@0123456789ab" in panel.summary.value
    assert "&lt;x&gt;" in panel.messages.value and "#c35a00" in panel.messages.value
    assert panel.error.value == ""


def test_panel_text_form(placement):
    panel = LoadPanel()
    for event in load_events(placement):
        panel(event)
    text = repr(panel)
    assert text.splitlines()[:2] == [
        "org/tiny @ main -> 0123456789ab",
        f"main can move; pinned: org/tiny@{SHA}",
    ]
    assert "model.layers.0-1" in text and "<" not in text.replace("<x>", "")
    bundle = panel._repr_mimebundle_()
    assert bundle["text/plain"] == text
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == panel.widget.model_id


def test_panel_failure_turns_red_and_escapes(placement):
    panel = LoadPanel()
    panel(FileProgress("config.json", 10, 10))
    panel(FileProgress("model.safetensors", MB // 2, MB))
    token = "hf_" + "a" * 34
    panel(Failed("fetch", LoadError(f"<script>alert(1)</script> with {token}", hint="retry & see")))

    bars = [row.children[1] for row in panel.files.children]
    assert [b.bar_style for b in bars] == ["success", "danger"]
    assert panel.download_bar.bar_style == "danger"
    assert "<script>" not in panel.error.value
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in panel.error.value
    assert "retry &amp; see" in panel.error.value and "LoadError" in panel.error.value
    assert token not in panel.error.value and token not in repr(panel)
    assert "red" in panel.error.value or "#d32f2f" in panel.error.value
    panel(FileProgress("model.safetensors", MB, MB))  # late events do not paint it green
    assert bars[1].bar_style == "danger"
    assert repr(panel).splitlines()[-2:] == [
        "FAILED: fetch: LoadError: <script>alert(1)</script> with hf_***", "retry & see",
    ]


def test_panel_rate_limits_progress_but_not_endings():
    clock = FakeClock(step=0.0001)  # 1000 events within 0.1 s of fake time
    panel = LoadPanel(clock=clock, min_interval=0.1)
    start = panel.redraws
    for i in range(1000):
        panel(FileProgress("model.safetensors", i * 1000, 1_000_000))
    assert panel.redraws - start <= 3
    panel.close()  # flushes what the limit held back
    assert panel.files.children[0].children[1].value == 999_000
    before = panel.redraws
    panel(FileProgress("model.safetensors", 1_000_000, 1_000_000))  # an ending draws at once
    assert panel.redraws == before + 1
    assert panel.files.children[0].children[1].bar_style == "success"


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
        for i in range(1, 201):
            panel(FileProgress(name, i * 100, 20_000))

    threads = [threading.Thread(target=feed, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    panel.close()
    assert len(panel.files.children) == 4
    assert all(row.children[1].value == 20_000 for row in panel.files.children)
    assert panel.download_bar.value == panel.download_bar.max == 80_000


def test_panel_unknown_size_shows_info_bar():
    panel = LoadPanel()
    panel(FileProgress("README.md", 300, None))
    bar = panel.files.children[0].children[1]
    assert (bar.bar_style, bar.value, bar.max) == ("info", 1.0, 1.0)
    panel(FileProgress("empty.txt", 0, 0))
    panel(StageDone("fetch", 0.3))  # sizes that never came are done when the stage is
    assert [row.children[1].bar_style for row in panel.files.children] == ["success", "success"]
    assert panel.download_bar.bar_style == "success"


def test_panel_header_for_local_folder_and_pinned_sha():
    panel = LoadPanel()
    panel(Resolved("/data/my-model", None, "local", "local"))
    assert "(local folder)" in panel.header.value and "pinned" not in panel.header.value
    assert "→" not in panel.header.value
    panel = LoadPanel()
    panel(Resolved("org/<tiny>", SHA[:7], SHA, "sha"))
    assert "org/&lt;tiny&gt;" in panel.header.value and "pinned" not in panel.header.value


# -- TextRenderer ------------------------------------------------------------------------
def test_text_non_tty_is_short_and_exact(placement):
    out = io.StringIO()
    renderer = TextRenderer(out, clock=FakeClock(step=0.001))
    renderer.display()
    for event in load_events(placement):
        renderer(event)
    renderer(Failed("bind", LoadError("name <model> is taken")))
    renderer.close()
    assert out.getvalue().splitlines() == [
        "resolved org/tiny @ main -> 0123456789ab",
        f"pinned: org/tiny@{SHA} (main can move)",
        "resolve done in 0.10 s",
        "  cached config.json (700 B)",
        "  fetched model-00001-of-00002.safetensors (1.00 MB)",
        "  fetched model-00002-of-00002.safetensors (1.00 MB)",
        "fetch done in 0.50 s",
        "  loaded shard 1/2 model-00001-of-00002.safetensors (4 tensors, 1.00 MB)",
        "  loaded shard 2/2 model-00002-of-00002.safetensors (4 tensors, 1.00 MB)",
        "warning: some weights were not used: <x>",
        "load done in 0.25 s",
        "model = org/tiny@0123456789ab (bfloat16, 0.25 s)",
        *[f"  {line}" for line in placement.to_text().splitlines()],
        "FAILED: bind: LoadError: name <model> is taken",
    ]
    assert "\r" not in out.getvalue()


def test_text_unknown_size_finishes_with_fetch():
    out = io.StringIO()
    renderer = TextRenderer(out)
    renderer(FileProgress("README.md", 300, None))
    assert out.getvalue() == ""
    renderer(StageDone("fetch", 1.0))
    assert out.getvalue().splitlines() == ["  fetched README.md (300 B)", "fetch done in 1.00 s"]


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
    renderer.close()
    value = out.getvalue()
    assert renderer.redraws <= 3
    assert "\r" in value and value.count("\n") == 1
    assert value.rstrip().endswith("fetched model.safetensors (1.00 MB)")


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
