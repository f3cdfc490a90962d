"""Parsing what users type: model specs and option strings, with errors that say what to do."""

import json

import pytest

from hf_notebook.core.errors import OptionError, SpecError
from hf_notebook.core.dtypes import parse_dtype
from hf_notebook.core.options import parse_device_map, parse_max_memory
from hf_notebook.core.units import parse_size
from hf_notebook.core.spec import ModelSpec, parse_spec


@pytest.mark.parametrize("text, repo, rev", [
    ("org/name", "org/name", None),
    ("gpt2", "gpt2", None),
    ("org/name@main", "org/name", "main"),
    ("org/name@v1.0", "org/name", "v1.0"),
    ("org/name@refs/pr/3", "org/name", "refs/pr/3"),
    ("org/name@feature/x", "org/name", "feature/x"),
    ("org/my.model-2_b@0123abc", "org/my.model-2_b", "0123abc"),
])
def test_hub_specs(text, repo, rev):
    assert parse_spec(text) == ModelSpec(repo_id=repo, revision=rev)


def test_existing_folder_wins(tmp_path):
    assert parse_spec(str(tmp_path)).local_path == tmp_path.resolve()


@pytest.mark.parametrize("text, fragment", [
    ("", "No model given"),
    ("org/name@", "names no revision"),
    ("org//name", "not a valid Hub repo id"),
    ("org/na--me", "not a valid Hub repo id"),
    ("a/b/c", "not a valid Hub repo id"),
    ("./missing-folder", "does not exist"),
    ("org/name@../x", "not a valid revision"),
])
def test_bad_specs_say_what_to_do(text, fragment):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert fragment in str(info.value)
    assert info.value.hint  # every error carries the next step


def test_sizes_and_budgets():
    assert parse_size("20GiB") == 20 * 2**30
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("512") == 512
    assert parse_max_memory("0=20GiB, cpu=30GiB,cuda:1=1MB") == {0: 20 * 2**30, "cpu": 30 * 2**30, 1: 10**6}
    assert parse_max_memory(None) is None


@pytest.mark.parametrize("text", ["0=", "cpu", "0=lots", "gpu0=1GiB", "=1GiB"])
def test_bad_max_memory(text):
    with pytest.raises(OptionError) as info:
        parse_max_memory(text)
    assert "--max-memory" in str(info.value) or "size" in str(info.value) or "device" in str(info.value)


def test_device_maps(tmp_path):
    assert parse_device_map("auto") == "auto"
    assert parse_device_map("balanced_low_0") == "balanced_low_0"
    assert parse_device_map("cpu") == {"": "cpu"}
    assert parse_device_map("cuda:1") == {"": 1}
    assert parse_device_map('{"model.layers": "cpu", "lm_head": 0}') == {"model.layers": "cpu", "lm_head": 0}
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"model": "disk", "lm_head": "cuda:0"}))
    assert parse_device_map(f"@{path}") == {"model": "disk", "lm_head": 0}


@pytest.mark.parametrize("text, fragment", [
    ("everywhere", "Cannot read --device-map"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "Cannot read --device-map"),
    ('{"model": "tpu"}', "Unknown device"),
    ("@/no/such/map.json", "Cannot read --device-map file"),
    ("{}", "empty device map"),
])
def test_bad_device_maps(text, fragment):
    with pytest.raises(OptionError) as info:
        parse_device_map(text)
    assert fragment in str(info.value)


def test_dtypes():
    assert parse_dtype(None) == "auto"
    assert parse_dtype("bf16") == "bfloat16"
    assert parse_dtype("torch.float16") == "float16"
    with pytest.raises(OptionError, match="Unknown dtype"):
        parse_dtype("int4")


def test_a_misspelt_repo_gets_a_did_you_mean(shell, tiny_hub, hf_cache):
    from IPython.core.error import UsageError

    with pytest.raises(UsageError) as info:
        shell.run_line_magic("plan_model", "tiny/lama")
    assert "Did you mean tiny/llama?" in str(info.value)
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("plan_model", "nobody-at-all/zzqq")
    assert "Did you mean" not in str(info.value)  # nothing close: no guess


@pytest.mark.parametrize("raw, fragment", [
    (dict(kw=["output_loading_info=true"]), "return a tuple"),
    (dict(kw=["gguf_file=x.gguf"]), "safetensors checkpoints"),
    (dict(kw=["key_mapping=5"]), "JSON object of pattern -> replacement"),
    (dict(offline=True, force_download=True), "--force-download downloads every file again, and this load is offline"),
    (dict(batch="2"), "without --context it does nothing"),
    (dict(batch="0", context="100"), "whole number of at least 1"),
])
def test_options_that_would_break_a_load_or_do_nothing_are_refused(raw, fragment):
    from hf_notebook.core.options import LoadOptions

    with pytest.raises(OptionError, match=fragment):
        LoadOptions.parse(**raw)


def test_a_dependency_error_keeps_the_lines_that_say_what_is_wrong():
    from hf_notebook.core.errors import wrapped

    error = ValueError("Validation error for field 'hidden_size':\n  expected int, got str 'x'\n\n")
    assert "expected int, got str 'x'" in str(wrapped(error, "config"))
    assert len(wrapped(ValueError("x" * 5000), "load").message) < 700
