"""With HF_TOKEN set, no failing call shows the token: not in output under %xmode Verbose, not in a log
record, not in the repr of anything bound."""

import logging

import pytest

from hf_notebook.core.events import ShardProgress

FAILING = [
    "tiny/private-llama@no-such-branch --as a",
    "tiny/private-llama --device-map cuda:7 --as b",
    "tiny/private-llama --class BertModel --as c",
    "tiny/private-llama --max-memory cpu=1KB --no-offload --as d",
    "tiny/no-such-repo --as e",
]


@pytest.fixture
def private_llama(hub_store, hub_token, tmp_path, monkeypatch):
    from hf_notebook.testing.models import save_model

    folder = save_model("llama", tmp_path / "m")
    hub_store.create_repo("tiny/private-llama", private=True, exist_ok=True)
    hub_store.commit("tiny/private-llama", {p.name: p for p in folder.iterdir()})
    monkeypatch.setenv("HF_TOKEN", hub_token)
    return hub_token


@pytest.mark.parametrize("mode", ["Verbose", "Context"])
def test_the_token_appears_nowhere(shell, private_llama, hf_cache, hub_server, capsys, caplog, monkeypatch, mode):
    token = private_llama
    caplog.set_level(logging.DEBUG)
    shell.run_line_magic("xmode", mode)
    from test_bad_input import CASES

    try:
        for line in FAILING + [line.replace("tiny/llama", "tiny/private-llama") for line, _ in CASES]:
            shell.run_cell(f"%load_model {line}")
        hub_server.errors = {"model-00002-of-00005.safetensors": 400}  # a raw error deep in the Hub client
        shell.run_cell("%load_model tiny/private-llama --as g")
        hub_server.errors = {}
        # Ctrl-C in the middle of loading: the traceback IPython shows must not carry dependency frames
        from hf_notebook import ui

        real = ui.make_renderer

        def interrupting(*args, **kwargs):
            renderer = real(*args, **kwargs)
            inner = renderer.__call__

            class Wrapped(type(renderer)):
                def __call__(self, event):
                    inner(event)
                    if isinstance(event, ShardProgress) and event.tensors_done == 1:
                        raise KeyboardInterrupt

            renderer.__class__ = Wrapped
            return renderer

        monkeypatch.setattr(ui, "make_renderer", interrupting)
        shell.run_cell("%load_model tiny/private-llama --as f")
        monkeypatch.setattr(ui, "make_renderer", real)
        shell.run_cell("%load_model tiny/private-llama --as ok")
    finally:
        shell.run_line_magic("xmode", "Context")
    out = capsys.readouterr()
    shown = out.out + out.err
    assert "UsageError" in shown and "KeyboardInterrupt" in shown  # the failures really happened
    assert token not in shown and token not in caplog.text
    bound = shell.user_ns["ok"]
    from hf_notebook.magics import instance

    result = instance(shell).registry.get("ok")
    for obj in (bound, bound.config, result, result.options, result.pin, result.plan):
        assert token not in repr(obj)
    assert "failed during fetch" in shown  # the injected server error was met
    assert not any(k in shell.user_ns for k in "abcdefg")
