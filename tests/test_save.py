"""``%save_model`` and ``core.weights.save``: the folder save_pretrained writes (byte for byte), streamed and
hashed; complete (companion files, manifest); atomic; and refused, with nothing written, when it
cannot be done."""

import errno
import filecmp
import hashlib
import json
import os
import threading

import pytest
import torch
from IPython.core.error import UsageError

from hf_notebook.core.api import load_model
from hf_notebook.core.weights.save import MANIFEST, save_model
from hf_notebook.testing.models import ARCHITECTURES, build_model

WEIGHTS = (".safetensors", ".safetensors.index.json")


@pytest.fixture
def work(tmp_path):
    """An empty folder to save into (tmp_path also holds the test's Hub cache)."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    made = {}
    for arch in ARCHITECTURES:
        folder = tmp_path_factory.mktemp(arch)
        build_model(arch).save_pretrained(folder, max_shard_size="100KB")
        made[arch] = folder
    return made


def weight_files(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(WEIGHTS))


def same_weights(mine, theirs):
    names = weight_files(mine)
    return names == weight_files(theirs) and all(filecmp.cmp(mine / f, theirs / f, shallow=False) for f in names)


@pytest.mark.filterwarnings("ignore:Attempting to save a model with offloaded modules")  # the reference's
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("where", ["cpu", "offloaded"])
def test_the_folder_is_what_save_pretrained_writes(folders, tmp_path, arch, where):
    """Shards, names, index: byte for byte save_pretrained's, from a model on cpu or mostly on disk, and
    in another dtype equal to ``.to(bfloat16)`` then save_pretrained."""
    src = folders[arch]
    kwargs = {"device_map": "cpu"} if where == "cpu" else {"device_map": "auto", "max_memory": {"cpu": 200_000}}
    result = load_model(str(src), no_verify=True, **kwargs)
    assert where == "cpu" or "disk" in result.device_map.values()
    for dtype in (None, "bfloat16"):
        mine = tmp_path / f"mine-{dtype}"
        saved = save_model(result, mine, max_shard_size=100_000, dtype=dtype)
        reference = load_model(str(src), no_verify=True, device_map="cpu").model
        if dtype:
            reference = reference.to(torch.bfloat16)
        theirs = tmp_path / f"theirs-{dtype}"
        reference.save_pretrained(theirs, max_shard_size=100_000)
        assert same_weights(mine, theirs), f"{arch} {where} {dtype}"
        assert saved.dtype == (dtype or "float32")
        assert json.loads((mine / "config.json").read_text())["dtype"] == saved.dtype


def test_it_loads_back_identical_and_the_manifest_is_true(folders, tmp_path):
    src = folders["llama"]
    result = load_model(str(src), no_verify=True, device_map="cpu")
    saved = save_model(result, tmp_path / "out", max_shard_size=100_000)
    again = load_model(str(tmp_path / "out"), device_map="cpu").model
    state = result.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in again.state_dict().items())
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["source"] == str(src) and manifest["dtype"] == "float32"
    assert {"transformers", "torch", "safetensors", "hf_notebook"} <= set(manifest["versions"])
    on_disk = {p.name for p in (tmp_path / "out").iterdir()} - {MANIFEST}
    assert set(manifest["files"]) == on_disk
    for name, facts in manifest["files"].items():
        data = (tmp_path / "out" / name).read_bytes()
        assert facts == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert saved.manifest_sha256 == hashlib.sha256((tmp_path / "out" / MANIFEST).read_bytes()).hexdigest()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_companion_files_come_from_the_pinned_snapshot(shell, hub_store, hub_repo_id, hf_cache, folders, work):
    files = {p.name: p.read_bytes() for p in folders["llama"].iterdir()}
    files |= {"tokenizer.json": b'{"version": "1.0"}', "tokenizer_config.json": b'{"model_max_length": 256}',
              "chat_template.jinja": b"{{ messages }}", "README.md": b"# card of the source"}
    hub_store.create_repo(hub_repo_id)
    sha = hub_store.commit(hub_repo_id, files, message="with a tokenizer")
    shell.run_line_magic("load_model", f"{hub_repo_id} --device-map cpu --as m")
    shell.run_line_magic("save_model", f"m {work / 'out'}")
    out = work / "out"
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == files[name]
    assert not (out / "README.md").exists()  # a card describes the source; a push writes one for this folder
    assert json.loads((out / MANIFEST).read_text())["source"] == f"{hub_repo_id}@{sha}"


def test_an_existing_folder_is_replaced_only_with_overwrite(shell, loaded, tiny_hub, hf_cache, work):
    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    out = work / "out"
    shell.run_line_magic("save_model", f"m {out}")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UsageError, match="(?s)already exists.*--overwrite"):
        shell.run_line_magic("save_model", f"m {out} --dtype bfloat16")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    shell.run_line_magic("save_model", f"m {out} --dtype bfloat16 --overwrite")
    assert json.loads((out / MANIFEST).read_text())["dtype"] == "bfloat16"
    assert sorted(p.name for p in work.iterdir()) == ["out"]


@pytest.mark.parametrize("convert", ["", "--dtype bfloat16"])
@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError(errno.ENOSPC, "No space left on device")])
def test_an_interrupted_save_leaves_the_folder_as_it_was(shell, tiny_hub, hf_cache, work, monkeypatch, failure,
                                                         convert):
    from hf_notebook.core.weights import shard_writer as W

    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    out = work / "out"
    shell.run_line_magic("save_model", f"m {out} --max-shard-size 100KB")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = W.ShardWriter.save_file, []

    def fail_on_third(self, tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 3:
            raise failure
        return real(self, tensors, filename, metadata)

    monkeypatch.setattr(W.ShardWriter, "save_file", fail_on_third)
    with pytest.raises((KeyboardInterrupt, UsageError)):
        shell.run_line_magic("save_model", f"m {out} --max-shard-size 100KB {convert} --overwrite")
    assert len(calls) == 3
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in work.iterdir()) == ["out"]
    # no hash left running (a Ctrl-C injected inside Thread.start by another test can leave a never-started
    # Thread in threading's list: not alive, it runs nothing)
    assert [t for t in threading.enumerate() if t.name == "hf_notebook-sha256" and t.is_alive()] == []


def test_too_little_space_is_refused_up_front_with_the_numbers(shell, tiny_hub, hf_cache, work, monkeypatch):
    from collections import namedtuple

    from hf_notebook.core.weights import save as S

    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(S.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 4096, 4096))
    with pytest.raises(UsageError, match=r"Saving writes 427.3 kB \(with room kept for the file system, 2% \+ 16 MiB: 17.2 MB\), but only 4.10 kB is free"):
        shell.run_line_magic("save_model", f"m {work / 'out'}")
    assert list(work.iterdir()) == []


def test_saving_into_the_folder_an_offloaded_model_reads_from_is_refused(shell, folders, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(folders["llama"], src)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    shell.run_line_magic("load_model", f"{src} --no-verify --max-memory cpu=200KB --as m")
    assert "disk" in shell.user_ns["m"].hf_device_map.values()
    for target in (src, src / "inner", src.parent):
        with pytest.raises(UsageError, match="reads its weights from .* would destroy them"):
            shell.run_line_magic("save_model", f"m {target} --overwrite")
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    with torch.no_grad():
        shell.user_ns["m"](torch.tensor([[1, 2, 3]]))  # still reads its offloaded weights


@pytest.mark.parametrize("line, words", [
    ("nope {out}", "No model named 'nope'"),
    ("m {file}", "is a file, not a folder"),
    ("m {out} --max-shard-size lots", "Cannot read --max-shard-size 'lots'"),
    ("m {out} --dtype int3", "Unknown dtype 'int3'"),
    ("m /proc/nope/out", "Cannot write into /proc/nope"),
    ("m /proc/out", "Cannot write into /proc"),  # root may write there, but it is no disk: not "0 B free"
])
def test_bad_input_writes_nothing(shell, tiny_hub, hf_cache, work, line, words):
    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    (work / "a-file").write_text("x")
    with pytest.raises(UsageError, match=words):
        shell.run_line_magic("save_model", line.format(out=work / "out", file=work / "a-file"))
    assert sorted(p.name for p in work.iterdir()) == ["a-file"]


def test_the_record_lists_files_and_the_line_to_load_it(shell, tiny_hub, hf_cache, work, capsys):
    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    capsys.readouterr()
    shell.run_line_magic("save_model", f"m {work / 'out'}")
    text = capsys.readouterr().out
    assert f"saved m to {work / 'out'}" in text and "tiny/llama@" in text
    assert "model.safetensors" in text and "manifest  sha256 " in text
    assert f"%load_model {work / 'out'} --as m" in text


@pytest.mark.filterwarnings("ignore:Attempting to save a model with offloaded modules")
@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_small_chunks_through_the_buffer_ring_write_the_same_bytes(folders, tmp_path, monkeypatch, arch):
    """Many more chunks than buffers in flight: a buffer reused too early would corrupt a shard. Every
    way a tensor's bytes go: file to file (as loaded, offloaded), from its own memory, converted."""
    from hf_notebook.core.weights import shard_writer as W

    monkeypatch.setattr(W, "CHUNK", 4096)
    src = folders[arch]
    for where in ("cpu", "offloaded", "own memory"):
        kwargs = {"device_map": "auto", "max_memory": {"cpu": 200_000}} if where == "offloaded" else \
            {"device_map": "cpu"}
        result = load_model(str(src), no_verify=True, **kwargs)
        if where == "own memory":  # changed since the load: no longer the checkpoint's mapped bytes
            with torch.no_grad():
                for param in result.model.parameters():
                    param.data = param.data.clone()
        for dtype in (None, "bfloat16"):
            mine = tmp_path / f"mine-{where}-{dtype}"
            save_model(result, mine, max_shard_size=100_000, dtype=dtype)
            reference = load_model(str(src), no_verify=True, device_map="cpu").model
            theirs = tmp_path / f"theirs-{where}-{dtype}"
            (reference.to(torch.bfloat16) if dtype else reference).save_pretrained(theirs, max_shard_size=100_000)
            assert same_weights(mine, theirs), (where, dtype)
            assert manifest_is_true(mine), (where, dtype)


def manifest_is_true(folder):
    listed = json.loads((folder / MANIFEST).read_text())["files"]
    return all(facts == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
               for name, facts in listed.items() for data in [(folder / name).read_bytes()])


@pytest.mark.filterwarnings("ignore:Attempting to save a model with offloaded modules")
@pytest.mark.skipif(not hasattr(os, "copy_file_range"), reason="copy_file_range is Linux's")
@pytest.mark.parametrize("refusal", [None, errno.EXDEV, errno.EOPNOTSUPP])
def test_offloaded_weights_are_copied_file_to_file_and_hashed_from_the_source(folders, tmp_path, monkeypatch,
                                                                                refusal):
    """Weights kept on disk go file to file inside the kernel, hashed from a mapping of their source; where
    the kernel refuses (another file system, ...) they are read and written instead: same bytes, true hashes."""
    copies = []
    real = os.copy_file_range

    def copy_file_range(src, dst, count, offset_src=None, offset_dst=None):
        copies.append(count)
        if refusal:
            raise OSError(refusal, os.strerror(refusal))
        return real(src, dst, count, offset_src, offset_dst)

    monkeypatch.setattr(os, "copy_file_range", copy_file_range)
    src = folders["llama"]
    result = load_model(str(src), no_verify=True, device_map="auto", max_memory={"cpu": 200_000})
    on_disk = [t for t in result.model.state_dict().values() if t.device.type == "meta"]
    mine = tmp_path / "mine"
    save_model(result, mine, max_shard_size=100_000)
    theirs = tmp_path / "theirs"
    load_model(str(src), no_verify=True, device_map="cpu").model.save_pretrained(theirs, max_shard_size=100_000)
    assert same_weights(mine, theirs)
    assert manifest_is_true(mine)
    if refusal:
        assert len(copies) == 1  # refused once, then never asked again
    else:
        assert sum(copies) == sum(t.numel() * t.element_size() for t in on_disk)


@pytest.mark.skipif(not hasattr(os, "copy_file_range"), reason="copy_file_range is Linux's")
def test_weights_loaded_in_place_are_copied_from_their_checkpoint_unless_changed(folders, tmp_path, monkeypatch):
    """A cpu weight that is still the checkpoint's mapped bytes goes file to file; one changed in
    place since the load (its pages are copies now) or replaced is written from memory: the saved
    folder holds the model as it is, not the checkpoint."""
    copies = []
    real = os.copy_file_range
    monkeypatch.setattr(os, "copy_file_range", lambda *a: copies.append(a[2]) or real(*a))
    result = load_model(str(folders["llama"]), no_verify=True, device_map="cpu")
    model = result.model
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[64, 5] += 1.0  # one element: copy-on-write of one inner page
        model.model.norm.weight = torch.nn.Parameter(model.model.norm.weight * 2)  # new memory
    state = model.state_dict()
    changed = {"model.layers.0.mlp.up_proj.weight", "model.norm.weight"}
    save_model(result, tmp_path / "out", max_shard_size=100_000)
    back = load_model(str(tmp_path / "out"), device_map="cpu").model.state_dict()
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    from safetensors import safe_open

    saved = {}  # name -> bytes, as written (a tied weight once)
    for shard in (tmp_path / "out").glob("*.safetensors"):
        with safe_open(shard, framework="pt") as f:
            saved |= {k: f.get_slice(k).get_shape() for k in f.keys()}
    assert changed <= set(saved)
    assert sum(copies) == sum(state[k].numel() * state[k].element_size() for k in saved if k not in changed)
    assert manifest_is_true(tmp_path / "out")


def test_file_region_tells_mapped_unchanged_bytes_from_the_rest(tmp_path):
    import mmap

    import numpy as np

    from hf_notebook.core import libc

    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(64 * mmap.PAGESIZE))
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private and writable, as torch maps a checkpoint
    view = np.frombuffer(mapped, dtype=np.uint8)
    base = view.ctypes.data
    view[: 8 * mmap.PAGESIZE].sum()  # read: still the file's pages
    assert libc.file_region(base + 100, 8 * mmap.PAGESIZE) == (str(path), 100)
    view[20 * mmap.PAGESIZE + 7] ^= 0xFF  # written: that page is a copy now
    assert libc.file_region(base + 16 * mmap.PAGESIZE, 8 * mmap.PAGESIZE) is None
    assert libc.file_region(base + 32 * mmap.PAGESIZE, 8 * mmap.PAGESIZE) == (str(path), 32 * mmap.PAGESIZE)
    anonymous = np.ones(mmap.PAGESIZE * 4, dtype=np.uint8)
    assert libc.file_region(anonymous.ctypes.data, anonymous.nbytes) is None
    del view
    mapped.close()


@pytest.mark.parametrize("before", ["absent", "a previous save"])
def test_a_folder_filled_by_someone_else_during_the_save_is_kept(shell, loaded, tiny_hub, hf_cache, work, before):
    """Another kernel, process or the user puts a file at the target while the save runs: the save is refused
    at its swap, and their file, the folder and no temporary folder are left behind."""
    from hf_notebook.core.errors import SaveError

    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    out = work / "out"
    if before != "absent":
        shell.run_line_magic("save_model", f"m {out}")
    theirs = []

    def meanwhile(event):
        if not theirs:
            out.mkdir(exist_ok=True)
            (out / "notes.txt").write_text("mine\n")
            theirs.append(event)

    with pytest.raises(SaveError, match="changed while this save ran") as info:
        save_model(loaded.get("m"), out, overwrite=before != "absent", on_event=meanwhile)
    assert theirs and (out / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in work.iterdir()) == ["out"]
    assert ".." not in str(info.value) and info.value.hint


def test_a_refused_save_says_its_reason_and_its_hint_once(shell, tiny_hub, hf_cache, work):
    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    (work / "notes.txt").write_text("mine\n")
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("save_model", f"m {work}")
    text = str(info.value)
    assert "notes.txt" in text and text.count("Pick a new folder") == 1 and ".." not in text


def test_a_save_inside_a_saved_model_folder_is_refused(shell, tiny_hub, hf_cache, work):
    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    shell.run_line_magic("save_model", f"m {work / 'out'}")
    with pytest.raises(UsageError, match="(?s)is inside .*out, a saved model folder.*sibling"):
        shell.run_line_magic("save_model", f"m {work / 'out' / 'sub'}")
    assert not (work / "out" / "sub").exists()
    shell.run_line_magic("load_model", f"{work / 'out'} --as again")  # still passes its check
