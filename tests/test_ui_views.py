"""ui/views.py and ui/record.py: widget views, the figure, and the static records, python-side (no browser)."""

from __future__ import annotations

import io
import re
from html import escape

import pytest
from IPython.core.interactiveshell import InteractiveShell

from hf_notebook.core.devices.placement import DeviceBytes, Placement, PlacementGroup
from hf_notebook.core.units import format_bytes
from hf_notebook.ui.record import _DANGER, _WARN, EMPTY_REGISTRY, load_record, models_record, plan_record
from hf_notebook.ui.views import DeviceMapView, MemoryView, memory_figure

SPLIT = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
         "model.rotary_emb": "cpu", "lm_head": "cpu"}
GB = 1_000_000_000


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from hf_notebook.testing.models import save_model

    return save_model("llama", tmp_path_factory.mktemp("views") / "llama")


@pytest.fixture(scope="module")
def split_plan(folder):
    from hf_notebook.core.api import plan_model

    return plan_model(str(folder), no_verify=True, device_map=SPLIT)


@pytest.fixture(scope="module")
def spill_plan(folder):
    """Everything on disk: a 100 kB cpu budget; the plan's one-device map reads by blocks."""
    from hf_notebook.core.api import plan_model

    return plan_model(str(folder), no_verify=True, max_memory="cpu=100KB")


@pytest.fixture(scope="module")
def big_plan(tmp_path_factory):
    from hf_notebook.core.api import plan_model
    from hf_notebook.testing.models import BIG_CONFIGS, synthetic_checkpoint

    folder = tmp_path_factory.mktemp("views") / "big"
    synthetic_checkpoint(BIG_CONFIGS["llama-70b"](), folder)
    return plan_model(str(folder), no_verify=True, dtype="bfloat16", max_memory={0: "80GiB", "cpu": "100GiB"})


@pytest.fixture(scope="module")
def split_result(folder, tmp_path_factory):
    from hf_notebook.core.api import load_model

    return load_model(str(folder), no_verify=True, device_map=SPLIT, offload_folder=str(tmp_path_factory.mktemp("off")), name="m")


def _layers(first: int, last: int) -> tuple[str, ...]:
    return tuple(f"model.layers.{i}" for i in range(first, last + 1))


def _over_budget() -> tuple[Placement, dict]:
    groups = (PlacementGroup("cuda:0", _layers(0, 31), 85 * GB, 5 * GB), PlacementGroup("cpu", ("lm_head",), 2 * GB),
              PlacementGroup("disk", _layers(32, 39), 20 * GB, 0, True))
    devices = {"cuda:0": DeviceBytes("cuda:0", 85 * GB, 5 * GB), "cpu": DeviceBytes("cpu", 2 * GB),
               "disk": DeviceBytes("disk", 20 * GB, 0, 20 * GB)}
    return Placement(groups, devices), {"cuda:0": 80 * GB, "cpu": 30 * GB}


def test_group_labels_come_from_members():
    placement, _ = _over_budget()
    assert [g.label for g in placement.groups] == ["model.layers.0-31", "lm_head", "model.layers.32-39"]


# -- device map ------------------------------------------------------------------------------
def test_device_map_has_a_section_per_device_in_order(split_plan):
    view = DeviceMapView.from_plan(split_plan)
    assert list(view.sections) == ["cpu", "disk"]
    assert [r.group.label for r in view.sections["disk"].rows] == ["model.layers.1"]
    assert view.sections["cpu"].row("model.layers.0") is not None
    for section in view.sections.values():  # row bytes are the plan's module sizes
        for row in section.rows:
            assert format_bytes(split_plan.module_sizes[row.group.label]) in row.size.value


def test_expanding_a_range_reveals_its_members(spill_plan):
    view = DeviceMapView.from_plan(spill_plan)
    assert list(view.sections) == ["disk"]
    row = view.row("model.layers.0-1")
    assert row.toggle is not None and not row.expanded and row.member_box.children == ()
    row.toggle.click()
    assert row.expanded and row.toggle.icon == "caret-down"
    names = [r.children[0].value for r in row.member_box.children]
    sizes = [r.children[1].value for r in row.member_box.children]
    assert [re.sub(r"<[^>]+>", "", n) for n in names] == ["model.layers.0", "model.layers.1"]
    assert all(n.startswith("<code") for n in names)
    for i, size in enumerate(sizes):
        assert format_bytes(spill_plan.module_sizes[f"model.layers.{i}"]) in size and "planned" not in size
    # bytes at the right edge of each row (a member's under its range's), not beside the name
    for line in [row.widget.children[0], *row.member_box.children]:
        assert line.children[-1].layout.margin == "0 0 0 auto" and line.children[-2].layout.flex == "1 1 auto"
    row.toggle.click()
    assert not row.expanded
    assert view.row("lm_head").toggle is None  # nothing to expand
    text = view.to_text(expand=True)
    assert "model.layers.0-1" in text and "  model.layers.1 " in text


def test_device_map_of_a_loaded_model_marks_member_sizes_as_planned(split_result):
    view = DeviceMapView.from_result(split_result)
    assert [r.group.label for r in view.sections["disk"].rows] == ["model.layers.1"]
    placement = Placement((PlacementGroup("cpu", _layers(0, 1), 10),), {"cpu": DeviceBytes("cpu", 10)})
    row = DeviceMapView(placement, sizes={"model.layers.0": 5}, estimated=True).row("model.layers.0-1")
    row.expand()
    assert "≈ 5 B (planned)" in row.member_box.children[0].children[1].value
    assert "size unknown" in row.member_box.children[1].children[1].value


def test_device_map_text_and_bundle(split_plan):
    view = DeviceMapView.from_plan(split_plan)
    text = view.to_text()
    assert text.index("CPU RAM (cpu)") < text.index("disk (offload)")
    for name in split_plan.device_map:
        assert f"{name}" in text and format_bytes(split_plan.module_sizes[name]) in text
    bundle = view._repr_mimebundle_()
    assert bundle["text/plain"] == text == repr(view)
    assert "application/vnd.jupyter.widget-view+json" in bundle


# -- memory ---------------------------------------------------------------------------------
def shown(widget) -> str:
    """An HTML widget's value as read: sizes keep their number and unit together with a no-break space."""
    assert " B" not in widget.value and " kB" not in widget.value, f"a size can break across lines: {widget.value!r}"
    return widget.value.replace("\u00a0", " ")


def test_memory_view_one_bar_per_device_within_budget(split_plan):
    view = MemoryView.from_plan(split_plan)
    assert list(view.bars) == ["cpu", "disk"]
    cpu = view.bars["cpu"]
    assert cpu.bar_style != "danger" and cpu.max == split_plan.budget["cpu"]
    used = split_plan.placement().bytes_by_device
    assert cpu.value == used["cpu"]
    assert f"{format_bytes(used['cpu'])} of {format_bytes(split_plan.budget['cpu'])}" in shown(view.labels["cpu"])
    assert view.bars["disk"].layout.visibility == "hidden"  # no budget: just the bytes
    assert format_bytes(used["disk"]) in shown(view.labels["disk"])
    text = view.to_text()
    assert "planned" in text and format_bytes(used["cpu"]) in text and "OVER" not in text


def test_memory_view_over_budget_turns_red(folder):
    from hf_notebook.core.api import plan_model

    plan = plan_model(str(folder), no_verify=True, device_map={k: "cpu" for k in SPLIT}, max_memory="cpu=100KB")
    view = MemoryView.from_plan(plan)
    assert view.bars["cpu"].bar_style == "danger"
    over = format_bytes(plan.placement().bytes_by_device["cpu"] - 100_000)
    assert f"{over} over budget" in shown(view.labels["cpu"]) and f"{over} over budget" in view.to_text()

    placement, budget = _over_budget()
    view = MemoryView(placement, budget, kind="resident")
    assert list(view.bars) == ["cuda:0", "cpu", "disk"]
    assert [view.bars[d].bar_style for d in view.bars] == ["danger", "", ""]
    assert "90.0 GB of 80.0 GB, 10.0 GB over budget" in shown(view.labels["cuda:0"])
    assert "params 85.0 GB · buffers 5.00 GB" in shown(view.labels["cuda:0"])
    assert "resident" in view.to_text() and "OVER BUDGET" in view.to_text()
    with pytest.raises(ValueError):
        MemoryView(placement, kind="hoped")


def test_memory_view_of_a_loaded_model(split_result):
    view = MemoryView.from_result(split_result)
    measured = split_result.placement.bytes_by_device
    assert view.kind == "resident" and list(view.bars) == ["cpu", "disk"]
    assert format_bytes(measured["cpu"]) in shown(view.labels["cpu"])
    assert format_bytes(measured["disk"]) in view.to_text()


# -- figure ---------------------------------------------------------------------------------
def test_memory_figure_bars_budget_and_png():
    from matplotlib.figure import Figure

    placement, budget = _over_budget()
    fig = memory_figure(placement, budget, title="70B on one GPU")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["GPU 0 (cuda:0)", "CPU RAM (cpu)", "disk (offload)"]
    bars = ax.patches  # params bars, then buffers bars, one per device each
    assert len(bars) == 6
    assert [round(b.get_width(), 3) for b in bars[:3]] == [85.0, 2.0, 20.0]  # GB
    red, blue = (0.839, 0.153, 0.157), (0.122, 0.467, 0.706)
    assert [tuple(round(c, 3) for c in b.get_facecolor()[:3]) for b in bars[:3]] == [red, blue, blue]
    assert len(ax.collections) == 2  # budget marks for the GPU and the cpu, none for disk
    assert any("10.0 GB over budget" in t.get_text() for t in ax.texts)
    png = io.BytesIO()
    fig.savefig(png, format="png")
    assert png.getvalue().startswith(b"\x89PNG")


# -- static records -------------------------------------------------------------------------
def test_plan_record_of_a_70b_plan(big_plan):
    record = plan_record(big_plan)
    text, html = record.text, record.html
    assert "cuda:0" in text and "cpu" in text and "spill to cpu" in text
    assert "LlamaForCausalLM" in text and "70.6B (70.6B BF16)" in text
    assert format_bytes(big_plan.headers.total_bytes) in text
    assert "model.layers.47-79" in text and "(33 modules)" in text
    assert re.search(r"<details><summary><code[^>]*>model\.layers\.47-79</code>", html)  # expandable without a kernel
    spill = next(f for f in big_plan.explain() if f.kind == "spill")
    size = escape(format_bytes(spill.nbytes)).replace(" ", "\u00a0")  # number and unit stay on one line
    assert f"<div style='{_WARN}'>{size} spill to cpu" in html  # orange: the theme's warning colour
    assert set(record.bundle()) == {"text/html", "text/plain"}


def test_plan_record_marks_disk_spill_red(spill_plan):
    html = plan_record(spill_plan).html
    assert f"<div style='{_DANGER}'>" in html and "spill to disk" in html
    # the theme's error colour, with a plain one first for renderers that drop var() (an untrusted notebook)
    assert _DANGER == "color:#e53935;color:var(--jp-error-color1,#e53935)"


def test_load_record_of_a_split_load(split_result):
    record = load_record(split_result)
    text = record.text
    assert text.startswith("✓ m = ") and "resident" in text and "offloaded" in text
    assert "offload folder" in text and split_result.offload_folder in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("  CPU") or
            line.startswith("  disk")}
    disk = split_result.placement.devices["disk"]
    assert rows["disk"][-1] == format_bytes(disk.nbytes).split()[-1]
    assert f"%load_model {split_result.pin.repo_id} --dtype float32 --device-map" in text
    shell = InteractiveShell.instance()  # evaluated in a shell with the extension: shown as its record
    shell.run_line_magic("load_ext", "hf_notebook")
    try:
        shown, _ = shell.display_formatter.format(split_result)
        assert {k: shown[k] for k in record.bundle()} == record.bundle()
        shown, _ = shell.display_formatter.format(split_result.plan)
        assert shown["text/plain"] == plan_record(split_result.plan).text
    finally:
        shell.run_line_magic("unload_ext", "hf_notebook")


# -- %models --------------------------------------------------------------------------------
@pytest.fixture
def two_loaded(hub_store, hub_repo_id, hf_cache, tmp_path):
    """Two tiny models published to the Hub stand-in and loaded, so their pins carry real shas."""
    from hf_notebook.core.api import load_model
    from hf_notebook.testing.models import model_files, save_model

    results = []
    for arch in ("llama", "gpt2"):
        repo_id = f"{hub_repo_id}-{arch}"
        files = {n: p.read_bytes() for n, p in model_files(save_model(arch, tmp_path / arch)).items()}
        hub_store.create_repo(repo_id)
        hub_store.commit(repo_id, files, message="weights")
        results.append(load_model(repo_id, device_map="cpu"))
    return results


def test_models_record_rows_and_escaping(two_loaded):
    llama, gpt2 = two_loaded
    record = models_record([("llama", llama), ("<script>alert(1)</script>", gpt2)])
    lines = record.text.splitlines()
    assert len(lines) == 3 and lines[0].split() == ["name", "model", "class", "dtype", "cpu"]
    for line, r in zip(lines[1:], two_loaded):
        assert f"{r.pin.repo_id}@{r.pin.sha[:12]}" in line and r.plan.model_class in line
        assert line.endswith(format_bytes(r.placement.bytes_by_device["cpu"]))
    assert lines[1].index("LlamaForCausalLM") == lines[2].index("GPT2LMHeadModel")  # aligned columns
    html = record.html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<tr ") == 3 and llama.pin.sha[:12] in html and "GPT2LMHeadModel" in html.replace("<wbr>", "")
    assert "padding" in html  # cells do not run into each other
    # each column's header and cells line up: the same side, the same padding on it and the same width (so
    # that, where the table reflows, the header and every row wrap at the same cells)
    rows = re.findall(r"<tr style='[^']*display:flex;flex-wrap:wrap[^']*'>(.*?)</tr>", html)
    columns = [re.findall(r"<t[hd] style='([^']*)'", row) for row in rows]
    side = [[re.search(r"text-align:(\w+)", c).group(1) + re.search(r"padding:([^;]+)", c).group(1)
             + re.search(r"(?<![-\w])(?:min-)?width:([^;]+)", c).group(0) for c in row] for row in columns]
    assert side[0] == side[1] == side[2] and len(side[0]) == len(lines[0].split())
    assert f"llama<wbr>@{llama.pin.sha[:12]}</code>" in html  # the repo id breaks before its @, not inside the sha
    assert "<code style='padding:0;background:none" in html  # Lab's box around <code> would shift the names


def test_models_record_empty():
    record = models_record([])
    assert record.text == EMPTY_REGISTRY and EMPTY_REGISTRY in record.html


def test_a_context_plan_shows_weights_kv_cache_and_step_as_parts_of_each_bar(tiny_hub, hf_cache):
    """The record's device table, the memory view, the figure and the editor's totals each show the KV cache
    and the step beside the weights, and count them against the budget."""
    from hf_notebook.core.api import device_map_editor, plan_model

    plan = plan_model("tiny/llama", dtype="float32", max_memory="cpu=600KB", context=100)
    kv, step = plan.kv_cache_by_device["cpu"], plan.headroom_by_device["cpu"]
    weights = plan.placement().bytes_by_device["cpu"]  # resident there (offloaded blocks' buffers included)
    text = plan_record(plan).text
    row = next(line for line in text.splitlines() if line.strip().startswith("CPU RAM"))
    assert format_bytes(kv) in row and format_bytes(step) in row and format_bytes(weights + kv + step) in row
    assert row.rstrip().endswith(format_bytes(600_000 - weights - kv - step))  # what is left of the budget
    assert "KV cache" in text and "step" in text
    usage = {u.device: u for u in MemoryView.from_plan(plan).usage}["cpu"]
    assert (usage.nbytes, usage.kv_bytes, usage.step_bytes) == (weights, kv, step) and not usage.over
    assert f"KV cache {format_bytes(kv)}" in MemoryView.from_plan(plan).to_text()
    fig = memory_figure(plan.placement(), plan.budget)
    widths = [round(b.get_width() * 1e3) for b in fig.axes[0].patches]  # drawn in kB: params, buffers, KV, step
    assert kv in widths and step in widths
    assert {"KV cache", "step"} <= {t.get_text() for t in fig.legends[0].get_texts()}
    editor = device_map_editor(plan)
    assert editor.room()["cpu"] == kv + step
    editor.set("model.layers.0", "cpu")  # all weights on cpu: with the cache and step, over the budget
    editor.set("model.layers.1", "cpu")
    editor.set("lm_head", "cpu")
    editor.set("model.embed_tokens", "cpu")
    assert [p.device for p in editor.problems()] == ["cpu"]
    assert editor.problems()[0].nbytes == sum(editor.totals().values()) - editor.totals().get("disk", 0) + editor.room()["cpu"]
