"""Binder's configuration agrees with the package: the same pinned CPU torch, the package (with what the
notebooks need) installed from this checkout, the stand-in started before Jupyter."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"


def test_binder_installs_the_pinned_cpu_torch_and_the_package_with_its_extras():
    requirements = (BINDER / "requirements.txt").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements
    assert "-c ../constraints.txt" in requirements
    constraints = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^torch==\S+", constraints, re.M)
    post_build = (BINDER / "postBuild").read_text()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installed = re.search(r"pip install .* -e '\.\[(\w+)\]'", post_build)
    assert installed and installed.group(1) in extras
    assert "-c constraints.txt" in post_build


def test_every_notebook_dependency_is_installed_on_binder():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[ ]", d)[0].lower() for d in project["dependencies"] + project["optional-dependencies"]["quant"]}
    notebooks = " ".join(p.read_text() for p in (ROOT / "notebooks").glob("*.ipynb"))
    imported = set(re.findall(r"(?:from|import) ([a-z_]+)", notebooks))
    needed = {name for name in imported if name in {"bitsandbytes", "torchao", "matplotlib", "transformers", "torch",
                                                     "huggingface_hub", "safetensors", "accelerate", "ipywidgets"}}
    aliases = {"huggingface_hub": "huggingface_hub"}
    assert {aliases.get(n, n) for n in needed} <= names | {"huggingface_hub"}
    assert "jupyterlab" in (BINDER / "requirements.txt").read_text()


def test_start_serves_the_stand_in_and_points_the_client_at_it():
    start = (BINDER / "start").read_text()
    assert "python -m hf_notebook.testing.hub" in start and 'export HF_ENDPOINT="http://127.0.0.1:$PORT"' in start
    assert not re.search(r"HF_HUB_DISABLE_\w+=", start) and "HF_TOKEN" in start  # the client's defaults all on
    assert start.rstrip().endswith('exec "$@"')
    assert "publish_tiny_models" in (BINDER / "postBuild").read_text()
