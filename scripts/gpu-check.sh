#!/usr/bin/env bash
# The GPU check, on the GPU machine (one GPU, no network, no vLLM): installs the carried wheels
# offline next to the image's torch/transformers/peft/accelerate and runs scripts/gpu_check.py
# (bfloat16, the lean sampler, peak memory against `espl-bench plan`; exit 1 when the peak
# exceeds the plan by more than 25%). Its last line, `gpu-check summary: {...}`, goes into
# benchmarks/README.md (section "GPU check").
#   device run: bash scripts/gpu-check.sh    (carry: .gpu-check; timeout 480 s)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q --no-deps --no-index .gpu-check/wheels/*.whl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONUNBUFFERED=1 timeout 470 "$PY" scripts/gpu_check.py --model-config .gpu-check/model \
  --out "${OUT:-.gpu-check}/gpu-check.json" "$@"
