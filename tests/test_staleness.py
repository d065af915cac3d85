"""--max-staleness: iteration t+1 is sampled while step t trains, never from weights more than K steps old."""

from __future__ import annotations

import math
import random
import threading
import time

import pytest

from espl_bench.config import RunConfig, build_config
from espl_bench.envs.splits import SplitPlan
from espl_bench.errors import ConfigError
from espl_bench.method.loop import EsplLoop, Parts
from espl_bench.method.program import Pool
from espl_bench.method.reflection import Mutation
from espl_bench.method.selection import make_selector
from tests.test_protocol import PrincipleEngine, _improving_reflector

STEP_SECONDS = 0.3
SAMPLE_SECONDS = 0.2


class SlowEngine(PrincipleEngine):
    """Generation that costs wall time (a server's), and records how many batches ran at once."""

    def __init__(self):
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def run(self, specs, params):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(SAMPLE_SECONDS)
        with self.lock:
            self.running -= 1
        return super().run(specs, params)


class ThreadedLearner:
    """A step that trains in a thread of its own for a fixed time, as TRLLearner's does."""

    trainable = True

    def __init__(self):
        self.thread: threading.Thread | None = None
        self.steps = 0

    def submit(self, batch):
        self.thread = threading.Thread(target=time.sleep, args=(STEP_SECONDS,))
        self.thread.start()

    def wait(self):
        self.thread.join()
        self.steps += 1
        return {"loss": 0.0}

    def close(self):
        pass


def run_loop(method: str, k: int, iterations: int = 3, concurrent: bool = True):
    cfg = RunConfig(env="espl/Arithmetic-v0", method=method, iterations=iterations, programs=2, batch_size=2,
                    group_size=2, eval_problems=1, eval_samples=1, eval_every=0, max_staleness=k)
    engine = SlowEngine()
    parts = Parts(engine=engine, learner=ThreadedLearner(), selector=make_selector("uniform"),
                  mutation=Mutation(_improving_reflector()) if cfg.evolves else None, crossover=None,
                  plan=SplitPlan.of_sizes(20, 5), eos_id=0, samples_while_training=concurrent)
    loop = EsplLoop(cfg, parts, Pool.with_root(), random.Random(0))
    return [loop.iteration(t).metrics for t in range(1, iterations + 1)], engine


def test_k1_samples_the_next_iteration_while_the_step_trains():
    metrics, engine = run_loop("espl", 1)
    for now, upcoming in zip(metrics, metrics[1:]):
        # the recorded phases: t+1's rollouts start before step t ends, and end after it started
        assert upcoming.staleness.phases["rollouts"].start < now.staleness.phases["step"].end
        assert upcoming.staleness.phases["rollouts"].end > now.staleness.phases["step"].start
        assert upcoming.staleness.prefetched
    assert [m.staleness.staleness for m in metrics] == [0, 1, 1]  # iteration 1 has no step before it
    assert [m.staleness.sampled_with for m in metrics] == [0, 0, 1]
    assert all(m.staleness.regenerated == 0 and m.rollouts == 8 for m in metrics)
    # children join the next selection that can see them: iteration 2 was selected before 1's child existed
    assert metrics[0].children and not set(metrics[1].program_scores) & set(metrics[0].children)
    assert set(metrics[2].program_scores) & {*metrics[0].children, *metrics[1].children}


def test_k1_is_faster_when_generation_and_the_step_take_equal_time():
    serial, _ = run_loop("rl", 0, iterations=4)
    overlapped, _ = run_loop("rl", 1, iterations=4)
    # 4 x (sample + step) against sample + 4 x max(sample, step): the step hides the sampling
    assert sum(m.seconds for m in overlapped) < 0.85 * sum(m.seconds for m in serial)


def test_the_in_process_sampler_samples_the_next_batch_just_before_the_step():
    metrics, engine = run_loop("rl", 1, concurrent=False)
    for now, upcoming in zip(metrics, metrics[1:]):
        assert upcoming.staleness.phases["rollouts"].end <= now.staleness.phases["step"].start
    assert engine.most == 1 and [m.staleness.staleness for m in metrics] == [0, 1, 1]


def test_k0_records_no_staleness_and_samples_after_each_step():
    metrics, _ = run_loop("espl", 0)
    assert all(m.staleness is None and m.importance is None for m in metrics)


def test_a_committed_batch_too_stale_for_the_resumed_k_is_sampled_again_and_counted():
    cfg = RunConfig(env="espl/Arithmetic-v0", method="rl", iterations=3, programs=2, batch_size=2, group_size=2,
                    eval_problems=1, eval_samples=1, eval_every=0, max_staleness=1)
    parts = Parts(engine=SlowEngine(), learner=ThreadedLearner(), selector=make_selector("uniform"), mutation=None,
                  crossover=None, plan=SplitPlan.of_sizes(20, 5), eos_id=0, samples_while_training=True)
    loop = EsplLoop(cfg, parts, Pool.with_root(), random.Random(0))
    loop.iteration(1)
    record = loop.pending_record()
    assert record is not None and record.iteration == 2
    strict = EsplLoop(cfg.model_copy(update={"max_staleness": 0}), parts, loop.pool, loop.rng)
    strict.restore_pending(record)
    second = strict.iteration(2).metrics
    assert second.rollouts == 16  # the ledger counts the discarded batch too
    # sampled again with the current weights (step 1's): on-policy, and counted
    assert second.staleness.staleness == 0 and not second.staleness.prefetched
    assert second.staleness.regenerated == 1 and second.staleness.discarded_rollouts == 8


@pytest.mark.parametrize("flags, words", [
    ({"method": "evolution"}, "has none"),
    ({"method": "rl", "sampler": "trl-vllm"}, "--sampler vllm"),
])
def test_unsupported_combinations_are_refused_in_one_line(flags, words):
    with pytest.raises(ConfigError) as err:
        build_config({"env": "espl/Arithmetic-v0", "max_staleness": 1, **flags})
    assert words in str(err.value) and "\n" not in str(err.value)


def test_importance_weights_are_reported_from_a_stale_step(tiny_model, tmp_path):
    from tests.test_loop import build

    loop, _ = build(tiny_model, tmp_path, "rl", max_staleness=1)
    metrics = [loop.iteration(t).metrics for t in (1, 2)]
    loop.parts.learner.close()
    assert [m.staleness.staleness for m in metrics] == [0, 1]
    for m in metrics:
        w = m.importance
        assert w is not None and all(math.isfinite(v) for v in (w.mean, w.max, w.truncated_share))
        assert 0 < w.mean <= w.max and 0 <= w.truncated_share <= 1 and w.cap == 3.0
    # step 1 trains the weights that sampled its batch: every ratio is 1 up to numerics
    assert abs(metrics[0].importance.mean - 1) < 1e-3
