"""The download path under a busy or slow server: file GETs retried on 5xx, Ctrl-C back within a second at any
link speed, every damaged cached file named at once offline. Each runs on both of the client's paths where both
apply: Xet (hf_xet, the real Hub's path for large files) and plain HTTP (LFS-only repos: older repos, other
servers)."""

import signal
import threading
import time

import pytest
import torch
from IPython.core.error import UsageError


def _fetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("hf_notebook-fetch")]


def _state_equal(model, folder):
    import transformers

    expected = transformers.AutoModelForCausalLM.from_pretrained(folder).state_dict()
    got = model.state_dict()
    return got.keys() == expected.keys() and all(torch.equal(got[k], v) for k, v in expected.items())


def test_a_503_on_a_file_is_retried_after_its_retry_after(shell, big_lfs_repo, hf_cache, hub_server):
    """huggingface_hub 2.4 retries a file GET on 408/429 only: one 503 used to fail the whole load."""
    repo_id, folder = big_lfs_repo
    hub_server.errors = {"model-00002": [0, 503]}  # its HEAD passes (0: served), its GET gets the 503
    hub_server.retry_after = "1"
    t0 = time.perf_counter()
    shell.run_line_magic("load_model", f"{repo_id} --as m")
    assert time.perf_counter() - t0 >= 1.0  # Retry-After was honoured
    assert hub_server.errors["model-00002"] == []  # the 503 was really answered
    gets = [p for m, p in hub_server.requests if m == "GET" and "model-00002" in p]
    assert len(gets) == 2  # the GET that failed, and the one that succeeded
    assert _state_equal(shell.user_ns["m"], folder)


def test_a_server_that_keeps_failing_is_named_once_with_what_to_do(shell, big_lfs_repo, hf_cache, hub_server):
    repo_id, _ = big_lfs_repo
    hub_server.errors = {"model-00001": 503}
    hub_server.retry_after = "0"  # every retry at once (the client's and ours): the message is what is tested
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"{repo_id} --as m")
    message = str(info.value)
    assert "503" in message and "model-00001" in message and hub_server.endpoint in message
    assert "try again" in message and "m" not in shell.user_ns
    assert _fetch_threads() == []


@pytest.mark.parametrize("rate", [100_000, 20_000])
def test_ctrl_c_returns_within_a_second_on_a_slow_link(shell, big_repo_both, hf_cache, hub_server, rate):
    """Before: an HTTP download stopped at its next 1 MB chunk (10 s at 100 kB/s, 50 s at 20 kB/s), and a Xet one
    ran on in hf_xet's threads (5-14 s)."""
    from hf_notebook.core.events import FileProgress
    from hf_notebook import ui
    from hf_notebook.ui.text import TextRenderer
    import io

    repo_id, _ = big_repo_both
    pressed, once = [], threading.Lock()

    def press():
        pressed.append(time.perf_counter())
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    class PressMidDownload(TextRenderer):
        """Ctrl-C from inside a download's own progress report, once its first bytes came: surely mid-download."""

        def __call__(self, event):
            super().__call__(event)
            if isinstance(event, FileProgress) and event.filename.endswith(".safetensors") \
                    and 0 < event.done < (event.total or 0) and once.acquire(blocking=False):
                press()

    monkey = pytest.MonkeyPatch()
    monkey.setattr(ui, "make_renderer", lambda *a, **k: PressMidDownload(io.StringIO()))
    hub_server.throttle_bytes_per_s = rate
    try:
        with pytest.raises(KeyboardInterrupt):
            shell.run_line_magic("load_model", f"{repo_id} --as m")
        back = time.perf_counter() - pressed[0]
    finally:
        monkey.undo()
    assert back < 1.0, f"{back:.2f} s from Ctrl-C to the prompt at {rate} B/s"
    deadline = time.monotonic() + 2
    while _fetch_threads() and time.monotonic() < deadline:  # the last ones end on their own, within moments
        time.sleep(0.02)
    assert _fetch_threads() == []
    assert "m" not in shell.user_ns
    blobs = hf_cache / f"models--{repo_id.replace('/', '--')}" / "blobs"
    assert not list(blobs.glob("*.incomplete"))  # huggingface_hub removes its partial files


def test_offline_every_damaged_file_is_named_at_once(shell, big_repo_both, hf_cache, hub_server, flip):
    repo_id, _ = big_repo_both
    shell.run_line_magic("load_model", f"{repo_id} --as m")
    snapshot = next((hf_cache / f"models--{repo_id.replace('/', '--')}" / "snapshots").iterdir())
    victims = sorted(snapshot.glob("model-*.safetensors"))[:2]
    for victim in victims:
        flip(victim)
    hub_server.reset_counters()
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"{repo_id}@{snapshot.name} --offline --as broken")
    message = str(info.value)
    assert all(v.name in message for v in victims), message
    assert "damaged" in message and "--force-download" in message
    assert "broken" not in shell.user_ns and not hub_server.requests


@pytest.mark.parametrize("online", [True, False])
def test_a_snapshot_link_replaced_by_a_same_size_file_is_caught(shell, big_repo_both, hf_cache, hub_server, online):
    """A config.json link swapped for a plain file of the same size: online it is checked against the Hub's git blob
    id and fetched again; offline, with nothing to check it against, it is refused as put there by hand."""
    repo_id, _ = big_repo_both
    shell.run_line_magic("load_model", f"{repo_id} --as m")
    snapshot = next((hf_cache / f"models--{repo_id.replace('/', '--')}" / "snapshots").iterdir())
    config = snapshot / "config.json"
    text = config.read_text()
    config.unlink()
    config.write_text(text.replace('"hidden_act": "silu"', '"hidden_act": "gelu"'))
    assert len(config.read_text()) == len(text)
    if online:
        shell.run_line_magic("load_model", f"{repo_id}@{snapshot.name} --as again")
        assert shell.user_ns["again"].config.hidden_act == "silu"
    else:
        with pytest.raises(UsageError) as info:
            shell.run_line_magic("load_model", f"{repo_id}@{snapshot.name} --offline --as again")
        assert "config.json" in str(info.value) and "by hand" in str(info.value)
