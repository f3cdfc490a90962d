"""A 16-shard model downloading slowly, in a real JupyterLab and Notebook 7: the download row knows the whole total
and the file count from its first frame (the plan has every file's size), shows speed and time left, keeps the panel
short (finished files fold into the count), reads at 1280, 700 and 400 px in both themes while it runs, and the
record counts the files the panel counted."""

import re
import secrets
import time

import pytest
from layout_checks import POINT_LAYOUTS, REFLOW, measure_every_layout, problems, summary

expect = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed").expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SHARDS = 16
ROW = re.compile(r"(?P<done>[\d.]+ [kMG]?B)(?: / (?P<total>[\d.]+ [kMG]?B))?.*?(?:(?P<finished>\d+)/)?(?P<count>\d+) files")


@pytest.fixture
def sixteen_shards(hub_store, tmp_path):
    """A llama of 14 narrow layers in 16 shards (2.8 MB), published to the session's stand-in."""
    import transformers

    from hf_notebook.core.units import format_bytes

    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=14,
                                      num_attention_heads=4, num_key_value_heads=4, vocab_size=1000,
                                      tie_word_embeddings=False, architectures=["LlamaForCausalLM"])
    folder = tmp_path / "sixteen"
    transformers.LlamaForCausalLM(config).save_pretrained(folder, max_shard_size="170KB")
    shards = sorted(folder.glob("*.safetensors"))
    assert len(shards) == SHARDS
    repo_id = f"user/sixteen-{secrets.token_hex(4)}"
    hub_store.create_repo(repo_id)
    hub_store.commit(repo_id, {p.name: p for p in folder.iterdir()}, message="16 shards")
    # the download row: what the fetch stage brings (the index came with the plan, config.json before it)
    weights = sum(p.stat().st_size for p in shards) + (folder / "generation_config.json").stat().st_size
    return repo_id, format_bytes(weights)


def test_the_download_total_is_whole_from_the_first_frame(front_end, hub_server, sixteen_shards, artifacts):
    notebook, page = front_end, front_end.page
    repo_id, total = sixteen_shards
    load = f"%load_model {repo_id} --as m"
    notebook.open(notebook.write(f"{notebook.shot_prefix}sixteen.ipynb",
                                 ["%load_ext hf_notebook", "import transformers", load]))
    hub_server.throttle_bytes_per_s = 40_000  # per response: a few shards at once, about 18 s in all
    try:
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        cell = notebook.code_cell(load)
        panel = cell.locator(".jp-OutputArea .jupyter-widgets").first
        row = panel.locator(".widget-hbox", has_text="download")
        expect(row).to_be_visible(timeout=30_000)
        frames, shot, deadline = [], False, time.monotonic() + 4
        while time.monotonic() < deadline:  # every frame a user may see in the first seconds
            text = row.inner_text().replace("\u00a0", " ")
            if "files" in text:
                frames.append(text)
            if not shot and " left" in text:
                page.screenshot(path=artifacts / f"{notebook.shot_prefix}sixteen-downloading.png")
                shot = True
                rows = panel.locator(".widget-hbox").count()
                assert rows <= 8, f"{rows} rows: finished files are not folded away"
            time.sleep(0.1)
        assert frames, "no download frame seen"
        for text in frames:
            found = ROW.search(text)
            assert found and found["total"] == total and found["count"] == str(SHARDS + 1), (text, total)
        assert any(re.search(r"[\d.]+ [kMG]?B/s .* left", text) for text in frames), frames  # speed, time left
        # the live panel at each width and theme (nothing cut, sticking out or unreadable), still downloading after
        found = measure_every_layout(notebook, artifacts, f"{notebook.shot_prefix}sixteen-downloading",
                                     layouts=POINT_LAYOUTS)
        expect(row).to_be_visible()
        assert all(m["records"].get(load, 0) == 0 for m in found.values()), "the load ended while it was measured"
        bad = problems(found, owners={"widget"}, cells={load}) + problems(found, owners={"widget"}, cells={load},
                                                                          kinds=REFLOW)
        assert not bad, f"{len(bad)} problems:\n" + "\n".join(bad) + f"\n({summary(found)})"
        hub_server.throttle_bytes_per_s = None
        record = cell.locator(".jp-OutputArea .hf-notebook-record")
        expect(record).to_contain_text(f"✓ m = {repo_id}@", timeout=60_000)
        files = record.locator("tr", has_text="files").first.inner_text().replace("\u00a0", " ")
        assert f"{SHARDS + 1} files, {total}" in files, files  # the count and bytes the panel showed
    finally:
        hub_server.throttle_bytes_per_s = None
