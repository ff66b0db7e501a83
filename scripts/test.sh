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
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
.venv/bin/pytest "$@"
