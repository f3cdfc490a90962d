"""Code from the Hub only with consent: a Hub kernel as --attn-implementation, or the kernels switches through
--kw, are refused before any request (also offline); a token nested in a --kw value is refused and not shown."""

import pytest
from IPython.core.error import UsageError


@pytest.mark.parametrize("extra", [
    "--attn-implementation kernels-community/flash-attn",
    "--attn-implementation evil/kernel",
    "--attn-implementation evil/kernel --kw allow_all_kernels=true",
    "--kw allow_all_kernels=true",
    "--kw use_kernels=true",
    "--kw 'kernel_config={\"x\": 1}'",
])
@pytest.mark.parametrize("offline", ["", "--offline"])
def test_hub_kernels_are_refused_before_any_request(shell, tiny_hub, hf_cache, hub_server, extra, offline):
    hub_server.reset_counters()
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"tiny/llama {extra} {offline} --as m")
    assert "kernel" in str(info.value).lower()
    assert not hub_server.requests and "m" not in shell.user_ns


def test_a_token_nested_in_a_kw_value_is_refused_unshown(shell, tiny_hub, hf_cache, hub_server, capsys):
    token = "hf_" + "a1B2c3D4e5" * 3
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"tiny/llama --kw 'adapter_kwargs={{\"token\": \"{token}\"}}' --as m")
    assert "carries a token" in str(info.value) and token not in str(info.value)
    assert token not in capsys.readouterr().out and "m" not in shell.user_ns


def test_quoted_items_of_repeatable_options_lose_their_quotes(shell, tiny_hub, hf_cache):
    shell.run_line_magic("load_model", "tiny/llama --device-map cpu --as m")
    shell.run_line_magic("edit_device_map", "m --set 'model.layers.1=disk'")
    assert shell.user_ns["m"].hf_device_map["model.layers.1"] == "disk"
