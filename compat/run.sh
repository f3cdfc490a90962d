#!/usr/bin/env bash
# `make test-compat`: the core suite on the oldest and the newest huggingface_hub and transformers that
# pyproject.toml allows, each tier in a venv of its own (.venv-compat-TIER), the versions pinned in
# compat/TIER.txt. Usage: bash compat/run.sh [PYTHON] [TIER...]   (default: python3 oldest newest)
# transformers[kernels]: the Hub-kernel tests need the kernels library, which only transformers >= 5.25
# requires; older releases name the version they work with in their `kernels` extra.
# Exits non-zero when any tier fails to install or to pass.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python3}; shift || true
TIERS=("$@"); [ ${#TIERS[@]} -gt 0 ] || TIERS=(oldest newest)
mapfile -t TESTS < <(grep -v '^#' compat/core-tests.txt | grep .)

status=0; summary=()
for tier in "${TIERS[@]}"; do
  venv=.venv-compat-$tier; py=$venv/bin/python; start=$SECONDS
  echo "=== $tier: $(grep -v '^#' compat/$tier.txt | tr '\n' ' ')"
  if ! { [ -x "$py" ] || "$PYTHON" -m venv "$venv"; } ||
     ! "$py" -m pip install -q -c constraints.txt -c "compat/$tier.txt" -e '.[test]' 'transformers[kernels]'; then
    summary+=("$tier: install failed"); status=1; continue
  fi
  "$py" - <<'PY'
from importlib.metadata import version
print("   ", ", ".join(f"{p} {version(p)}" for p in
      ("huggingface_hub", "hf_xet", "transformers", "kernels", "tokenizers", "accelerate", "torch", "safetensors")))
PY
  "$py" -m pytest -q -p no:cacheprovider "${TESTS[@]}" | tee "$venv/pytest.log"
  rc=${PIPESTATUS[0]}
  summary+=("$tier: $(tail -n 1 "$venv/pytest.log" | tr -d '=') ($((SECONDS - start)) s in all)")
  [ "$rc" = 0 ] || status=1
done
printf '%s\n' "--- test-compat" "${summary[@]}"
exit $status
