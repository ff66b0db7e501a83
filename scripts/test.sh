#!/usr/bin/env bash
# The test command: install what tests need, then lint, type-check and run every test.
#   scripts/test.sh                  everything (what CI runs)
#   scripts/test.sh -m "not slow"    skip the slow tests locally (arguments go to pytest)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
echo "==> ruff"
.venv/bin/ruff check .
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
.venv/bin/pytest "$@"
