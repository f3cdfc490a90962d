"""The safetensors header cache beside the Hub cache: a warm plan reads no header over the network,
and a damaged, foreign or mismatched entry is never trusted."""

import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from hf_notebook.core.api import plan_model

SHA_FOLDER = ".hf_notebook-headers"
BUDGET = {"cpu": 2**30}  # fixed: a default budget follows the memory free at the time


def plan(spec, **kw):
    return plan_model(spec, max_memory=BUDGET, **kw)


def header_reads(server, repo_id):
    """GETs of the repo's safetensors files through ``/resolve`` (one per Range request for a header)."""
    return [path for method, path in server.requests
            if method == "GET" and path.startswith(f"/{repo_id}/resolve/") and path.endswith(".safetensors")]


def entries(cache, repo_id, sha=None):
    folder = cache / ("models--" + repo_id.replace("/", "--")) / SHA_FOLDER
    return sorted((folder / sha if sha else folder).rglob("*.hdr"))


def shard_names(plan):
    return sorted(plan.headers.tensors)


def sha_of(hub_store, repo_id, rev="main"):
    return hub_store.resolve(repo_id, rev)


def test_a_warm_plan_reads_no_header_and_is_the_same_plan(tiny_hub, hub_server, hf_cache):
    cold = plan("tiny/llama")
    sha = tiny_hub["llama"].commits["main"]
    assert len(header_reads(hub_server, "tiny/llama")) == 2 * len(shard_names(cold)) > 2
    assert [p.name for p in entries(hf_cache, "tiny/llama", sha)] == [f"{n}.hdr" for n in shard_names(cold)]

    hub_server.reset_counters()
    warm = plan("tiny/llama")
    assert header_reads(hub_server, "tiny/llama") == [] and hub_server.bytes_served("tiny/llama") == 0
    assert warm == cold  # device map, module bytes, headers, budget, ...
    assert warm.device_map == cold.device_map and warm.module_bytes == cold.module_bytes
    assert warm.headers == cold.headers


def test_the_cache_lives_in_the_repos_cache_folder_and_the_hub_scan_accepts_it(tiny_hub, hub_server, hf_cache):
    from huggingface_hub import scan_cache_dir

    plan("tiny/llama")
    sha = tiny_hub["llama"].commits["main"]
    assert all(p.parent == hf_cache / "models--tiny--llama" / SHA_FOLDER / sha for p in entries(hf_cache, "tiny/llama"))
    info = scan_cache_dir(hf_cache)
    assert info.warnings == [] and {r.repo_id for r in info.repos} == {"tiny/llama"}


def _truncate(path, tmp_path):
    path.write_bytes(path.read_bytes()[:-10])


def _garbage(path, tmp_path):
    path.write_bytes(b"\x00" * 100)


def _split(path):
    """(magic line, meta line, body) of an entry."""
    magic, rest = path.read_bytes().split(b"\n", 1)
    line, body = rest.split(b"\n", 1)
    return magic, line, body


def _changed_shape(path, tmp_path):
    """A header that still parses, one tensor's shape changed (same element count): only the digest tells."""
    magic, line, body = _split(path)
    header = json.loads(body[8:])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [1] + header[name]["shape"]
    text = json.dumps(header).encode()
    path.write_bytes(magic + b"\n" + line + b"\n" + len(text).to_bytes(8, "little") + text)


def _consistent_but_invalid(path, tmp_path):
    """Rewritten with a digest that matches, but the header claims overlapping tensors: the parser refuses it."""
    import hashlib

    magic, line, body = _split(path)
    header = json.loads(body[8:])
    a, b = [k for k in header if k != "__metadata__"][:2]
    header[b]["data_offsets"] = header[a]["data_offsets"]
    header[b]["dtype"], header[b]["shape"] = header[a]["dtype"], header[a]["shape"]
    text = json.dumps(header).encode()
    body = len(text).to_bytes(8, "little") + text
    meta = json.loads(line)
    meta["digest"] = hashlib.sha256(body).hexdigest()
    path.write_bytes(magic + b"\n" + json.dumps(meta).encode() + b"\n" + body)


def _symlink(path, tmp_path):
    """The entry replaced by a link to a file elsewhere (a valid copy): not followed, and left alone."""
    victim = tmp_path / "elsewhere.hdr"
    victim.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(victim)


DAMAGE = {"truncated": _truncate, "garbage": _garbage, "changed shape": _changed_shape,
          "consistent but invalid": _consistent_but_invalid, "symlink": _symlink}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_entry_is_fetched_again(tiny_hub, hub_server, hf_cache, tmp_path, damage):
    cold = plan("tiny/llama")
    victim = entries(hf_cache, "tiny/llama")[1]
    DAMAGE[damage](victim, tmp_path)
    before = (tmp_path / "elsewhere.hdr").read_bytes() if damage == "symlink" else None

    hub_server.reset_counters()
    again = plan("tiny/llama")
    reads = header_reads(hub_server, "tiny/llama")
    assert len(reads) == 2 and all(victim.name.removesuffix(".hdr") in path for path in reads)
    assert again == cold and again.headers == cold.headers
    assert not victim.is_symlink()  # repaired: a fresh entry of our own
    if before is not None:
        assert (tmp_path / "elsewhere.hdr").read_bytes() == before

    hub_server.reset_counters()
    assert plan("tiny/llama") == cold and header_reads(hub_server, "tiny/llama") == []


def test_another_shas_entries_are_never_used(tiny_hub, hub_server, hf_cache):
    """v1 and main have headers alike, file for file: main's entries planted from v1's are refused all the same."""
    llama = tiny_hub["llama"]
    v1, main = llama.commits["v1"], llama.commits["main"]
    old = plan(f"tiny/llama@{v1}")
    folder = hf_cache / "models--tiny--llama" / SHA_FOLDER
    shutil.copytree(folder / v1, folder / main)

    hub_server.reset_counters()
    new = plan(f"tiny/llama@{main}")
    assert len(header_reads(hub_server, "tiny/llama")) == 2 * len(shard_names(new))
    assert new.headers == old.headers  # the same shapes, read again all the same
    assert all(json.loads(_split(p)[1])["sha"] == main for p in entries(hf_cache, "tiny/llama", main))


def test_a_new_sha_with_other_headers_gets_its_own(hub_store, hub_repo_id, hub_server, hf_cache, tmp_path):
    import torch

    from hf_notebook.testing.models import save_model

    hub_store.create_repo(hub_repo_id)
    first = save_model("llama", tmp_path / "f32")
    hub_store.commit(hub_repo_id, {p.name: p for p in first.iterdir()}, message="float32")
    sha1 = sha_of(hub_store, hub_repo_id)
    second = save_model("llama", tmp_path / "bf16", dtype=torch.bfloat16, max_shard_size="50KB")
    hub_store.commit(hub_repo_id, {p.name: p for p in second.iterdir()}, message="bfloat16")
    sha2 = sha_of(hub_store, hub_repo_id)

    assert set(plan(f"{hub_repo_id}@{sha1}").headers.param_counts) == {"F32"}
    hub_server.reset_counters()
    made = plan(f"{hub_repo_id}@{sha2}")
    assert set(made.headers.param_counts) == {"BF16"} and header_reads(hub_server, hub_repo_id)
    hub_server.reset_counters()
    assert set(plan(f"{hub_repo_id}@{sha1}").headers.param_counts) == {"F32"}
    assert header_reads(hub_server, hub_repo_id) == []


@pytest.fixture(params=["xet", "lfs"])
def lfs_repo(request, hub_store, hub_repo_id, tmp_path):
    """Two shards, one of 1.6 MB, in a Xet-stored repo (as on the Hub) or an LFS-only one (the plain HTTP path)."""
    import torch

    from hf_notebook.core.safetensors_io import write_file

    write_file(str(tmp_path / "big.safetensors"), {"w": torch.arange(400_000, dtype=torch.float32)})
    write_file(str(tmp_path / "small.safetensors"), {"b": torch.ones(8, dtype=torch.bfloat16)})
    hub_store.create_repo(hub_repo_id, xet=request.param == "xet")
    hub_store.commit(hub_repo_id, {n: tmp_path / n for n in ("big.safetensors", "small.safetensors")}, message="w")
    return hub_repo_id


def test_entries_carry_the_hubs_etag_and_a_mismatch_is_fetched_again(lfs_repo, hub_server, hf_cache):
    from hf_notebook.core.hub.headers import remote_headers
    from hf_notebook.core.hub.resolve import resolve
    from hf_notebook.core.spec import parse_spec

    res = resolve(parse_spec(lfs_repo))
    names = ["big.safetensors", "small.safetensors"]
    etags = {**res.blob_ids, **res.file_hashes}  # what the Pipeline knows of each file (sha256 for LFS files)
    assert set(names) <= set(res.file_hashes)
    cold = remote_headers(lfs_repo, res.sha, names)
    stored = {p.name: json.loads(_split(p)[1])["etag"] for p in entries(hf_cache, lfs_repo)}
    assert stored == {f"{n}.hdr": etags[n] for n in names}  # the etag the answers carried is the Hub's sha256
    assert hub_server.bytes_served(lfs_repo) < 4096  # headers, not the 1.6 MB shard

    hub_server.reset_counters()
    assert remote_headers(lfs_repo, res.sha, names, etags=etags) == cold
    assert hub_server.bytes_served(lfs_repo) == 0 and header_reads(hub_server, lfs_repo) == []

    wrong = {**etags, "big.safetensors": "0" * 64}  # the Hub says the file is other content than the entry's
    assert remote_headers(lfs_repo, res.sha, names, etags=wrong) == cold
    reads = header_reads(hub_server, lfs_repo)
    assert len(reads) == 2 and all(path.endswith("/big.safetensors") for path in reads)


def test_offline_headers_come_from_the_cache(tiny_hub, hub_server, hf_cache):
    from hf_notebook.core.errors import OfflineError
    from hf_notebook.core.hub.headers import cached_headers, remote_headers

    cold = plan("tiny/llama")
    sha, names = tiny_hub["llama"].commits["main"], shard_names(cold)
    hub_server.errors = {"/": 503}  # the network is gone: anything asked of it fails
    hub_server.reset_counters()
    assert cached_headers("tiny/llama", sha, names) == cold.headers
    assert remote_headers("tiny/llama", sha, names, offline=True) == cold.headers
    assert hub_server.requests == []

    entries(hf_cache, "tiny/llama")[0].unlink()
    assert cached_headers("tiny/llama", sha, names) is None
    with pytest.raises(OfflineError) as info:
        remote_headers("tiny/llama", sha, names, offline=True)
    assert info.value.missing == [names[0]] and names[0] in str(info.value)
    assert hub_server.requests == []


def test_an_offline_plan_is_made_from_the_header_cache(tiny_hub, hub_server, hf_cache):
    sha = tiny_hub["llama"].commits["main"]
    cold = plan(f"tiny/llama@{sha}")
    hub_server.errors = {"/": 503}
    offline = plan(f"tiny/llama@{sha}", offline=True)
    assert offline.headers == cold.headers and offline.device_map == cold.device_map


def test_threads_fetching_headers_at_once_leave_sound_entries(tiny_hub, hub_server, hf_cache):
    """Threads race on the plan's header step (what touches the cache), each round from an empty cache.

    (Whole plans are not run in threads here: transformers builds the meta model inside contexts that patch
    torch globally, so two plans at once in one process can leave every later model on meta.)"""
    from hf_notebook.core.hub.header_cache import HeaderCache
    from hf_notebook.core.hub.headers import remote_headers

    expected = plan("tiny/gpt2")
    sha, names = tiny_hub["gpt2"].commits["main"], shard_names(expected)
    for _ in range(3):
        shutil.rmtree(hf_cache / "models--tiny--gpt2" / SHA_FOLDER)
        with ThreadPoolExecutor(4) as pool:
            found = list(pool.map(lambda _: remote_headers("tiny/gpt2", sha, names), range(4)))
        assert all(headers == expected.headers for headers in found)
    cache = HeaderCache("tiny/gpt2", sha)
    assert all(cache.get(name) is not None for name in names)
    assert not [p for p in (hf_cache / "models--tiny--gpt2" / SHA_FOLDER).rglob("*") if p.name.startswith(".tmp-")]
    hub_server.reset_counters()
    assert plan("tiny/gpt2") == expected and header_reads(hub_server, "tiny/gpt2") == []


def test_concurrent_writers_and_readers_never_see_a_torn_entry(tmp_path):
    from hf_notebook.core.hub.header_cache import HeaderCache
    from hf_notebook.core.safetensors_io import header, parse_header

    import torch

    sha = "a" * 40
    raw, _ = header([("w", torch.float32, (3, 4)), ("v", torch.float32, (5,))])
    expected = parse_header("m.safetensors", raw[8:], len(raw) - 8)
    bad, stop = [], threading.Event()

    def write():
        cache = HeaderCache("o/m", sha, tmp_path)
        for _ in range(200):
            cache.put("m.safetensors", raw, "e", len(raw) + 68)

    def read():
        cache = HeaderCache("o/m", sha, tmp_path)
        while not stop.is_set():
            found = cache.get("m.safetensors", "e")
            if found is not None and found != expected:
                bad.append(found)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers:
        thread.start()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: write(), range(4)))
    stop.set()
    for thread in readers:
        thread.join()
    assert bad == [] and HeaderCache("o/m", sha, tmp_path).get("m.safetensors", "e") == expected
    assert [p.name for p in (tmp_path / "models--o--m" / SHA_FOLDER / sha).iterdir()] == ["m.safetensors.hdr"]


WRITER = """
import sys
from hf_notebook.core.hub.header_cache import HeaderCache
from hf_notebook.core.safetensors_io import header_length, parse_header
raw = open(sys.argv[2], "rb").read()
expected = parse_header("m.safetensors", raw[8:], header_length("m.safetensors", raw))
cache = HeaderCache("o/m", "b" * 40, sys.argv[1])
for i in range(300):
    cache.put("m.safetensors", raw, "e", None)
    found = cache.get("m.safetensors", "e")
    if found != expected:
        sys.exit(f"round {i}: {found}")
"""


def test_kernels_sharing_a_cache_never_see_a_torn_entry(tmp_path):
    """Three processes (as three notebook kernels) write and read the same entry at once."""
    import subprocess
    import sys

    import torch

    from hf_notebook.core.safetensors_io import header

    raw, _ = header([(f"t{i}", torch.float32, (i + 1, 7)) for i in range(200)])  # a few kB: writes take a while
    (tmp_path / "raw").write_bytes(raw)
    (tmp_path / "cache").mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "cache"), str(tmp_path / "raw")],
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    failures = [err for proc in procs for err in [proc.communicate(timeout=120)[1]] if proc.returncode]
    assert failures == []
    folder = tmp_path / "cache" / "models--o--m" / SHA_FOLDER / ("b" * 40)
    assert [p.name for p in folder.iterdir()] == ["m.safetensors.hdr"]


def test_the_cache_is_bounded_least_recently_used_first(tmp_path):
    import torch

    from hf_notebook.core.hub.header_cache import HeaderCache
    from hf_notebook.core.safetensors_io import header

    raw, _ = header([("w", torch.float32, (3, 4))])
    shas = [f"{i:040x}" for i in range(6)]
    for age, sha in enumerate(shas):  # shas[0] is the newest
        cache = HeaderCache("o/m", sha, tmp_path)
        cache.put("m.safetensors", raw, None, None)
        os.utime(cache.path("m.safetensors"), (1e9 - age * 100, 1e9 - age * 100))
    size = HeaderCache("o/m", shas[0], tmp_path).path("m.safetensors").stat().st_size
    outside = tmp_path / "not-ours.hdr"
    outside.write_bytes(b"x" * 10_000)
    link = HeaderCache("o/m", shas[0], tmp_path).folder / "link.hdr"
    link.symlink_to(outside)
    os.utime(link, (1, 1), follow_symlinks=False)

    HeaderCache("o/m", shas[0], tmp_path).trim(budget=3 * size)
    kept = [sha for sha in shas if HeaderCache("o/m", sha, tmp_path).get("m.safetensors") is not None]
    assert kept == shas[:3]
    assert sorted(p.name for p in (tmp_path / "models--o--m" / SHA_FOLDER).iterdir()) == sorted(shas[:3])
    assert outside.read_bytes() == b"x" * 10_000 and link.is_symlink()  # a link is neither followed nor counted


def test_a_cache_folder_that_is_a_link_elsewhere_is_left_alone(tiny_hub, hub_server, hf_cache, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    repo_folder = hf_cache / "models--tiny--llama"
    repo_folder.mkdir()
    (repo_folder / SHA_FOLDER).symlink_to(elsewhere)

    cold = plan("tiny/llama")
    hub_server.reset_counters()
    assert plan("tiny/llama") == cold and header_reads(hub_server, "tiny/llama")  # no cache, still right
    assert [p.name for p in elsewhere.iterdir()] == ["keep.txt"]


def test_a_read_only_cache_costs_the_cache_not_the_plan(tiny_hub, hub_server, hf_cache):
    cold = plan("tiny/llama")
    folder = hf_cache / "models--tiny--llama" / SHA_FOLDER
    shutil.rmtree(folder)
    (hf_cache / "models--tiny--llama").chmod(0o555)
    try:
        if os.access(hf_cache / "models--tiny--llama", os.W_OK):
            pytest.skip("running as a user that ignores permissions (root)")
        assert plan("tiny/llama") == cold
        assert not folder.exists()
    finally:
        (hf_cache / "models--tiny--llama").chmod(0o755)


def test_a_cache_that_cannot_be_written_costs_the_cache_not_the_plan(tiny_hub, hub_server, hf_cache):
    """A file where the cache's folder goes (as a full or read-only disk would): plans go on, every one remote."""
    repo_folder = hf_cache / "models--tiny--llama"
    repo_folder.mkdir()
    (repo_folder / SHA_FOLDER).write_text("not a folder")
    cold = plan("tiny/llama")
    hub_server.reset_counters()
    assert plan("tiny/llama") == cold and header_reads(hub_server, "tiny/llama")
    assert (repo_folder / SHA_FOLDER).read_text() == "not a folder"
