"""from_pretrained parity: quantized loads equal from_pretrained's, plans that count quantized bytes
within 5% of what is held, honest footprints, and every other argument reachable (and checked)."""

import json

import pytest
import torch
from IPython.core.error import UsageError

from hf_notebook.core.api import load_model, plan_model
from hf_notebook.testing.models import MODEL_CLASSES, build_model

pytest.importorskip("bitsandbytes")
pytest.importorskip("torchao")

IDS = torch.tensor([[1, 4, 9, 16, 25]])
QUANTIZE = {"4bit": {}, "4bit-fp4-dq": {"bnb_quant_type": "fp4", "double_quant": True}, "8bit": {},
            "int8-weight": {}}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    made = {}
    for arch in ("llama", "qwen2"):
        folder = tmp_path_factory.mktemp(arch)
        build_model(arch).save_pretrained(folder, max_shard_size="100KB")
        made[arch] = folder
    return made


def quantized(choice):

    return dict(quantize=choice.split("-fp4")[0], **QUANTIZE[choice])


def reference(folder, arch, result):
    import transformers

    cls = getattr(transformers, MODEL_CLASSES[arch])
    return cls.from_pretrained(folder, quantization_config=result.plan.quantization, device_map={"": "cpu"},
                               dtype=torch.float32)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("choice", list(QUANTIZE))
def test_quantized_load_equals_from_pretrained_and_the_plan_counts_its_bytes(folders, arch, choice):
    folder = folders[arch]
    plan = plan_model(str(folder), no_verify=True, device_map="cpu", **quantized(choice))
    result = load_model(str(folder), no_verify=True, device_map="cpu", **quantized(choice))
    ref = reference(folder, arch, result)
    with torch.no_grad():
        assert torch.equal(result.model(IDS).logits, ref(IDS).logits)
    mine, theirs = result.model.state_dict(), ref.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine if isinstance(mine[k], torch.Tensor)
               and type(mine[k]) is torch.Tensor)
    planned = sum(plan.module_sizes[b] for b in plan.blocks)
    held = result.placement.total_bytes
    assert abs(planned - held) <= 0.05 * held, (planned, held)
    unquantized = sum(p.numel() * 4 for p in build_model(arch).parameters())
    assert held < 0.7 * unquantized  # really quantized


def test_the_footprint_counts_what_is_held_not_what_get_memory_footprint_says(folders):
    result = load_model(str(folders["llama"]), no_verify=True, device_map="cpu", quantize="int8-weight")
    reported = result.model.get_memory_footprint()  # torchao's int8 tensors counted as float32
    assert result.placement.total_bytes < 0.6 * reported


def test_the_record_and_the_lock_say_how_it_was_quantized(shell, tiny_hub, hf_cache, capsys):
    from hf_notebook.magics import instance

    shell.run_line_magic("load_model", "tiny/llama --quantize 4bit --bnb-compute-dtype bfloat16 --as m")
    out = capsys.readouterr().out
    assert "4-bit nf4, compute bfloat16 (bitsandbytes)" in out
    assert "--quantize 4bit --bnb-compute-dtype bfloat16 --as m" in out  # the line that loads it again
    entry = json.loads(open(instance(shell).lock_file).read())["models"]
    entry = entry["tiny/llama@main --quantize 4bit --bnb-compute-dtype bfloat16"]  # keyed by what was loaded
    assert entry["quantization"]["load_in_4bit"] is True


@pytest.mark.parametrize("choice", ["4bit", "8bit", "int8-weight"])
def test_a_quantized_model_saves_what_transformers_loads_back(folders, tmp_path, choice):
    from transformers import AutoModelForCausalLM

    from hf_notebook.core.weights.save import MANIFEST, SaveError, save_model

    result = load_model(str(folders["llama"]), no_verify=True, device_map="cpu", quantize=choice)
    save_model(result, tmp_path / "q")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "q", device_map={"": "cpu"})
    with torch.no_grad():
        assert torch.equal(back(IDS).logits, result.model(IDS).logits)
    assert "quantization_config" in json.loads((tmp_path / "q" / MANIFEST).read_text())
    with pytest.raises(SaveError, match="quantized model is saved in its own format"):
        save_model(result, tmp_path / "q2", dtype="bfloat16")


def test_quantized_modules_stay_off_disk_in_the_editor(folders):
    from hf_notebook.core.api import apply_device_map, device_map_editor
    from hf_notebook.core.errors import HfNotebookError

    result = load_model(str(folders["llama"]), no_verify=True, device_map="cpu", quantize="8bit")
    draft = device_map_editor(result)
    draft.assign([("model.layers.0", "disk")])
    with pytest.raises(HfNotebookError, match="quantized weight .* not to or from disk"):
        apply_device_map(result, draft.map)
    assert result.device_map == {"": "cpu"}
    with torch.no_grad():
        result.model(IDS)


@pytest.mark.parametrize("line, words", [
    ("--quantize 3bit", "invalid choice: '3bit'"),
    ("--kw no_such_arg=1", "no such argument"),
    ("--kw output_attention=true", "Close names: output_attentions"),
    ("--kw device_map=cpu", "Use --device-map"),
    ("--kw broken", "Cannot read --kw"),
    ("--attn-implementation bogus", "transformers knows: eager"),
    ("--bnb-quant-type fp4", "need --quantize 4bit"),
    ("--quantize 8bit --double-quant", "are 4-bit settings"),
    ("--quantization-config '{\"bits\": 4}'", "with a quant_method"),
])
def test_bad_values_are_refused_with_what_exists(shell, tiny_hub, hf_cache, line, words):
    with pytest.raises(UsageError, match=words):
        shell.run_line_magic("load_model", f"tiny/llama {line} --as m")
    assert "m" not in shell.user_ns


def test_other_arguments_reach_from_pretrained(shell, tiny_hub, hf_cache):
    shell.run_line_magic("load_model", "tiny/llama --attn-implementation eager --kw output_attentions=true "
                                       "--kw use_kernels=false --as m")
    model = shell.user_ns["m"]
    assert model.config._attn_implementation == "eager" and model.config.output_attentions is True


def test_quantization_config_from_a_file(shell, tiny_hub, hf_cache, tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"quant_method": "bitsandbytes", "load_in_8bit": True}))
    shell.run_line_magic("load_model", f"tiny/llama --quantization-config @{path} --as m")
    assert type(shell.user_ns["m"].model.layers[0].mlp.up_proj).__name__ == "Linear8bitLt"


@pytest.fixture
def layout_repo(hub_store, hub_repo_id, tmp_path):
    """A repo with a default and an fp16 variant at the top, and another model in a subfolder."""
    model = build_model("llama", seed=5)
    model.save_pretrained(tmp_path / "plain", max_shard_size="100KB")
    model.to(torch.float16).save_pretrained(tmp_path / "fp16", variant="fp16")
    build_model("gpt2", seed=6).save_pretrained(tmp_path / "sub")
    files = {p.name: p.read_bytes() for p in (tmp_path / "plain").iterdir()}
    files |= {p.name: p.read_bytes() for p in (tmp_path / "fp16").iterdir() if "fp16" in p.name}
    files |= {f"text/{p.name}": p.read_bytes() for p in (tmp_path / "sub").iterdir()}
    hub_store.create_repo(hub_repo_id)
    return hub_repo_id, hub_store.commit(hub_repo_id, files, message="variants and a subfolder")


def test_variant_and_subfolder_load_what_from_pretrained_loads(shell, layout_repo, hf_cache):
    from transformers import AutoModelForCausalLM

    repo_id, sha = layout_repo
    shell.run_line_magic("load_model", f"{repo_id}@{sha} --variant fp16 --dtype float16 --as v")
    ref = AutoModelForCausalLM.from_pretrained(repo_id, revision=sha, variant="fp16", dtype=torch.float16)
    assert all(torch.equal(a, b) for a, b in zip(shell.user_ns["v"].state_dict().values(), ref.state_dict().values()))
    shell.run_line_magic("load_model", f"{repo_id}@{sha} --subfolder text --as s")
    ref = AutoModelForCausalLM.from_pretrained(repo_id, revision=sha, subfolder="text")
    assert type(shell.user_ns["s"]).__name__ == "GPT2LMHeadModel"
    assert all(torch.equal(a, b) for a, b in zip(shell.user_ns["s"].state_dict().values(), ref.state_dict().values()))


@pytest.mark.parametrize("line, words", [
    ("--variant bf16", "(?s)no weights for --variant 'bf16'.*Variants there: fp16"),
    ("--subfolder nope", "(?s)no folder 'nope'.*Folders with a config.json: text"),
    ("--subfolder ../up", "Cannot read --subfolder"),
])
def test_missing_variants_and_folders_say_what_exists(shell, layout_repo, hf_cache, line, words):
    repo_id, sha = layout_repo
    with pytest.raises(UsageError, match=words):
        shell.run_line_magic("load_model", f"{repo_id}@{sha} {line} --as m")
    assert "m" not in shell.user_ns
