"""Ctrl-C during a download: back within a second, no download thread left, nothing bound, panel says cancelled,
and the same cell run again succeeds."""

import signal
import threading
import time

import pytest
import torch

# An exception raised while a cut download's stream is closed (our cancel raising inside its GeneratorExit) is
# printed and ignored by Python: here it fails the test.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


def _fetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("hf_notebook-fetch")]


def test_ctrl_c_during_download_returns_at_once(shell, big_repo_both, hf_cache, hub_server, monkeypatch):
    import io

    from hf_notebook import ui
    from hf_notebook.ui.text import TextRenderer

    from hf_notebook.core.events import FileProgress

    repo_id, folder = big_repo_both
    pressed = []

    def press():  # a real SIGINT to the main thread, as Ctrl-C in a terminal or a kernel interrupt sends
        pressed.append(time.perf_counter())
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    once = threading.Lock()

    class PressMidDownload(TextRenderer):
        """The user presses Ctrl-C once a shard's first bytes have arrived and the rest has not. Pressed from that
        download's own thread, inside its progress report: the download cannot have ended before the SIGINT."""

        def __call__(self, event):
            super().__call__(event)
            if isinstance(event, FileProgress) and event.filename.endswith(".safetensors") \
                    and 0 < event.done < (event.total or 0) and once.acquire(blocking=False):  # several threads report
                press()

    renderers = []
    monkeypatch.setattr(ui, "make_renderer",
                        lambda *a, **k: renderers.append(PressMidDownload(io.StringIO())) or renderers[-1])
    hub_server.throttle_bytes_per_s = 2_000_000  # per download: the three shards take 3 s
    shell.user_ns["m"] = sentinel = object()
    with pytest.raises(KeyboardInterrupt):
        shell.run_line_magic("load_model", f"{repo_id} --as m")
    back = time.perf_counter() - pressed[0]
    assert back < 1.0, f"{back:.2f} s from Ctrl-C to the prompt"
    assert _fetch_threads() == []
    assert shell.user_ns["m"] is sentinel
    assert "cancelled during fetch" in renderers[0].final.text
    assert hub_server.bytes_served(repo_id) < sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2

    complete = set(renderers[0].state.finished_files())
    assert "start over" in renderers[0].final.text  # the record says what a re-run reuses

    hub_server.throttle_bytes_per_s = None
    hub_server.reset_counters()
    shell.run_line_magic("load_model", f"{repo_id} --as m")
    cached = {f.filename for f in renderers[1].state.files.values() if f.cached}
    assert complete <= cached  # files complete before the Ctrl-C are not fetched again
    expected = transformers_model(folder)
    state = shell.user_ns["m"].state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.state_dict().items())


def transformers_model(folder):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(folder)


@pytest.fixture
def tls_hub(hub_store, tmp_path, monkeypatch):
    """The session's repos served over HTTPS (as the Hub and its CDN are), its certificate trusted through
    SSL_CERT_FILE: the client is huggingface_hub's default one, made afresh for the test."""
    import shutil
    import ssl
    import subprocess

    import huggingface_hub

    from hf_notebook.testing.hub import HubServer

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    huggingface_hub.close_session()
    with HubServer(hub_store, tls=context) as server:
        yield server
    huggingface_hub.close_session()  # the next test's client trusts the usual certificates again


@pytest.mark.parametrize("connection", ["new", "used before"])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_download_waiting_for_its_answer_stops_at_once(request, tiny_hub, hf_cache, scheme, connection):
    """A call is cancelled while one of its downloads waits for the server's first byte, on a new connection or
    on one the call used before (the client's pool hands it back), over HTTP and HTTPS: the download ends at once,
    not when the server answers nor after huggingface_hub's one-second pause before it tries a failed download
    again."""
    import huggingface_hub
    from huggingface_hub import get_session, hf_hub_url
    from huggingface_hub.file_download import http_get

    from hf_notebook.core.hub.transfer import Downloads, in_parallel

    server = request.getfixturevalue("hub_server" if scheme == "http" else "tls_hub")
    assert server.endpoint.startswith(f"{scheme}://")
    huggingface_hub.close_session()  # no idle connection from earlier tests: "new" opens one
    url = lambda name: hf_hub_url("tiny/llama", name, endpoint=server.endpoint)  # noqa: E731
    server.answer_delay = {"generation_config.json": 5.0}
    waiting = threading.Event()

    def get(name):
        if name == "slow":
            if connection == "used before":
                get_session().get(url("config.json")).raise_for_status()  # back into the pool, kept alive
            waiting.set()
            with open(hf_cache / "slow.part", "wb") as out:
                http_get(url("generation_config.json"), out)
        else:
            waiting.wait(5)
            time.sleep(0.3)  # the slow request is sent and waits
            raise RuntimeError("another download of the call failed")

    started = time.perf_counter()
    with pytest.raises(RuntimeError, match="another download"):
        in_parallel(get, ["slow", "failing"], Downloads())
    took = time.perf_counter() - started - 0.3
    assert took < 0.5, f"the waiting download ended {took:.2f} s after the failure"
    assert _fetch_threads() == []


def test_a_cut_download_whose_stream_is_dropped_unread_raises_nothing_more(hub_server, tiny_hub):
    """A download's body stream left half read when its call is cancelled, then dropped (the generator is closed
    by the collector): no exception escapes the close (Python would print it and go on)."""
    import gc

    from huggingface_hub import get_session, hf_hub_url

    from hf_notebook.core.hub.transfer import Downloads

    downloads = Downloads()
    hub_server.throttle_bytes_per_s = 200_000
    url = hf_hub_url("tiny/llama", "model-00001-of-00005.safetensors", endpoint=hub_server.endpoint)
    with downloads.running():
        with get_session().stream("GET", url) as response:
            chunks = response.iter_raw(1024)
            next(chunks)
            downloads.cancel()
            del chunks
            gc.collect()


def test_a_dropped_connection_resumes_where_it_stopped(shell, big_repo_both, hf_cache, hub_server, request):
    """The stand-in cuts a 6 MB shard's body after 2.5 MB. Plain HTTP resumes from its last 64 kB chunk; hf_xet
    fetches the cut xorb range again (one term, not the file)."""
    repo_id, folder = big_repo_both
    shard = sorted(folder.glob("*.safetensors"))[0]
    hub_server.fail_after_bytes = 2_500_000
    shell.run_line_magic("load_model", f"{repo_id} --as m")
    assert hub_server.fail_after_bytes is None  # the cut really happened
    total = hub_server.bytes_served(repo_id)
    sent_once = sum(p.stat().st_size for p in folder.glob("*.safetensors")) + (folder / "config.json").stat().st_size
    resent = total - sent_once
    assert shard.stat().st_size > 5_000_000
    if "lfs" in request.node.callspec.id:
        assert 0 < resent <= 64 * 2**10 + 100_000  # at most one chunk again
    else:
        assert resent < 2_500_000  # what was cut short, not the whole file
    expected = transformers_model(folder)
    state = shell.user_ns["m"].state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.state_dict().items())


def test_a_cancelled_load_ends_with_one_line_and_no_frames(shell, tiny_hub, hf_cache, monkeypatch, capsys):
    import io

    from hf_notebook import ui
    from hf_notebook.core.events import ShardProgress
    from hf_notebook.ui.text import TextRenderer

    class Interrupting(TextRenderer):
        def __call__(self, event):
            super().__call__(event)
            if isinstance(event, ShardProgress) and event.tensors_done == 1:
                raise KeyboardInterrupt  # the first tensor is in: downloads done, the load under way

    monkeypatch.setattr(ui, "make_renderer", lambda *a, **k: Interrupting(io.StringIO()))
    capsys.readouterr()
    outcome = shell.run_cell("%load_model tiny/llama --device-map cpu --as m")
    assert isinstance(outcome.error_in_exec, KeyboardInterrupt) and "m" not in shell.user_ns
    shown = capsys.readouterr()
    lines = [line for line in (shown.out + shown.err).splitlines() if line.strip()]
    assert len(lines) == 1, lines  # no traceback, no frame of magics.py, no source comment
    assert lines[0].startswith("KeyboardInterrupt: The load of tiny/llama cancelled during load; nothing was bound.")
    assert "Run the cell again: it reuses the" in lines[0] and "complete files in the cache" in lines[0]


def test_ctrl_c_in_any_magic_is_one_line(shell, tiny_hub, hf_cache, monkeypatch, capsys):
    from hf_notebook.core.session import Session

    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Session, "save", interrupted)
    capsys.readouterr()
    outcome = shell.run_cell("%save_model m somewhere")
    assert isinstance(outcome.error_in_exec, KeyboardInterrupt)
    shown = capsys.readouterr()
    assert [line for line in (shown.out + shown.err).splitlines() if line.strip()] == \
        ["KeyboardInterrupt: %save_model cancelled."]
