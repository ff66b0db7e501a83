#!/usr/bin/env bash
# The test command: install what tests need, then lint, check the layers, type-check and run every test.
#   scripts/test.sh                  everything (what CI runs)
#   scripts/test.sh -m "not slow"    skip the slow tests locally (arguments go to pytest)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
echo "==> ruff"
.venv/bin/ruff check .
echo "==> lint-imports (the layers: mathagent -> api -> trainer -> agent -> sandbox)"
.venv/bin/lint-imports --no-cache
echo "==> the gpu extra resolves (pip's resolver, dry run; once per pyproject.toml)"
stamp=.venv/.gpu-extra-resolves
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  rm -f .venv/gpu-extra.json
  .venv/bin/pip install -q --disable-pip-version-check --dry-run --ignore-installed \
    --report .venv/gpu-extra.json ".[gpu]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c 'import json, sys; r = json.load(open(".venv/gpu-extra.json"))["install"]
v = {i["metadata"]["name"]: i["metadata"]["version"] for i in r}
print("   resolved:", ", ".join(f"{n} {v[n]}" for n in ("vllm", "torch", "transformers", "fastapi")))
sys.exit(0 if "vllm" in v else 1)'
  echo "$want" > "$stamp"
fi
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
.venv/bin/pytest "$@"
