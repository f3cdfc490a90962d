"""In-place re-dispatch of loaded models: cpu <-> disk moves keep outputs identical, free memory,
read back only what moves, never touch the network, and put everything back when a move fails."""

import errno
import gc
import threading
import os

import pytest
import torch

from hf_notebook.core import libc
from hf_notebook.core.api import apply_device_map, device_map_editor, load_model
from hf_notebook.core.errors import DeviceError, HfNotebookError, LoadError
from hf_notebook.testing.models import build_model
from hf_notebook.testing.threads import busy_io_threads

IDS = torch.tensor([[1, 5, 9, 2, 7, 3]])


def logits(model, arch):
    with torch.no_grad():
        if arch == "t5":
            return model(input_ids=IDS, decoder_input_ids=IDS).logits
        return model(IDS).logits


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A local checkpoint (several shards) per architecture, and the reference model's logits."""
    made = {}
    for arch in ("llama", "qwen2", "gpt2", "t5", "bert"):
        folder = tmp_path_factory.mktemp(arch)
        model = build_model(arch)
        model.save_pretrained(folder, max_shard_size="100KB")
        made[arch] = (folder, logits(model, arch))
    return made


def edit(result, *edits):
    draft = device_map_editor(result)
    draft.assign(edits)
    return apply_device_map(result, draft.map)


def layers(result):
    return [b for b in result.plan.blocks if b.rsplit(".", 1)[-1].isdigit()]


def own_memory(model):
    """Weights changed since the load (fine-tuned, say): memory of their own, no longer the checkpoint's."""
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "t5", "bert"])
@pytest.mark.parametrize("weights", ["as loaded", "changed since"])
def test_cpu_to_disk_and_back_keeps_outputs_identical(folders, arch, weights):
    """Weights still mapped from their checkpoint are read there once on disk (nothing written);
    weights with memory of their own are written to the offload folder, as transformers offloads."""
    from hf_notebook.core.devices.offloaded import disk_sources

    folder, want = folders[arch]
    result = load_model(str(folder), no_verify=True, device_map="cpu")
    model = result.model
    if weights == "changed since":
        own_memory(model)
    own = {n: p.nbytes for n, p in model.named_parameters()  # not (or no longer) the checkpoint's mapped bytes
           if libc.file_region(p.data_ptr(), p.nbytes) is None}
    blocks = layers(result)[:2] + [result.plan.blocks[-1]]  # two layers and the head (tied: its partner follows)
    moved = edit(result, *[(b, "disk") for b in blocks])
    nbytes = moved.moves[("cpu", "disk")]
    assert nbytes > 0 and moved.read == 0
    assert all(result.device_map[b] == "disk" for b in blocks)
    on_meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    disk = [k for k, d in result.device_map.items() if d == "disk"]  # the moved blocks and any tied partner
    assert set(on_meta) == {n for n, _ in model.named_parameters() if any(n.startswith(k + ".") for k in disk)}
    assert set(blocks) <= set(disk) and on_meta
    assert result.placement.bytes_by_device["disk"] == nbytes
    ties = model.all_tied_weights_keys or {}
    assert all(model.get_parameter(t) is model.get_parameter(s) for t, s in ties.items())  # tied as a load leaves them
    assert torch.equal(logits(model, arch), want)
    sources = {os.path.dirname(info["safetensors_file"]) for info in disk_sources(model).values()}
    if weights == "as loaded":  # read in place; only what has memory of its own is written (bert's
        assert moved.written == sum(own.get(n, 0) for n in on_meta)  # cls.predictions.bias is made by the load)
        assert os.path.realpath(folder) in sources and moved.written < nbytes / 10
    else:
        assert moved.written == nbytes and sources == {os.path.abspath(result.offload_folder)}
        files = os.listdir(result.offload_folder)
        assert len(files) == len(on_meta) and all(f.endswith(".safetensors") for f in files)

    back = edit(result, ("", "cpu"))
    assert back.read == nbytes and back.written == 0
    assert not [n for n, p in model.named_parameters() if p.device.type == "meta"]
    assert result.device_map == {"": "cpu"}
    if result.offload_folder:
        assert os.listdir(result.offload_folder) == []  # files of weights that left the disk are gone
        assert result.offload_folder not in open("/proc/self/maps").read()  # read into memory, not left mapped
    assert torch.equal(logits(model, arch), want)
    assert all(model.get_parameter(t) is model.get_parameter(s) for t, s in ties.items())
    assert len(result.edits) == 2
    if weights == "as loaded":  # mapped from the checkpoint again, as loaded: the next move writes no more
        again = edit(result, *[(b, "disk") for b in blocks])
        assert again.written == moved.written and torch.equal(logits(model, arch), want)


def test_weights_offloaded_by_the_load_are_read_in_place_and_only_those_that_move(folders):
    folder, want = folders["llama"]
    result = load_model(str(folder), no_verify=True, device_map="auto", max_memory={"cpu": 200_000})
    assert "disk" in result.device_map.values()
    draft = device_map_editor(result)
    on_disk = [u for u in draft.units() if u.device == "disk"]
    first = on_disk[0]
    moved = edit(result, (first.name, "cpu"))
    assert moved.moves == {("disk", "cpu"): first.nbytes} and moved.read == first.nbytes and moved.written == 0
    assert os.listdir(result.offload_folder) == []  # the others are still read from the checkpoint itself
    assert torch.equal(logits(result.model, "llama"), want)


def test_no_request_reaches_the_hub_during_an_edit(tiny_hub, hf_cache, hub_server):
    result = load_model("tiny/llama", device_map="cpu")
    hub_server.reset_counters()
    hub_server.errors = {"/": 503}  # the Hub is down: any request would fail
    before = logits(result.model, "llama")
    moved = edit(result, ("model.layers.0-1", "disk"))
    assert moved.written == 0  # read in place from the cache's blobs (no .safetensors suffix there)
    edit(result, ("model.layers.1", "cpu"))
    assert hub_server.requests == []
    assert result.device_map["model.layers.0"] == "disk" and result.device_map["model.layers.1"] == "cpu"
    assert torch.equal(logits(result.model, "llama"), before)


@pytest.mark.parametrize("failing", ["fourth", "last"])
def test_a_failed_move_puts_every_weight_back(folders, monkeypatch, failing):
    from hf_notebook.core.devices import redispatch as R

    folder, want = folders["llama"]
    result = load_model(str(folder), no_verify=True, device_map={"model.embed_tokens": "cpu", "model.layers.0": "cpu",
                                                 "model.layers.1": "disk", "model.norm": "cpu",
                                                 "model.rotary_emb": "cpu", "lm_head": "cpu"})
    own_memory(result.model)  # so the move writes files
    old_map, old_placement = dict(result.device_map), result.placement
    before = set(os.listdir(result.offload_folder))
    real_write, calls = R._write, []
    writes = sum(1 for n, p in result.model.named_parameters() if p.device.type == "cpu")
    fail_at = 4 if failing == "fourth" else writes - 1  # the last but one: while the last is being written

    def write_then_fail(name, tensor, folder):
        calls.append(name)
        if len(calls) == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(name, tensor, folder)

    monkeypatch.setattr(R, "_write", write_then_fail)
    draft = device_map_editor(result)
    draft.assign([("", "disk")])
    with pytest.raises(LoadError, match="ran out of space.*back where it was"):
        apply_device_map(result, draft.map)
    assert len(calls) >= fail_at  # it failed (files are written a few at a time: later ones may have started)
    assert result.model.hf_device_map == old_map and result.placement is old_placement and not result.edits
    assert set(os.listdir(result.offload_folder)) == before
    assert busy_io_threads(__file__) == []  # and no write still going on
    assert torch.equal(logits(result.model, "llama"), want)


def test_a_ctrl_c_while_a_move_removes_old_files_leaves_none_behind(folders, monkeypatch):
    """Files of weights that came back from disk are removed even when Ctrl-C comes during their removal: a file
    left there would make that weight's next move to disk refuse to overwrite it."""
    import signal

    from hf_notebook.core.devices import redispatch as R

    folder, want = folders["llama"]
    result = load_model(str(folder), no_verify=True, device_map="cpu")
    own_memory(result.model)  # so moves to disk write files
    edit(result, ("model.layers.0", "disk"))
    assert os.listdir(result.offload_folder)
    real_unlink, pressed = os.unlink, []

    def ctrl_c_then_unlink(path):
        if not pressed:
            pressed.append(path)
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, as the first file is being removed
        real_unlink(path)

    monkeypatch.setattr(R.os, "unlink", ctrl_c_then_unlink)
    edit(result, ("model.layers.0", "cpu"))
    monkeypatch.undo()
    assert pressed and os.listdir(result.offload_folder) == []
    edit(result, ("model.layers.0", "disk"))  # no leftover refuses it
    assert torch.equal(logits(result.model, "llama"), want)


def test_a_file_cut_short_by_a_full_disk_is_removed(folders, monkeypatch):
    from hf_notebook.core import safetensors_io

    folder, want = folders["llama"]
    result = load_model(str(folder), no_verify=True, device_map={"model.embed_tokens": "cpu", "model.layers.0": "cpu",
                                                 "model.layers.1": "disk", "model.norm": "cpu",
                                                 "model.rotary_emb": "cpu", "lm_head": "cpu"})
    own_memory(result.model)
    before = set(os.listdir(result.offload_folder))  # a folder the move did not make: it stays
    real, cut = safetensors_io.write_all, []

    def write_half_then_fail(f, data):
        if len(memoryview(data).cast("B")) > 1000 and not cut:  # the first tensor's bytes: half fit
            cut.append(f.name)
            real(f, memoryview(data).cast("B")[: len(memoryview(data).cast("B")) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)

    monkeypatch.setattr(safetensors_io, "write_all", write_half_then_fail)
    with pytest.raises(LoadError, match="ran out of space"):
        edit(result, ("model.layers.0", "disk"))
    assert cut and set(os.listdir(result.offload_folder)) == before
    assert torch.equal(logits(result.model, "llama"), want)


def test_a_failed_move_of_weights_read_in_place_leaves_their_checkpoint_alone(folders, monkeypatch):
    from hf_notebook.core.devices import redispatch as R

    folder, want = folders["llama"]
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    result = load_model(str(folder), no_verify=True, device_map="cpu")
    real_set, calls = R._set, []

    def set_then_stop(model, name, device, value=None):
        if device == "meta":
            calls.append(name)
            if len(calls) == 3:
                raise KeyboardInterrupt
        real_set(model, name, device, value)

    monkeypatch.setattr(R, "_set", set_then_stop)
    with pytest.raises(KeyboardInterrupt):
        edit(result, ("", "disk"))
    assert len(calls) == 3 and result.device_map == {"": "cpu"} and not result.edits
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
    assert torch.equal(logits(result.model, "llama"), want)


def test_too_little_disk_is_refused_before_anything_moves(folders, monkeypatch):
    from hf_notebook.core.devices import redispatch as R

    folder, want = folders["llama"]
    result = load_model(str(folder), no_verify=True, device_map="cpu")
    own_memory(result.model)
    monkeypatch.setattr(R, "free_bytes", lambda device, folder=None: 1000)
    draft = device_map_editor(result)
    draft.assign([("model.layers.0-1", "disk")])
    with pytest.raises(DeviceError, match=r"writes 295.9 kB \(with room kept for the file system, 2% \+ 16 MiB: "
                                          r"17.1 MB\), but only 1.00 kB is free"):
        apply_device_map(result, draft.map)
    assert result.device_map == {"": "cpu"} and result.offload_folder is None
    assert torch.equal(logits(result.model, "llama"), want)
    as_loaded = load_model(str(folder), no_verify=True, device_map="cpu")  # read in place once on disk: nothing to write
    moved = edit(as_loaded, ("model.layers.0-1", "disk"))
    assert moved.written == 0 and as_loaded.device_map["model.layers.0"] == "disk"
    assert torch.equal(logits(as_loaded.model, "llama"), want)


def test_a_map_for_a_gpu_this_machine_lacks_is_refused(folders):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    folder, _ = folders["llama"]
    result = load_model(str(folder), no_verify=True, device_map="cpu")
    with pytest.raises(HfNotebookError, match="this machine has no GPU"):
        apply_device_map(result, {"": 0})
    assert result.device_map == {"": "cpu"}


@pytest.mark.parametrize("weights", ["as loaded", "changed since"])
def test_moving_layers_to_disk_gives_their_memory_back(medium_folder, weights):
    """The issue's measure: RSS drops by at least 80% of the bytes moved to disk."""
    from hf_notebook.core.unload import process_rss as rss_bytes

    result = load_model(str(medium_folder), no_verify=True, device_map="cpu")
    model = result.model
    if weights == "changed since":
        own_memory(model)
    for p in model.parameters():  # touch every page, as a forward pass would
        p.data.sum()
    gc.collect()
    before = rss_bytes()
    moved = edit(result, ("model.layers.0-7", "disk"))
    gc.collect()
    dropped, nbytes = before - rss_bytes(), moved.moves[("cpu", "disk")]
    assert nbytes > 90e6 and moved.written == (nbytes if weights == "changed since" else 0)
    assert dropped >= 0.8 * nbytes, f"RSS dropped {dropped / 1e6:.1f} MB for {nbytes / 1e6:.1f} MB moved"


def test_weights_of_their_own_go_to_disk_and_back_on_a_few_cores(medium_folder, monkeypatch):
    """Files written a few at a time and big tensors read back in parts: the same bytes, no file left."""
    from hf_notebook.core import io_threads
    from hf_notebook.core.devices import redispatch as R

    monkeypatch.setattr(io_threads, "workers", lambda: 3)
    writers, readers = set(), set()
    real_write, real_read = R._write, io_threads._pread_all
    monkeypatch.setattr(R, "_write", lambda *a: writers.add(threading.current_thread().name) or real_write(*a))
    monkeypatch.setattr(io_threads, "_pread_all",
                        lambda *a: readers.add(threading.current_thread().name) or real_read(*a))
    result = load_model(str(medium_folder), no_verify=True, device_map="cpu")
    own_memory(result.model)
    want = {n: p.detach().clone() for n, p in result.model.named_parameters()}
    moved = edit(result, ("model.layers.0-7", "disk"))
    assert moved.written == moved.moves[("cpu", "disk")] > 90e6
    assert len(os.listdir(result.offload_folder)) == len([n for n in want if n.startswith("model.layers.")])
    edit(result, ("model.layers.0-7", "cpu"))
    got = dict(result.model.named_parameters())
    assert all(torch.equal(got[n], t) for n, t in want.items())
    assert os.listdir(result.offload_folder) == []
    assert all(name.startswith("hf_notebook-io") for name in writers)
    assert "MainThread" in readers and any(name.startswith("hf_notebook-io") for name in readers)


@pytest.mark.parametrize("arch, layer, embedding", [("gpt2", "transformer.h.0", "transformer.wte"),
                                                     ("qwen2", "model.layers.0", "model.embed_tokens")])
def test_a_tied_model_on_one_device_moves_a_layer_and_its_embedding(folders, arch, layer, embedding):
    """A one-device map split by an edit keeps the tied head placed; the head follows its embedding to disk."""
    folder, want = folders[arch]
    result = load_model(str(folder), no_verify=True, device_map="cpu")
    edit(result, (layer, "disk"))
    assert result.device_map[layer] == "disk" and result.device_map["lm_head"] == "cpu"
    assert torch.equal(logits(result.model, arch), want)
    edit(result, (embedding, "disk"))
    assert result.device_map["lm_head"] == "disk" and result.device_map[embedding] == "disk"
    assert result.model.lm_head.weight is result.model.get_input_embeddings().weight
    assert torch.equal(logits(result.model, arch), want)
    edit(result, ("", "cpu"))
    assert result.device_map == {"": "cpu"} and torch.equal(logits(result.model, arch), want)
