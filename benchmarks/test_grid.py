"""Wall time of a grid: ``bench --executor local`` (one run at a time) against ``--executor ray
--max-parallel 2`` (two at once), on two policies:

* ``cpu``: the tiny random Llama (tests/fakes.py) with a scripted reflector: CPU-bound runs, which
  on a 2-core machine share the cores (Ray gives each run one CPU, so torch one thread); this case
  also times the local grid again with one torch thread per run (``local_1_thread``), to tell
  what running two at once buys from what the thread count does;
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

API_DELAY = 5.0  # seconds per policy or reflector call: waiting dominates a run (~15 s of start-up)
METHODS = "evolution,self-reflection"
SCRIPT = [{"contains": "", "answer": '```json\n[{"op": "add", "text": "Add the numbers left to right."}]\n```'}]


def policy_flags(policy: str, tiny_model: Path, tmp: Path) -> list[str]:
    if policy == "api":
        # the default reflector with an API policy is the policy's own model, with its kwargs (the mock)
        return ["--sampler", "litellm", "--model", "openai/gpt-4o-mini", "--policy-kwargs", json.dumps({"mock_response": "<answer>4</answer>", "mock_delay": API_DELAY})]
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
        if policy == "cpu":  # one at a time again, each run on one thread as under Ray: what parallelism alone buys
            with monkeypatch.context() as one:
                one.setenv("OMP_NUM_THREADS", "1")
                started = time.monotonic()
                assert main([*flags, "--out", str(tmp_path / "local-1-thread")]) == 0
                seconds["local_1_thread"] = time.monotonic() - started

    benchmark.pedantic(grid, rounds=1, iterations=1)
    benchmark.extra_info.update({**{f"{k}_seconds": round(v, 1) for k, v in seconds.items()},
                                 "ratio": round(seconds["ray"] / seconds["local"], 3), "runs": 2,
                                 "cores": os.cpu_count(), "api_delay": API_DELAY if policy == "api" else None})
    print(f"\n{policy}: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
          + f", ray/local {seconds['ray'] / seconds['local']:.2f} ({os.cpu_count()} cores)")
