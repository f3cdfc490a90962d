"""Offloading to a disk that is too small: refused up front with the numbers; if the disk fills anyway,
a clear error and no partial files in the user's folder."""

import errno
import os
import shutil
from collections import namedtuple

import pytest
from IPython.core.error import UsageError

Usage = namedtuple("Usage", "total used free")


def _nearly_full_folder(tmp_path, monkeypatch):
    """An empty folder on a disk with 5 kB free (as shutil.disk_usage tells)."""
    folder = tmp_path / "offload"
    folder.mkdir()
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**12, 10**12 - 5000, 5000)
                        if str(p).startswith(str(folder)) else real(p))
    return folder


def test_too_little_space_is_refused_up_front(shell, tiny_hub, hf_cache, tmp_path, monkeypatch):
    folder = _nearly_full_folder(tmp_path, monkeypatch)
    shell.user_ns["m"] = sentinel = object()
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"tiny/mixtral --max-memory cpu=100KB "
                                           f"--offload-folder {folder} --as m")
    message = str(info.value)
    assert "5.00 kB is free" in message and str(folder) in message
    assert shell.user_ns["m"] is sentinel and list(folder.iterdir()) == []


def test_in_place_offload_needs_no_space(shell, loaded, tiny_hub, hf_cache, tmp_path, monkeypatch):
    """A llama's offloaded weights are read from the checkpoint itself (converted as read): nothing to write."""
    folder = _nearly_full_folder(tmp_path, monkeypatch)
    shell.run_line_magic("load_model", f"tiny/llama --max-memory cpu=100KB --dtype bfloat16 --offload-folder {folder} --as m")
    assert "disk" in shell.user_ns["m"].hf_device_map.values()
    own = [p for p in folder.iterdir()]  # the model's own folder in it (where its edits would write): empty
    assert [p.name for p in own] == [os.path.basename(loaded.get("m").offload_folder)] and list(own[0].iterdir()) == []


def test_a_full_disk_midway_leaves_no_partial_files(shell, tiny_hub, hf_cache, tmp_path, monkeypatch):
    from transformers.integrations import accelerate as tf_accelerate

    folder = tmp_path / "offload"
    folder.mkdir()
    (folder / "mine.txt").write_text("the user's own file")
    written = []
    real_save = tf_accelerate.save_file

    def filling_save(tensors, path, *args, **kwargs):
        if written:  # the second weight no longer fits: a partial file, then ENOSPC
            with open(path, "wb") as handle:
                handle.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(tf_accelerate, "save_file", filling_save)
    shell.user_ns["m"] = sentinel = object()
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"tiny/mixtral --max-memory cpu=100KB "
                                           f"--offload-folder {folder} --as m")
    assert "ran out of space" in str(info.value) and str(folder) in str(info.value)
    assert written and [p.name for p in folder.iterdir()] == ["mine.txt"]
    assert shell.user_ns["m"] is sentinel
