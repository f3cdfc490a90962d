"""%load_model through a real InteractiveShell against the local Hub stand-in."""

import json
import subprocess
import sys

import pytest
import torch
from IPython.core.error import UsageError

from hf_notebook.testing.models import build_model


def weights_equal(model, expected):
    a, b = model.state_dict(), expected.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_load_ext_imports_no_heavy_library():
    code = (
        "import sys, time; from IPython.core.interactiveshell import InteractiveShell; sh = InteractiveShell.instance();"
        "t = time.perf_counter(); sh.run_line_magic('load_ext', 'hf_notebook'); t = time.perf_counter() - t;"
        "import json; print(json.dumps({'heavy': [m for m in ('torch', 'transformers', 'accelerate',"
        " 'huggingface_hub', 'ipywidgets') if m in sys.modules], 'magic': 'load_model' in sh.magics_manager.magics['line'],"
        " 'seconds': t}))"
    )
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert out["heavy"] == [] and out["magic"]  # how fast it is lives in `make bench`


def test_load_branch_binds_model_and_shows_pin(shell, tiny_hub, hf_cache, capsys):
    repo = tiny_hub["llama"]
    shell.run_line_magic("load_model", "tiny/llama --as m")
    out = capsys.readouterr().out
    assert repo.commits["main"] in out or repo.commits["main"][:12] in out
    assert f"tiny/llama@{repo.commits['main']}" in out  # floating branch: the pinned spelling to copy
    model = shell.user_ns["m"]
    assert weights_equal(model, build_model("llama", seed=repo.seeds["main"]))
    assert model.hf_device_map == {"": "cpu"}


@pytest.mark.parametrize("label", ["v1", "pr1", "short-sha"])
def test_load_pinned_revisions(shell, tiny_hub, hf_cache, label):
    repo = tiny_hub["qwen2"]
    rev = {"v1": "v1", "pr1": "refs/pr/1", "short-sha": repo.commits["v1"][:8]}[label]
    seed = repo.seeds["pr1" if label == "pr1" else "v1"]
    shell.run_line_magic("load_model", f"tiny/qwen2@{rev} --as m --dtype float32")
    assert weights_equal(shell.user_ns["m"], build_model("qwen2", seed=seed))
    assert not weights_equal(shell.user_ns["m"], build_model("qwen2", seed=repo.seeds["main"]))


def test_config_sets_defaults(shell, tiny_hub, hf_cache):
    shell.run_line_magic("config", "HFNotebook.dtype = 'bfloat16'")
    shell.run_line_magic("load_model", "tiny/gpt2")
    assert shell.user_ns["model"].dtype == torch.bfloat16


def test_help_documents_every_flag(shell):
    doc = shell.find_line_magic("load_model").__doc__
    for flag in ("--as", "--class", "--dtype", "--device-map", "--max-memory", "--offload-folder",
                 "--cache-dir", "--offline", "--force-download", "--no-offload"):
        assert flag in doc


MAGICS = ("load_model", "plan_model", "launch_model", "models", "measure", "unload_model", "edit_device_map",
          "save_model", "push_model", "export_model", "lock")


@pytest.mark.parametrize("magic", MAGICS)
def test_every_magic_answers_help_with_its_usage_and_does_nothing_else(shell, magic, capsys, hf_cache, hub_server):
    hub_server.reset_counters()
    assert shell.run_line_magic(magic, "--help") is None
    out = capsys.readouterr().out
    assert out.startswith(f"%{magic}") and out.strip() in shell.find_line_magic(magic).__doc__
    assert not hub_server.requests
    shell.run_line_magic(magic, "-h")
    assert capsys.readouterr().out == out


def test_a_wrong_line_points_to_help(shell):
    with pytest.raises(UsageError, match="(?s)unrecognized arguments: --nope.*See %models --help"):
        shell.run_line_magic("models", "--nope")


def test_a_budget_for_a_gpu_this_machine_lacks_names_the_budget(shell, tiny_hub, hf_cache):
    import torch

    missing = torch.cuda.device_count()
    with pytest.raises(UsageError, match=f"(?s)--max-memory gives a budget to cuda:{missing}.*%plan_model --target"):
        shell.run_line_magic("load_model", f"tiny/llama --max-memory {missing}=1GiB,cpu=1GiB --as m")
    assert "m" not in shell.user_ns


CANARY = "hf_" + "Canary1234567890abcdefXYZ"


@pytest.mark.parametrize("line", [
    "load_model tiny/llama --dtype {t}", "load_model tiny/llama --max-memory cpu={t}",
    "load_model tiny/llama --device-map {t}", "load_model tiny/llama@{t}", "load_model me/{t}",
    "load_model tiny/llama --as {t}x!", "plan_model tiny/llama --target {t}", "save_model nosuch /tmp/{t}",
    "load_model tiny/llama --quantization-config @{t}.json", "models {t} --extra",
])
def test_a_token_typed_in_the_wrong_place_is_never_shown_nor_sent(shell, tiny_hub, hf_cache, hub_server, capsys,
                                                                   line):
    magic, _, rest = line.format(t=CANARY).partition(" ")
    hub_server.reset_counters()
    with pytest.raises(UsageError) as info:
        shell.run_line_magic(magic, rest)
    out = capsys.readouterr()
    assert CANARY not in str(info.value) + out.out + out.err
    assert not [r for r in hub_server.requests if CANARY in r[1]]


def test_a_ctrl_c_while_the_loaded_model_is_bound_completes_the_load_and_says_so(shell, loaded, tiny_hub, hf_cache,
                                                                                  monkeypatch, capsys):
    """A real SIGINT lands between binding the variable and recording the lock: never half bound (the variable
    set, the registry not, the old model released), and the record does not claim nothing was bound."""
    import os
    import signal
    import time

    from hf_notebook.core.session import Session

    shell.run_line_magic("load_model", "tiny/llama --as m")
    old = shell.user_ns["m"]
    real = Session._record_lock

    def pressed(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # Python runs a signal's handler between two bytecodes of the main thread: here
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Session, "_record_lock", pressed)
    capsys.readouterr()
    shell.run_line_magic("load_model", "tiny/llama --as m")
    assert shell.user_ns["m"] is not old and loaded.get("m").model is shell.user_ns["m"]
    assert loaded.get("m").interrupted_late and "Ctrl-C  came as the load ended" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the usual Ctrl-C afterwards


@pytest.mark.parametrize("line, fragment", [
    ("org//bad", "not a valid Hub repo id"),
    ("tiny/no-such-model", "does not exist"),
    ("tiny/llama@no-such-branch", "Existing branches and tags:"),
    ("tiny/llama --max-memory cpu", "DEVICE=SIZE"),
    ("tiny/llama --device-map everywhere", "Cannot read --device-map"),
    ("tiny/llama --device-map cuda:3", "this machine has"),
    ("tiny/llama --dtype int3", "Unknown dtype"),
    ("tiny/llama --as 1bad", "not a valid Python variable name"),
    ("tiny/llama --as print", "would hide Python's builtin print()"),
    ("tiny/llama --max-memory cpu=100KB --no-offload", "--no-offload"),
])
def test_errors_are_usage_errors_and_leave_namespace_alone(shell, tiny_hub, hf_cache, line, fragment):
    shell.user_ns["model"] = sentinel = object()
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", line)
    assert fragment in str(info.value)
    assert shell.user_ns["model"] is sentinel


def test_unknown_revision_lists_existing_ones(shell, tiny_hub, hf_cache):
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", "tiny/llama@nope")
    for name in ("main", "dev", "v1"):
        assert name in str(info.value)


def test_private_repo_needs_token(shell, hub_store, hub_server, hub_token, hf_cache, tmp_path, monkeypatch):
    from hf_notebook.testing.models import save_model

    folder = save_model("llama", tmp_path / "m")
    hub_store.create_repo("tiny/private-llama", private=True, exist_ok=True)
    hub_store.commit("tiny/private-llama", {p.name: p for p in folder.iterdir()})
    with pytest.raises(UsageError, match="hf auth login"):
        shell.run_line_magic("load_model", "tiny/private-llama")
    monkeypatch.setenv("HF_TOKEN", hub_token)
    shell.run_line_magic("load_model", "tiny/private-llama --as private")
    assert "private" in shell.user_ns
    assert hub_token not in str(shell.user_ns["private"].config)


def test_offline_after_online(shell, tiny_hub, hf_cache, hub_server, capsys):
    sha = tiny_hub["bert"].commits["main"]
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"tiny/bert@{sha} --offline")
    assert "not in the cache" in str(info.value) and f"%load_model tiny/bert@{sha}" in str(info.value)
    shell.run_line_magic("load_model", "tiny/bert --as online")  # by branch: the cache records main -> sha
    hub_server.reset_counters()
    shell.run_line_magic("load_model", f"tiny/bert@{sha} --offline --as offline")
    shell.run_line_magic("load_model", "tiny/bert --offline --as offline_main")  # refs/main from the cache
    assert hub_server.bytes_served() == 0 and not hub_server.requests
    assert weights_equal(shell.user_ns["offline"], shell.user_ns["online"])
    assert weights_equal(shell.user_ns["offline_main"], shell.user_ns["online"])


def test_offline_names_missing_shards(shell, tiny_hub, hf_cache):
    sha = tiny_hub["t5"].commits["main"]
    shell.run_line_magic("load_model", f"tiny/t5@{sha} --as t5")
    snapshot = next(hf_cache.glob(f"models--tiny--t5/snapshots/{sha}"))
    victim = sorted(snapshot.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"tiny/t5@{sha} --offline --as t5_again")
    assert victim.name in str(info.value) and "t5_again" not in shell.user_ns


def test_explicit_map_with_disk_and_widget_summary(shell, loaded, tiny_hub, hf_cache, tmp_path):
    layers = {f"model.layers.{i}": ("cpu" if i < 1 else "disk") for i in range(2)}
    device_map = {"model.embed_tokens": "cpu", **layers, "model.norm": "cpu", "model.rotary_emb": "cpu",
                  "lm_head": "cpu"}
    (tmp_path / "map.json").write_text(json.dumps(device_map))
    shell.run_line_magic("config", "HFNotebook.display = 'widget'")
    shell.run_line_magic("load_model", f"tiny/llama --device-map @{tmp_path / 'map.json'} "
                                       f"--offload-folder {tmp_path / 'off'} --as off")
    assert shell.user_ns["off"].hf_device_map == device_map

    result = loaded.get("off")
    assert result.placement.bytes_by_device["disk"] > 0 and result.placement.bytes_by_device["cpu"] > 0


def test_interrupted_load_binds_nothing_and_cleans_up(shell, loaded, tiny_hub, hf_cache, monkeypatch, tmp_path):
    """Ctrl-C in the middle of materializing: no variable, no registry entry, no temp offload folder."""
    import glob
    import tempfile

    from hf_notebook import ui
    from hf_notebook.core.events import ShardProgress

    import io

    from hf_notebook.ui.text import TextRenderer

    class Interrupting(TextRenderer):
        """A real renderer, and the user presses Ctrl-C when the first tensor is read."""

        def __call__(self, event):
            super().__call__(event)
            if isinstance(event, ShardProgress) and event.tensors_done == 1:
                during.extend(glob.glob(f"{tmp_path}/hf_notebook-offload-*"))
                raise KeyboardInterrupt

    renderer, during = Interrupting(io.StringIO()), []
    monkeypatch.setattr(ui, "make_renderer", lambda *a, **k: renderer)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # a temp folder no other process writes to
    shell.user_ns["model"] = sentinel = object()
    with pytest.raises(KeyboardInterrupt):
        shell.run_line_magic("load_model", "tiny/llama --max-memory cpu=300KB")
    assert shell.user_ns["model"] is sentinel and loaded.get("model") is None
    assert len(during) == 1 and glob.glob(f"{tmp_path}/hf_notebook-offload-*") == []  # made, then removed
    assert renderer.final.text.startswith("■ tiny/llama @ (default branch)")  # the panel says so...
    assert "cancelled during load" in renderer.final.text and "✓" not in renderer.final.text  # ...not done


def test_widget_panel_state_after_a_real_load(shell, loaded, tiny_hub, hf_cache, hub_server, monkeypatch):
    """The panel a notebook user sees: file bars full, then replaced by the record (pin, collapsed groups)."""
    from hf_notebook import ui

    panels = []
    real = ui.make_renderer
    monkeypatch.setattr(ui, "make_renderer", lambda *a, **k: panels.append(real(*a, **{**k, "mode": "widget"}))
                        or panels[-1])
    shell.run_line_magic("load_model", "tiny/mixtral --as moe")
    panel = panels[0]
    text = repr(panel)
    sha = tiny_hub["mixtral"].commits["main"]
    assert f"tiny/mixtral@{sha}" in text and "moe = " in text
    assert all(f.done == f.total for f in panel.state.files.values())
    fetched = [f for f in panel.state.files.values() if not f.cached]
    # what the panel counts came over the wire: in full over HTTP, compressed as stored through Xet
    assert hub_server.bytes_served("tiny/mixtral", via="resolve") + hub_server.bytes_served(
        "tiny/mixtral", via="xet") >= 0.8 * sum(f.total for f in fetched) > 0
    result = loaded.get("moe")
    layers = result.placement.group_of("model.layers.0")
    assert layers.members == ("model.layers.0", "model.layers.1") and layers.label in text
    assert panel.final.text == text and panel.widget.comm is None  # the record replaced the live widgets


def test_quoted_option_values_as_in_a_shell(shell, tiny_hub, hf_cache):
    device_map = ('{"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", '
                  '"model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}')
    shell.run_line_magic("load_model", f"tiny/llama --device-map '{device_map}' --max-memory \"cpu=1GB\" --as q")
    assert shell.user_ns["q"].hf_device_map["model.layers.1"] == "disk"


def test_force_download_fetches_again_and_cache_does_not(shell, tiny_hub, hf_cache, hub_server):
    shell.run_line_magic("load_model", "tiny/gpt2 --as first")
    first = hub_server.bytes_served("tiny/gpt2")
    hub_server.reset_counters()
    shell.run_line_magic("load_model", "tiny/gpt2 --as cached")
    assert hub_server.bytes_served("tiny/gpt2") == 0  # everything from the cache
    shell.run_line_magic("load_model", "tiny/gpt2 --force-download --as again")
    assert hub_server.bytes_served("tiny/gpt2") >= first * 0.9
    assert weights_equal(shell.user_ns["again"], shell.user_ns["first"])


def test_a_broken_download_is_retried_and_the_weights_are_right(shell, tiny_hub, hf_cache, hub_server):
    hub_server.fail_after_bytes = 20_000  # the next file body breaks off after 20 kB
    shell.run_line_magic("load_model", "tiny/bert --as bert")
    assert hub_server.fail_after_bytes is None  # the failure really happened
    assert weights_equal(shell.user_ns["bert"], build_model("bert", seed=tiny_hub["bert"].seeds["main"]))


FIRST_LOAD = """
import io, json, sys, threading
from IPython.core.interactiveshell import InteractiveShell
from hf_notebook import ui
from hf_notebook.ui.text import TextRenderer

sh = InteractiveShell.instance()
if sys.argv[2] == "kernel":
    sh.kernel = object()  # what ipykernel's shell has: hf_notebook then warms the imports up in the background
sh.run_line_magic("load_ext", "hf_notebook")
warming = [t for t in threading.enumerate() if t.name == "hf_notebook-warm-imports"]
alive = bool(warming) and warming[0].is_alive() and "transformers.modeling_utils" not in sys.modules
for t in warming:
    t.join()
out = io.StringIO()
ui.make_renderer = lambda *a, **k: TextRenderer(out)
sh.run_line_magic("load_model", f"{sys.argv[1]} --no-verify --as m")
print(json.dumps({"warming": bool(warming), "alive": alive, "out": out.getvalue()}))
"""


@pytest.mark.parametrize("where", ["terminal", "kernel"])
def test_a_fresh_processes_first_load_shows_and_counts_its_imports(tmp_path, where):
    """The first seconds of a fresh kernel are the libraries' imports: a named, timed stage of the load (not a
    silent bold 'loading'), or, in a Jupyter kernel, done in the background right after %load_ext returns."""
    from hf_notebook.testing.models import save_model

    folder = save_model("llama", tmp_path / "llama")
    run = subprocess.run([sys.executable, "-c", FIRST_LOAD, str(folder), where], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path, check=True)
    got = json.loads(run.stdout.splitlines()[-1])
    record_time = next(line for line in got["out"].splitlines() if line.strip().startswith("time"))
    if where == "terminal":
        assert not got["warming"]
        assert "import done in" in got["out"] and "import " in record_time  # counted in the record's times
    else:
        assert got["warming"] and got["alive"]  # %load_ext returned while the imports ran
        assert "import done in" not in got["out"] and "import " not in record_time  # nothing left to import
