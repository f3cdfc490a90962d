"""Code from the Hub only with consent. A Hub kernel as --attn-implementation loads only with --trust-remote-code,
pinned to a full sha, online; anything else is refused before any request. A consented kernel runs from files
checked against the Hub's cache entries, is named in the record and in the lock with its hashes, and --locked
holds to it. The kernels switches of from_pretrained (--kw) stay refused; a token nested in a --kw value is
refused and not shown."""

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from IPython.core.error import UsageError

from hf_notebook.testing.kernel_repo import VARIANT, attention_kernel_files

KERNEL = "acme/counting-attn"


@pytest.fixture(scope="module")
def kernel_sha(hub_store):
    """The counting kernel, published once in the stand-in's kernel repos."""
    hub_store.kernels.create_repo(KERNEL, exist_ok=True)
    return hub_store.kernels.commit(KERNEL, attention_kernel_files())


@pytest.mark.parametrize("extra, says", [
    ("--attn-implementation kernels-community/flash-attn", "--trust-remote-code"),
    ("--attn-implementation evil/kernel", "--trust-remote-code"),
    ("--attn-implementation evil/kernel@" + "a" * 40, "--trust-remote-code"),
    ("--attn-implementation evil/kernel --kw allow_all_kernels=true", "kernels from the Hub"),
    ("--attn-implementation evil/kernel --trust-remote-code", "not pinned"),
    ("--attn-implementation evil/kernel@main --trust-remote-code", "not pinned"),
    ("--attn-implementation evil/kernel@abc123 --trust-remote-code", "not pinned"),
    ("--kw allow_all_kernels=true", "kernels from the Hub"),
    ("--kw use_kernels=true", "kernels from the Hub"),
    ("--kw 'kernel_config={\"x\": 1}'", "kernels from the Hub"),
])
@pytest.mark.parametrize("offline", ["", "--offline"])
def test_hub_kernels_without_consent_are_refused_before_any_request(shell, tiny_hub, hf_cache, hub_server, extra,
                                                                    says, offline):
    hub_server.reset_counters()
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"tiny/llama {extra} {offline} --as m")
    assert says in str(info.value)
    assert not hub_server.requests and "m" not in shell.user_ns


def test_a_pinned_trusted_kernel_is_still_refused_offline(shell, tiny_hub, hf_cache, hub_server, kernel_sha,
                                                          monkeypatch):
    line = f"tiny/llama@{'0' * 40} --attn-implementation {KERNEL}@{kernel_sha} --trust-remote-code --as m"
    hub_server.requests.clear()
    with pytest.raises(UsageError, match="offline"):
        shell.run_line_magic("load_model", f"{line} --offline")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set in the running kernel, read at call time
    with pytest.raises(UsageError, match="offline"):
        shell.run_line_magic("load_model", line)
    assert not hub_server.requests and "m" not in shell.user_ns


def _kernel_module():
    return next(m for name, m in sys.modules.items() if name.startswith("counting_attn"))


def test_a_consented_kernel_runs_pinned_checked_and_locked(shell, tiny_hub, hf_cache, hub_server, hub_store,
                                                           kernel_sha, capsys):
    spec, model = f"{KERNEL}@{kernel_sha}", f"tiny/llama@{hub_store.resolve('tiny/llama', 'main')}"
    hub_server.requests.clear()  # --trust-remote-code: the model is pinned too
    shell.run_line_magic("load_model", f"{model} --attn-implementation {spec} --trust-remote-code --as m")
    kernel_requests = [path for _, path in hub_server.requests if "kernels" in path]
    assert kernel_requests and all(kernel_sha in path for path in kernel_requests)  # by sha only: no ref, no main

    shell.run_line_magic("load_model", "tiny/llama --attn-implementation sdpa --as ref")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    before = _kernel_module().calls[0]
    with torch.no_grad():
        ours, theirs = shell.user_ns["m"](ids).logits, shell.user_ns["ref"](ids).logits
    assert _kernel_module().calls[0] > before  # the kernel ran, once per layer
    assert torch.equal(ours, theirs)  # and it is SDPA underneath

    text = capsys.readouterr().out
    assert "attention kernel" in text and spec in text
    files = attention_kernel_files()
    expected = {name.split(f"build/{VARIANT}/", 1)[1]: hashlib.sha256(data).hexdigest()
                for name, data in files.items() if name.startswith(f"build/{VARIANT}/")}
    from hf_notebook.magics import instance

    entry = json.loads(Path(instance(shell).lock_file).read_text())["models"][model]
    assert entry["kernel"] == {"repo": KERNEL, "sha": kernel_sha, "variant": VARIANT, "files": expected}

    with pytest.raises(UsageError, match=f"with the kernel {spec}"):  # --locked holds to the kernel it recorded
        shell.run_line_magic("load_model", f"{model} --locked --as again")
    shell.run_line_magic("load_model", f"{model} --locked --attn-implementation {spec} --trust-remote-code --as again")
    assert "again" in shell.user_ns


def _cached_variant(hf_cache, sha):
    return next(hf_cache.glob(f"kernels--acme--counting-attn/snapshots/{sha}/build/{VARIANT}"))


@pytest.mark.parametrize("damage", ["changed byte", "planted bytecode"])
def test_a_tampered_cached_kernel_is_refused_before_it_is_imported(shell, tiny_hub, hf_cache, hub_server, hub_store,
                                                                   kernel_sha, damage):
    model = f"tiny/llama@{hub_store.resolve('tiny/llama', 'main')}"
    line = f"{model} --attn-implementation {KERNEL}@{kernel_sha} --trust-remote-code"
    shell.run_line_magic("load_model", f"{line} --as m")
    variant = _cached_variant(hf_cache, kernel_sha)
    if damage == "changed byte":
        blob = (variant / "counting_attn" / "__init__.py").resolve()
        blob.write_bytes(blob.read_bytes().replace(b"calls[0] += 1", b"calls[0] += 9"))
        says = "was changed"
    else:
        (variant / "counting_attn" / "__pycache__").mkdir()
        (variant / "counting_attn" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\0" * 16)
        says = "not a file of that commit"
    with pytest.raises(UsageError, match=says):
        shell.run_line_magic("load_model", f"{line} --as again")
    assert "again" not in shell.user_ns


def test_a_token_nested_in_a_kw_value_is_refused_unshown(shell, tiny_hub, hf_cache, hub_server, capsys):
    token = "hf_" + "a1B2c3D4e5" * 3
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"tiny/llama --kw 'adapter_kwargs={{\"token\": \"{token}\"}}' --as m")
    assert "carries a token" in str(info.value) and token not in str(info.value)
    assert token not in capsys.readouterr().out and "m" not in shell.user_ns


def test_quoted_items_of_repeatable_options_lose_their_quotes(shell, tiny_hub, hf_cache):
    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    shell.run_line_magic("edit_device_map", "m --set 'model.layers.1=disk'")
    assert shell.user_ns["m"].hf_device_map["model.layers.1"] == "disk"


def test_a_kernel_that_cannot_be_fetched_is_named_with_what_to_do(shell, tiny_hub, hf_cache, hub_store, kernel_sha):
    model = f"tiny/llama@{hub_store.resolve('tiny/llama', 'main')}"
    hub_store.kernels.create_repo("acme/no-build", exist_ok=True)
    no_build = hub_store.kernels.commit("acme/no-build", {"README.md": b"# no build yet\n"})
    for kernel, says in [("acme/missing@" + "a" * 40, "There is no kernel repo acme/missing"),
                         (f"{KERNEL}@" + "b" * 40, f"has no commit {'b' * 40}"),
                         (f"acme/no-build@{no_build}", "has no build for this machine")]:
        with pytest.raises(UsageError, match=says):
            shell.run_line_magic("load_model", f"{model} --attn-implementation {kernel} --trust-remote-code --as m")
        assert "m" not in shell.user_ns
