"""Terminal IPython: ``%load_model`` prints readable progress lines and ends with the text record.

Real ``python -m IPython`` child processes against the session's Hub stand-in (``HF_ENDPOINT``
from the plugin), each with a Hub cache and an IPython folder of its own:

- through a pseudo-terminal, as a user at a terminal sees it: the one live line may be
  rewritten with ``\\r``, but once the terminal has drawn it every line is clean, and
  hf_notebook writes no escape sequence of its own;
- through a pipe (stdout not a TTY, as in logs and CI): plain lines only, no ``\\r``, no escapes.
"""

import os
import re
import subprocess
import sys

import pytest

pexpect = pytest.importorskip("pexpect", reason="pexpect (installed with IPython) drives the pseudo-terminal")

pytestmark = pytest.mark.slow

TIMEOUT = 60  # seconds for any one step; a tiny load takes about 4 s with the imports
ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[@-Z\\-_])")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # anything but \t, \n, \r


@pytest.fixture
def child_env(tiny_hub, tmp_path):
    """The test process's environment (the stand-in's HF_ENDPOINT), with a Hub cache and IPython folder of its own."""
    assert os.environ["HF_ENDPOINT"].startswith("http://127.0.0.1")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf-cache"), "IPYTHONDIR": str(tmp_path / "ipython")}
    for name in ("JPY_PARENT_PID", "JPY_SESSION_NAME", "MPLBACKEND", "COLUMNS", "LINES"):
        env.pop(name, None)
    return env


def screen_lines(raw: str) -> list[str]:
    """What a terminal shows for ``raw`` (no escapes in it): each ``\\r`` overwrites the line from column 0."""
    lines = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        shown = ""
        for part in line.split("\r"):
            shown = part + shown[len(part):]
        lines.append(shown.rstrip())
    return lines


def shown(raw: str) -> str:
    """What the terminal shows for ``raw`` (prompt_toolkit's escapes dropped), as text."""
    return "\n".join(screen_lines(ANSI.sub("", raw)))


def assert_progress_and_record(lines: list[str], sha: str, again: str) -> None:
    """The progress lines in order, then the record, each once."""
    text = "\n".join(lines)
    expected_in_order = [
        f"pinned: tiny/llama@{sha}", "resolve done in", "  fetched config.json", "config done in", "plan done in",
        "  fetched 6 files (", "fetch done in", "  loaded 5 shards (", "load done in",
        f"✓ m = tiny/llama@{sha[:12]}", "load it again:",
    ]
    positions = [text.find(piece) for piece in expected_in_order]
    assert -1 not in positions, f"missing {expected_in_order[positions.index(-1)]!r} in:\n{text}"
    assert positions == sorted(positions), f"out of order:\n{text}"
    for once in ("resolve done in", "load done in", "✓ m = ", "load it again:"):
        assert text.count(once) == 1, f"{once!r} shown {text.count(once)} times:\n{text}"
    assert any(re.fullmatch(rf"  commit +{sha} \(default branch, can move\)", line) for line in lines), text
    assert "  device " in text and "CPU RAM (cpu)" in text
    i = lines.index("load it again:")
    assert lines[i + 1] == f"  {again}"


def terminal_ipython(env: dict, cwd):
    """``ipython`` in a pseudo-terminal of 50 x 200, as a user at a terminal runs it."""
    env = {**env, "TERM": "xterm-256color", "PROMPT_TOOLKIT_NO_CPR": "1"}  # no cursor-position query to answer
    return pexpect.spawn(sys.executable, ["-m", "IPython", "--no-banner", "--colors=NoColor"], env=env,
                         cwd=str(cwd), dimensions=(50, 200), timeout=TIMEOUT, encoding="utf-8", codec_errors="replace")


def tty_output(env: dict, cwd, lines: list[str]) -> str:
    """Type ``lines`` into terminal IPython through a pseudo-terminal; what the last one printed, raw."""
    child = terminal_ipython(env, cwd)
    try:
        for number, line in enumerate(lines, 1):
            child.expect_exact(f"In [{number}]:")
            child.sendline(line)
        child.expect_exact(f"In [{len(lines) + 1}]:")
        drawn = child.before
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    # prompt_toolkit leaves bracketed-paste mode when the line is accepted and re-enters it for the next prompt:
    # everything in between is the magic's own output.
    start, end = drawn.rfind("\x1b[?2004l"), drawn.rfind("\x1b[?2004h")
    assert 0 <= start < end, f"no prompt_toolkit input/prompt boundary found in {drawn!r}"
    return drawn[start + len("\x1b[?2004l"):end]


def test_tty_shows_progress_lines_then_the_text_record(child_env, tiny_hub, tmp_path):
    sha = tiny_hub["llama"].commits["main"]
    # transformers' optional imports (torchao, where installed) write to stderr once, on first import:
    # here, not in the middle of the load's live line
    output = tty_output(child_env, tmp_path, ["%load_ext hf_notebook", "import transformers.modeling_utils",
                                              "%load_model tiny/llama --as m"])
    assert not ANSI.search(output) and "\x1b" not in output, f"escape sequence in hf_notebook's output: {output!r}"
    assert not CONTROL.search(output), f"control character in hf_notebook's output: {output!r}"
    lines = screen_lines(output)
    assert not [line for line in lines if "…" in line], "live progress line left on screen:\n" + "\n".join(lines)
    assert_progress_and_record(lines, sha, f"%load_model tiny/llama@{sha} --dtype float32 --as m")


def test_pipe_gets_plain_lines_only(child_env, tiny_hub, tmp_path):
    """stdout is not a TTY: no ``\\r`` rewrites and no escapes; a failed load leaves a one-line record."""
    sha = tiny_hub["llama"].commits["main"]
    script = "\n".join([
        "%load_ext hf_notebook",
        "%load_model tiny/llama --max-memory cpu=300KB --as m",  # several shards, most of the model on disk
        "%load_model tiny/does-not-exist --as broken",
        "exit",
    ]) + "\n"
    proc = subprocess.run(
        [sys.executable, "-m", "IPython", "--simple-prompt", "--no-banner", "--colors=NoColor"],
        input=script, capture_output=True, text=True, env=child_env, cwd=str(tmp_path), timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "\r" not in out, f"\\r rewrite in piped output: {out!r}"
    assert "\x1b" not in out and not CONTROL.search(out), f"escape or control character in piped output: {out!r}"
    lines = [line.removeprefix("In [2]: ") for line in out.splitlines()]
    again = f"%load_model tiny/llama@{sha} --dtype float32 --max-memory cpu=300KB --as m"
    assert_progress_and_record(lines, sha, again)
    assert "disk (offload)" in out and "  loaded 5 shards" in out
    assert [line for line in lines if "shard" in line] == ["  loaded 5 shards (21 tensors, 427.3 kB)"]  # not one a shard
    assert not [line for line in lines if ".safetensors" in line]
    assert re.search(r"\n +files +6 files", out), out  # the record counts what the progress counted
    # The failed load: a record line on stdout, the reason once on stderr, no traceback.
    assert "✗ resolving tiny/does-not-exist: failed during resolve" in out
    assert proc.stderr.count("UsageError: Repository tiny/does-not-exist does not exist") == 1, proc.stderr
    assert "does not exist" not in out and "Traceback" not in proc.stderr


def test_tty_plan_plot_is_saved_as_a_png_whose_path_is_printed(child_env, tiny_hub, tmp_path):
    """A terminal cannot show an image: the figure goes to the PNG file named and the path is printed, not the repr
    of an IPython Image object (which is what a terminal prints for a display() of one)."""
    output = tty_output(child_env, tmp_path, ["%load_ext hf_notebook",
                                              "%plan_model tiny/mixtral --max-memory cpu=400KB --plot plan.png"])
    text = "\n".join(screen_lines(output))
    assert "Plan for tiny/mixtral" in text and "disk (offload)" in text  # the plan's text record, as today
    assert "<IPython.core.display.Image object>" not in text, text
    paths = re.findall(r"(\S+\.png)\b", text)
    assert paths, f"no .png path printed:\n{text}"
    png = (tmp_path / paths[-1]).resolve()  # absolute, or relative to the shell's working directory
    assert png.is_file() and png.read_bytes().startswith(b"\x89PNG"), f"{png} is not a PNG file"


def test_tty_first_load_shows_its_imports_and_a_ctrl_c_ends_in_one_line(child_env, tiny_hub, hub_server, tmp_path):
    """A fresh terminal's first load is not silent while torch and transformers import (the stage names them and
    its time is counted); Ctrl-C during the download ends in one line that says what a re-run reuses: no frames,
    no source of ours, nothing bound."""
    child = terminal_ipython(child_env, tmp_path)
    try:
        child.expect_exact("In [1]:")
        child.sendline("%load_ext hf_notebook")
        child.expect_exact("In [2]:")
        hub_server.throttle_bytes_per_s = 40_000  # the tiny llama's 430 kB take about 11 s
        child.sendline("%load_model tiny/llama --force-download --as m")
        child.expect(r"import… [a-z_, ]*torch")  # the live line names what is being imported
        child.expect_exact("import done in")
        child.expect_exact("download ")  # the weights are under way
        child.sendintr()
        child.expect_exact("In [3]:", timeout=10)  # at once, not when the 11 s download would have ended
        drawn = child.before
        hub_server.throttle_bytes_per_s = None
        child.sendline("print('m' in dir())")
        child.expect_exact("In [4]:")
        bound = child.before
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        hub_server.throttle_bytes_per_s = None
        child.close(force=True)
    text = shown(drawn)
    assert "cancelled during fetch" in text and "nothing was bound" in text, text
    assert "Traceback" not in text and "magics.py" not in text and "raise" not in text, text
    assert sum("KeyboardInterrupt" in line for line in text.splitlines()) <= 1, text
    assert "False" in bound


def test_tty_ctrl_c_while_torch_imports_then_the_next_load_works(child_env, tiny_hub, tmp_path):
    """Ctrl-C in a fresh terminal's import stage ends the load at once, naming the repo; the imports themselves
    go on (one stopped halfway leaves torch "partially initialized" until a restart), so the next load works."""
    child = terminal_ipython(child_env, tmp_path)
    try:
        child.expect_exact("In [1]:")
        child.sendline("%load_ext hf_notebook")
        child.expect_exact("In [2]:")
        child.sendline("%load_model tiny/llama --as m")
        child.expect(r"import… [a-z_, ]*torch")
        child.sendintr()  # torch is being imported now: it takes seconds
        child.expect_exact("In [3]:", timeout=5)
        first = child.before
        child.sendline("%load_model tiny/llama --as m")
        child.expect_exact("In [4]:")
        second = child.before
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    first = shown(first)
    assert "■ loading tiny/llama: cancelled during import" in first and "nothing was bound" in first, first
    second = shown(second)
    assert "✓ m = tiny/llama@" in second and "partially initialized" not in second, second
