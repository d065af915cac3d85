"""One full E-SPL iteration (rollouts, rating, TRL step, reflection, evaluation) on a tiny model.

A tiny random Llama with the embedded tokenizer (built offline) and a scripted reflector keep it
to seconds, so the number tracks the loop's own overhead and the TRL step, not a model's speed.
"""

import json
import random

from espl_bench.config import RunConfig
from espl_bench.method.loop import EsplLoop
from espl_bench.method.program import Pool
from espl_bench.records import RunHeader
from espl_bench.rundir import RunDir
from espl_bench.running.build import build_parts
from tests.fakes import make_tiny_model

ROUNDS = 2


def test_full_iteration_on_a_tiny_model(benchmark, tmp_path):
    model = make_tiny_model(tmp_path / "tiny")
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"contains": "", "answer": '{"ops": [{"op": "add", "text": "Check each step."}]}'}]))
    cfg = RunConfig(env="espl/Arithmetic-v0", method="espl", model=str(model), reflector=f"script:{script}",
                    iterations=ROUNDS + 1, programs=2, batch_size=2, group_size=2, max_new_tokens=16,
                    eval_problems=2, eval_samples=1, micro_batch_size=4, out=str(tmp_path / "run"))
    rundir = RunDir(cfg.out)
    rundir.create(RunHeader(config=cfg.model_dump()))
    parts = build_parts(cfg, rundir, resume_step=0)
    loop = EsplLoop(cfg, parts, Pool.with_root(), random.Random(0))
    counter = iter(range(1, ROUNDS + 2))
    try:
        result = benchmark.pedantic(lambda: loop.iteration(next(counter)), rounds=ROUNDS, iterations=1, warmup_rounds=0)
    finally:
        parts.close()
    assert result.metrics.rollouts == 8 and result.metrics.test is not None
    benchmark.extra_info["phase_seconds"] = result.metrics.phase_seconds
