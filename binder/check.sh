#!/bin/bash
# Run Binder's build steps here, in a fresh venv, as repo2docker would: requirements.txt, postBuild,
# then `start` around nbclient executing every notebook. Usage: binder/check.sh [python]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${1:-python3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$PYTHON" -m venv "$WORK/venv"
export PATH="$WORK/venv/bin:$PATH" HOME="$WORK/home"
mkdir -p "$HOME"
cd "$ROOT/binder"
pip install -q --upgrade pip
# Where download.pytorch.org cannot be reached (a sandbox whose registry serves the pinned CPU torch
# itself), install without the extra index, keeping everything else of requirements.txt.
if python -c 'import urllib.request; urllib.request.urlopen("https://download.pytorch.org/whl/cpu/", timeout=5)' 2>/dev/null; then
    cp requirements.txt "$WORK/requirements.txt"
else
    grep -v -- '--extra-index-url' requirements.txt > "$WORK/requirements.txt"
fi
sed -i "s#-c ../constraints.txt#-c $ROOT/constraints.txt#" "$WORK/requirements.txt"
pip install -q -r "$WORK/requirements.txt" nbclient ipykernel
cd "$ROOT"
bash binder/postBuild
for nb in notebooks/*.ipynb; do
    cp "$nb" "$WORK/"
    bash binder/start python - "$WORK/$(basename "$nb")" <<'PY'
import sys
import nbformat
from nbclient import NotebookClient

path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(__import__("pathlib").Path(path).parent)}}).execute()
print("ok", path)
PY
    pkill -f "hf_notebook.testing.hub --root $HOME" || true
done
echo "binder check passed"
