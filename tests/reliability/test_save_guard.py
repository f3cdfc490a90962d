"""``%save_model --overwrite`` never loses a user's files: paths are resolved before anything, only a model
folder is ever replaced, nothing is saved into or over what a loaded model reads (behind links too) or into a
Hub cache, a link to a folder is kept, and every way a save can stop ends its hash thread.

In every refusal: nothing written, no temporary folder left, the target as it was."""

import json
import os
import sys
import threading
from pathlib import Path

import pytest
import torch
from IPython.core.error import UsageError

from hf_notebook.core.integrity import MANIFEST

LOAD = "tiny/llama --device-map cpu --as m"
OFFLOADED = "tiny/llama --max-memory cpu=200KB --as m"


def tree(folder):
    """Every entry under ``folder``: a link's target, a file's bytes, a folder as None."""
    found = {}
    for path in sorted(Path(folder).rglob("*")):
        rel = path.relative_to(folder).as_posix()
        found[rel] = ("->", os.readlink(path)) if path.is_symlink() else path.read_bytes() if path.is_file() else None
    return found


def left_behind(*folders):
    """Temporary or set-aside folders a save made next to its target."""
    return [p.name for f in folders for p in Path(f).iterdir() if "hf_notebook-" in p.name]


def hash_threads():
    return [t for t in threading.enumerate() if t.name == "hf_notebook-sha256" and t.is_alive()]


def still_runs(shell):
    with torch.no_grad():
        shell.user_ns["m"](torch.tensor([[1, 2, 3]]))


def saved_dtype(folder):
    return json.loads((Path(folder) / MANIFEST).read_text())["dtype"]


@pytest.fixture
def work(tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


# -- 1. paths are resolved before anything ---------------------------------------------------
def test_a_path_through_dotdot_replaces_the_folder_it_names(shell, tiny_hub, hf_cache, work, monkeypatch):
    """Before: ``out/../out`` moved ``out`` aside, failed, and said the folder was as it was."""
    shell.run_line_magic("load_model", LOAD)
    monkeypatch.chdir(work)
    shell.run_line_magic("save_model", "m out")
    shell.run_line_magic("save_model", "m out/../out --dtype bfloat16 --overwrite")
    assert sorted(p.name for p in work.iterdir()) == ["out"]
    assert saved_dtype(work / "out") == "bfloat16"


# -- 2. only a model folder is replaced; never the working folder, home or / ------------------
def _notes(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "analysis.ipynb").write_text('{"cells": []}')
    (folder / "data.csv").write_text("a,b\n1,2\n")


def _looks_like_a_model(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 16)


@pytest.mark.parametrize("case", ["working folder", "working folder holding a saved model", "home",
                                  "folder of notes", "saved folder with a file of the user's", "root"])
def test_overwrite_never_replaces_what_is_not_a_model_folder(shell, tiny_hub, hf_cache, work, monkeypatch, case):
    """Before: ``%save_model m . --overwrite`` replaced the working folder, notebooks and data with it."""
    import tempfile

    shell.run_line_magic("load_model", LOAD)
    target = work / "target"
    if case == "working folder":
        _notes(target)
        monkeypatch.chdir(target)
        line, words = "m . --overwrite", "working folder"
    elif case == "working folder holding a saved model":
        shell.run_line_magic("save_model", f"m {target}")
        monkeypatch.chdir(target)
        line, words = "m . --overwrite", "working folder"
    elif case == "home":
        _looks_like_a_model(target)
        monkeypatch.setenv("HOME", str(target))
        line, words = "m ~ --overwrite", "home folder"
    elif case == "folder of notes":
        _notes(target)
        (target / "config.json").write_text("{}")
        line, words = f"m {target} --overwrite", "analysis.ipynb, data.csv"
    elif case == "saved folder with a file of the user's":
        shell.run_line_magic("save_model", f"m {target}")
        (target / "my-notes.md").write_text("what I found")
        line, words = f"m {target} --overwrite", "my-notes.md"
    else:
        target = Path("/")
        real = tempfile.mkdtemp

        def never_in_root(*args, **kwargs):  # today's code gets this far: stop it before it writes into /
            assert Path(kwargs.get("dir") or args[2]).resolve() != target, "a save began writing into /"
            return real(*args, **kwargs)

        monkeypatch.setattr(tempfile, "mkdtemp", never_in_root)
        line, words = "m / --overwrite", "root folder"
    before = tree(target) if target != Path("/") else None
    with pytest.raises(UsageError) as refused:
        shell.run_line_magic("save_model", line)
    message = str(refused.value)
    assert str(target) in message and words in message
    assert "Pick a new folder" in message
    if before is not None:
        assert tree(target) == before
        assert left_behind(target.parent) == []


@pytest.mark.parametrize("case", ["saved by %save_model", "written by save_pretrained", "empty"])
def test_overwrite_replaces_a_model_folder(shell, tiny_hub, hf_cache, work, case):
    shell.run_line_magic("load_model", LOAD)
    target = work / "out"
    if case == "saved by %save_model":
        shell.run_line_magic("save_model", f"m {target}")
    elif case == "written by save_pretrained":
        shell.user_ns["m"].save_pretrained(target, max_shard_size="100KB")
    else:
        target.mkdir()
    shell.run_line_magic("save_model", f"m {target} --dtype bfloat16 --overwrite")
    assert saved_dtype(target) == "bfloat16"
    assert sorted(p.name for p in work.iterdir()) == ["out"]


# -- 3. what a loaded model reads, behind links too, and the Hub cache --------------------------
def _shared_store(shell, hf_cache):
    """huggingface_hub 2.4's layout for a Xet download: the repo's blob is a link into ``<cache>/blobs/<xx>/``.
    The stand-in serves the tiny models through Xet, so a load lays it out; it is built by hand only if not."""
    shell.run_line_magic("load_model", LOAD)
    shell.run_line_magic("unload_model", "m")
    snapshot = next((hf_cache / "models--tiny--llama" / "snapshots").iterdir())
    entries = [p.resolve() for p in sorted(snapshot.glob("*.safetensors"))]
    shared = [e for e in entries if e.parent.parent == (hf_cache / "blobs").resolve()]
    if shared:  # the real shared store
        return shared[0].parent
    entry = entries[0]
    shared = hf_cache / "blobs" / entry.name[:2] / f"{entry.name}-xet"
    shared.parent.mkdir(parents=True, exist_ok=True)
    os.rename(entry, shared)
    entry.symlink_to(os.path.relpath(shared, entry.parent))
    return shared.parent


@pytest.mark.parametrize("case", ["snapshot through a linked cache", "cache loaded through a link", "the repo's blobs",
                                  "the shared blob store", "a new folder in the cache", "the cache itself"])
def test_nothing_is_saved_into_a_hub_cache_or_over_what_a_model_reads(shell, tiny_hub, hf_cache, tmp_path,
                                                                       monkeypatch, case):
    """Before: the guard compared unresolved paths and only the snapshot folder: saving into a linked path to
    the snapshot or into ``blobs`` replaced the files an offloaded model reads (FileNotFoundError), and the
    cache then held another dtype's weights under the pinned sha."""
    from huggingface_hub import constants

    store = _shared_store(shell, hf_cache) if case == "the shared blob store" else None
    (tmp_path / "cache-link").symlink_to(hf_cache)
    if case == "cache loaded through a link":  # the model reads from the link's path, the target is the real one
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache-link"))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache-link"))
    shell.run_line_magic("load_model", OFFLOADED)
    assert "disk" in shell.user_ns["m"].hf_device_map.values()
    repo = hf_cache / "models--tiny--llama"
    snapshot = next((repo / "snapshots").iterdir())
    if case == "snapshot through a linked cache":
        target = tmp_path / "cache-link" / snapshot.relative_to(hf_cache)
        words = f"reads its weights from {snapshot}"
    elif case == "cache loaded through a link":
        target, words = snapshot, f"reads its weights from {snapshot}"
    elif case == "the repo's blobs":
        target, words = repo / "blobs", f"reads its weights from {repo / 'blobs'}"
    elif case == "the shared blob store":
        target, words = store, f"reads its weights from {store}"
    elif case == "a new folder in the cache":
        target, words = hf_cache / "my-model", f"Hugging Face Hub cache {hf_cache}"
    else:
        target, words = hf_cache, f"reads its weights from {snapshot}"  # it holds the snapshot
    before = tree(hf_cache)
    with pytest.raises(UsageError, match="would destroy them|Hub cache") as refused:
        shell.run_line_magic("save_model", f"m {target} --dtype bfloat16 --overwrite")
    assert words in str(refused.value)
    assert tree(hf_cache) == before
    assert left_behind(tmp_path, hf_cache, repo) == []
    still_runs(shell)


def test_a_new_folder_in_a_hub_cache_nothing_is_loaded_from_is_refused(shell, tiny_hub, hf_cache, work):
    other = work / "other-cache"
    (other / "models--someone--model" / "snapshots").mkdir(parents=True)
    shell.run_line_magic("load_model", LOAD)
    for target in (other / "mine", other / "models--someone--model" / "snapshots" / "x"):
        with pytest.raises(UsageError, match=f"in the Hugging Face Hub cache {other}"):
            shell.run_line_magic("save_model", f"m {target}")
    assert tree(other) == {"models--someone--model": None, "models--someone--model/snapshots": None}


def test_the_files_a_model_maps_through_links_are_protected(shell, tiny_hub, hf_cache, work):
    """A local folder whose weights are links into another folder: that folder is read too."""
    shell.run_line_magic("load_model", LOAD)
    store, src = work / "store", work / "src"
    shell.user_ns["m"].save_pretrained(store)  # config + weights: a model folder by itself
    src.mkdir()
    for name in ("config.json", "generation_config.json"):
        (src / name).write_bytes((store / name).read_bytes())
    (src / "model.safetensors").symlink_to(store / "model.safetensors")
    shell.run_line_magic("load_model", f"{src} --no-verify --max-memory cpu=200KB --as m")
    assert "disk" in shell.user_ns["m"].hf_device_map.values()
    before = tree(store)
    with pytest.raises(UsageError, match=f"reads its weights from {store}; saving into {store} would destroy"):
        shell.run_line_magic("save_model", f"m {store} --overwrite")
    assert tree(store) == before and left_behind(work) == []
    still_runs(shell)
    shell.run_line_magic("save_model", f"m {store / 'copy'}")  # a new folder beside the files is harmless
    assert (store / "copy" / MANIFEST).exists()


# -- 4. a link to a folder: saved into the folder it points to, the link kept -------------------
def test_a_link_to_a_folder_is_kept_and_the_folder_it_points_to_replaced(shell, loaded, tiny_hub, hf_cache, work):
    """Before: the link was replaced by a real folder and ``.tlink.hf_notebook-old-PID`` was left."""
    from hf_notebook.core.weights.save import save_model

    shell.run_line_magic("load_model", LOAD)
    real, link = work / "real", work / "tlink"
    shell.run_line_magic("save_model", f"m {real}")
    link.symlink_to(real)
    shell.run_line_magic("save_model", f"m {link} --dtype bfloat16 --overwrite")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert saved_dtype(real) == "bfloat16"
    assert sorted(p.name for p in work.iterdir()) == ["real", "tlink"]
    saved = save_model(loaded.get("m"), link, overwrite=True)  # the result says where the files went, and how
    assert saved.folder == str(real) and saved.link == str(link) and saved.replaced
    assert sorted(p.name for p in work.iterdir()) == ["real", "tlink"]


def test_a_link_to_a_protected_folder_is_refused_like_the_folder(shell, tiny_hub, hf_cache, work, monkeypatch):
    shell.run_line_magic("load_model", LOAD)
    _notes(work / "project")
    monkeypatch.chdir(work / "project")
    (work / "here").symlink_to(work / "project")
    before = tree(work)
    with pytest.raises(UsageError, match="working folder"):
        shell.run_line_magic("save_model", f"m {work / 'here'} --overwrite")
    assert tree(work) == before


# -- 5. every way a save stops ends its hash thread -------------------------------------------
@pytest.fixture
def offloaded_result(tiny_hub, hf_cache):
    """A tiny llama partly on disk (read in place from its shards) and partly in memory."""
    from hf_notebook.core.api import load_model

    result = load_model("tiny/llama", max_memory={"cpu": 300_000})
    assert set(result.device_map.values()) == {"cpu", "disk"}
    return result


WATCHED = ("shard_writer.py", "queue.py", "threading.py")


def _tracing(on_line):
    """A trace that calls ``on_line(frame)`` at each line the main thread (where Ctrl-C lands) runs in the
    writer, in the queue module and in ``Thread.start`` (the hash thread is started from the writer's side)."""
    def local(frame, event, arg):
        if event == "line":
            on_line(frame)
        return local

    def trace(frame, event, arg):
        code = frame.f_code
        if code.co_filename.endswith(WATCHED) and (code.co_name == "start" or
                                                    not code.co_filename.endswith("threading.py")):
            return local
        return None

    return trace


def _interrupt_once(point, hit):
    """Raise KeyboardInterrupt at the first line where ``point(frame)``, as a signal between two lines would
    (a trace function that raises is removed: the rest of the save runs as it would)."""
    def on_line(frame):
        if not hit and point(frame):
            hit.append((frame.f_code.co_filename, frame.f_lineno))
            raise KeyboardInterrupt("injected")

    return _tracing(on_line)


def _save_traced(result, folder, trace, dtype=None):
    from hf_notebook.core.weights.save import save_model

    sys.settrace(trace)
    try:
        save_model(result, folder, max_shard_size=100_000, dtype=dtype)
    except KeyboardInterrupt:
        pass
    finally:
        sys.settrace(None)


def _ended(before=(), timeout=5.0):
    """Whether every hash thread started since ``before`` (those then alive) has ended, or does in ``timeout``."""
    for thread in hash_threads():
        if thread not in before:
            thread.join(timeout)
    return [t for t in hash_threads() if t not in before] == []


def test_ctrl_c_while_ending_a_shards_hash_ends_its_thread(offloaded_result, work):
    """The interleaving behind 1 in 160 hung saves: Ctrl-C inside ``Hasher.end``'s ``put(None)`` (it blocks while
    the hash thread catches up), after the end was marked done: nothing ever sent it again."""
    def in_end(frame):
        caller = frame.f_back
        return frame.f_code.co_name == "put" and caller is not None and caller.f_code.co_name == "end"

    hit = []
    _save_traced(offloaded_result, work / "out", _interrupt_once(in_end, hit))
    assert hit, "the writer never ended a hash"
    assert _ended(), "a hash thread waits forever"
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_ctrl_c_at_any_line_of_the_writer_ends_every_hash_thread(offloaded_result, work, monkeypatch, dtype):
    """Ctrl-C injected at each line the writer runs (its own, the queue's, the hash thread's start), one save
    per line: every hash thread ends and no temporary folder is left."""
    from hf_notebook.core.weights import shard_writer as W

    monkeypatch.setattr(W, "CHUNK", 16_384)  # several chunks per tensor: the queue fills, buffers are reused
    seen = []
    _save_traced(offloaded_result, work / "dry", _tracing(lambda f: seen.append((f.f_code.co_filename, f.f_lineno))),
                 dtype)
    assert (work / "dry" / MANIFEST).exists()
    points = list(dict.fromkeys(seen))
    assert {f.rsplit("/", 1)[-1] for f, _ in points} == {"shard_writer.py", "queue.py", "threading.py"}
    missed, leaks = [], []
    for i, where in enumerate(points):
        hit, before = [], hash_threads()
        _save_traced(offloaded_result, work / f"out-{i}",
                     _interrupt_once(lambda f, w=where: (f.f_code.co_filename, f.f_lineno) == w, hit), dtype)
        if not hit:
            missed.append(where)  # a line only some interleavings reach (a full queue, ...)
        if not _ended(before, timeout=2.0):
            leaks.append(where)
            if len(leaks) == 3:
                break
        assert left_behind(work) == []
    assert leaks == []
    assert len(missed) < len(points) / 4


def test_an_error_in_the_hash_thread_fails_the_save_instead_of_hanging(offloaded_result, work, monkeypatch):
    """Before: the hash thread died, nothing emptied its queue, and the writer waited forever to put."""
    from hf_notebook.core.weights import shard_writer as W
    from hf_notebook.core.weights.save import save_model

    def broken(*args):
        def release():
            raise OSError("madvise refused")
        return release

    monkeypatch.setattr(W, "CHUNK", 16_384)
    monkeypatch.setattr(W, "_page_release_of_map", broken)
    monkeypatch.setattr(W, "_page_release", broken)
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # today's code: the thread's death, unprinted
    outcome = []

    def run():
        try:
            save_model(offloaded_result, work / "out", max_shard_size=100_000)
            outcome.append("saved")
        except OSError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "the save hangs"
    assert isinstance(outcome[0], OSError) and "madvise refused" in str(outcome[0])
    assert _ended() and list(work.iterdir()) == []
