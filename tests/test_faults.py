"""Fault injection: flaky reflectors, rate limits, hangs, broken envs; the run always goes on."""

import json
import random
import threading
import time

import litellm
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litellm import CustomLLM

from espl_bench.agents.reflector import LiteLLMReflector, ReflectorCallError
from espl_bench.agents.rollout import RolloutEngine
from espl_bench.envs.splits import SplitPlan
from espl_bench.method.learning import FrozenLearner
from espl_bench.method.loop import EsplLoop, Parts
from espl_bench.method.program import Pool, Program
from espl_bench.method.reflection import Crossover, Mutation
from espl_bench.method.selection import make_selector
from tests.fakes import ScriptedReflector
from tests.test_reflection import setup
from tests.test_rollout import CountdownEnv, EchoSampler

CALLS = {"n": 0}


class RateLimitedTwice(CustomLLM):
    def completion(self, *args, **kwargs):
        CALLS["n"] += 1
        if CALLS["n"] <= 2:
            raise litellm.RateLimitError("slow down", llm_provider="espl-flaky", model="x")
        if CALLS["n"] == 3:
            raise litellm.InternalServerError("boom", llm_provider="espl-flaky", model="x")
        return litellm.ModelResponse(choices=[{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": "fine"}}])


class AlwaysBadRequest(CustomLLM):
    def completion(self, *args, **kwargs):
        CALLS["n"] += 1
        raise litellm.BadRequestError("bad request", llm_provider="espl-bad", model="x")


@pytest.fixture
def providers(monkeypatch):
    CALLS["n"] = 0
    monkeypatch.setattr(litellm, "custom_provider_map", [
        *litellm.custom_provider_map,
        {"provider": "espl-flaky", "custom_handler": RateLimitedTwice()},
        {"provider": "espl-bad", "custom_handler": AlwaysBadRequest()},
    ])


def test_rate_limits_and_server_errors_are_retried(providers):
    reflector = LiteLLMReflector("espl-flaky/x", num_retries=3, timeout=10)
    assert reflector.complete([{"role": "user", "content": "hi"}]) == "fine"
    assert CALLS["n"] == 4  # 429, 429, 500, then the answer


def test_bad_requests_are_not_retried(providers):
    reflector = LiteLLMReflector("espl-bad/x", num_retries=3, timeout=10)
    with pytest.raises(ReflectorCallError, match="BadRequestError"):
        reflector.complete([{"role": "user", "content": "hi"}])
    assert CALLS["n"] == 1


def test_slow_reflector_meets_the_iteration_deadline_and_parent_stays():
    parent, pool, rollouts = setup()

    def slow(messages):
        time.sleep(0.4)
        return "summary"

    started = time.monotonic()
    outcome = Mutation(ScriptedReflector(slow), deadline_s=0.5, concurrency=1)(parent, rollouts, 1)
    assert time.monotonic() - started < 0.5 + 3 * 0.4
    assert outcome.status == "failed" and "deadline" in outcome.reason and len(pool) == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.text(max_size=200), st.sampled_from([
    "```json\n[]\n```", '[{"op": "add", "text": "ok"}]', '[{"op": "modify", "id": "G9", "text": "x"}]',
    '```json\n[{"op": "add"', "\udcff", ""])), min_size=1, max_size=6))
def test_fuzzed_reflections_keep_the_pool_intact_or_add_one_valid_child(answers):
    parent, pool, rollouts = setup()
    before = json.dumps(pool.to_dict(), sort_keys=True)
    outcome = Mutation(ScriptedReflector(answers), revision_fallback=False, concurrency=1)(parent, rollouts, 1)
    assert json.dumps(pool.to_dict(), sort_keys=True) == before  # operators never touch the pool
    if outcome.status == "failed":
        assert outcome.child is None and outcome.reason
    else:
        assert outcome.status == "ok" and outcome.child.parents == ["p0"] and outcome.child.principles


class FlakyReflector:
    """Slow, and fails a third of its calls, from many threads at once."""

    def __init__(self, seed=0):
        self.rng, self.lock, self.calls, self.failures = random.Random(seed), threading.Lock(), 0, 0

    honours_schema = False

    def complete(self, messages, *, purpose="", max_tokens=None, schema=None, stop=None):
        with self.lock:
            self.calls += 1
            delay, fail = self.rng.uniform(0, 0.02), self.rng.random() < 0.33
            self.failures += fail
        time.sleep(delay)
        if fail:
            raise ReflectorCallError(f"{purpose}: injected failure")
        if "Summarise" in messages[0]["content"]:
            return "summary"
        return '```json\n[{"op": "add", "text": "Be precise."}]\n```'


class SometimesBroken(CountdownEnv):
    """Raises on one problem, hangs on another."""

    def step(self, action):
        if self.index == 1:
            raise RuntimeError("env bug")
        if self.index == 2:
            time.sleep(5)
        return super().step(action)


def test_load_8_programs_64_rollouts_flaky_reflector_and_broken_envs_lose_no_iteration():
    from espl_bench.config import RunConfig

    cfg = RunConfig(env="test/none", method="evolution", iterations=3, programs=8, batch_size=4, group_size=2,
                    window=10, eval_problems=2, eval_samples=2, crossover_prob=1.0, out="unused")
    reflector = FlakyReflector()
    sampler = EchoSampler()
    parts = Parts(engine=RolloutEngine(lambda: SometimesBroken(turns=1), sampler, step_timeout=0.3),
                  learner=FrozenLearner(), selector=make_selector("ucb"), mutation=Mutation(reflector),
                  crossover=Crossover(reflector), plan=SplitPlan.of_sizes(5, 5), eos_id=0)
    programs = [Program(id=f"p{i}", principles={"G0": f"rule {i}"}) for i in range(8)]
    loop = EsplLoop(cfg, parts, Pool(programs), random.Random(0))
    results = [loop.iteration(t) for t in range(1, 4)]
    assert [r.metrics.iteration for r in results] == [1, 2, 3]
    assert all(r.metrics.rollouts == 64 for r in results)
    assert max(sampler.batches) == 64  # all 64 rollouts of an iteration in flight together
    assert all(r.metrics.env_errors > 0 for r in results)  # broken and hanging problems were hit...
    assert reflector.failures > 0  # ...and the reflector failed, yet every iteration completed
    failed = sum(r.metrics.reflection_failures for r in results)
    made = sum(len(r.metrics.children) for r in results)
    assert failed + made + sum(list(r.metrics.reflections.values()).count("skipped") for r in results) == \
        sum(len(r.outcomes) for r in results)
    assert len(loop.pool) == 8 + made
