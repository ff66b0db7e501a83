#!/usr/bin/env bash
# The run command: install (first time only), provision the model, start the whole stack.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mathagent up "$@"
