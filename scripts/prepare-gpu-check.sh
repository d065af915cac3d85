#!/usr/bin/env bash
# Prepares the GPU check (scripts/gpu_check.py) on a machine with the project installed and the
# package registry reachable: the wheels a bare CUDA image lacks (ours, trl, datasets and theirs)
# and the embedded policy's config and tokenizer, in .gpu-check/ (git-ignored; carry it).
# The device tool sends at most 64 MiB: this comes to about 10 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -rf .gpu-check && mkdir -p .gpu-check/wheels .gpu-check/model
"$PY" -m pip wheel -q --no-deps --no-build-isolation . -w .gpu-check/wheels
version() { "$PY" -m pip show "$1" | sed -n 's/^Version: //p'; }
# the GPU image runs Python 3.12; these are pure-Python wheels (multiprocess has one per Python)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .gpu-check/wheels \
  "trl==$(version trl)" "datasets==$(version datasets)" "dill==$(version dill)" "multiprocess==$(version multiprocess)"
MODEL=$("$PY" -c "from espl_bench.training.models import resolve_model; print(resolve_model('smollm2-135m'))")
for f in config.json tokenizer.json tokenizer_config.json chat_template.jinja generation_config.json; do
  [ -f "$MODEL/$f" ] && cp "$MODEL/$f" .gpu-check/model/
done
du -sh .gpu-check
