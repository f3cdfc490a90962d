"""The Hub stand-in speaks Xet as the Hub does: the real client, with its defaults, downloads and uploads
big files through the real hf_xet; clients without Xet get the bytes from the CAS bridge."""

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from hf_notebook.testing.hub import RepoStore

hf_xet = pytest.importorskip("hf_xet")


@pytest.fixture
def xet_on(monkeypatch):
    """The client's default where hf_xet is installed (set again here, so a user's HF_HUB_DISABLE_XET cannot
    turn these tests into LFS tests)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)


@pytest.fixture
def xet_off(monkeypatch):
    """Xet switched off in the client: what a user with HF_HUB_DISABLE_XET=1 (or without hf_xet) gets, who then
    downloads Xet-stored files over plain HTTP through the CAS bridge. The same downloads with Xet on are the
    tests above."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def xet_hash_of(data: bytes, folder) -> str:
    """The Xet hash hf_xet gives ``data``, uploading it into a throwaway local CAS in ``folder``.

    Not ``hf_xet.hash_files``: that one replaces the process's SIGINT handler for good (with
    ``SA_RESTART``), and a later test's Ctrl-C would not end a wait until the wait ends by itself.
    """
    folder.mkdir()
    (folder / "content").write_bytes(data)
    cas = {"endpoint": f"local://{folder / 'cas'}", "token": "x", "token_expiry_unix_secs": 2**40}
    with hf_xet.XetSession().new_upload_commit(**cas) as commit:
        handle = commit.start_upload_file(str(folder / "content"))
    return handle.result().xet_info.hash


def with_weights(store, repo_id, data: bytes, **create) -> str:
    store.create_repo(repo_id, **create)
    return store.commit(repo_id, {"model.safetensors": data, "config.json": b"{}"})


def paths(server) -> list[str]:
    return [path for _, path in server.requests]


# --------------------------------------------------------------------------- downloads


def test_download_goes_through_xet_into_the_shared_blob_store(hub_server, hub_store, hub_repo_id, hf_cache,
                                                             tmp_path, xet_on):
    from huggingface_hub import HfApi, hf_hub_download

    data = os.urandom(1_500_000)
    sha = with_weights(hub_store, hub_repo_id, data)
    xet_hash = xet_hash_of(data, tmp_path / "aside")

    path = hf_hub_download(hub_repo_id, "model.safetensors")
    assert open(path, "rb").read() == data
    assert hub_server.bytes_served(via="bridge") == hub_server.bytes_served(via="resolve") == 0
    assert hub_server.bytes_served(hub_repo_id, via="xet") >= len(data)
    assert f"/api/models/{hub_repo_id}/xet-read-token/{sha}" in paths(hub_server)
    assert f"/v2/reconstructions/{xet_hash}" in paths(hub_server)
    shared = hf_cache / "blobs" / xet_hash[:2] / xet_hash
    repo_blob = hf_cache / f"models--{hub_repo_id.replace('/', '--')}" / "blobs" / sha256(data)
    assert repo_blob.is_symlink() and os.path.realpath(repo_blob) == os.path.realpath(path) == str(shared)

    files = {f.path: f for f in HfApi().list_repo_tree(hub_repo_id)}
    assert files["model.safetensors"].xet_hash == xet_hash and files["config.json"].xet_hash is None
    [info] = HfApi().get_paths_info(hub_repo_id, ["model.safetensors"])
    assert info.xet_hash == xet_hash and info.lfs.sha256 == sha256(data)


def test_the_same_content_in_another_repo_is_linked_not_transferred(hub_server, hub_store, hub_repo_id, hf_cache,
                                                                    xet_on):
    from huggingface_hub import hf_hub_download

    data = os.urandom(300_000)
    with_weights(hub_store, hub_repo_id, data)
    with_weights(hub_store, f"{hub_repo_id}-twin", data)
    first = hf_hub_download(hub_repo_id, "model.safetensors")
    hub_server.reset_counters()
    second = hf_hub_download(f"{hub_repo_id}-twin", "model.safetensors")
    assert os.path.realpath(first) == os.path.realpath(second) and open(second, "rb").read() == data
    assert hub_server.bytes_served() == 0 and not any("/reconstructions/" in p for p in paths(hub_server))


def test_a_file_made_of_several_xorbs_is_rebuilt(hub_server, hub_store, hub_repo_id, hf_cache, xet_on):
    """A file sharing its first bytes with stored content is cut into segments of two xorbs (dedup)."""
    from huggingface_hub import hf_hub_download

    head, tail = os.urandom(600_000), os.urandom(400_000)
    with_weights(hub_store, hub_repo_id, head)
    hub_store.commit(hub_repo_id, {"grown.safetensors": head + tail})
    grown = hub_store.xet.find(sha256(head + tail))
    assert len({segment.xorb for segment in grown.segments}) == 2
    assert open(hf_hub_download(hub_repo_id, "grown.safetensors"), "rb").read() == head + tail


@pytest.mark.parametrize("first, last", [(0, 99), (123_456, 700_000), (599_990, 600_010), (999_000, 999_999)])
def test_a_reconstruction_for_a_byte_range_covers_it(hub_server, hub_store, hub_repo_id, first, last):
    """The CAS's answer for ``Range: bytes=first-last``, followed by hand (random bytes are stored uncompressed)."""
    from huggingface_hub import get_session

    data = os.urandom(1_000_000)
    hub_store.create_repo(hub_repo_id)
    hub_store.commit(hub_repo_id, {"a.bin": data[:600_000]})  # so the file is cut into two segments
    sha = hub_store.commit(hub_repo_id, {"b.bin": data})
    session = get_session()
    token_url = f"{hub_server.endpoint}/api/models/{hub_repo_id}/xet-read-token/{sha}"
    token = session.get(token_url).json()["accessToken"]
    xet_hash = hub_store.xet.find(sha256(data)).hash
    answer = session.get(f"{hub_server.cas_endpoint}/v2/reconstructions/{xet_hash}",
                         headers={"Authorization": f"Bearer {token}", "Range": f"bytes={first}-{last}"}).json()
    rebuilt = b"".join(term_bytes(session, answer, term) for term in answer["terms"])
    offset = answer["offset_into_first_range"]
    assert rebuilt[offset : offset + last - first + 1] == data[first : last + 1]
    assert len(rebuilt) - offset < last - first + 1 + 2 * 128 * 1024  # whole chunks only, none beyond the range


def term_bytes(session, answer: dict, term: dict) -> bytes:
    """The bytes of one term: fetch the xorb range that holds its chunks, keep those chunks' bytes."""
    first, end = term["range"]["start"], term["range"]["end"]
    [(url, span)] = [(fetch["url"], fetch["ranges"][0]) for fetch in answer["xorbs"][term["hash"]]
                     if fetch["ranges"][0]["chunks"]["start"] <= first and end <= fetch["ranges"][0]["chunks"]["end"]]
    raw = session.get(url, headers={"Range": f"bytes={span['bytes']['start']}-{span['bytes']['end']}"}).content
    chunks, pos = [], 0
    while pos < len(raw):  # each chunk: an 8-byte header, then its bytes (random ones are stored as they are)
        length, scheme = int.from_bytes(raw[pos + 1 : pos + 4], "little"), raw[pos + 4]
        assert scheme == 0
        chunks.append(raw[pos + 8 : pos + 8 + length])
        pos += 8 + length
    return b"".join(chunks[first - span["chunks"]["start"] : end - span["chunks"]["start"]])


def test_a_private_repo_needs_the_token_for_its_xet_token_too(hub_server, hub_store, hub_repo_id, hub_token,
                                                              hf_cache, xet_on):
    from huggingface_hub import get_session, hf_hub_download

    data = os.urandom(200_000)
    sha = with_weights(hub_store, hub_repo_id, data, private=True)
    token_url = f"{hub_server.endpoint}/api/models/{hub_repo_id}/xet-read-token/{sha}"
    denied = get_session().get(token_url)
    assert denied.status_code == 401 and denied.headers["X-Error-Code"] == "RepoNotFound"
    answer = get_session().get(token_url, headers={"Authorization": f"Bearer {hub_token}"})
    assert answer.json()["casUrl"] == answer.headers["X-Xet-Cas-Url"] == hub_server.cas_endpoint
    assert answer.json()["accessToken"] == answer.headers["X-Xet-Access-Token"]
    assert answer.json()["exp"] == int(answer.headers["X-Xet-Token-Expiration"]) > time.time()
    reconstruction = f"{hub_server.cas_endpoint}/v2/reconstructions/{hub_store.xet.find(sha256(data)).hash}"
    assert get_session().get(reconstruction, headers={"Authorization": "Bearer forged"}).status_code == 401
    assert open(hf_hub_download(hub_repo_id, "model.safetensors", token=hub_token), "rb").read() == data


def test_without_xet_the_bridge_serves_the_bytes_with_range(hub_server, hub_store, hub_repo_id, hf_cache, xet_off):
    from huggingface_hub import get_hf_file_metadata, get_session, hf_hub_download, hf_hub_url

    data = os.urandom(500_000)
    sha = with_weights(hub_store, hub_repo_id, data)
    url = hf_hub_url(hub_repo_id, "model.safetensors")
    head = get_session().head(url, follow_redirects=False)  # as the Hub: to the bridge on another host, Xet headers
    assert head.status_code == 302 and head.headers["Location"].startswith(f"{hub_server.cas_endpoint}/cas-bridge/")
    assert head.headers["X-Xet-Hash"] == hub_store.xet.find(sha256(data)).hash
    assert head.links["xet-auth"]["url"] == f"{hub_server.endpoint}/api/models/{hub_repo_id}/xet-read-token/{sha}"
    assert head.headers["X-Linked-Etag"] == f'"{sha256(data)}"' and head.headers["X-Linked-Size"] == str(len(data))
    meta = get_hf_file_metadata(url)  # the client stops at the redirect: metadata from the Hub's own answer
    assert (meta.etag, meta.size, meta.commit_hash) == (sha256(data), len(data), sha)

    path = hf_hub_download(hub_repo_id, "model.safetensors")
    assert open(path, "rb").read() == data and not (hf_cache / "blobs").exists()  # no shared store without Xet
    assert hub_server.bytes_served(hub_repo_id, via="bridge") == len(data) == hub_server.bytes_served()
    ranged = get_session().get(url, headers={"Range": "bytes=1000-1999"})
    assert ranged.status_code == 206 and ranged.content == data[1000:2000]
    forged = head.headers["Location"].replace("signature=", "signature=0")
    assert get_session().get(forged).status_code == 403


@pytest.mark.parametrize("where", ["repo", "server"])
def test_lfs_only_serves_no_xet_headers(hub_server, hub_store, hub_repo_id, hf_cache, monkeypatch, xet_on, where):
    from huggingface_hub import HfApi, get_session, hf_hub_download, hf_hub_url

    data = os.urandom(300_000)
    sha = with_weights(hub_store, hub_repo_id, data, xet=where == "server")  # LFS-only: the repo, or the server
    if where == "server":
        monkeypatch.setattr(hub_server, "xet", False)
    head = get_session().head(hf_hub_url(hub_repo_id, "model.safetensors"))
    assert head.status_code == 200 and not any(name.lower().startswith("x-xet") for name in head.headers)
    assert "Link" not in head.headers
    assert all(f.xet_hash is None for f in HfApi().list_repo_tree(hub_repo_id))
    assert open(hf_hub_download(hub_repo_id, "model.safetensors"), "rb").read() == data
    assert hub_server.bytes_served(via="resolve") == len(data) == hub_server.bytes_served()
    token_route = get_session().get(f"{hub_server.endpoint}/api/models/{hub_repo_id}/xet-read-token/{sha}")
    assert token_route.status_code == (404 if where == "server" else 200)


# --------------------------------------------------------------------------- uploads


def test_upload_folder_goes_through_xet(hub_server, hub_store, hub_repo_id, hub_token, hf_cache, tmp_path, xet_on):
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi(token=hub_token)
    api.create_repo(hub_repo_id)
    weights = os.urandom(700_000)
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text("{}")
    hub_server.reset_counters()

    commit = api.upload_folder(repo_id=hub_repo_id, folder_path=folder)
    calls = [(method, path.replace(hub_repo_id, "{repo}")) for method, path in hub_server.requests]
    assert calls == [
        ("POST", "/api/models/{repo}/preupload/main"),
        ("GET", "/api/models/{repo}/xet-write-token/main"),  # then hf_xet writes into the local CAS
        ("POST", "/api/models/{repo}/commit/main"),
    ]
    assert hub_server.lfs_uploads == []
    stored = hub_store.snapshot(hub_repo_id, commit.oid).files["model.safetensors"]
    assert stored.lfs.oid == sha256(weights) and hub_store.read(hub_repo_id, "model.safetensors") == weights
    xet_hash = xet_hash_of(weights, tmp_path / "aside")
    assert hub_store.xet.find(sha256(weights)).hash == xet_hash
    path = hf_hub_download(hub_repo_id, "model.safetensors", revision=commit.oid, token=hub_token)
    assert open(path, "rb").read() == weights and f"/v2/reconstructions/{xet_hash}" in paths(hub_server)


def test_create_commit_of_bytes_as_a_pull_request(hub_server, hub_store, hub_repo_id, hf_cache, xet_on):
    from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download

    api = HfApi()
    api.create_repo(hub_repo_id)
    weights = os.urandom(400_000)
    commit = api.create_commit(hub_repo_id, [CommitOperationAdd("w.safetensors", weights)], commit_message="pr",
                               create_pr=True)
    assert commit.pr_revision == "refs/pr/1"
    assert f"/api/models/{hub_repo_id}/xet-write-token/None" in paths(hub_server)  # the PR's ref is not known yet
    assert open(hf_hub_download(hub_repo_id, "w.safetensors", revision="refs/pr/1"), "rb").read() == weights


def test_a_commit_naming_content_never_uploaded_is_refused(hub_server, hub_store, hub_repo_id, tmp_path, xet_on):
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    api.create_repo(hub_repo_id)
    weights = os.urandom(5000)
    operation = CommitOperationAdd("model.safetensors", weights)
    operation._upload_mode, operation._is_uploaded = "lfs", True  # as if it had gone to Xet storage
    with pytest.raises(HfHubHTTPError) as refused:
        api.create_commit(hub_repo_id, [operation], commit_message="dangling")
    assert refused.value.response.status_code == 400 and "never uploaded" in str(refused.value)
    assert hub_store.xet.find(sha256(weights)) is None


# --------------------------------------------------------------------------- knobs


def test_an_unknown_xet_hash_fails_the_download_at_once(hub_server, hub_store, hub_repo_id, hf_cache, monkeypatch,
                                                        xet_on):
    from huggingface_hub import HfApi, hf_hub_download

    data = os.urandom(200_000)
    with_weights(hub_store, hub_repo_id, data)
    hub_store.commit(hub_repo_id, {"other.safetensors": data[::-1]})
    monkeypatch.setattr(hub_server, "xet_unknown_hash", {"model."})
    announced = {f.path: f.xet_hash for f in HfApi().list_repo_tree(hub_repo_id)}
    assert announced["model.safetensors"] != hub_store.xet.find(sha256(data)).hash
    assert announced["other.safetensors"] == hub_store.xet.find(sha256(data[::-1])).hash
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="404 Not Found"):
        hf_hub_download(hub_repo_id, "model.safetensors")
    assert time.monotonic() - started < 5
    assert open(hf_hub_download(hub_repo_id, "other.safetensors"), "rb").read() == data[::-1]


@pytest.mark.parametrize("piece, status, error", [
    ("/xet-read-token/", 403, "HfHubHTTPError"),
    ("/reconstructions/", 403, "RuntimeError"),
    ("/xorbs/", 404, "RuntimeError"),  # a 403 there reads as an expired URL: hf_xet asks again, for minutes
])
def test_errors_reach_the_token_route_and_the_cas(hub_server, hub_store, hub_repo_id, hf_cache, xet_on, piece,
                                                  status, error):
    import huggingface_hub
    from huggingface_hub import hf_hub_download

    with_weights(hub_store, hub_repo_id, os.urandom(200_000))
    hub_server.errors = {piece: status}  # a 4xx: neither the client nor hf_xet retries it (a 5xx: for minutes)
    started = time.monotonic()
    with pytest.raises(getattr(huggingface_hub.errors, error, RuntimeError), match=str(status)):
        hf_hub_download(hub_repo_id, "model.safetensors")
    assert time.monotonic() - started < 5 and any(piece in path for path in paths(hub_server))


def test_a_cut_xorb_download_is_retried_and_completes(hub_server, hub_store, hub_repo_id, hf_cache, xet_on):
    from huggingface_hub import hf_hub_download

    data = os.urandom(600_000)
    with_weights(hub_store, hub_repo_id, data)
    hub_server.fail_after_bytes = 100_000
    assert open(hf_hub_download(hub_repo_id, "model.safetensors"), "rb").read() == data
    assert hub_server.fail_after_bytes is None and hub_server.bytes_served(via="xet") >= len(data) + 100_000


def test_throttle_slows_xet_downloads(hub_server, hub_store, hub_repo_id, hf_cache, xet_on):
    from huggingface_hub import hf_hub_download

    with_weights(hub_store, hub_repo_id, os.urandom(200_000))
    hub_server.throttle_bytes_per_s = 200_000
    started = time.monotonic()
    hf_hub_download(hub_repo_id, "model.safetensors")
    assert time.monotonic() - started >= 0.95  # 200 KB at 200 kB/s


def test_a_slow_xet_download_stops_at_ctrl_c(hub_server, hub_store, hub_repo_id, hf_cache, xet_on):
    """A throttled CAS makes a Xet download slow enough to press Ctrl-C in the middle of it."""
    from huggingface_hub import hf_hub_download

    with_weights(hub_store, hub_repo_id, os.urandom(2_000_000))
    hub_server.throttle_bytes_per_s = 500_000
    pressed, finished = [], threading.Event()

    def press_ctrl_c_once_bytes_flow():
        while hub_server.bytes_served(via="xet") == 0 and not finished.wait(0.01):
            pass
        if not finished.is_set():  # never a Ctrl-C after the download: it would stop the test session
            pressed.append(time.monotonic())
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c_once_bytes_flow)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            hf_hub_download(hub_repo_id, "model.safetensors")
    finally:
        finished.set()
        presser.join()
    assert time.monotonic() - pressed[0] < 1
    assert hub_server.bytes_served(via="xet") < 2_000_000


# --------------------------------------------------------------------------- store and CLI


def test_the_store_puts_lfs_files_of_xet_repos_into_the_cas(tmp_path):
    store = RepoStore(tmp_path / "hub")
    weights, other = os.urandom(50_000), os.urandom(50_000)
    with_weights(store, "org/xet", weights)
    with_weights(store, "org/lfs", other, xet=False)
    stored = store.xet.find(sha256(weights))
    assert (stored.sha256, stored.size) == (sha256(weights), len(weights))
    assert stored.hash == xet_hash_of(weights, tmp_path / "aside")
    assert store.is_xet("org/xet") and not store.is_xet("org/lfs") and store.xet.find(sha256(other)) is None
    assert store.xet.file(stored.hash) == stored


def test_cli_server_takes_a_push_through_xet_and_serves_it(tmp_path, hf_cache, xet_on):
    """A stand-in in another process: the push writes into its CAS, which it then reads in turn."""
    from huggingface_hub import HfApi, hf_hub_download

    cli = [sys.executable, "-m", "hf_notebook.testing.hub", "--root", str(tmp_path / "hub")]
    process = subprocess.Popen(cli, stdout=subprocess.PIPE, text=True)
    try:
        endpoint = process.stdout.readline().strip()
        api = HfApi(endpoint=endpoint)
        api.create_repo("user/cli")
        weights = os.urandom(300_000)
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "model.safetensors").write_bytes(weights)
        commit = api.upload_folder(repo_id="user/cli", folder_path=tmp_path / "out")
        path = hf_hub_download("user/cli", "model.safetensors", revision=commit.oid, endpoint=endpoint)
        assert open(path, "rb").read() == weights
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
    assert RepoStore(tmp_path / "hub").read("user/cli", "model.safetensors") == weights
