"""The lock file under concurrency and damage: two kernels loading at once keep both entries; a damaged lock
file is named before the load (nothing bound); one that cannot be written is a warning after a good load."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from IPython.core.error import UsageError


def _lock_path(shell):
    return shell.config.HFNotebook.lock_file


def test_two_processes_writing_at_once_keep_every_entry(tmp_path):
    """Each process adds 30 entries of its own through lock.update; the file ends with all 60."""
    path = tmp_path / "hf_notebook.lock.json"
    script = textwrap.dedent(f"""
        import sys
        from hf_notebook.core.hub import lock
        me = sys.argv[1]
        for i in range(30):
            entry = {{"repo": f"org/{{me}}-{{i}}", "revision": "main", "sha": "a" * 40, "files": {{}}}}
            lock.update({str(path)!r}, f"org/{{me}}-{{i}}@main", lambda old, e=entry: e)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, who]) for who in ("one", "two")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    entries = json.loads(path.read_text())["models"]
    assert len(entries) == 60
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


@pytest.mark.parametrize("damage", [
    "{not json",
    json.dumps({"format": "hf_notebook.lock/1", "models": {"tiny/llama@main": {"repo": "tiny/llama"}}}),
    json.dumps({"format": "hf_notebook.lock/1", "models": {"tiny/llama@main": {
        "repo": "tiny/llama", "sha": "b" * 40, "files": {"config.json": {"size": 3}}}}}),
])
def test_a_damaged_lock_file_is_named_before_loading(shell, tiny_hub, hf_cache, hub_server, damage):
    path = _lock_path(shell)
    with open(path, "w") as handle:
        handle.write(damage)
    hub_server.reset_counters()
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    assert path in str(info.value) and "m" not in shell.user_ns
    assert hub_server.bytes_served() == 0  # refused before any download


def test_a_lock_path_that_is_a_folder_is_refused_before_loading(shell, tiny_hub, hf_cache, tmp_path):
    """%config refuses a folder when set; one that became a folder later is named before anything is loaded."""
    from hf_notebook.magics import instance

    instance(shell).lock_file = str(tmp_path / "lock.json")
    (tmp_path / "lock.json").mkdir()  # a lock path that became a folder after it was set
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    assert "not a file" in str(info.value) and "m" not in shell.user_ns


def test_an_unwritable_lock_file_is_a_warning_and_the_model_stays(shell, tiny_hub, hf_cache, capsys):
    """/proc takes no new files, not even from root (these tests run as root here, where chmod stops nothing)."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux's /proc")
    shell.run_line_magic("config", "HFNotebook.lock_file = '/proc/hf_notebook.lock.json'")
    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    assert "m" in shell.user_ns
    out = capsys.readouterr().out
    assert "/proc/hf_notebook.lock.json was not updated" in out and "loaded and bound" in out


def test_the_lock_file_is_readable_as_before_and_alone(shell, tiny_hub, hf_cache, tmp_path):
    """Written through a private temporary file, it still gets a normal mode; no companion file is left."""
    (tmp_path / "notebook").mkdir()
    path = tmp_path / "notebook" / "hf_notebook.lock.json"
    shell.run_line_magic("config", f"HFNotebook.lock_file = {str(path)!r}")
    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert os.listdir(path.parent) == ["hf_notebook.lock.json"]


def test_a_lock_file_that_is_a_link_updates_the_file_it_links_to(shell, tiny_hub, hf_cache, tmp_path):
    """A team keeps one lock file and each notebook folder links to it: the link stays a link, the shared
    file gets the entry, and two notebooks in different folders lock that one file (not their own folders)."""
    import threading

    from hf_notebook.core.hub import lock

    shared = tmp_path / "team" / "team.lock.json"
    shared.parent.mkdir()
    shared.write_text(json.dumps({"format": lock.FORMAT, "models": {}}))
    links = []
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        links.append(tmp_path / folder / "hf_notebook.lock.json")
        links[-1].symlink_to(os.path.relpath(shared, links[-1].parent))
    shell.run_line_magic("config", f"HFNotebook.lock_file = {str(links[0])!r}")
    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    assert links[0].is_symlink() and "tiny/llama@main" in json.loads(shared.read_text())["models"]
    entries = [{"repo": f"org/{i}", "revision": "main", "sha": "a" * 40, "files": {}} for i in range(40)]
    threads = [threading.Thread(target=lambda part=part, link=link: [lock.update(link, e["repo"] + "@main",
                                                                           lambda old, e=e: e) for e in part])
               for part, link in ((entries[:20], links[0]), (entries[20:], links[1]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(json.loads(shared.read_text())["models"]) == 41
    assert all(link.is_symlink() for link in links)
