"""Private names of dependencies live in core/compat.py, each probed: a version without one is named, not a crash."""

import pytest
from IPython.core.error import UsageError


def test_a_transformers_without_the_device_map_internals_is_named(shell, tiny_hub, hf_cache, monkeypatch):
    import transformers.integrations.accelerate as accelerate_integration

    monkeypatch.delattr(accelerate_integration, "_get_device_map")
    with pytest.raises(UsageError, match=r"transformers \S+ has no transformers\.integrations\.accelerate\."
                                         r"_get_device_map(?s:.*)constraints\.txt"):
        shell.run_line_magic("plan_model", "tiny/llama --as p")
    assert "p" not in shell.user_ns


def test_no_private_name_of_a_dependency_outside_compat():
    import re
    from pathlib import Path

    import hf_notebook

    root = Path(hf_notebook.__file__).parent
    private = re.compile(r"from (transformers|huggingface_hub)[\w.]* import [^\n]*\b_[a-z]\w*|"
                         r"from (transformers|huggingface_hub)\.[\w.]*\._\w+ import|\._get_device_map|"
                         r"\._get_model_class|get_init_context\(")
    found = [f"{p.relative_to(root)}:{n}" for p in root.rglob("*.py") if p.name != "compat.py"
             and "testing" not in p.parts for n, line in enumerate(p.read_text().splitlines(), 1)
             if private.search(line)]
    assert found == []


def test_a_save_that_cannot_patch_transformers_is_named_and_writes_nothing(shell, tiny_hub, hf_cache, tmp_path,
                                                                            monkeypatch):
    import transformers.modeling_utils as mu

    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    monkeypatch.delattr(mu, "safe_save_file")
    with pytest.raises(UsageError, match=r"has no transformers\.modeling_utils\.safe_save_file"):
        shell.run_line_magic("save_model", f"m {tmp_path / 'out'}")
    assert not (tmp_path / "out").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary folder left


def test_loads_and_saves_patch_transformers_under_one_lock():
    from hf_notebook.core import compat
    from hf_notebook.core.weights import load, save

    assert "PATCH_LOCK" not in vars(load) and "_PATCH_LOCK" not in vars(load) and "PATCH_LOCK" not in vars(save)
    with compat.patched_modeling_utils(safe_open=None):
        import transformers.modeling_utils as mu

        assert mu.safe_open is None and compat.PATCH_LOCK._is_owned()
    assert mu.safe_open is not None and not compat.PATCH_LOCK._is_owned()
