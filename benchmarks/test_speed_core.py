"""Speed of the pure parts of an iteration (pytest-benchmark).

Run: python -m pytest benchmarks --benchmark-autosave
Compare: python -m pytest benchmarks --benchmark-compare --benchmark-compare-fail=mean:25%
"""

import json
import random

import pytest

from espl_bench.envs.registry import make_env
from espl_bench.method.edits import parse_ops
from espl_bench.method.program import Pool, Program
from espl_bench.method.rating import update_ratings
from espl_bench.method.selection import SELECTORS, make_selector


def pool_of(n: int) -> Pool:
    rng = random.Random(0)
    return Pool([Program(id=f"p{i}", principles={}, mu=rng.uniform(15, 35), sigma=rng.uniform(1, 8)) for i in range(n)],
                max_size=max(n, 1))


@pytest.mark.parametrize("size", [10, 100, 1000])
@pytest.mark.parametrize("strategy", sorted(SELECTORS))
def test_selection(benchmark, size, strategy):
    pool, selector, rng = pool_of(size), make_selector(strategy), random.Random(0)
    chosen = benchmark(lambda: selector.select(pool.window(size), 3, rng))
    assert len(chosen) == 3


@pytest.mark.parametrize("size", [10, 100, 1000])
def test_rating_update(benchmark, size):
    pool = pool_of(size)
    rng = random.Random(1)
    chosen = rng.sample(pool.programs, 3)
    scores = {p.id: rng.random() for p in chosen}
    assert benchmark(lambda: update_ratings(chosen, scores))


def test_reflector_output_parsing(benchmark):
    text = "Here you go:\n```json\n" + json.dumps([{"op": "add", "text": "Check every sign twice."}] * 8) + "\n```"
    assert len(benchmark(lambda: parse_ops(text, allowed={"add"}, valid_ids=set(), max_ops=8))) == 8


def test_arithmetic_env_reset_step(benchmark):
    env = make_env("espl/Arithmetic-v0")
    env.reset(seed=0)

    def episode():
        env.reset(options={"split": "train", "index": 5})
        return env.step("<answer>12</answer>")

    assert benchmark(episode)[2] is True
