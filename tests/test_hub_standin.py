"""The Hub stand-in answers the real huggingface_hub client and transformers as the Hub would: the LFS tier.

Here the stand-in is a Hub without Xet storage (older deployments, other servers): files are served over plain
HTTP and uploads go through the LFS batch API. The client's downloads keep every default. Its uploads (the
tests that ask for ``lfs_uploads``) need Xet off: huggingface_hub 2.4 sends every large upload through Xet
whenever hf_xet is installed, with no negotiation, so against a Hub without Xet only a client with Xet off can
push (the one default switched off in the suite). The same operations with every default on, through Xet, are
the twins in test_hub_standin_xet.py."""

import hashlib
import http.client
import json
import os
import re
import struct
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from hf_notebook.testing.hub import Conflict, EntryNotFound, HubServer, RepoStore, RevisionNotFound, folder_files

WEIGHTS_SIZE = 1 << 20  # the tensor bytes of model.safetensors


@pytest.fixture(autouse=True)
def hub_without_xet(hub_server):
    """A Hub without Xet storage: a server setting; the client keeps its defaults (Xet on, shared blobs)."""
    hub_server.xet = False


@pytest.fixture
def lfs_uploads(monkeypatch):
    """The one default switched off here, and only for uploads (see the module's docstring): a client with Xet
    off, so it pushes through the LFS batch API as it must to a Hub without Xet. Twins with Xet on:
    test_hub_standin_xet.py."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)


def safetensors_bytes(name: str, rows: int, cols: int) -> bytes:
    """A valid safetensors file holding one float32 tensor of zeros."""
    header = json.dumps({name: {"dtype": "F32", "shape": [rows, cols], "data_offsets": [0, rows * cols * 4]}})
    header = header.encode() + b" " * (-len(header) % 8)  # the data must start 8-byte aligned
    return struct.pack("<Q", len(header)) + header + bytes(rows * cols * 4)


@pytest.fixture
def repo(hub_store, hub_repo_id):
    """A repo with regular and LFS files, a folder, a tag, a branch with '/' and a pull request."""
    files = {
        "config.json": b'{"model_type": "demo"}',
        "model.safetensors": safetensors_bytes("w", 512, 512),
        "weights/extra.bin": os.urandom(200_000),
        "notes/readme.txt": b"hello",
    }
    hub_store.create_repo(hub_repo_id)
    first = hub_store.commit(hub_repo_id, files, message="first")
    hub_store.create_tag(hub_repo_id, "v1", revision=first)
    hub_store.create_branch(hub_repo_id, "feature/x", revision=first)
    main = hub_store.commit(hub_repo_id, {"config.json": b'{"model_type": "demo2"}'}, message="second")
    _, pr_sha = hub_store.create_pr(hub_repo_id, {"pr.txt": b"proposal"})
    return SimpleNamespace(id=hub_repo_id, files=files, first=first, main=main, pr_sha=pr_sha)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def random_safetensors(name: str, floats: int) -> bytes:
    """A valid safetensors file whose content no other test has: its tensor bytes are random."""
    return safetensors_bytes(name, 1, floats)[: -floats * 4] + os.urandom(floats * 4)


def lfs_puts(server) -> list[str]:
    """The oids PUT to upload hrefs, from the request log."""
    return [path.rsplit("/", 1)[1] for method, path in server.requests if method == "PUT" and "/lfs-upload/" in path]


def stray_lfs_files(store) -> list[str]:
    """Anything in the LFS object store that is not a whole object (a temp file left by a broken upload)."""
    return [path.name for path in store.lfs.root.iterdir() if not re.fullmatch(r"[0-9a-f]{64}", path.name)]


# --------------------------------------------------------------------------- reads


@pytest.mark.parametrize(
    "revision, expected",
    [(None, "main"), ("main", "main"), ("v1", "first"), ("feature/x", "first"), ("refs/pr/1", "pr_sha"),
     ("short", "first"), ("full", "first")],
)
def test_model_info_resolves_every_kind_of_revision(repo, hub_server, revision, expected):
    from huggingface_hub import HfApi

    revision = {"short": repo.first[:7], "full": repo.first}.get(revision, revision)
    info = HfApi().model_info(repo.id, revision=revision)
    assert info.sha == getattr(repo, expected)
    assert info.id == repo.id and info.private is False and info.last_modified is not None


def test_model_info_lists_files_with_lfs_metadata(repo, hub_server):
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo.id, revision="v1", files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == set(repo.files)
    weights = siblings["model.safetensors"]
    assert weights.size == len(repo.files["model.safetensors"])
    assert weights.lfs.sha256 == sha256(repo.files["model.safetensors"])
    assert siblings["config.json"].lfs is None and siblings["config.json"].size == len(repo.files["config.json"])


def test_list_repo_refs(repo, hub_server):
    from huggingface_hub import HfApi

    refs = HfApi().list_repo_refs(repo.id, include_pull_requests=True)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": repo.main, "feature/x": repo.first}
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": repo.first}
    assert [(p.ref, p.target_commit) for p in refs.pull_requests] == [("refs/pr/1", repo.pr_sha)]


def test_tree_paths_info_and_commits(repo, hub_server):
    from huggingface_hub import HfApi, RepoFile, RepoFolder

    api = HfApi()
    top = {item.path: type(item) for item in api.list_repo_tree(repo.id, revision="v1")}
    assert top == {"config.json": RepoFile, "model.safetensors": RepoFile, "weights": RepoFolder, "notes": RepoFolder}
    assert [f.path for f in api.list_repo_tree(repo.id, "weights")] == ["weights/extra.bin"]
    assert sorted(api.list_repo_files(repo.id, revision="v1")) == sorted(repo.files)
    info = api.get_paths_info(repo.id, ["notes", "weights/extra.bin", "missing.txt"], revision="v1")
    assert [(type(i), i.path) for i in info] == [(RepoFolder, "notes"), (RepoFile, "weights/extra.bin")]
    assert info[1].lfs.sha256 == sha256(repo.files["weights/extra.bin"])
    history = [(c.commit_id, c.title) for c in api.list_repo_commits(repo.id)]
    assert history == [(repo.main, "second"), (repo.first, "first")]


def test_hf_hub_download_uses_etag_and_cache(repo, hub_server, hf_cache):
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    path = hf_hub_download(repo.id, "model.safetensors")
    assert open(path, "rb").read() == repo.files["model.safetensors"]
    assert path.startswith(str(hf_cache)) and repo.main in path
    served = hub_server.bytes_served(repo.id)
    assert served == len(repo.files["model.safetensors"])

    assert hf_hub_download(repo.id, "model.safetensors") == path
    assert hub_server.bytes_served(repo.id) == served  # second call: HEAD only, nothing transferred

    lfs_meta = get_hf_file_metadata(hf_hub_url(repo.id, "model.safetensors"))
    assert lfs_meta.etag == sha256(repo.files["model.safetensors"]) and lfs_meta.commit_hash == repo.main
    assert lfs_meta.size == len(repo.files["model.safetensors"])
    git_meta = get_hf_file_metadata(hf_hub_url(repo.id, "notes/readme.txt"))
    assert git_meta.etag == hashlib.sha1(b"blob 5\0hello").hexdigest()  # the git blob oid, as on the Hub


def test_snapshot_download_at_a_tag(repo, hub_server, hf_cache):
    from huggingface_hub import snapshot_download

    folder = snapshot_download(repo.id, revision="v1")
    assert folder.endswith(repo.first)
    for name, data in repo.files.items():
        assert open(os.path.join(folder, name), "rb").read() == data
    assert not os.path.exists(os.path.join(folder, "pr.txt"))
    assert hub_server.bytes_served(repo.id) == sum(len(data) for data in repo.files.values())


def test_safetensors_metadata_reads_only_the_header(repo, hub_server, hf_cache):
    from huggingface_hub import HfApi

    metadata = HfApi().get_safetensors_metadata(repo.id)
    assert metadata.files_metadata["model.safetensors"].tensors["w"].shape == [512, 512]
    assert 0 < hub_server.bytes_served(repo.id) < WEIGHTS_SIZE / 5


@pytest.mark.parametrize(
    "repo_id, revision, filename, error",
    [("tests/no-such-repo", None, "config.json", "RepositoryNotFoundError"),
     (None, "no-such-branch", "config.json", "RevisionNotFoundError"),
     (None, None, "no-such-file.json", "EntryNotFoundError")],
)
def test_errors_are_told_apart(repo, hub_server, hf_cache, repo_id, revision, filename, error):
    import huggingface_hub
    from huggingface_hub import HfApi, hf_hub_download

    with pytest.raises(getattr(huggingface_hub.errors, error)):
        hf_hub_download(repo_id or repo.id, filename, revision=revision)
    if filename == "config.json":
        with pytest.raises(getattr(huggingface_hub.errors, error)):
            HfApi().model_info(repo_id or repo.id, revision=revision)


def test_private_repo_needs_the_token(hub_store, hub_repo_id, hub_token, hf_cache):
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    hub_store.create_repo(hub_repo_id, private=True)
    sha = hub_store.commit(hub_repo_id, {"config.json": b"{}"})
    for token in (False, "hf_wrong"):
        with pytest.raises(RepositoryNotFoundError):
            HfApi(token=token).model_info(hub_repo_id)
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download(hub_repo_id, "config.json", token=token)
    assert HfApi(token=hub_token).model_info(hub_repo_id).private is True
    assert open(hf_hub_download(hub_repo_id, "config.json", token=hub_token)).read() == "{}"
    assert HfApi(token=hub_token).whoami()["name"] == "user"
    with pytest.raises(HfHubHTTPError) as denied:
        HfApi(token=False).create_branch(hub_repo_id, branch="dev")
    assert denied.value.response.status_code == 401
    assert hub_store.refs(hub_repo_id)["branches"] == {"main": sha}


# --------------------------------------------------------------------------- writes


def test_create_repo_and_upload_folder(hub_server, hub_store, hub_repo_id, hf_cache, tmp_path, lfs_uploads):
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    url = api.create_repo(hub_repo_id)
    assert url.repo_id == hub_repo_id
    api.create_repo(hub_repo_id, exist_ok=True)
    big = os.urandom(1_200_000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub" / "big.dat").write_bytes(big)
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# Card\n")

    commit = api.upload_folder(repo_id=hub_repo_id, folder_path=tmp_path, commit_message="upload")
    assert api.model_info(hub_repo_id).sha == commit.oid
    files = hub_store.list_files(hub_repo_id, commit.oid)
    assert files == [".gitattributes", "README.md", "config.json", "sub/big.dat"]
    lfs = hub_store.snapshot(hub_repo_id, commit.oid).files["sub/big.dat"].lfs
    assert lfs.oid == sha256(big) and (hub_store.root / ".lfs" / lfs.oid).stat().st_size == len(big)
    assert open(hf_hub_download(hub_repo_id, "sub/big.dat"), "rb").read() == big


@pytest.mark.parametrize("xet", [False, True], ids=["create_commit", "xet-pipeline"])
def test_upload_folder_as_pull_request(hub_server, hub_store, hub_repo_id, tmp_path, monkeypatch, xet):
    from huggingface_hub import HfApi, constants

    if xet:  # with hf_xet usable, upload_folder opens an empty PR first, then commits to its ref
        pytest.importorskip("hf_xet")
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    else:
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the LFS tier (see the module's docstring)
    api = HfApi()
    api.create_repo(hub_repo_id)
    main = api.model_info(hub_repo_id).sha
    (tmp_path / "proposal.txt").write_text("please merge")
    commit = api.upload_folder(repo_id=hub_repo_id, folder_path=tmp_path, create_pr=True)
    assert commit.pr_revision == "refs/pr/1" and commit.pr_num == 1
    assert api.model_info(hub_repo_id, revision="refs/pr/1").sha == commit.oid
    assert hub_store.read(hub_repo_id, "proposal.txt", "refs/pr/1") == b"please merge"
    assert api.model_info(hub_repo_id).sha == main
    assert any(path.endswith("/discussions") for _, path in hub_server.requests) == xet


def test_upload_folder_sends_weights_through_lfs(hub_server, hub_store, hub_repo_id, hub_token, hf_cache, tmp_path,
                                                 lfs_uploads):
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi(token=hub_token)
    api.create_repo(hub_repo_id)
    weights = random_safetensors("w", 4096)
    (tmp_path / "model.safetensors").write_bytes(weights)
    (tmp_path / "config.json").write_text('{"model_type": "demo"}')
    hub_server.reset_counters()

    commit = api.upload_folder(repo_id=hub_repo_id, folder_path=tmp_path)
    oid = sha256(weights)
    calls = [(method, path.replace(hub_repo_id, "{repo}")) for method, path in hub_server.requests]
    assert calls == [
        ("POST", "/api/models/{repo}/preupload/main"),
        ("POST", "/{repo}.git/info/lfs/objects/batch"),
        ("PUT", f"/lfs-upload/{{repo}}/{oid}"),  # no Authorization header: the href is signed instead
        ("POST", "/{repo}.git/info/lfs/objects/verify"),
        ("POST", "/api/models/{repo}/commit/main"),
    ]
    assert hub_server.lfs_uploads == [oid] and (hub_store.lfs.root / oid).read_bytes() == weights
    files = hub_store.snapshot(hub_repo_id, commit.oid).files
    assert files["model.safetensors"].lfs.oid == oid and files["config.json"].lfs is None
    path = hf_hub_download(hub_repo_id, "model.safetensors", revision=commit.oid, token=hub_token)
    assert open(path, "rb").read() == weights and commit.oid in path
    assert stray_lfs_files(hub_store) == []


def test_transformers_loads_what_push_to_hub_uploaded(hub_server, hub_store, hub_repo_id, hf_cache, tmp_path,
                                                      lfs_uploads):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=128,
    )
    original = LlamaForCausalLM(config)  # random weights: the store has none of them yet
    commit = original.push_to_hub(hub_repo_id)
    assert any(path.startswith("/lfs-upload/") for _, path in hub_server.requests)
    assert hub_store.snapshot(hub_repo_id, commit.oid).files["model.safetensors"].lfs is not None

    loaded = AutoModelForCausalLM.from_pretrained(hub_repo_id, revision=commit.oid)
    expected, actual = original.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_reupload_sends_only_what_the_hub_lacks(hub_server, hub_store, hub_repo_id, hf_cache, tmp_path, lfs_uploads):
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    api.create_repo(hub_repo_id)
    first = random_safetensors("a", 2048)
    (tmp_path / "a.safetensors").write_bytes(first)
    (tmp_path / "config.json").write_text("{}")
    api.upload_folder(repo_id=hub_repo_id, folder_path=tmp_path)
    assert lfs_puts(hub_server) == [sha256(first)]

    # The same folder again, as a new commit on main and on a new branch: batch calls, but no bytes.
    hub_server.reset_counters()
    again = api.upload_folder(repo_id=hub_repo_id, folder_path=tmp_path, commit_message="again")
    api.create_branch(hub_repo_id, branch="dev", revision=again.oid)
    on_dev = api.upload_folder(repo_id=hub_repo_id, folder_path=tmp_path, revision="dev", commit_message="dev")
    assert lfs_puts(hub_server) == [] and hub_server.lfs_uploads == []
    assert [path for _, path in hub_server.requests].count(f"/{hub_repo_id}.git/info/lfs/objects/batch") == 2
    assert api.model_info(hub_repo_id, revision="dev").sha == on_dev.oid != again.oid
    assert open(hf_hub_download(hub_repo_id, "a.safetensors", revision="dev"), "rb").read() == first

    # One new weights file next to the old one: only the new one travels.
    second = random_safetensors("b", 2048)
    (tmp_path / "b.safetensors").write_bytes(second)
    hub_server.reset_counters()
    api.upload_folder(repo_id=hub_repo_id, folder_path=tmp_path)
    assert lfs_puts(hub_server) == [sha256(second)] == hub_server.lfs_uploads
    assert hub_store.read(hub_repo_id, "b.safetensors") == second


def test_commit_naming_an_lfs_object_never_uploaded_is_refused(hub_server, hub_store, hub_repo_id, tmp_path,
                                                               lfs_uploads):
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    api.create_repo(hub_repo_id)
    head = api.model_info(hub_repo_id).sha
    weights = random_safetensors("w", 256)
    operation = CommitOperationAdd("model.safetensors", weights)
    operation._upload_mode, operation._is_uploaded = "lfs", True  # as if preupload_lfs_files had uploaded it
    with pytest.raises(HfHubHTTPError) as refused:
        api.create_commit(hub_repo_id, [operation], commit_message="dangling pointer")
    assert refused.value.response.status_code == 400
    assert f"LFS object {sha256(weights)} for model.safetensors was never uploaded" in str(refused.value)
    assert api.model_info(hub_repo_id).sha == head and lfs_puts(hub_server) == []


def test_upload_checks_content_signature_and_token(hub_server, hub_store, hub_repo_id, hub_token, lfs_uploads):
    from huggingface_hub import get_session

    hub_store.create_repo(hub_repo_id)
    content, other = os.urandom(5000), os.urandom(5000)
    oid = sha256(content)
    batch_url = f"{hub_server.endpoint}/{hub_repo_id}.git/info/lfs/objects/batch"
    request = {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(content)}]}
    session = get_session()
    assert session.post(batch_url, json=request).status_code == 401  # the batch needs the token
    auth = {"Authorization": f"Bearer {hub_token}"}
    answer = session.post(batch_url, json=request, headers=auth).json()
    assert answer["transfer"] == "basic"
    href = answer["objects"][0]["actions"]["upload"]["href"]

    wrong = session.put(href, content=other)
    assert wrong.status_code == 400 and "sha256 mismatch" in wrong.json()["error"]
    assert session.put(href, content=content[:-1]).status_code == 400  # not the size the href was signed for
    assert session.put(href.replace("signature=", "signature=0"), content=content).status_code == 403
    assert hub_store.lfs.size(oid) is None and hub_server.lfs_uploads == [] and stray_lfs_files(hub_store) == []

    assert session.put(href, content=content).status_code == 200  # no Authorization: the signature is enough
    verify = answer["objects"][0]["actions"]["verify"]["href"]
    assert session.post(verify, json={"oid": oid, "size": len(content)}, headers=auth).status_code == 200
    assert hub_server.lfs_uploads == [oid] and (hub_store.lfs.root / oid).read_bytes() == content
    present = session.post(batch_url, json=request, headers=auth).json()["objects"]
    assert present == [{"oid": oid, "size": len(content)}]  # no actions: the client skips the upload


def test_upload_folder_as_pull_request_with_lfs_files(hub_server, hub_store, hub_repo_id, hf_cache, tmp_path,
                                                      lfs_uploads):
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    api.create_repo(hub_repo_id)
    main = api.model_info(hub_repo_id).sha
    weights = random_safetensors("w", 2048)
    (tmp_path / "model.safetensors").write_bytes(weights)
    (tmp_path / "config.json").write_text("{}")
    commit = api.upload_folder(repo_id=hub_repo_id, folder_path=tmp_path, create_pr=True)
    assert commit.pr_revision == "refs/pr/1" and lfs_puts(hub_server) == [sha256(weights)]
    assert hub_store.snapshot(hub_repo_id, "refs/pr/1").files["model.safetensors"].lfs.oid == sha256(weights)
    assert open(hf_hub_download(hub_repo_id, "model.safetensors", revision="refs/pr/1"), "rb").read() == weights
    assert api.model_info(hub_repo_id).sha == main


def test_broken_upload_leaves_nothing_and_a_rerun_resumes(hub_server, hub_store, hub_repo_id, tmp_path, lfs_uploads):
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(hub_repo_id)
    head = api.model_info(hub_repo_id).sha
    a, b = random_safetensors("a", 50_000), random_safetensors("b", 50_000)
    (tmp_path / "a.safetensors").write_bytes(a)
    (tmp_path / "b.safetensors").write_bytes(b)

    # b's PUT fails for good (507 is not retried): the push fails after a was stored, and commits nothing.
    hub_server.errors = {f"/lfs-upload/{hub_repo_id}/{sha256(b)}": 507}
    with pytest.raises(RuntimeError, match="Error while uploading 'b.safetensors'") as failed:
        api.upload_folder(repo_id=hub_repo_id, folder_path=tmp_path)
    assert failed.value.__cause__.response.status_code == 507
    assert hub_server.lfs_uploads == [sha256(a)] and hub_store.lfs.size(sha256(b)) is None
    assert api.model_info(hub_repo_id).sha == head

    # The re-run uploads b only; its PUT is cut off once (fail_after_bytes), the client retries it.
    hub_server.errors = {}
    hub_server.reset_counters()
    hub_server.fail_after_bytes = 100_000
    commit = api.upload_folder(repo_id=hub_repo_id, folder_path=tmp_path)
    assert lfs_puts(hub_server) == [sha256(b), sha256(b)] and hub_server.lfs_uploads == [sha256(b)]
    assert hub_server.fail_after_bytes is None and stray_lfs_files(hub_store) == []
    assert hub_store.read(hub_repo_id, "a.safetensors", commit.oid) == a
    assert hub_store.read(hub_repo_id, "b.safetensors", commit.oid) == b


def test_create_and_delete_branches_and_tags(repo, hub_server):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RevisionNotFoundError

    api = HfApi()
    api.create_branch(repo.id, branch="exp/one", revision="v1")
    api.create_branch(repo.id, branch="exp/one", exist_ok=True)
    api.create_tag(repo.id, tag="v2")
    assert api.model_info(repo.id, revision="exp/one").sha == repo.first
    assert api.model_info(repo.id, revision="v2").sha == repo.main
    api.delete_branch(repo.id, branch="exp/one")
    api.delete_tag(repo.id, tag="v2")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo.id, revision="exp/one")


# --------------------------------------------------------------------------- knobs


def test_broken_download_is_retried_and_completes(repo, hub_server, hf_cache):
    from huggingface_hub import hf_hub_download

    size = len(repo.files["model.safetensors"])
    hub_server.fail_after_bytes = 300_000
    path = hf_hub_download(repo.id, "model.safetensors")  # the client's own retry
    assert sha256(open(path, "rb").read()) == sha256(repo.files["model.safetensors"])
    assert len([path for method, path in hub_server.requests if method == "GET" and "/resolve/" in path]) == 2
    assert hub_server.fail_after_bytes is None and hub_server.bytes_served(repo.id) >= size + 300_000


@pytest.mark.parametrize(
    "range_header, status, start, end",
    [("bytes=300000-", 206, 300_000, None), ("bytes=0-7", 206, 0, 8), ("bytes=-100", 206, -100, None),
     ("bytes=0-99999999", 206, 0, None), (None, 200, 0, None), ("bytes=99999999-", 416, 0, 0)],
)
def test_ranges(repo, hub_server, range_header, status, start, end):
    from huggingface_hub import get_session, hf_hub_url

    data = repo.files["model.safetensors"]
    headers = {"Range": range_header} if range_header else {}
    response = get_session().get(hf_hub_url(repo.id, "model.safetensors"), headers=headers)
    assert response.status_code == status
    if status == 206:
        first = start % len(data)
        last = len(data) - 1 if end is None else end - 1
        assert response.headers["Content-Range"] == f"bytes {first}-{last}/{len(data)}"
    if status != 416:
        assert response.content == data[start:end]
        assert hub_server.bytes_served(repo.id) == len(response.content)


def test_a_list_of_errors_is_answered_one_request_at_a_time(repo, hub_server):
    from huggingface_hub import get_session, hf_hub_url

    hub_server.errors = {"config.json": [0, 503]}  # 0: serve that one
    url = hf_hub_url(repo.id, "config.json")
    assert [get_session().get(url).status_code for _ in range(3)] == [200, 503, 200]


def test_throttle_slows_downloads(repo, hub_server, hf_cache):
    from huggingface_hub import hf_hub_download

    def timed_download() -> float:
        start = time.monotonic()
        hf_hub_download(repo.id, "weights/extra.bin", force_download=True)
        return time.monotonic() - start

    fast = timed_download()
    hub_server.throttle_bytes_per_s = 200_000
    slow = timed_download()
    assert slow >= 0.95 and slow > fast + 0.5  # 200 KB at 200 kB/s: a margin no pause of a busy machine closes


# --------------------------------------------------------------------------- transformers and CLI


def test_transformers_loads_a_sharded_model_bit_for_bit(hub_store, hub_repo_id, hub_server, hf_cache, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256,
    )
    original = LlamaForCausalLM(config)
    original.save_pretrained(tmp_path / "model", max_shard_size="100KB")
    hub_store.create_repo(hub_repo_id)
    hub_store.commit(hub_repo_id, folder_files(tmp_path / "model"))
    shards = [name for name in hub_store.list_files(hub_repo_id, "main") if name.endswith(".safetensors")]
    assert len(shards) > 1

    loaded = AutoModelForCausalLM.from_pretrained(hub_repo_id)
    expected, actual = original.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert len(list(hf_cache.glob("models--*/snapshots/*/*.safetensors"))) == len(shards)


def test_cli_serves_a_store_until_terminated(tmp_path):
    from huggingface_hub import HfApi

    store = RepoStore(tmp_path / "hub")
    store.create_repo("org/cli")
    cli = [sys.executable, "-m", "hf_notebook.testing.hub", "--root", str(store.root)]
    process = subprocess.Popen(cli, stdout=subprocess.PIPE, text=True)
    try:
        endpoint = process.stdout.readline().strip()
        # A commit made by this process after the server started is served at once.
        sha = store.commit("org/cli", {"config.json": b"{}"})
        assert HfApi(endpoint=endpoint).model_info("org/cli").sha == sha
    finally:
        process.terminate()
        returncode = process.wait(timeout=10)
    assert endpoint.startswith("http://127.0.0.1:") and returncode == 0


def test_stopped_server_drops_its_connections(tmp_path):
    server = HubServer(tmp_path).start()
    server.store.create_repo("org/gone")
    connection = http.client.HTTPConnection(server.endpoint.removeprefix("http://"))
    connection.request("GET", "/api/models/org/gone")
    assert connection.getresponse().read() and connection.sock is not None  # kept alive
    server.stop()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        connection.request("GET", "/api/models/org/gone")
        connection.getresponse()
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection(server.endpoint.removeprefix("http://")).request("GET", "/")


# --------------------------------------------------------------------------- store


def test_store_refuses_what_the_hub_refuses(tmp_path):
    store = RepoStore(tmp_path)
    store.create_repo("org/a")
    with pytest.raises(Conflict):
        store.create_repo("org/a")
    store.create_repo("org/a", exist_ok=True)
    with pytest.raises(ValueError):
        store.create_repo("no-namespace")
    sha = store.commit("org/a", {"a.txt": b"a"})
    with pytest.raises(RevisionNotFound):
        store.commit("org/a", {"b.txt": b"b"}, branch="missing")
    with pytest.raises(EntryNotFound):
        store.commit("org/a", {}, delete=["missing.txt"])
    with pytest.raises(Conflict):
        store.commit("org/a", {"b.txt": b"b"}, parent="0" * 40)
    store.create_tag("org/a", "v1")
    with pytest.raises(Conflict):
        store.create_tag("org/a", "v1")
    with pytest.raises(ValueError):
        store.commit("org/a", {"../escape": b"x"})
    assert store.list_files("org/a", "main") == ["a.txt"] and store.resolve("org/a", "v1") == sha


def test_store_keeps_big_and_weight_files_in_lfs(tmp_path):
    store = RepoStore(tmp_path)
    store.create_repo("org/a")
    files = {"w.bin": b"small but weights", "big.json": b"x" * (1 << 20), "small.json": b"{}", "empty.bin": b""}
    snapshot = store.snapshot("org/a", store.commit("org/a", files))
    assert {path: entry.lfs is not None for path, entry in snapshot.files.items()} == {
        "w.bin": True, "big.json": True, "small.json": False, "empty.bin": False,
    }
    pointer = subprocess.run(
        ["git", f"--git-dir={store.root / 'org/a.git'}", "cat-file", "blob", snapshot.files["w.bin"].blob_id],
        capture_output=True, check=True,
    ).stdout
    oid = sha256(files["w.bin"]).encode()
    assert pointer.startswith(b"version https://git-lfs.github.com/spec/v1\noid sha256:" + oid)
    assert all(store.read("org/a", path) == data for path, data in files.items())
