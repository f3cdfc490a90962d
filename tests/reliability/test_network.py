"""A failing or busy Hub: bounded retries (Retry-After honoured), then one clear error; a passing hiccup heals."""

import time

import pytest
import torch
from IPython.core.error import UsageError

from hf_notebook.testing.models import build_model


def weights_equal(model, expected):
    a, b = model.state_dict(), expected.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def llama(tiny_hub):
    repo = tiny_hub["llama"]
    return repo.commits["main"], build_model("llama", seed=repo.seeds["main"])


@pytest.mark.parametrize("where", ["/api/models/", "model-00002-of-00005.safetensors"])
def test_a_passing_hiccup_heals(shell, llama, hf_cache, hub_server, where):
    sha, expected = llama
    hub_server.errors = {where: [503, 503]}
    hub_server.retry_after = "0"
    shell.run_line_magic("load_model", f"tiny/llama@{sha} --as m")
    assert hub_server.errors[where] == []  # both failures were met
    assert weights_equal(shell.user_ns["m"], expected)


@pytest.mark.parametrize("status, words", [(500, "try again in a few minutes"), (429, "rate limited")])
@pytest.mark.parametrize("where", ["/api/models/", "model-00002-of-00005.safetensors"])
def test_a_failing_server_gives_one_clear_error(shell, llama, hf_cache, hub_server, status, words, where):
    sha, _ = llama
    hub_server.errors = {where: status}
    hub_server.retry_after = "0"
    shell.user_ns["m"] = sentinel = object()
    t0 = time.perf_counter()
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"tiny/llama@{sha} --as m")
    message = str(info.value)
    assert f"answered {status}" in message and hub_server.endpoint in message
    assert words in message and "--offline" in message
    if "safetensors" in where:
        assert where in message  # which file
    assert shell.user_ns["m"] is sentinel
    assert time.perf_counter() - t0 < 30  # bounded
    counted = [p for m, p in hub_server.requests if where in p]
    assert len(counted) > 1  # it did retry
