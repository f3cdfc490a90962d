"""The tiny real-architecture model factory and the header-only giant checkpoints."""

from __future__ import annotations

import hashlib
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from huggingface_hub import get_local_safetensors_metadata
from safetensors import safe_open

from hf_notebook.testing import models
from hf_notebook.testing.models import (
    ARCHITECTURES,
    BIG_CONFIGS,
    MODEL_CLASSES,
    build_model,
    model_files,
    publish_tiny_models,
    save_model,
    synthetic_checkpoint,
    write_header_only_safetensors,
)

GENERATIVE = {"llama", "gpt2", "t5", "qwen2", "mixtral"}


def sha256s(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in model_files(folder).items()}


def shards(folder: Path) -> list[str]:
    return [name for name in model_files(folder) if name.endswith(".safetensors")]


def state_dicts_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Every tiny architecture saved once with seed 0."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: save_model(arch, root / arch, seed=0) for arch in ARCHITECTURES}


# --------------------------------------------------------------------------- tiny models


def test_registry_covers_required_architectures():
    assert {"llama", "gpt2", "bert", "t5", "qwen2", "mixtral"} <= set(ARCHITECTURES)
    assert MODEL_CLASSES["t5"] == "AutoModelForSeq2SeqLM"
    with pytest.raises(KeyError, match="unknown tiny architecture"):
        build_model("nope")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_checkpoint_is_sharded_with_consistent_index(saved, arch):
    folder = saved[arch]
    names = shards(folder)
    assert len(names) >= 3
    assert names == [f"model-{i:05d}-of-{len(names):05d}.safetensors" for i in range(1, len(names) + 1)]
    assert ("generation_config.json" in model_files(folder)) == (arch in GENERATIVE)

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    on_disk, total = {}, 0
    for name in names:
        with safe_open(folder / name, "pt") as f:
            for key in f.keys():
                on_disk[key] = name
                tensor = f.get_tensor(key)
                total += tensor.numel() * tensor.element_size()
    assert index["weight_map"] == on_disk
    assert index["metadata"]["total_size"] == total

    config = json.loads((folder / "config.json").read_text())
    model = build_model(arch)
    assert config["architectures"] == [type(model).__name__]
    assert config["model_type"] == model.config.model_type
    assert 32 <= model.config.hidden_size <= 64 and model.config.vocab_size <= 512


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_reload_is_bit_exact_through_auto_class(saved, arch):
    loaded = getattr(transformers, MODEL_CLASSES[arch]).from_pretrained(saved[arch])
    assert not loaded.training
    # A loader can also pick the class from config.architectures alone.
    by_name = getattr(transformers, loaded.config.architectures[0])
    assert type(loaded) is by_name
    assert state_dicts_equal(loaded.state_dict(), build_model(arch, seed=0).state_dict())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forward_runs(arch):
    model = build_model(arch)
    ids = torch.arange(1, 9).unsqueeze(0)
    extra = {"decoder_input_ids": ids[:, :3]} if model.config.is_encoder_decoder else {}
    with torch.no_grad():
        logits = model(input_ids=ids, **extra).logits
    assert logits.shape[-1] == model.config.vocab_size
    assert torch.isfinite(logits).all()


def test_same_seed_same_bytes_other_seed_other_weights(saved, tmp_path):
    for arch in ARCHITECTURES:
        again = sha256s(save_model(arch, tmp_path / f"{arch}-0", seed=0))
        assert again == sha256s(saved[arch]), arch
        other = sha256s(save_model(arch, tmp_path / f"{arch}-1", seed=1))
        assert other.keys() == again.keys()
        assert other["config.json"] == again["config.json"]
        assert all(other[n] != again[n] for n in shards(saved[arch])), arch


def test_same_seed_same_bytes_across_processes(saved, tmp_path):
    script = (
        "import hashlib, json, sys\n"
        "from hf_notebook.testing.models import ARCHITECTURES, model_files, save_model\n"
        "out = {a: {n: hashlib.sha256(p.read_bytes()).hexdigest()\n"
        "           for n, p in model_files(save_model(a, sys.argv[1] + '/' + a)).items()}\n"
        "       for a in ARCHITECTURES}\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True, timeout=120
    )
    other = json.loads(done.stdout.strip().splitlines()[-1])
    assert other == {arch: sha256s(folder) for arch, folder in saved.items()}


def test_build_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("llama", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_dtype_is_a_cast_of_the_float32_weights(tmp_path):
    fp32 = build_model("llama").state_dict()
    bf16 = build_model("llama", dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    assert state_dicts_equal(bf16.state_dict(), {k: v.to(torch.bfloat16) for k, v in fp32.items()})
    folder = save_model("llama", tmp_path / "bf16", dtype=torch.bfloat16)
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    meta = get_local_safetensors_metadata(folder)
    assert {t.dtype for f in meta.files_metadata.values() for t in f.tensors.values()} == {"BF16"}


def test_t5_embeddings_are_tied_on_disk_and_after_load(saved):
    weight_map = json.loads((saved["t5"] / "model.safetensors.index.json").read_text())["weight_map"]
    assert "shared.weight" in weight_map
    assert not {"lm_head.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"} & weight_map.keys()

    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(saved["t5"])
    assert model.config.tie_word_embeddings
    shared = model.shared.weight
    for other in (model.encoder.embed_tokens.weight, model.decoder.embed_tokens.weight, model.lm_head.weight):
        assert other is shared or other.data_ptr() == shared.data_ptr()


@pytest.mark.parametrize(("arch", "tied"), [("gpt2", True), ("qwen2", True), ("llama", False)])
def test_decoder_lm_head_tying_survives_reload(saved, arch, tied):
    model = transformers.AutoModelForCausalLM.from_pretrained(saved[arch])
    same = model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert same is tied
    weight_map = json.loads((saved[arch] / "model.safetensors.index.json").read_text())["weight_map"]
    assert ("lm_head.weight" in weight_map) is not tied


def test_moe_model_really_has_experts(saved):
    model = build_model("mixtral")
    n_experts = model.config.num_local_experts
    assert n_experts >= 4 and model.config.num_experts_per_tok == 2
    experts = model.model.layers[0].mlp.experts
    assert experts.gate_up_proj.shape[0] == n_experts  # transformers 5 keeps experts fused in memory
    # ... but save_pretrained writes the Hub's per-expert layout.
    weight_map = json.loads((saved["mixtral"] / "model.safetensors.index.json").read_text())["weight_map"]
    for e in range(n_experts):
        for w in ("w1", "w2", "w3"):
            assert f"model.layers.1.block_sparse_moe.experts.{e}.{w}.weight" in weight_map
    assert not any("gate_up_proj" in k for k in weight_map)


# --------------------------------------------------------------------------- publishing


def _tree(store, repo_id: str, sha: str) -> dict[str, bytes]:
    """Every file of commit ``sha``, read back from the real store."""
    return {name: store.read(repo_id, name, sha) for name in store.list_files(repo_id, sha)}


def test_publish_builds_meaningful_history(tmp_path):
    from hf_notebook.testing.hub.store import RepoStore

    store = RepoStore(tmp_path / "hub")
    published = publish_tiny_models(store, archs=["llama", "bert"], seed=3)
    assert set(published) == {"llama", "bert"}
    for arch, repo in published.items():
        assert repo.repo_id == f"tiny/{arch}" and repo.model_class == MODEL_CLASSES[arch]
        assert set(repo.commits) == {"v1", "main", "dev", "pr1"}
        assert len(set(repo.commits.values())) == 4
        assert repo.seeds == {"v1": 3, "main": 4, "dev": 4, "pr1": 5}
        for label, ref in {"v1": "v1", "main": "main", "dev": "dev", "pr1": "refs/pr/1"}.items():
            assert store.resolve(repo.repo_id, ref) == repo.commits[label]
        assert store.history(repo.repo_id, repo.commits["v1"])[0].title == "initial weights"

        tree = {label: _tree(store, repo.repo_id, sha) for label, sha in repo.commits.items()}
        assert tree["v1"].keys() == tree["main"].keys() == tree["pr1"].keys()
        assert "config.json" in tree["v1"] and "README.md" in tree["dev"]
        first_shard = shards_in(tree["v1"])[0]
        assert len({tree[label][first_shard] for label in ("v1", "main", "pr1")}) == 3
        assert tree["dev"][first_shard] == tree["main"][first_shard]
        if arch == "llama":
            assert tree["dev"]["generation_config.json"] != tree["main"]["generation_config.json"]
    assert published["llama"].folders == {}


def shards_in(tree: dict) -> list[str]:
    return sorted(name for name in tree if name.endswith(".safetensors"))


def test_published_revision_loads_its_own_weights(tmp_path):
    from hf_notebook.testing.hub.store import RepoStore

    store = RepoStore(tmp_path / "hub")
    repo = publish_tiny_models(store, archs=["qwen2"], seed=0, workdir=tmp_path)["qwen2"]
    assert set(repo.folders) == {"v1", "main", "dev", "pr1"}
    for label, sha in repo.commits.items():
        folder = tmp_path / "checkout" / label
        folder.mkdir(parents=True)
        for name, data in _tree(store, repo.repo_id, sha).items():
            (folder / name).write_bytes(data)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(folder)
        expected = build_model("qwen2", seed=repo.seeds[label])
        assert state_dicts_equal(loaded.state_dict(), expected.state_dict()), label


def test_publish_into_real_repo_store(tmp_path):
    store_mod = pytest.importorskip("hf_notebook.testing.hub.store", reason="RepoStore not written yet")
    store = store_mod.RepoStore(tmp_path / "hub")
    published = publish_tiny_models(store, archs=["llama", "t5"])
    refs = {"v1": "v1", "main": "main", "dev": "dev", "pr1": "refs/pr/1"}
    for repo in published.values():
        assert store.resolve(repo.repo_id, "v1") != store.resolve(repo.repo_id, "main")
        assert {label: store.resolve(repo.repo_id, ref) for label, ref in refs.items()} == repo.commits
        assert len(set(repo.commits.values())) == 4

    # Each revision holds the weights of its seed: check out llama at every label and load it.
    repo = published["llama"]
    for label, ref in refs.items():
        folder = tmp_path / "checkout" / label
        folder.mkdir(parents=True)
        for name in store.list_files(repo.repo_id, ref):
            (folder / name).write_bytes(store.read(repo.repo_id, name, ref))
        loaded = transformers.AutoModelForCausalLM.from_pretrained(folder)
        assert state_dicts_equal(loaded.state_dict(), build_model("llama", seed=repo.seeds[label]).state_dict())
    assert "README.md" in store.list_files(repo.repo_id, "dev")
    assert "README.md" not in store.list_files(repo.repo_id, "main")


# --------------------------------------------------------------------------- big shapes


def read_header(path: Path) -> dict:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert len(raw) == 8 + length and length % 8 == 0
    return json.loads(raw[8:])


def test_header_only_file_is_valid_safetensors(tmp_path):
    tensors = {"a.weight": ("BF16", (3, 5)), "b.bias": ("F32", (7,)), "c": ("I64", ())}
    path = tmp_path / "h.safetensors"
    data_len = write_header_only_safetensors(path, tensors)
    header = read_header(path)
    assert header["__metadata__"] == {"format": "pt"}
    assert header["a.weight"] == {"dtype": "BF16", "shape": [3, 5], "data_offsets": [0, 30]}
    assert header["b.bias"]["data_offsets"] == [30, 58] and header["c"]["data_offsets"] == [58, 66]
    assert data_len == 66
    # Appending the missing data bytes makes it a file safetensors itself loads.
    full = tmp_path / "full.safetensors"
    full.write_bytes(path.read_bytes() + bytes(data_len))
    with safe_open(full, "pt") as f:
        assert f.get_tensor("a.weight").shape == (3, 5) and f.get_tensor("a.weight").dtype == torch.bfloat16
        assert f.get_tensor("c").shape == ()
    with pytest.raises(ValueError, match="unknown safetensors dtype"):
        write_header_only_safetensors(path, {"x": ("F12", (1,))})


def meta_param_count(config) -> int:
    auto = transformers.AutoModelForSeq2SeqLM if config.is_encoder_decoder else transformers.AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "approx_params", "expected_key"),
    [
        ("llama-70b", 70.55e9, "model.layers.79.mlp.down_proj.weight"),
        ("mixtral-8x7b", 46.70e9, "model.layers.31.block_sparse_moe.experts.7.w3.weight"),
        ("t5-11b", 11.31e9, "shared.weight"),
    ],
)
def test_synthetic_checkpoint_matches_meta_model(tmp_path, name, approx_params, expected_key):
    folder = synthetic_checkpoint(BIG_CONFIGS[name](), tmp_path / name)
    assert sum(p.stat().st_size for p in folder.iterdir()) < 2_000_000  # headers only

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 2 and all((folder / f).exists() for f in files)
    seen, nbytes = {}, 0
    for f in files:
        for key, info in read_header(folder / f).items():
            if key == "__metadata__":
                continue
            assert info["dtype"] == "BF16"
            size = math.prod(info["shape"]) * 2
            assert info["data_offsets"][1] - info["data_offsets"][0] == size
            seen[key] = f
            nbytes += size
    assert seen == index["weight_map"] and expected_key in seen
    assert index["metadata"]["total_size"] == nbytes

    params = meta_param_count(BIG_CONFIGS[name]())
    assert nbytes == 2 * params == 2 * index["metadata"]["total_parameters"]
    assert params == pytest.approx(approx_params, rel=2e-3)

    config = transformers.AutoConfig.from_pretrained(folder)
    assert config.architectures and config.dtype == torch.bfloat16
    hub_view = get_local_safetensors_metadata(folder)
    assert sum(hub_view.parameter_count.values()) == params


def test_synthetic_checkpoint_shard_count_is_adjustable(tmp_path):
    folder = synthetic_checkpoint(BIG_CONFIGS["t5-3b"](), tmp_path / "t5", n_shards=7, dtype="F16")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    expected = [f"model-{i:05d}-of-00007.safetensors" for i in range(1, 8)]
    assert sorted(set(index["weight_map"].values())) == expected
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float16"


def test_synthetic_checkpoint_follows_config_architectures(tmp_path, saved):
    config = models.make_config("bert")
    config.architectures = ["BertForMaskedLM"]
    folder = synthetic_checkpoint(config, tmp_path / "bert", n_shards=3, dtype="F8_E4M3")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    real = json.loads((saved["bert"] / "model.safetensors.index.json").read_text())
    assert index["weight_map"].keys() == real["weight_map"].keys()
    assert index["metadata"]["total_size"] == real["metadata"]["total_size"] // 4  # F8 vs F32


def test_split_even_is_ordered_balanced_and_never_empty():
    names = [f"t{i}" for i in range(10)]
    sizes = dict(zip(names, [100, 1, 1, 1, 1, 1, 1, 1, 1, 100]))
    parts = models._split_even(names, sizes, 4)
    assert [n for part in parts for n in part] == names
    assert all(parts)
    assert parts[0] == ["t0"] and parts[-1] == ["t9"]
    with pytest.raises(ValueError):
        models._split_even(names[:2], sizes, 3)
