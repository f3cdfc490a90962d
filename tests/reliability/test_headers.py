"""Safetensors headers from servers that ignore Range, and headers that lie."""

import json
import struct

import pytest
from IPython.core.error import UsageError


def test_a_server_that_ignores_range_costs_the_header_not_the_shard(wide_repo, hub_server, hf_cache):
    from hf_notebook.core.api import plan_model

    repo_id, folder = wide_repo
    expected = plan_model(repo_id)
    hub_server.ignore_range = True
    hub_server.reset_counters()
    plan = plan_model(repo_id)
    shard = (folder / "model.safetensors").stat().st_size
    assert plan.headers == expected.headers and plan.device_map == expected.device_map
    assert hub_server.bytes_served(repo_id) < shard / 2  # twice a header-sized read, not two whole shards


def test_a_load_through_such_a_server_is_right(shell, wide_repo, hub_server, hf_cache):
    import torch

    repo_id, folder = wide_repo
    hub_server.ignore_range = True
    shell.run_line_magic("load_model", f"{repo_id} --as m")
    from safetensors.torch import load_file

    expected = load_file(folder / "model.safetensors")
    state = shell.user_ns["m"].state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())


def _rewrite_header(path, change):
    """Rewrite a safetensors file's header through ``change(header) -> header`` (data kept)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = change(json.loads(raw[8 : 8 + length]))
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length :])


def _first_tensor(header):
    return next(k for k in header if k != "__metadata__")


def _past_end(h):
    k = _first_tensor(h)
    begin, end = h[k]["data_offsets"]
    h[k]["data_offsets"] = [begin + 10**9, end + 10**9]
    return h


def _overlap(h):
    a, b = [k for k in h if k != "__metadata__"][:2]
    size = h[b]["data_offsets"][1] - h[b]["data_offsets"][0]
    h[b]["data_offsets"] = [h[a]["data_offsets"][0], h[a]["data_offsets"][0] + size]
    return h


def _wrong_size(h):
    k = _first_tensor(h)
    h[k]["dtype"] = "F64"
    return h


LIES = {
    "past the end": (_past_end, "past the end"),
    "overlap": (_overlap, "overlap"),
    "wrong dtype size": (_wrong_size, "claims"),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_a_lying_header_is_refused_naming_the_file(shell, tmp_path, lie):
    from hf_notebook.testing.models import save_model

    folder = save_model("llama", tmp_path / "m")
    victim = sorted(folder.glob("*.safetensors"))[0]
    change, fragment = LIES[lie]
    _rewrite_header(victim, change)
    shell.user_ns["x"] = sentinel = object()
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("load_model", f"{folder} --no-verify --as x")
    assert victim.name in str(info.value) and fragment in str(info.value)
    assert shell.user_ns["x"] is sentinel


def test_a_huge_header_length_allocates_nothing(shell, tmp_path):
    from hf_notebook.testing.models import save_model

    folder = save_model("llama", tmp_path / "m")
    victim = sorted(folder.glob("*.safetensors"))[0]
    raw = victim.read_bytes()
    victim.write_bytes(struct.pack("<Q", 2**62) + raw[8:])
    with pytest.raises(UsageError, match=f"{victim.name} declares a {2**62}-byte header"):
        shell.run_line_magic("load_model", f"{folder} --no-verify --as x")
