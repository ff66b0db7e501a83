#!/usr/bin/env bash
# The run command: install (first time only), provision the model, start the whole stack.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
case " $* ${MATHAGENT_ENGINE:-} " in
  *" vllm "*|*"--engine=vllm"*) bash scripts/setup.sh vllm ;;  # vLLM's own virtualenv, once
esac
exec .venv/bin/mathagent up "$@"
