"""The one safetensors header parser: what it refuses, with our error, whether the bytes come from a file or a
Range request."""

import json
import struct

import pytest

from hf_notebook.core.errors import LoadError
from hf_notebook.core.safetensors_io import MAX_HEADER, header_length, name_at, parse_header, read_header


def _file(path, header: dict, data: bytes = b"") -> str:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return str(path)


GOOD = {"__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [8, 16]}}


def test_a_sound_file_parses_the_same_from_disk_and_from_bytes(tmp_path):
    path = _file(tmp_path / "w.safetensors", GOOD, bytes(16))
    found = read_header(path)
    raw = open(path, "rb").read()
    length = header_length("w.safetensors", raw[:8], len(raw))
    assert parse_header("w.safetensors", raw[8:8 + length], length) == found
    assert found.metadata == {"format": "pt"} and list(found.tensors) == ["a", "b"]
    assert (found.start, found.end, found.last) == (8 + length, 8 + length + 16, "b")


def test_a_header_length_over_the_limit_is_refused_before_reading_it():
    prefix = struct.pack("<Q", MAX_HEADER + 1)
    with pytest.raises(LoadError, match=f"w.safetensors declares a {MAX_HEADER + 1}-byte header"):
        header_length("w.safetensors", prefix)
    with pytest.raises(LoadError, match="declares a 100-byte header in a 50-byte file"):
        header_length("w.safetensors", struct.pack("<Q", 100), 50)


def test_offsets_past_the_end_of_the_file_are_refused_unless_only_the_header_is_wanted(tmp_path):
    path = _file(tmp_path / "w.safetensors", GOOD, bytes(10))  # 16 data bytes declared, 10 there
    with pytest.raises(LoadError, match="w.safetensors: tensor 'b' lies past the end"):
        read_header(path)
    assert read_header(path, data=False).end > (tmp_path / "w.safetensors").stat().st_size  # a plan's header-only file
    assert name_at(path, 8, object()) is None  # a damaged file is never taken for a checkpoint read in place


@pytest.mark.parametrize("change, says", [
    (lambda h: h["a"].update(dtype="F31"), "malformed"),
    (lambda h: h["a"].update(data_offsets=[0, 4]), "claims 4 bytes"),
    (lambda h: h["b"].update(data_offsets=[4, 12]), "overlap"),
    (lambda h: h["a"].update(data_offsets=[8, 0]), "malformed"),
    (lambda h: h.update(__metadata__={"format": 1}), "__metadata__"),
])
def test_a_lying_header_is_refused_naming_the_file(tmp_path, change, says):
    header = json.loads(json.dumps(GOOD))
    change(header)
    path = _file(tmp_path / "w.safetensors", header, bytes(16))
    with pytest.raises(LoadError, match=says) as info:
        read_header(path)
    assert "w.safetensors" in str(info.value) and "--force-download" in str(info.value)
