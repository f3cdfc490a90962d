"""Paths a careless line can give: @file options that are FIFOs, devices or huge files, and --to targets that
cannot be written, are clear UsageErrors (no hang, no raw exception, nothing left behind)."""

import os

import pytest
from IPython.core.error import UsageError


@pytest.mark.parametrize("flag", ["--device-map", "--quantization-config"])
@pytest.mark.parametrize("kind", ["fifo", "device", "huge", "binary", "folder"])
def test_option_files_must_be_small_regular_text(shell, tmp_path, flag, kind):
    path = tmp_path / "option.json"
    if kind == "fifo":
        os.mkfifo(path)  # reading it would block forever
    elif kind == "device":
        path = "/dev/zero"  # reading it would fill memory
    elif kind == "huge":
        with open(path, "wb") as handle:
            handle.truncate(64 * 2**20)  # sparse: 64 MiB that cost no disk
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe\x00garbage")
    else:
        path.mkdir()
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("plan_model", f"tiny/llama {flag} @{path} --as p")
    assert flag in str(info.value) and "p" not in shell.user_ns


@pytest.mark.parametrize("target", [
    "~no-such-user-xyz/bundle",
    "{file}/under-a-file",
    "/proc/hf-notebook-nope/bundle",
    "{tmp}/" + "x" * 300,
])
def test_export_targets_that_cannot_be_written(shell, tiny_hub, hf_cache, tmp_path, target):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    target = target.format(file=a_file, tmp=tmp_path)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("export_model", f"tiny/llama --to {target}")
    assert "--to" in str(info.value) or "Cannot write" in str(info.value)
    assert sorted(os.listdir(tmp_path)) == before  # nothing left behind
