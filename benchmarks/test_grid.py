"""Wall time of a grid: ``bench --executor local`` (one run at a time) against ``--executor ray
--max-parallel 2`` (two at once), on two policies:

* ``cpu``: the tiny random Llama (tests/fakes.py) with a scripted reflector: CPU-bound runs, which
  on a 2-core machine share the cores (Ray gives each run one CPU, so torch one thread);
* ``api``: a latency-bound stand-in for a hosted policy and reflector (``--sampler litellm`` with
  litellm's ``mock_response`` and a fixed ``mock_delay`` per call, no network): runs that mostly
  wait, where two at once should nearly halve the wall time.

Each case runs the smoke suite's two frozen-weight runs that both policies can make
(``evolution`` and ``self-reflection``) and records the seconds in ``extra_info`` (the Ray case's
include starting a local 2-CPU Ray instance). Minutes on 2 CPU cores; the numbers are in
benchmarks/README.md.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from espl_bench.running.cli import main

os.environ.setdefault("HF_HUB_OFFLINE", "1")

API_DELAY = 1.0  # seconds per policy or reflector call
METHODS = "evolution,self-reflection"
SCRIPT = [{"contains": "", "answer": '```json\n[{"op": "add", "text": "Add the numbers left to right."}]\n```'}]


def policy_flags(policy: str, tiny_model: Path, tmp: Path) -> list[str]:
    if policy == "api":
        return ["--sampler", "litellm", "--model", "openai/gpt-4o-mini", "--reflector", "openai/gpt-4o-mini",
                "--policy-kwargs", json.dumps({"mock_response": "<answer>4</answer>", "mock_delay": API_DELAY})]
    script = tmp / "script.json"
    script.write_text(json.dumps(SCRIPT))
    return ["--model", str(tiny_model), "--reflector", f"script:{script}"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tests.fakes import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.mark.enable_socket  # Ray's driver talks to its local instance over TCP
@pytest.mark.parametrize("policy", ["cpu", "api"])
def test_two_runs_at_once_on_ray_against_one_at_a_time(policy, tiny_model, tmp_path, benchmark, monkeypatch):
    import ray

    monkeypatch.setenv("OPENAI_API_KEY", "sk-stand-in")  # litellm asks for one; the mock never sends it
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    flags = ["bench", "--suite", "smoke", "--methods", METHODS, *policy_flags(policy, tiny_model, tmp_path)]
    seconds = {}

    def grid() -> None:
        started = time.monotonic()
        assert main([*flags, "--out", str(tmp_path / "local")]) == 0
        seconds["local"] = time.monotonic() - started
        started = time.monotonic()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("HF_", "OPENAI_", "LITELLM_"))}})
        try:
            assert main([*flags, "--out", str(tmp_path / "ray"), "--executor", "ray", "--max-parallel", "2"]) == 0
        finally:
            ray.shutdown()
        seconds["ray"] = time.monotonic() - started

    benchmark.pedantic(grid, rounds=1, iterations=1)
    benchmark.extra_info.update({**{f"{k}_seconds": round(v, 1) for k, v in seconds.items()},
                                 "ratio": round(seconds["ray"] / seconds["local"], 3), "runs": 2,
                                 "cores": os.cpu_count(), "api_delay": API_DELAY if policy == "api" else None})
    print(f"\n{policy}: local {seconds['local']:.1f} s, ray x2 {seconds['ray']:.1f} s, "
          f"ratio {seconds['ray'] / seconds['local']:.2f} ({os.cpu_count()} cores)")
