"""The helpers that once had several spellings: the nearest existing folder, a one-device map spelled out,
the widget chores of the panels."""

import pytest

from hf_notebook.core.devices.placement import spread_one_device
from hf_notebook.core.folders import nearest_existing, writable_folder


def test_the_nearest_existing_folder(tmp_path):
    assert nearest_existing(tmp_path / "a" / "b" / "c") == tmp_path
    assert nearest_existing(tmp_path) == tmp_path
    assert writable_folder(tmp_path) and not writable_folder(tmp_path / "a")


def test_a_one_device_map_is_spelled_out_per_block():
    blocks = ("model.embed_tokens", "model.layers.0", "lm_head")
    assert spread_one_device({"": "cpu"}, blocks) == dict.fromkeys(blocks, "cpu")
    other = {"model": 0, "lm_head": "cpu"}
    assert spread_one_device(other, blocks) is other and spread_one_device({"": 0}, ()) == {"": 0}


def test_set_changed_sends_only_changes_and_close_all_closes_layouts_too():
    W = pytest.importorskip("ipywidgets")
    from hf_notebook.ui.style import close_all, set_changed

    inner = W.HTML("x")
    box = W.VBox([inner])
    sent = []
    inner.observe(lambda change: sent.append(change["new"]), names="value")
    set_changed(inner, value="x")
    set_changed(inner, value="y")
    assert sent == ["y"]
    close_all(box)
    assert box.comm is None and inner.comm is None and inner.layout.comm is None
