"""One options table: the magics' flags and help come from it, a line written from options parses back to the
same options, and %load_model PLAN keeps every option the plan was made with."""

import json

import pytest
import torch

from hf_notebook.core.option_table import OPTIONS, to_args
from hf_notebook.core.options import LoadOptions
from hf_notebook.core.quant import as_dict

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


def test_every_option_is_in_the_help_of_the_magics_that_take_it(shell):
    load, plan = (shell.find_line_magic(name).__doc__ for name in ("load_model", "plan_model"))
    for option in OPTIONS:
        assert option.flag in load, option.flag
        assert (option.flag in plan) != option.load_only, option.flag
    assert "options: placement" in load and "options: quantization" in plan  # grouped in --help
    for name in ("load_model", "plan_model", "push_model", "save_model", "export_model", "edit_device_map",
                 "unload_model", "models", "lock"):
        assert "%%" not in shell.find_line_magic(name).__doc__, name  # argparse %-formats help, not docstrings


_WORD = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
_MODULES = st.sampled_from(["model.embed_tokens", "model.layers.0", "model.layers.1", "lm_head", "model.norm"])
_DEVICES = st.sampled_from(["cpu", "disk", "cuda:0", "cuda:1"])
_SIZES = st.integers(1, 2**40)
_KW_VALUES = st.one_of(st.booleans(), st.integers(-5, 10**6), st.text("ab c'\"", max_size=6),
                       st.lists(st.integers(0, 3), max_size=3))
_RAW = st.fixed_dictionaries({}, optional={
    "class_name": st.sampled_from(["AutoModelForCausalLM", "LlamaForCausalLM"]),
    "dtype": st.sampled_from(["auto", "float32", "bfloat16", "float16"]),
    "device_map": st.one_of(st.sampled_from(["auto", "balanced", "sequential", "cpu", "disk"]),
                            st.dictionaries(_MODULES, _DEVICES, min_size=1)),
    "max_memory": st.dictionaries(st.sampled_from(["cpu", "0", "1"]), _SIZES, min_size=1).map(
        lambda d: ",".join(f"{k}={v}B" for k, v in d.items())),
    "no_offload": st.booleans(), "trust_remote_code": st.booleans(), "allow_pickle": st.booleans(),
    "no_verify": st.booleans(),
    "context": st.integers(1, 10**6), "batch": st.integers(1, 64),
    "kv_dtype": st.sampled_from(["bfloat16", "float16", "float32", "float8_e4m3fn"]),
    "quantize": st.sampled_from(["4bit", "8bit", "int8-weight"]),
    "variant": _WORD, "subfolder": st.lists(_WORD, min_size=1, max_size=2).map("/".join),
    "attn_implementation": st.sampled_from(["eager", "sdpa"]),
    "kw": st.dictionaries(st.sampled_from(["output_attentions", "low_cpu_mem_usage", "rope_theta", "my_setting"]),
                          _KW_VALUES, max_size=3).map(lambda d: [f"{k}={json.dumps(v)}" for k, v in d.items()]),
    "offload_folder": st.sampled_from(["/tmp/off load", "./off", "~/x"]),
    "cache_dir": st.sampled_from(["/tmp/hf cache", "./cache"]),
}).filter(lambda raw: "batch" not in raw or "context" in raw)  # --batch alone is refused (it sizes --context's cache)


def _same(a: LoadOptions, b: LoadOptions) -> None:
    qa, qb = (as_dict(o.quantization) if o.quantization is not None else None for o in (a, b))
    assert qa == qb
    assert a.with_(quantization=None) == b.with_(quantization=None)


@hypothesis.settings(max_examples=150, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(raw=_RAW)
def test_a_line_written_from_options_parses_back_to_them(shell, raw):
    from hf_notebook.magics import _parse

    options = LoadOptions.parse(**raw)
    line = " ".join(["org/name", *to_args(options, skip=frozenset())])
    args = _parse(shell.find_line_magic("load_model"), line)
    again = LoadOptions.parse(**{o.dest: getattr(args, o.dest) for o in OPTIONS})
    _same(options, again)


def test_a_bound_plan_loads_with_every_option_it_was_made_with(shell, hf_cache, hub_store, hub_repo_id, tmp_path):
    from hf_notebook.testing.models import build_model

    model = build_model("llama", seed=5)
    model.to(torch.float16).save_pretrained(tmp_path / "fp16", variant="fp16")
    files = {f"text/{p.name}": p.read_bytes() for p in (tmp_path / "fp16").iterdir()}
    hub_store.create_repo(hub_repo_id)
    sha = hub_store.commit(hub_repo_id, files)

    shell.run_line_magic("plan_model", f"{hub_repo_id}@{sha} --subfolder text --variant fp16 --no-offload "
                                       "--attn-implementation eager --kw output_attentions=true --as p")
    shell.run_line_magic("load_model", "p --as m")
    loaded = shell.user_ns["m"]
    assert loaded.dtype == torch.float16 and loaded.config._attn_implementation == "eager"
    assert loaded.config.output_attentions is True
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))

    from hf_notebook.magics import instance

    opts = instance(shell).registry.get("m").options
    assert (opts.subfolder, opts.variant, opts.no_offload, opts.extra) == ("text", "fp16", True,
                                                                          {"output_attentions": True})
    shell.run_line_magic("load_model", "p --dtype float32 --kw use_cache=false --as n")  # the line still wins
    n = instance(shell).registry.get("n")
    assert n.dtype == "float32" and n.options.extra == {"output_attentions": True, "use_cache": False}


def test_a_bound_quantized_plan_loads_quantized(shell, tiny_hub, hf_cache):
    shell.run_line_magic("plan_model", "tiny/llama --quantize int8-weight --device-map cpu --as p")
    shell.run_line_magic("load_model", "p --as m")
    from hf_notebook.magics import instance

    assert instance(shell).registry.get("m").plan.quantization is not None


@pytest.mark.parametrize("setting, says", [("dtype = 'bf17'", "Unknown dtype"),
                                           ("device_map = 'everywhere'", "Cannot read --device-map"),
                                           ("max_memory = 'cpu'", "DEVICE=SIZE"),
                                           ("offload_folder = '/etc/passwd'",
                                            "HFNotebook.offload_folder '/etc/passwd' is not a folder"),
                                           ("cache_dir = '/dev/null/x'",
                                            "HFNotebook.cache_dir '/dev/null/x' cannot be created"),
                                           ("lock_file = '/nonexistent/dir/lock.json'",
                                            "'/nonexistent/dir' is not a writable folder"),
                                           ("lock_file = '/tmp'", "'/tmp' is a folder"),
                                           ("dtype = 'hf_Canary1234567890abcdefXYZ'", "HFNotebook.dtype = 'hf_***'")])
def test_config_defaults_are_checked_when_set(shell, setting, says, caplog):
    from hf_notebook.magics import instance

    before = {k: getattr(instance(shell), k) for k in ("dtype", "device_map", "max_memory", "offload_folder",
                                                        "cache_dir", "lock_file")}
    shell.run_line_magic("config", f"HFNotebook.{setting}")  # %config shows a configurable's refusal as an error
    assert any(says in r.getMessage() and r.levelname == "ERROR" for r in caplog.records), caplog.text
    assert "Canary" not in caplog.text  # a token set by mistake is not logged back
    assert {k: getattr(instance(shell), k) for k in before} == before  # and the value stays as it was
    shell.run_line_magic("config", "HFNotebook.dtype = 'bfloat16'")  # a good one still takes
    assert instance(shell).dtype == "bfloat16"


def test_errors_are_one_line_usage_errors_and_debug_keeps_them_whole(shell, tiny_hub, hf_cache):
    from IPython.core.error import UsageError

    from hf_notebook.core.errors import HfNotebookError

    for magic, line in [("load_model", "tiny/llama --dtype int3"), ("plan_model", "org//bad"),
                        ("export_model", "org//bad --to /tmp/x")]:
        with pytest.raises(UsageError):
            shell.run_line_magic(magic, line)
    shell.run_line_magic("config", "HFNotebook.debug = True")
    with pytest.raises(HfNotebookError) as info:
        shell.run_line_magic("load_model", "tiny/llama --dtype int3 --as m")
    assert not isinstance(info.value, UsageError) and "Unknown dtype" in str(info.value)
    assert "m" not in shell.user_ns


@hypothesis.settings(max_examples=100, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(raw=_RAW)
def test_unquoted_args_read_back_to_the_same_options(raw):
    """The Session's plan merge goes through ``from_args(to_args(..., quote=False))``: nothing lost, any value."""
    from hf_notebook.core.option_table import from_args

    options = LoadOptions.parse(**raw)
    _same(options, LoadOptions.parse(**from_args(to_args(options, skip=frozenset(), quote=False))))


def test_the_lock_keys_a_load_by_the_options_that_choose_its_weights():
    """A full load, a variant, a subfolder, a dtype and a quantization of one revision are five lock entries; the
    placement options are not part of the key (moving a model does not change what was read)."""
    from hf_notebook.core.hub.lock import key_of
    from hf_notebook.core.option_table import key_args

    def key(**raw):
        return key_of("org/name", None, tuple(key_args(LoadOptions.parse(**raw))))

    keys = [key(), key(variant="fp16"), key(subfolder="text_encoder"), key(dtype="bfloat16"), key(quantize="8bit")]
    assert keys == ["org/name@main", "org/name@main --variant fp16", "org/name@main --subfolder text_encoder",
                    "org/name@main --dtype bfloat16", "org/name@main --quantize 8bit"]
    assert key(device_map="cpu", max_memory="cpu=1GB", context=4096) == "org/name@main"
