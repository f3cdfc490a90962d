"""The real Hub's path: Xet storage and huggingface_hub 2.4's shared blob store, with the client's defaults.

Before: every load of a Xet-stored model failed ("arrived damaged": the shared blob's Xet hash taken for a sha256)
and then deleted the shared blob, leaving other repos' cache entries dangling; the lock and bundles recorded Xet
hashes; hf_xet's progress calls printed tracebacks; its failures came out raw.
"""

import os
import sys
from pathlib import Path

import pytest
import torch
from IPython.core.error import UsageError



def _repo_folder(cache, repo_id):
    return cache / f"models--{repo_id.replace('/', '--')}"


def _links_resolve(cache, repo_id) -> bool:
    snapshot = next((_repo_folder(cache, repo_id) / "snapshots").iterdir())
    return all(os.path.exists(p) for p in snapshot.rglob("*"))


def _equal(model, folder) -> bool:
    import transformers

    expected = transformers.AutoModelForCausalLM.from_pretrained(folder).state_dict()
    got = model.state_dict()
    return got.keys() == expected.keys() and all(torch.equal(got[k], v) for k, v in expected.items())


def test_a_load_shares_blobs_with_another_repo_and_leaves_it_whole(shell, twins, hf_cache, hub_server, capfd,
                                                                   caplog):
    import logging

    from huggingface_hub import snapshot_download

    a, b, folder = twins
    caplog.set_level(logging.DEBUG, logger="huggingface_hub.utils._shared_blobs")
    snapshot = Path(snapshot_download(b))  # the plain client first: its weights land in the cache's shared store
    shards = sorted(snapshot.glob("*.safetensors"))
    store = (hf_cache / "blobs").resolve()
    unshared = [p for p in shards if store not in Path(os.path.realpath(p)).parents]
    # huggingface_hub publishes to the store best-effort (it logs why it did not): seen once in about 30 runs,
    # one shard stayed in b's own blobs. Then a's load must download exactly that shard and link the others.
    assert len(unshared) < len(shards), caplog.text
    hub_server.reset_counters()
    shell.run_line_magic("load_model", f"{a} --as m")
    assert _equal(shell.user_ns["m"], folder)
    # every weight in the shared store linked, not downloaded
    assert hub_server.bytes_served(via="xet") <= sum(p.stat().st_size for p in unshared) * 1.1, caplog.text
    out = capfd.readouterr()
    assert "deduplicated" in out.out and "Traceback" not in out.err + out.out
    assert _links_resolve(hf_cache, b) and _links_resolve(hf_cache, a)
    import transformers

    transformers.AutoModelForCausalLM.from_pretrained(b, local_files_only=True)  # b's cache is intact
    shell.run_line_magic("load_model", f"{b} --offline --as other")
    assert _equal(shell.user_ns["other"], folder)


def test_a_damaged_shared_blob_is_fetched_again_and_nothing_is_deleted(shell, twins, hf_cache, hub_server,
                                                                       flip):
    from huggingface_hub import snapshot_download

    a, b, folder = twins
    snapshot_download(b)
    blob = max((p for p in (hf_cache / "blobs").rglob("*") if p.is_file() and len(p.name) == 64),
               key=lambda p: p.stat().st_size)
    flip(blob)
    shell.run_line_magic("load_model", f"{a} --as m")
    assert _equal(shell.user_ns["m"], folder)
    assert _links_resolve(hf_cache, b)  # b's links still lead to a file: nothing of b's was unlinked
    shell.run_line_magic("load_model", f"{b} --as other")  # and b is checked (and repaired) on its own load
    assert _equal(shell.user_ns["other"], folder)


def test_lock_check_and_both_bundle_layouts_record_true_sha256(shell, big_repo, hf_cache, tmp_path, capsys):
    import hashlib
    import json
    import subprocess

    repo_id, folder = big_repo
    shell.run_line_magic("load_model", f"{repo_id} --as m")
    lock = json.loads(Path(shell.config.HFNotebook.lock_file).read_text())["models"][f"{repo_id}@main"]
    for name, facts in lock["files"].items():
        assert facts["sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest(), name
    capsys.readouterr()
    shell.run_line_magic("lock", "--check")
    assert "hash differs" not in capsys.readouterr().out
    shell.run_line_magic("export_model", f"{repo_id} --to {tmp_path / 'bundle'}")
    shell.run_line_magic("load_model", f"{tmp_path / 'bundle'} --as from_bundle")
    assert _equal(shell.user_ns["from_bundle"], folder)
    shell.run_line_magic("export_model", f"{repo_id} --to {tmp_path / 'tree'} --layout hf-cache")
    blobs = list((_repo_folder(tmp_path / "tree", repo_id) / "blobs").iterdir())
    for blob in blobs:  # named as the Hub names them: sha256 (LFS) or git sha1, never a Xet hash
        digest = hashlib.sha256(blob.read_bytes()).hexdigest()
        assert blob.name == digest or len(blob.name) == 40, blob.name
    code = (f"import transformers; transformers.AutoModelForCausalLM.from_pretrained({repo_id!r}, "
            f"revision={lock['sha']!r})")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "tree"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_an_unknown_xet_hash_is_our_error_naming_the_file(shell, big_repo, hf_cache, hub_server, capfd):
    repo_id, _ = big_repo
    hub_server.xet_unknown_hash = {"model-00002"}
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"{repo_id} --as m")
    message = str(info.value)
    assert "model-00002-of-00003.safetensors" in message and "Xet storage" in message
    assert "404" in message and hub_server.cas_endpoint in message and "missing from the Hub's storage" in message
    assert "RuntimeError" not in message and "Task error" not in message
    assert "Traceback" not in capfd.readouterr().err and "m" not in shell.user_ns


def test_a_refused_xet_token_is_our_error_at_once(shell, big_repo, hf_cache, hub_server):
    repo_id, _ = big_repo
    hub_server.errors = {"/xet-read-token/": 403}
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"{repo_id} --as m")
    assert "403" in str(info.value) and "m" not in shell.user_ns


def test_a_passing_cas_failure_heals_by_itself(shell, big_repo, hf_cache, hub_server):
    repo_id, folder = big_repo
    hub_server.errors = {"/reconstructions/": [503]}
    shell.run_line_magic("load_model", f"{repo_id} --as m")
    assert hub_server.errors["/reconstructions/"] == [] and _equal(shell.user_ns["m"], folder)


def test_no_traceback_from_xet_progress_in_a_real_kernel_shape(shell, big_repo, hf_cache, hub_server, capfd):
    """hf_xet's reporter calls set_postfix_str / update_transfer on the progress class: before, each call printed
    an AttributeError traceback and froze the file's progress."""
    repo_id, _ = big_repo
    hub_server.throttle_bytes_per_s = 4_000_000  # long enough for several progress reports
    shell.run_line_magic("load_model", f"{repo_id} --as m")
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert "AttributeError" not in captured.err + captured.out


def test_a_fresh_download_claims_no_deduplication(shell, tiny_hub, hf_cache, hub_server, capfd):
    """Bytes that crossed the network are not called deduplicated (the note is for files linked from the
    cache's shared store, as in the test above)."""
    hub_server.reset_counters()
    shell.run_line_magic("load_model", "tiny/llama --as m")
    out = capfd.readouterr().out
    assert hub_server.bytes_served(via="xet") > 0
    assert "fetched 6 files" in out and "deduplicated" not in out
