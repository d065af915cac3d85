#!/usr/bin/env bash
# Prepares the GPU check (scripts/gpu_check.py) on a machine with the project installed and the
# package registry reachable: the wheels a bare CUDA image lacks (ours, trl, datasets, pydantic and theirs)
# and the embedded policy's config and tokenizer, in .gpu-check/ (git-ignored; carry it).
# The device tool sends at most 64 MiB: this comes to about 10 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -rf .gpu-check && mkdir -p .gpu-check/wheels .gpu-check/model
"$PY" -m pip wheel -q --no-deps --no-build-isolation . -w .gpu-check/wheels
version() { "$PY" -m pip show "$1" | sed -n 's/^Version: //p'; }
# What the check carries beyond the machine's own packages (gpu_check.py's CARRIED), at the versions
# installed here. The GPU image runs Python 3.12 on x86-64: pure-Python wheels, multiprocess's
# py312 one and pydantic-core's compiled cp312 one.
mapfile -t CARRIED < <("$PY" scripts/gpu_check.py --carried | grep -vx espl-bench)
PINS=(); for d in "${CARRIED[@]}"; do PINS+=("$d==$(version "$d")"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --abi none --platform manylinux_2_17_x86_64 --platform any -d .gpu-check/wheels "${PINS[@]}"
MODEL=$("$PY" -c "from espl_bench.training.models import resolve_model; print(resolve_model('smollm2-135m'))")
for f in config.json tokenizer.json tokenizer_config.json chat_template.jinja generation_config.json; do
  [ -f "$MODEL/$f" ] && cp "$MODEL/$f" .gpu-check/model/
done
du -sh .gpu-check
