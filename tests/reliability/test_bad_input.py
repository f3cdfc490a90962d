"""Bad input gets our UsageError, says what to do, and binds nothing (issue: reliability, "only our errors").

Each case was a raw exception from a dependency or from Python before: now the magic answers with
IPython's ``UsageError`` and the namespace is as it was. A property test then throws generated spec
strings, option values, device-map JSON and whole lines at the magics.
"""

import json
import os
import time

import pytest
from IPython.core.error import UsageError

SENTINEL_NAMES = ("model", "x")


@pytest.fixture
def guarded(shell):
    """The shell with sentinels bound, and a check that a failing call left them (and nothing else) bound."""
    sentinels = {name: object() for name in SENTINEL_NAMES}
    shell.user_ns.update(sentinels)
    before = set(shell.user_ns)

    def check():
        assert {n: shell.user_ns.get(n) for n in sentinels} == sentinels
        assert set(shell.user_ns) == before

    return check


CASES = [
    ("tiny/llama --as 'x", "Close every quote"),
    ("tiny/llama --max-memory cpu=" + "9" * 400 + "GB", "larger than any machine"),
    ("a" * 300, "not a valid Hub repo id"),
    ("tiny/llama --device-map '{\"\": true}'", "Unknown device True"),
    ("tiny/llama --device-map '{\"\": -1}'", "GPU numbers start at 0"),
    ("tiny/llama --device-map meta", "meta device"),
    ("tiny/llama --device-map '{\"model\": \"meta\"}'", "meta device"),
    ("tiny/llama --class AutoTokenizer", "Classes that fit"),
    ("tiny/llama --class AutoConfig", "Classes that fit"),
    ("tiny/llama --class __version__", "Classes that fit"),
    ("tiny/llama --class BertModel", "built for 'bert' models"),
    ("tiny/llama --cache-dir /dev/null", "is not a folder"),
    ("tiny/llama --offload-folder /dev/null/x", "cannot be created"),
    ("tiny/llama --as get_ipython", "Python or IPython needs"),
    ("tiny/llama --as __builtins__", "Python or IPython needs"),
    ("tiny/llama --as In", "Python or IPython needs"),
    ("tiny/llama --as exit", "Python or IPython needs"),
    ("tiny/llama --as class", "not a valid Python variable name"),
]


@pytest.mark.parametrize("line, fragment", CASES, ids=[c[0][:40] for c in CASES])
def test_bad_load_lines_are_usage_errors_that_bind_nothing(shell, guarded, tiny_hub, hf_cache, line, fragment):
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", line)
    assert fragment in str(info.value)
    guarded()


def test_class_error_names_the_classes_that_fit(shell, tiny_hub, hf_cache):
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("plan_model", "tiny/llama --class BertModel")
    assert "LlamaForCausalLM" in str(info.value) and "AutoModelForCausalLM" in str(info.value)


def test_an_index_without_weight_map_names_the_file(shell, guarded, tmp_path):
    from hf_notebook.testing.models import save_model

    folder = save_model("llama", tmp_path / "m")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"{folder} --no-verify --as x")
    assert "model.safetensors.index.json" in str(info.value) and "weight_map" in str(info.value)
    guarded()


# -- property test -----------------------------------------------------------------------------
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=60)
_DEVICE = st.one_of(st.integers(-3, 9), st.sampled_from(["cpu", "disk", "meta", "cuda", "cuda:1", "mps", "x"]),
                    st.booleans(), st.none(), st.floats(allow_nan=True), _TEXT)
_MAP = st.dictionaries(st.sampled_from(["", "model", "lm_head", "model.layers.0", "x"]), _DEVICE, max_size=4)
_SIZE = st.one_of(_TEXT, st.from_regex(r"\A(cpu|0|disk|x)=[0-9.e]{1,400}(GB|GiB|B|kb|)?\Z"))
_OPTION = st.one_of(
    st.tuples(st.just("--dtype"), _TEXT),
    st.tuples(st.just("--max-memory"), _SIZE),
    st.tuples(st.just("--device-map"), st.one_of(_TEXT, _MAP.map(json.dumps))),
    st.tuples(st.just("--class"), st.one_of(_TEXT, st.sampled_from(["AutoTokenizer", "BertModel", "Auto", "_x"]))),
    st.tuples(st.just("--as"), _TEXT),
)


def _arg(value: str) -> str:
    return "'" + value.replace("'", "") + "'" if value.strip() else "''"


@hypothesis.settings(max_examples=120, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture,
                                            hypothesis.HealthCheck.too_slow])
@hypothesis.given(spec=st.one_of(_TEXT, st.sampled_from(["tiny/llama", "tiny/nope", "tiny/llama@nope"])),
                  options=st.lists(_OPTION, max_size=3), plan=st.booleans())
def test_generated_lines_give_only_usage_errors(shell, tiny_hub, hf_cache, spec, options, plan):
    """Whatever is typed: either it works, or a UsageError; nothing half-bound; each call is quick."""
    line = " ".join([_arg(spec)] + [f"{flag} {_arg(value)}" for flag, value in options])
    if not plan and not any(flag == "--as" for flag, _ in options):
        line += " --as x"  # a load that succeeds may rebind x only
    before = dict(shell.user_ns)  # examples share the shell: compare with the state just before this one
    t0 = time.perf_counter()
    try:
        shell.run_line_magic("plan_model" if plan else "load_model", line + (" --plan-only" if not plan else ""))
    except UsageError:
        assert shell.user_ns.keys() == before.keys(), line
        assert all(shell.user_ns[k] is v for k, v in before.items() if not k.startswith("_")), line
    assert time.perf_counter() - t0 < 20, line


_PATHISH = st.one_of(_TEXT, st.sampled_from([".", "..", "/", "~", "~nouser/x", "/proc/x", "/dev/null", "a/../..",
                                             "x" * 300, "/etc/passwd"]))
_OTHER_LINES = st.one_of(
    st.builds(lambda n, f, o: f"{_arg(n)} {_arg(f)} {o}", st.sampled_from(["m", "nope", "In", ""]), _PATHISH,
              st.sampled_from(["", "--overwrite", "--dtype bf17", "--max-shard-size -1", "--dtype bfloat16"]))
    .map(lambda line: ("save_model", line)),
    st.builds(lambda s, t, o: f"{_arg(s)} --to {_arg(t)} {o}", st.sampled_from(["tiny/llama", "tiny/nope", "m", ""]),
              _PATHISH, st.sampled_from(["", "--layout x", "--layout hf-cache", "--offline"]))
    .map(lambda line: ("export_model", line)),
    st.sampled_from(["", "--check", "--nope", "x"]).map(lambda line: ("lock", line)),
    st.builds(lambda n, r, o: f"{_arg(n)} {_arg(r)} {o}", st.sampled_from(["m", "nope", ""]),
              st.one_of(_TEXT, st.sampled_from(["user/x", "noowner", "a/b/c"])),
              st.sampled_from(["", "--private", "--from /etc", "--branch ''", "--tag"]))
    .map(lambda line: ("push_model", line)),
    st.builds(lambda n, s: f"{_arg(n)} --set {_arg(s)}", st.sampled_from(["m", "nope"]),
              st.one_of(_TEXT, st.sampled_from(["model.layers.0-99=disk", "=cpu", "lm_head=meta", "x=0"])))
    .map(lambda line: ("edit_device_map", line)),
)


@hypothesis.settings(max_examples=80, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture,
                                            hypothesis.HealthCheck.too_slow])
@hypothesis.given(call=_OTHER_LINES)
def test_generated_lines_for_every_other_magic_give_only_usage_errors(shell, tiny_hub, hf_cache, tmp_path, call,
                                                                      monkeypatch):
    """%save_model, %export_model, %lock, %push_model and %edit_device_map: a line either works or is a UsageError;
    nothing is bound, and nothing outside the test's own folder is written or deleted."""
    monkeypatch.chdir(tmp_path)  # relative paths land here, never in the checkout
    if "m" not in shell.user_ns:
        shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    magic, line = call
    before = dict(shell.user_ns)
    cwd_before = sorted(os.listdir(tmp_path))
    try:
        shell.run_line_magic(magic, line)
    except UsageError:
        assert shell.user_ns.keys() == before.keys(), (magic, line)
        assert sorted(os.listdir(tmp_path)) == cwd_before, (magic, line)  # a refusal leaves nothing behind


def test_an_offload_folder_that_is_a_link_to_nothing_is_refused(shell, guarded, tiny_hub, hf_cache, tmp_path):
    (tmp_path / "offload").symlink_to(tmp_path / "gone")
    with pytest.raises(UsageError, match="is a link to nothing"):
        shell.run_line_magic("load_model", f"tiny/llama --offload-folder {tmp_path / 'offload'}")
    assert not (tmp_path / "gone").exists()
    guarded()
