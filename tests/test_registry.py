"""%models lists what was loaded; %unload_model frees it, and the process really shrinks."""

import gc

import pytest
from IPython.core.error import UsageError

from hf_notebook.core.unload import process_rss


def test_models_lists_pins_and_bytes(shell, loaded, tiny_hub, hf_cache, capsys):
    shell.run_line_magic("load_model", "tiny/llama@v1 --as a")
    shell.run_line_magic("load_model", "tiny/gpt2 --dtype bfloat16 --as b")
    capsys.readouterr()
    shell.run_line_magic("models", "")
    out = capsys.readouterr().out
    assert [name for name, _ in loaded.items()] == ["a", "b"]
    assert f"tiny/llama@{tiny_hub['llama'].commits['v1'][:12]}" in out
    assert "GPT2LMHeadModel" in out and "bfloat16" in out and "cpu" in out


def test_unload_frees_memory(shell, loaded, medium_folder, capsys):
    gc.collect()
    baseline = process_rss()
    shell.run_line_magic("load_model", f"{medium_folder} --no-verify --dtype bfloat16 --as big")
    resident = loaded.get("big").placement.bytes_by_device["cpu"]
    assert resident > 100e6
    shell.user_ns["alias"] = shell.user_ns["big"]  # a second name must not keep it alive
    rss_loaded = process_rss()
    assert rss_loaded - baseline > 0.8 * resident
    capsys.readouterr()
    shell.run_line_magic("unload_model", "big")
    out = capsys.readouterr().out
    assert "big" not in shell.user_ns and "alias" not in shell.user_ns and loaded.get("big") is None
    assert rss_loaded - process_rss() > 0.8 * resident  # the memory really came back
    assert "unloaded big" in out and "alias" in out


def test_unload_unknown_name(shell):
    with pytest.raises(UsageError, match="%models"):
        shell.run_line_magic("unload_model", "nothing_here")


def test_models_name_shows_the_measured_views(shell, loaded, tiny_hub, hf_cache, tmp_path, capsys):
    shell.run_line_magic("load_model", f"tiny/llama --max-memory cpu=300KB --offload-folder {tmp_path} --as m")
    capsys.readouterr()
    shell.run_line_magic("models", "m")
    out = capsys.readouterr().out
    placement = loaded.get("m").placement
    assert "disk" in out and "cpu" in out
    from hf_notebook.core.units import format_bytes

    assert format_bytes(placement.bytes_by_device["disk"]) in out
    with pytest.raises(UsageError, match="%models"):
        shell.run_line_magic("models", "nope")
