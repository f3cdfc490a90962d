"""Launching a tensor/pipeline-parallel model: generated commands against the engines' documented
flags, the launch folder (pinned, atomic, never over foreign files), and real 2-process CPU runs."""

import _thread
import json
import shlex
import threading

import pytest

from hf_notebook.core.distributed import launch as launch_mod
from hf_notebook.core.distributed.launch import (
    LaunchOptions,
    engine_commands,
    prepare_launch,
    sglang_commands,
    torchrun_commands,
    vllm_commands,
    write_transformers_launch,
)
from hf_notebook.core.errors import OptionError, PlanError, SaveError, SpecError

SHA = "0123456789abcdef0123456789abcdef01234567"

# The engines' documented flags and value forms (vLLM `vllm serve --help` / engine args; SGLang
# server_arguments; torchrun). None: a flag without a value.
_DTYPES = {"auto", "half", "float16", "bfloat16", "float", "float32"}


def _int(v):
    return v.isdigit() and int(v) >= 0


def _fraction(v):
    return 0 < float(v) <= 1


def _sha(v):
    return len(v) == 40 and all(c in "0123456789abcdef" for c in v)


def _host(v):
    return bool(v) and not any(c.isspace() for c in v)


def _host_port(v):
    host, _, port = v.rpartition(":")
    return _host(host) and _int(port)


DOCUMENTED = {
    "vllm": {"--revision": _sha, "--tensor-parallel-size": _int, "--pipeline-parallel-size": _int,
             "--max-model-len": _int, "--gpu-memory-utilization": _fraction, "--dtype": _DTYPES.__contains__,
             "--nnodes": _int, "--node-rank": _int, "--master-addr": _host, "--master-port": _int,
             "--headless": None},
    "sglang": {"--model-path": bool, "--revision": _sha, "--tp-size": _int, "--tp": _int, "--pp-size": _int,
               "--context-length": _int, "--mem-fraction-static": _fraction, "--dtype": _DTYPES.__contains__,
               "--nnodes": _int, "--node-rank": _int, "--dist-init-addr": _host_port},
    "transformers": {"--standalone": None, "--nnodes": _int, "--nproc-per-node": _int, "--node-rank": _int,
                     "--master-addr": _host, "--master-port": _int},
}
PROGRAMS = {"vllm": 3, "sglang": 3, "transformers": 1}  # words before the flags: vllm serve MODEL, python -m X


def _flags(engine, line):
    """{flag: value} of one generated line, asserting every flag is documented with a value of its form."""
    words = shlex.split(line)[PROGRAMS[engine]:]
    if engine == "transformers":
        assert words.pop() == "run.py"
    found, i = {}, 0
    while i < len(words):
        flag = words[i]
        assert flag in DOCUMENTED[engine], f"{flag} is not a documented {engine} flag"
        check = DOCUMENTED[engine][flag]
        if check is None:
            found[flag], i = None, i + 1
            continue
        value = words[i + 1]
        assert check(value), f"{flag} {value!r} is not of the documented form"
        found[flag], i = value, i + 2
    return found


def _options(**kw):
    base = dict(repo_id="org/model", revision=SHA, dtype="bf16", tp=2, pp=1, nodes=1, nproc_per_node=2)
    return LaunchOptions(**{**base, **kw})


CASES = [
    dict(),
    dict(context=4096, memory_fraction=0.85, dtype="float16"),
    dict(tp=4, pp=2, nodes=2, nproc_per_node=4, master_addr="10.0.0.1"),
    dict(tp=2, pp=2, nodes=4, nproc_per_node=1, context=8192),
    dict(tp=1, pp=2, nproc_per_node=2, dtype="auto"),
]


@pytest.mark.parametrize("engine", ["vllm", "sglang", "transformers"])
@pytest.mark.parametrize("case", CASES)
def test_every_flag_is_documented(engine, case):
    o = _options(**case)
    lines = engine_commands(engine, o)
    assert len(lines) == o.nodes
    for rank, line in enumerate(lines):
        flags = _flags(engine, line)
        if o.nodes > 1:
            assert flags["--node-rank"] == str(rank) and flags["--nnodes"] == str(o.nodes)


def test_vllm_line():
    line, = vllm_commands(_options(context=4096, memory_fraction=0.9))
    assert line == (f"vllm serve org/model --revision {SHA} --tensor-parallel-size 2 --pipeline-parallel-size 1 "
                    "--max-model-len 4096 --gpu-memory-utilization 0.9 --dtype bfloat16")


def test_vllm_nodes_after_the_first_are_headless():
    lines = vllm_commands(_options(tp=8, pp=2, nodes=2, nproc_per_node=8))
    assert [("--headless" in _flags("vllm", line)) for line in lines] == [False, True]
    assert all(_flags("vllm", line)["--master-addr"] == "MASTER_ADDR" for line in lines)


def test_sglang_lines():
    line, = sglang_commands(_options(context=2048, memory_fraction=0.8))
    assert line == (f"python -m sglang.launch_server --model-path org/model --revision {SHA} --tp-size 2 "
                    "--context-length 2048 --mem-fraction-static 0.8 --dtype bfloat16")
    lines = sglang_commands(_options(tp=2, pp=2, nodes=2, nproc_per_node=2, master_addr="head", master_port=5000))
    assert [_flags("sglang", line)["--node-rank"] for line in lines] == ["0", "1"]
    assert all(_flags("sglang", line)["--dist-init-addr"] == "head:5000" for line in lines)
    assert all(_flags("sglang", line)["--pp-size"] == "2" for line in lines)


def test_torchrun_lines():
    assert torchrun_commands(_options()) == ["torchrun --standalone --nproc-per-node 2 run.py"]
    lines = torchrun_commands(_options(tp=4, nodes=2, nproc_per_node=2))
    assert lines[1] == ("torchrun --nnodes 2 --nproc-per-node 2 --node-rank 1 --master-addr MASTER_ADDR "
                        "--master-port 29500 run.py")


def test_values_are_shell_quoted(tmp_path):
    folder = tmp_path / "my model's $(weights)"
    o = _options(local_folder=folder, master_addr="a;b", nodes=2, nproc_per_node=1)
    for engine in ("vllm", "sglang"):
        words = shlex.split(engine_commands(engine, o)[0])
        assert str(folder) in words and "--revision" not in words  # a folder has no revisions
    assert "a;b" in shlex.split(vllm_commands(o)[0])
    assert "'a;b'" in vllm_commands(o)[0]


@pytest.mark.parametrize("revision", ["main", "v1.0", SHA[:7], SHA[:39], SHA.upper(), None, ""])
def test_a_launch_is_pinned_to_a_full_sha(revision):
    with pytest.raises(SpecError, match="full commit sha"):
        _options(revision=revision)


@pytest.mark.parametrize("bad", [dict(tp=3), dict(pp=2), dict(nodes=2), dict(tp=0), dict(context=0),
                                 dict(memory_fraction=1.5), dict(dtype="int4"), dict(repo_id="not a repo"),
                                 dict(master_addr="two words")])
def test_bad_options_are_refused(bad):
    with pytest.raises((OptionError, PlanError, SpecError)):
        _options(**bad)


def test_unknown_engine_and_missing_folder():
    with pytest.raises(OptionError, match="Unknown engine"):
        prepare_launch("tgi", _options())
    with pytest.raises(OptionError, match="folder"):
        prepare_launch("transformers", _options())
    assert prepare_launch("vllm", _options()).commands == vllm_commands(_options())


# --------------------------------------------------------------------------- the transformers folder


def test_launch_folder(tmp_path):
    o = _options(context=1024, memory_fraction=0.5)
    result = write_transformers_launch(o, tmp_path / "out")
    assert result.engine == "transformers" and result.pin == f"org/model@{SHA}"
    assert sorted(p.name for p in result.files) == ["README.md", "launch.sh", "run.py"]
    run_py = (tmp_path / "out" / "run.py").read_text()
    compile(run_py, "run.py", "exec")
    assert f"REVISION = {SHA!r}" in run_py and "TP_SIZE = 2" in run_py and "MAX_MODEL_LEN = 1024" in run_py
    assert 'tp_plan="auto"' in run_py
    sh = (tmp_path / "out" / "launch.sh").read_text()
    assert "exec torchrun --standalone --nproc-per-node 2 run.py" in sh
    assert (tmp_path / "out" / "launch.sh").stat().st_mode & 0o111
    readme = (tmp_path / "out" / "README.md").read_text()
    assert SHA in readme and "org/model" in readme and "bfloat16" in readme and "bash launch.sh" in readme
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_multi_node_readme_names_each_node(tmp_path):
    o = _options(tp=4, pp=2, nodes=2, nproc_per_node=4)
    write_transformers_launch(o, tmp_path / "out")
    readme = (tmp_path / "out" / "README.md").read_text()
    for line in torchrun_commands(o):
        assert line in readme
    assert "MASTER_ADDR=<node-0-address> NODE_RANK=1 bash launch.sh" in readme
    sh = (tmp_path / "out" / "launch.sh").read_text()
    assert '--node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" --master-port 29500 run.py' in sh
    assert "PP_SIZE = 2" in (tmp_path / "out" / "run.py").read_text()


def test_rewrites_its_own_folder_but_never_foreign_files(tmp_path):
    out = tmp_path / "out"
    write_transformers_launch(_options(), out)
    write_transformers_launch(_options(dtype="float32"), out)  # ours, unchanged: replaced
    assert "DTYPE = 'float32'" in (out / "run.py").read_text()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SaveError, match="notes.txt"):
        write_transformers_launch(_options(), out)
    assert (out / "notes.txt").read_text() == "mine" and "DTYPE = 'float32'" in (out / "run.py").read_text()
    (out / "notes.txt").unlink()
    (out / "run.py").write_text("# edited by the user\n")
    with pytest.raises(SaveError, match="run.py"):
        write_transformers_launch(_options(), out)
    assert (out / "run.py").read_text() == "# edited by the user\n"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "run.py").write_text("x")
    with pytest.raises(SaveError):
        write_transformers_launch(_options(), foreign)
    assert [p.name for p in foreign.iterdir()] == ["run.py"]


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def fail(tmp, target):
        raise OSError("disk full")

    monkeypatch.setattr(launch_mod, "_swap_in", fail)
    with pytest.raises(OSError, match="disk full"):
        write_transformers_launch(_options(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    write_transformers_launch(_options(), tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    monkeypatch.setattr(launch_mod, "run_script", lambda o: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_transformers_launch(_options(dtype="float32"), tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_pipeline_parallel_needs_a_transformers_that_has_it(tmp_path, monkeypatch):
    monkeypatch.setattr(launch_mod, "_supports_pp", lambda: False)
    with pytest.raises(PlanError, match="pp_size"):
        write_transformers_launch(_options(tp=1, pp=2), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- real 2-process runs


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from hf_notebook.testing.models import save_model

    return save_model("llama", tmp_path_factory.mktemp("llama") / "model")


@pytest.mark.slow
def test_pipeline_parallel_run_matches_one_process(tiny_llama, tmp_path):
    from hf_notebook.core.distributed.run import run_transformers
    from hf_notebook.testing.models import build_model

    o = _options(repo_id="tiny/llama", dtype="float32", tp=1, pp=2, local_folder=tiny_llama)
    result = run_transformers(o, tmp_path, timeout_s=240)
    assert result.returncode == 0, result.log_tail
    assert result.max_logit_diff is not None and result.max_logit_diff <= 1e-5
    first = ("model.embed_tokens.", "model.layers.0.")  # two layers: stage 0 holds the embedding and layer 0
    expected = [0, 0]
    for name, param in build_model("llama").named_parameters():
        expected[0 if name.startswith(first) else 1] += param.numel() * param.element_size()
    assert result.rank_param_bytes == expected


@pytest.mark.slow
def test_a_failing_rank_is_reported(tmp_path):
    from hf_notebook.core.distributed.run import RankProgress, run_transformers
    from hf_notebook.core.events import Failed

    (tmp_path / "empty").mkdir()
    events = []
    o = _options(repo_id="tiny/llama", dtype="float32", local_folder=tmp_path / "empty")
    result = run_transformers(o, tmp_path, on_event=events.append, timeout_s=240)
    assert result.returncode != 0 and result.max_logit_diff is None and not result.cancelled
    final = {e.rank: e for e in events if isinstance(e, RankProgress)}
    assert all(e.state == "failed" and e.error for e in final.values()) and len(final) == 2
    assert isinstance(events[-1], Failed) and "rank" in str(events[-1].error)


def _gone(pid):
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _job_pids(events):
    """torchrun and everything below it, found from a rank's pid."""
    import psutil

    rank = psutil.Process(next(e.pid for e in events if getattr(e, "pid", None)))
    torchrun = rank.parent()
    return {torchrun.pid, *(p.pid for p in torchrun.children(recursive=True))}


@pytest.mark.slow
def test_ctrl_c_stops_every_rank(tiny_llama, tmp_path):
    import psutil

    from hf_notebook.core.distributed.run import RankProgress, run_transformers
    from hf_notebook.core.events import Failed

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    events, pids = [], set()

    def on_event(event):
        events.append(event)
        if isinstance(event, RankProgress) and event.pid and not pids:
            pids.update(_job_pids(events))
            _thread.interrupt_main()  # what Ctrl-C does: KeyboardInterrupt in the main thread

    o = _options(repo_id="tiny/llama", dtype="float32", local_folder=tiny_llama)
    with pytest.raises(KeyboardInterrupt):
        run_transformers(o, tmp_path, on_event=on_event, grace_s=3)
    assert len(pids) >= 3  # torchrun and two ranks
    assert all(_gone(pid) for pid in pids)
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before
    assert isinstance(events[-1], Failed) and isinstance(events[-1].error, KeyboardInterrupt)


@pytest.mark.slow
def test_stop_cancels_the_run(tiny_llama, tmp_path):
    from hf_notebook.core.distributed.run import RankProgress, run_transformers

    stop, pids = threading.Event(), set()

    def on_event(event):
        if isinstance(event, RankProgress) and event.pid and not stop.is_set():
            pids.update(_job_pids([event]))
            stop.set()

    o = _options(repo_id="tiny/llama", dtype="float32", local_folder=tiny_llama)
    result = run_transformers(o, tmp_path, on_event=on_event, stop=stop, grace_s=3)
    assert result.cancelled and result.returncode != 0 and result.max_logit_diff is None
    assert pids and all(_gone(pid) for pid in pids)
    records = [line for f in tmp_path.glob("check-*/rank*.jsonl") for line in f.read_text().splitlines()]
    states = [json.loads(line)["state"] for line in records]
    assert states and "checked" not in states
