"""``%push_model`` as a line magic shows its upload: a line per file in a terminal, a bar in a kernel that the
push's record replaces (no widget left in the saved notebook)."""

import pytest


@pytest.fixture
def token(hub_token, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", hub_token)
    return hub_token


def test_terminal_push_names_each_uploaded_file(shell, tiny_hub, hf_cache, hub_server, token, capsys, tmp_path):
    import torch

    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    with torch.no_grad():  # weights of this test's own, so the store cannot already hold them
        for p in shell.user_ns["m"].parameters():
            p.add_(torch.rand_like(p))
    shell.run_line_magic("save_model", f"m {tmp_path / 'out'} --max-shard-size 100KB")
    shards = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert len(shards) > 1
    capsys.readouterr()
    shell.run_line_magic("push_model", f"--from {tmp_path / 'out'} user/progress-shown")
    text = capsys.readouterr().out
    for shard in shards:
        assert f"uploaded {shard} (" in text, text
    assert text.index(f"uploaded {shards[-1]}") < text.index("%load_model user/progress-shown@")  # then the record


def test_kernel_push_bar_is_replaced_by_the_record(tiny_hub, hf_cache, hub_server, token, tmp_path, monkeypatch):
    from hf_notebook.core.events import FileProgress
    from hf_notebook.ui.transfer import TransferProgress

    shown = []

    class Handle:
        def update(self, obj):
            shown.append(obj)

    monkeypatch.setattr("IPython.display.display", lambda *a, **k: Handle())
    progress = TransferProgress("uploaded", widget=True, min_interval=0)
    progress.display()
    progress(FileProgress("a.safetensors", 50, 100))
    progress(FileProgress("b.safetensors", 100, 100))
    assert progress.totals() == (150, 200, 1) and progress._bar.value == 150.0
    assert "1/2 files" in progress._label.value
    record = object()
    progress.finish(record)
    assert shown == [record] and progress.widget.comm is None  # the bar's output now holds the record; widget closed


def test_a_saved_folder_is_pushed_without_reading_it_to_check_it(shell, tiny_hub, hf_cache, hub_server, token,
                                                                 tmp_path, monkeypatch):
    """The push checks the folder against its manifest; the save remembered what it hashed, so nothing is read."""
    from hf_notebook.core import integrity
    from hf_notebook.core import manifest

    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    shell.run_line_magic("save_model", f"m {tmp_path / 'out'}")
    reads = []
    monkeypatch.setattr(manifest, "digest_of", lambda *a: reads.append(a) or integrity.digest_of(*a))
    shell.run_line_magic("push_model", f"--from {tmp_path / 'out'} user/unread")
    assert reads == []
