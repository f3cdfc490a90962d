"""%plan_model --target and %launch_model, as a user sees them: a plan per rank, the refusals, launch folders and
engine commands pinned to the full sha, and a real run of two gloo processes on this machine's CPU (Ctrl-C
included)."""

import _thread
import fnmatch
import json
import shlex

import pytest
from IPython.core.error import UsageError

WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture
def shown(shell, monkeypatch):
    """What the magics display (each output's mime bundle, updates of a display included), in order."""
    records = []
    monkeypatch.setattr(shell.display_pub, "publish", lambda data, metadata=None, **kw: records.append(data))
    return records


@pytest.fixture(scope="module")
def big_llama(hub_store, tmp_path_factory):
    """A header-only checkpoint of Llama 70B's real shapes, published into the stand-in."""
    from hf_notebook.testing.models import BIG_CONFIGS, synthetic_checkpoint

    folder = synthetic_checkpoint(BIG_CONFIGS["llama-70b"](), tmp_path_factory.mktemp("llama-70b"))
    hub_store.create_repo("big/llama-70b", exist_ok=True)
    hub_store.commit("big/llama-70b", {p.name: p for p in folder.iterdir()}, message="synthetic headers")
    return "big/llama-70b", folder


def _tp_bytes(arch, tp):
    """Each rank's parameter bytes, counted without hf_notebook: 1/tp of what the model's tp plan shards."""
    from hf_notebook.testing.models import build_model

    model = build_model(arch)
    total = 0
    for name, param in model.named_parameters():
        sharded = any(fnmatch.fnmatchcase(name.rpartition(".")[0], pattern) for pattern in model.tp_plan)
        total += param.numel() * param.element_size() // (tp if sharded else 1)
    return total, sum(p.numel() * p.element_size() for p in model.parameters())


def _plan(shell, line):
    shell.run_line_magic("plan_model", line)
    return shell.user_ns[line.rsplit("--as ", 1)[1].split()[0]]


# -- %plan_model --target -----------------------------------------------------------------------------------------
def test_a_plan_on_two_cpu_ranks_has_a_row_per_rank_and_the_lines_that_launch_it(shell, tiny_hub, hf_cache, shown):
    p = _plan(shell, "tiny/llama --target 1x2xcpu --tp 2 --as p")
    sha = tiny_hub["llama"].commits["main"]
    assert p.source == f"tiny/llama@{sha}" and p.dtype == "float32" and (p.tp, p.pp) == (2, 1)
    assert [(r.rank, r.node, r.local_rank, r.device, r.kv_bytes) for r in p.ranks] == [(0, 0, 0, "cpu", 0),
                                                                                       (1, 0, 1, "cpu", 0)]
    per_rank, whole = _tp_bytes("llama", 2)
    assert [r.weight_bytes for r in p.ranks] == [per_rank, per_rank] and p.weight_bytes == whole
    text, html = shown[-1]["text/plain"], shown[-1]["text/html"]
    assert text.startswith(f"Parallel plan for tiny/llama@{sha} on 1x2xcpu: every rank fits")
    assert "tp=2, pp=1 as asked" in text and "local rank" in text and "layers" in text
    for line in ("%launch_model p --engine transformers --to p_launch", "%launch_model p --engine vllm",
                 "%launch_model p --engine sglang", "%launch_model p --run"):
        assert line in text and line.split()[-1] in html


def test_without_tp_and_pp_the_smallest_layout_that_fits_is_chosen_and_said_why(shell, tiny_hub, hf_cache, shown):
    per_rank, whole = _tp_bytes("llama", 2)
    q = _plan(shell, f"tiny/llama --gpus 2 --gpu-memory {int(whole * 0.7)} --context 32 --as q")
    assert (q.tp, q.pp) == (2, 1) and q.fits and q.kv.context == 32
    assert all(r.kv_bytes > 0 and r.device == f"cuda:{r.rank}" for r in q.ranks)
    text = shown[-1]["text/plain"]
    assert "need 2 GPUs" in text and "with tp=1, pp=1 a rank would need" in text
    assert "tp=2 divides 4 attention heads, 2 KV heads" in text
    shell.run_line_magic("plan_model", "tiny/llama --target 1x2xcpu")  # not bound: it says how to launch it
    assert "bind the plan with --as NAME, then launch it with:" in shown[-1]["text/plain"]


def test_a_model_type_without_a_tp_plan_is_refused_by_name_before_any_launch(shell, tiny_hub, hf_cache):
    with pytest.raises(UsageError, match="no tensor-parallel plan for gpt2") as caught:
        shell.run_line_magic("plan_model", "tiny/gpt2 --target 1x2xcpu --tp 2 --as g")
    assert "llama" in str(caught.value) and "g" not in shell.user_ns
    with pytest.raises(UsageError, match="is not a tensor/pipeline-parallel plan"):
        shell.run_line_magic("launch_model", "g --engine vllm")
    with pytest.raises(UsageError, match="gpt2.*does not fit"):  # too big for one device, and it cannot be split
        shell.run_line_magic("plan_model", "tiny/gpt2 --gpus 2 --gpu-memory 1kB")


@pytest.mark.parametrize("line, message", [
    ("--tp 2", "needs the machines: --target, or --gpus with --gpu-memory"),
    ("--gpus 2", "needs the machines"),
    ("--target 1x2xcpu --gpus 2 --gpu-memory 1GiB", "not both"),
    ("--target 2xZ80", "Unknown card 'Z80'"),
    ("--target 1x2xcpu --tp 3", "3 ranks; 1x2xcpu has 2 devices"),
    ("--target 1x2xcpu --context max", "needs the number of tokens"),
])
def test_parallel_options_that_cannot_work_are_refused_with_the_fix(shell, tiny_hub, hf_cache, line, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        shell.run_line_magic("plan_model", f"tiny/llama {line} --as p")
    assert "p" not in shell.user_ns


def test_the_record_escapes_what_the_hub_sent():
    from dataclasses import replace

    from hf_notebook.core.distributed.ranks import plan_ranks
    from hf_notebook.core.distributed.targets import parse_target
    from hf_notebook.testing.models import make_config
    from hf_notebook.ui.distributed import rank_plan_record

    plan = replace(plan_ranks(make_config("llama"), parse_target("1x2xcpu"), tp=2),
                   source="evil/<script>x</script>@0123", model_class="<img src=x onerror=alert(1)>", name="p")
    html = rank_plan_record(plan).html
    assert "<script>" not in html and "<img" not in html and "&lt;script&gt;" in html


# -- %launch_model ------------------------------------------------------------------------------------------------
def test_the_transformers_launch_is_a_folder_pinned_to_the_sha_with_its_lock_entry(shell, tiny_hub, hf_cache, shown,
                                                                                    hub_server, tmp_path):
    from hf_notebook.core.hub import lock

    _plan(shell, "tiny/llama --target 1x2xcpu --tp 2 --as p")
    sha, published = tiny_hub["llama"].commits["main"], tiny_hub["llama"].folders["main"]
    served = hub_server.bytes_served("tiny/llama")
    out = tmp_path / "launch"
    shell.run_line_magic("launch_model", f"p --engine transformers --to {out} --as job")
    run_py = (out / "run.py").read_text()
    assert f"REVISION = {sha!r}" in run_py and "MODEL = 'tiny/llama'" in run_py and "TP_SIZE = 2" in run_py
    assert sha in (out / "README.md").read_text() and "hf_notebook.lock.json" in (out / "README.md").read_text()
    entries = lock.read(out / "hf_notebook.lock.json")  # the lock file's own format, checked as %lock checks it
    entry = entries[f"tiny/llama@{sha}"]
    assert entry["sha"] == sha and entry["repo"] == "tiny/llama" and entry["class"] == "LlamaForCausalLM"
    weights = {p.name: p.stat().st_size for p in published.glob("*.safetensors")}
    assert {n: entry["files"][n]["size"] for n in weights} == weights and "config.json" in entry["files"]
    assert hub_server.bytes_served("tiny/llama") - served < sum(weights.values())  # no weights were downloaded
    job = shell.user_ns["job"]
    assert job.commands == ["torchrun --standalone --nproc-per-node 2 run.py"] and job.pin == f"tiny/llama@{sha}"
    text = shown[-1]["text/plain"]
    assert text.startswith(f"✓ transformers launch of tiny/llama@{sha}")
    assert f"cd {out} && torchrun --standalone --nproc-per-node 2 run.py" in text
    shell.run_line_magic("launch_model", f"p --to {out}")  # its own folder: written again
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="did not write.*notes.txt") as caught:
        shell.run_line_magic("launch_model", f"p --to {out}")
    assert "Choose a new or empty folder" in str(caught.value) and (out / "notes.txt").read_text() == "mine"


def test_vllm_and_sglang_commands_carry_the_revision_and_the_parallel_sizes(shell, tiny_hub, hf_cache, shown):
    _plan(shell, "tiny/llama --target 1x2xcpu --tp 2 --context 64 --as p")
    sha = tiny_hub["llama"].commits["main"]
    shell.run_line_magic("launch_model", "p --engine vllm --as v")
    words = shlex.split(shell.user_ns["v"].commands[0])
    assert words[:3] == ["vllm", "serve", "tiny/llama"] and words[words.index("--revision") + 1] == sha
    assert words[words.index("--tensor-parallel-size") + 1] == "2" and words[words.index("--max-model-len") + 1] == "64"
    assert words[words.index("--gpu-memory-utilization") + 1] == "0.9"
    assert shown[-1]["text/plain"].startswith(f"✓ vllm launch of tiny/llama@{sha}")
    shell.run_line_magic("launch_model", "p --engine sglang --memory-fraction 0.8 --as s")
    words = shlex.split(shell.user_ns["s"].commands[0])
    assert words[words.index("--revision") + 1] == sha and words[words.index("--tp-size") + 1] == "2"
    assert words[words.index("--mem-fraction-static") + 1] == "0.8" and words[words.index("--context-length") + 1] == "64"


@pytest.mark.parametrize("line, message", [
    ("nothing", "'nothing' is not a tensor/pipeline-parallel plan (not defined)"),
    ("single", "'single' is not a tensor/pipeline-parallel plan (a Plan)"),
    ("p --engine transformers", "--to DIR"),
    ("p --run --engine vllm", "--run runs the transformers engine here"),
    ("h100 --run", "--run starts the ranks on this machine's CPU, and h100 is planned for 1x2xH100"),
    ("p --run --master-addr head", "leave out --memory-fraction, --master-addr"),
])
def test_launches_that_cannot_work_are_refused_with_what_to_do(shell, tiny_hub, hf_cache, line, message):
    _plan(shell, "tiny/llama --target 1x2xcpu --tp 2 --as p")
    _plan(shell, "tiny/llama --target 2xH100 --as h100")
    shell.run_line_magic("plan_model", "tiny/llama --as single")
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("launch_model", line)
    assert message in str(caught.value)


def test_llama_70b_on_two_nodes_of_eight_h100_from_its_headers(shell, big_llama, hf_cache, shown, tmp_path):
    repo_id, folder = big_llama
    big = _plan(shell, f"{repo_id} --target 2x8xH100 --tp 8 --pp 2 --context 8192 --as big")
    assert len(big.ranks) == 16 and big.fits and big.dtype == "bfloat16"
    nine = big.ranks[9]
    assert (nine.node, nine.local_rank, nine.device, nine.stage, nine.layers) == (1, 1, "cuda:1", 1, range(40, 80))
    assert all(r.kv_bytes == 40 * 2 * 2 * 128 * 8192 for r in big.ranks)  # 1 of 8 KV heads, K and V, bf16, 40 layers
    text = shown[-1]["text/plain"]
    assert "16 ranks of the 16 devices" in text and "40-79" in text
    assert "(transformers cannot load tp with pp yet)" in text and "--engine transformers" not in text
    sha = big.source.split("@")[1]
    shell.run_line_magic("launch_model", "big --engine vllm --as v")
    lines = shell.user_ns["v"].commands
    assert len(lines) == 2 and all(f"--revision {sha}" in line for line in lines)
    assert all("--tensor-parallel-size 8 --pipeline-parallel-size 2 --max-model-len 8192" in line for line in lines)
    assert "--headless" not in lines[0] and lines[1].endswith("--headless")
    assert all("--master-addr MASTER_ADDR" in line for line in lines)
    assert "# node 1" in shown[-1]["text/plain"] and "in place of MASTER_ADDR" in shown[-1]["text/plain"]
    with pytest.raises(UsageError, match="(?s)cannot load tp=8 together with pp=2.*--engine vllm"):
        shell.run_line_magic("launch_model", f"big --to {tmp_path / 'refused'}")
    assert not (tmp_path / "refused").exists()
    auto = _plan(shell, f"{repo_id} --target 2x8xH100 --as auto")
    assert (auto.tp, auto.pp) == (2, 1) and "need 2 H100s" in auto.reason
    shell.run_line_magic("launch_model", f"auto --to {tmp_path / 'auto'}")
    entry = json.loads((tmp_path / "auto" / "hf_notebook.lock.json").read_text())["models"][f"{repo_id}@{sha}"]
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    assert sorted(n for n in entry["files"] if n.endswith(".safetensors")) == shards
    assert not list(hf_cache.rglob("*.safetensors"))  # sizes and sha256 from the Hub: no shard was downloaded


# -- %launch_model --run ------------------------------------------------------------------------------------------
def _children():
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.mark.slow
def test_a_run_on_two_cpu_ranks_matches_one_process_and_the_plan(shell, tiny_hub, hf_cache, shown, capsys):
    before = _children()
    p = _plan(shell, "tiny/llama --target 1x2xcpu --tp 2 --as p")
    shell.run_line_magic("launch_model", "p --run --as run")
    run = shell.user_ns["run"]
    assert run.returncode == 0 and not run.cancelled
    assert run.max_logit_diff is not None and run.max_logit_diff <= 1e-5
    planned = [r.weight_bytes for r in p.ranks]
    assert all(abs(got - want) <= 0.02 * want for got, want in zip(run.rank_param_bytes, planned))
    per_rank, whole = _tp_bytes("llama", 2)  # what each rank really holds, counted without hf_notebook
    assert run.rank_param_bytes == [per_rank, per_rank] and per_rank < 0.51 * whole  # about half each
    assert "--standalone --nproc-per-node 2 run.py" in run.command
    assert len(run.log_tail) == 2 and "Loading weights" in run.log_tail[0]  # each rank's own log, kept
    text = shown[-1]["text/plain"]
    assert text.startswith(f"✓ run of {p.source} on 2 ranks: matches one process") and "+0.00%" in text
    assert not any(WIDGET in data for data in shown)
    out = capsys.readouterr()
    assert "rank 0: checked" in out.out and "rank 1: checked" in out.out
    assert "Loading weights" not in out.out + out.err  # no library bar left behind
    assert _children() <= before


@pytest.mark.slow
def test_ctrl_c_stops_every_rank_and_the_panel_ends_in_a_static_line(shell, tiny_hub, hf_cache, shown, monkeypatch):
    import psutil

    from hf_notebook.core.distributed.run import RankProgress
    from hf_notebook.magics import Cancelled
    from hf_notebook.ui.distributed import RunPanel

    before, pids = _children(), set()
    draw = RunPanel.__call__

    def interrupt_on_first_rank(panel, event):
        draw(panel, event)
        if isinstance(event, RankProgress) and event.pid and not pids:
            torchrun = psutil.Process(event.pid).parent()
            pids.update({torchrun.pid, *(c.pid for c in torchrun.children(recursive=True))})
            _thread.interrupt_main()  # what Ctrl-C does

    monkeypatch.setattr(RunPanel, "__call__", interrupt_on_first_rank)
    shell.run_line_magic("config", "HFNotebook.display = 'widget'")
    _plan(shell, "tiny/llama --target 1x2xcpu --tp 2 --as p")
    with pytest.raises(Cancelled, match="cancelled. Every rank was stopped"):
        shell.run_line_magic("launch_model", "p --run --as run")
    assert len(pids) >= 3 and "run" not in shell.user_ns
    assert all(not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE for pid in pids)
    assert _children() <= before
    assert any(WIDGET in data for data in shown)  # the live panel was a widget ...
    assert WIDGET not in shown[-1] and "cancelled: every rank was stopped" in shown[-1]["text/plain"]  # ... now a line


def test_the_live_panel_draws_each_rank_and_ends_in_the_run_record(shell, shown):
    from IPython.display import display

    from hf_notebook.core.distributed.ranks import plan_ranks
    from hf_notebook.core.distributed.run import RankProgress, RunResult
    from hf_notebook.core.distributed.targets import parse_target
    from hf_notebook.testing.models import make_config
    from hf_notebook.ui.distributed import RunPanel

    plan = plan_ranks(make_config("llama"), parse_target("1x2xcpu"), tp=2)
    panel = RunPanel(plan, widget=True)
    panel.display()
    panel(RankProgress(0, "loading", pid=1, last_log="Loading weights <b>"))
    panel(RankProgress(1, "failed", pid=2, error="OSError: no weights"))
    drawn = panel.widget.children[1].value
    assert "loading" in drawn and "Loading weights &lt;b&gt;" in drawn and "OSError: no weights" in drawn
    failed = RunResult("torchrun ...", 1, None, [0, 0], 3.0, ["", "Traceback ...\nOSError: no weights"],
                       planned_param_bytes=(100, 100), pin="tiny/llama@" + "0" * 40)
    panel.finish(failed)
    assert WIDGET not in shown[-1]  # the panel's output is the record now, no widget
    text = shown[-1]["text/plain"]
    assert text.startswith("✗ run of tiny/llama@") and "failed (exit 1)" in text
    assert "rank 1, last log lines:" in text and "OSError: no weights" in shown[-1]["text/html"]
    display(RunResult("torchrun ...", 0, 1e-3, [100, 150], 3.0, ["", ""], planned_param_bytes=(100, 100)))
    text = shown[-1]["text/plain"]  # ran, but rank 1 holds half again what was planned, and the logits differ
    assert "ran, but does not match" in text and "+50.00%" in text and "over 1e-05" in text


def test_a_parallel_plan_draws_one_bar_per_rank(shell, tiny_hub, hf_cache, tmp_path, capsys):
    """--plot with --target: each rank's weights and KV cache against its device's memory, written to a PNG."""
    from hf_notebook.ui.views import rank_figure

    figure_file = tmp_path / "ranks.png"
    shell.run_line_magic("plan_model", f"tiny/llama --target 1x2xcpu --tp 2 --context 64 --plot {figure_file} --as p")
    assert figure_file.read_bytes().startswith(b"\x89PNG") and "Memory per rank drawn to" in capsys.readouterr().out
    plan = shell.user_ns["p"]
    ax = rank_figure(plan).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["rank 0 · node 0 · cpu", "rank 1 · node 0 · cpu"]
    scale = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[ax.get_xlabel().split("(")[1].rstrip(")")]
    drawn = [round(bar.get_width() * scale) for bar in ax.patches]  # weights of ranks 0, 1, then their KV caches
    assert drawn == [r.weight_bytes for r in plan.ranks] + [r.kv_bytes for r in plan.ranks]


def test_a_serve_launch_folder_for_vllm_and_two_nodes(shell, tiny_hub, hf_cache, tmp_path):
    """--engine vllm --to DIR: serve.sh (each node's line under NODE_RANK), a README that says what is pinned and
    that vLLM was not run here, and the pinned sha's lock file."""
    import json
    import subprocess

    _plan(shell, "tiny/llama --target 2x1xH100 --pp 2 --as p")
    shell.run_line_magic("launch_model", f"p --engine vllm --to {tmp_path / 'serve'} --as s")
    folder, sha = tmp_path / "serve", shell.user_ns["p"].source.split("@")[1]
    assert sorted(p.name for p in folder.iterdir()) == [".hf_notebook-launch.json", "README.md",
                                                         "hf_notebook.lock.json", "serve.sh"]
    readme = (folder / "README.md").read_text()
    assert sha in readme and "did not run vLLM" in readme and "NODE_RANK=1 bash serve.sh" in readme
    assert sha in json.dumps(json.loads((folder / "hf_notebook.lock.json").read_text()))
    script = folder / "serve.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0  # valid bash
    no_rank = subprocess.run(["bash", str(script)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert no_rank.returncode != 0 and "NODE_RANK" in no_rank.stderr  # refuses to guess which node it is
    assert [line.split(") exec ")[1].split()[0:2] for line in script.read_text().splitlines() if ") exec " in line] \
        == [["vllm", "serve"], ["vllm", "serve"]]
