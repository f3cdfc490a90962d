"""Temporary offload folders go away: on rebind of the same name, on unload, on failure, at exit."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def _folder(loaded, name) -> Path:
    folder = Path(loaded.get(name).offload_folder)
    assert folder.is_dir() and loaded.get(name).owns_offload_folder
    return folder


def test_rebinding_a_name_removes_the_old_offload_folder(shell, loaded, tiny_hub, hf_cache):
    shell.run_line_magic("load_model", "tiny/llama --max-memory cpu=300KB --as m")
    first = _folder(loaded, "m")
    shell.run_line_magic("load_model", "tiny/llama --max-memory cpu=300KB --as m")
    second = _folder(loaded, "m")
    assert not first.exists() and second != first
    shell.run_line_magic("unload_model", "m")
    assert not second.exists()


def test_a_replaced_model_still_held_keeps_its_folder_until_it_goes(shell, loaded, tiny_hub, hf_cache):
    shell.run_line_magic("load_model", "tiny/llama --max-memory cpu=300KB --as m")
    first = _folder(loaded, "m")
    kept = [shell.user_ns["m"]]  # the user still holds the old model: its weights on disk must stay
    shell.run_line_magic("load_model", "tiny/llama --max-memory cpu=300KB --as m")
    assert first.exists() and _on_disk(kept[0])
    kept.clear()  # the last reference: the folder goes with the model
    import gc

    gc.collect()
    assert not first.exists()


def _on_disk(model) -> bool:
    return model.model.layers[1].mlp.up_proj.weight.device.type == "meta"


def test_unloading_the_extension_releases_every_model_and_folder(tiny_hub, hf_cache, tmp_path):
    """Before: IPython's magics registry and a per-instance atexit entry kept every model of every cycle alive."""
    import gc
    import weakref

    from IPython.core.interactiveshell import InteractiveShell

    sh = InteractiveShell.instance()
    models, folders = [], []
    for _ in range(3):
        sh.run_line_magic("load_ext", "hf_notebook")
        sh.run_line_magic("config", f"HFNotebook.lock_file = {str(tmp_path / 'lock.json')!r}")
        sh.run_line_magic("load_model", "tiny/llama --max-memory cpu=300KB --as m")
        from hf_notebook.magics import instance

        models.append(weakref.ref(sh.user_ns["m"]))
        folders.append(Path(instance(sh).registry.get("m").offload_folder))
        sh.run_line_magic("unload_ext", "hf_notebook")
        del sh.user_ns["m"]
        sh.user_ns.pop("_", None)
    sh.config.pop("HFNotebook", None)
    gc.collect()
    assert [m() for m in models] == [None, None, None]
    assert not any(f.exists() for f in folders)


def test_folders_are_removed_at_interpreter_exit(tiny_hub, tmp_path):
    code = textwrap.dedent("""
        from IPython.core.interactiveshell import InteractiveShell
        sh = InteractiveShell.instance()
        sh.run_line_magic("load_ext", "hf_notebook")
        sh.run_line_magic("load_model", "tiny/llama --max-memory cpu=300KB --as m")
        from hf_notebook.magics import instance
        print("FOLDER", instance(sh).registry.get("m").offload_folder)
    """)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)  # its lock file lands there, not in the checkout
    assert out.returncode == 0, out.stderr
    folder = Path(next(line for line in out.stdout.splitlines() if line.startswith("FOLDER")).split()[1])
    assert folder.name.startswith("hf_notebook-offload-") and not folder.exists()
