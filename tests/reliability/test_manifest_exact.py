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
