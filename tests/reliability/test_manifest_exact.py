"""A verified folder is exactly its manifest: an extra weight file, an entry outside the folder, an entry without
its sha256 or an emptied manifest are refused by name before anything is loaded."""

import json
import shutil

import pytest
from IPython.core.error import UsageError

MANIFEST = "hf_notebook.manifest.json"


@pytest.fixture
def bundle(shell, tiny_hub, hf_cache, tmp_path):
    folder = tmp_path / "bundle"
    shell.run_line_magic("export_model", f"tiny/llama --to {folder}")
    return folder


def _edit_manifest(folder, change):
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _refused(shell, folder, *words):
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"{folder} --as m")
    assert all(w in str(info.value) for w in words), str(info.value)
    assert "m" not in shell.user_ns


def test_an_extra_weights_file_beside_the_index_is_refused(shell, bundle):
    shard = sorted(bundle.glob("model-*.safetensors"))[0]
    shutil.copyfile(shard, bundle / "model.safetensors")
    _refused(shell, bundle, "model.safetensors", "not in its manifest")


def test_an_absolute_entry_is_refused(shell, bundle):
    _edit_manifest(bundle, lambda m: m["files"].update({"/etc/hostname": {"size": 1, "sha256": "0" * 64}}))
    _refused(shell, bundle, "/etc/hostname", "not a path inside the folder")


def test_a_parent_entry_is_refused(shell, bundle):
    _edit_manifest(bundle, lambda m: m["files"].update({"../outside.json": {"size": 1, "sha256": "0" * 64}}))
    _refused(shell, bundle, "../outside.json", "not a path inside the folder")


def test_an_entry_without_sha256_is_refused(shell, bundle):
    _edit_manifest(bundle, lambda m: m["files"]["config.json"].pop("sha256"))
    _refused(shell, bundle, "config.json", "size and sha256")


def test_an_emptied_manifest_is_refused(shell, bundle):
    _edit_manifest(bundle, lambda m: m.update(files={}))
    _refused(shell, bundle, "lists no files")


def test_a_manifest_without_the_weights_is_refused(shell, bundle):
    _edit_manifest(bundle, lambda m: m.update(files={"config.json": m["files"]["config.json"]}))
    _refused(shell, bundle, "does not list its config and weights")


def test_a_deleted_manifest_is_refused_and_no_verify_loads_it_as_unverified(shell, bundle, capsys):
    shard = sorted(bundle.glob("model-*.safetensors"))[0]
    (bundle / MANIFEST).unlink()
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # tampered, and nothing left to tell
    shard.write_bytes(bytes(data))
    _refused(shell, bundle, f"has no {MANIFEST}", "--no-verify")

    shell.run_line_magic("load_model", f"{bundle} --no-verify --as m")
    assert "m" in shell.user_ns  # the user said so: loaded as it is
    text = capsys.readouterr().out
    assert "UNVERIFIED" in text and "--no-verify" in text
    assert f"%load_model {bundle} --dtype float32 --no-verify --as m" in text.replace("\n  ", " ")


def test_a_plain_save_pretrained_folder_needs_no_verify_and_a_checked_one_says_so(shell, tmp_path, capsys):
    from hf_notebook.core.api import load_model
    from hf_notebook.core.errors import HfNotebookError
    from hf_notebook.testing.models import build_model

    plain = tmp_path / "plain"
    build_model("llama").save_pretrained(plain)
    with pytest.raises(HfNotebookError, match="no_verify=True"):
        load_model(str(plain), device_map="cpu")
    assert load_model(str(plain), device_map="cpu", no_verify=True).options.no_verify

    shell.run_line_magic("load_model", f"{plain} --no-verify --as m")
    shell.run_line_magic("save_model", f"m {tmp_path / 'saved'}")
    capsys.readouterr()
    shell.run_line_magic("load_model", f"{tmp_path / 'saved'} --as again")  # a manifest: no flag needed
    text = capsys.readouterr().out
    assert "every file checked against hf_notebook.manifest.json" in text and "UNVERIFIED" not in text
