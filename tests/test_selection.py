import random
from collections import Counter

import pytest

from espl_bench.method.selection import (
    SELECTORS,
    LUCBSelector,
    SoftmaxSelector,
    UCBSelector,
    UniformSelector,
    make_selector,
)


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_every_strategy_returns_m_programs_from_the_window(name, pool_of):
    pool = pool_of(*[(25.0 + i, 8.0) for i in range(6)])
    window = pool.window(4)
    chosen = make_selector(name).select(window, 3, random.Random(0))
    assert len(chosen) == 3
    assert all(p in window for p in chosen)
    assert len({p.id for p in chosen}) == 3  # enough programs: no repeats


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_small_window_repeats_programs(name, pool_of):
    pool = pool_of((25.0, 8.0))
    chosen = make_selector(name).select(pool.window(10), 3, random.Random(0))
    assert [p.id for p in chosen] == ["p0", "p0", "p0"]


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_same_rng_seed_same_choice_and_no_global_state(name, pool_of):
    pool = pool_of(*[(20.0 + 3 * i, 4.0 + i) for i in range(8)])
    state = random.getstate()
    a = [p.id for p in make_selector(name).select(pool.window(8), 3, random.Random(7))]
    b = [p.id for p in make_selector(name).select(pool.window(8), 3, random.Random(7))]
    assert a == b
    assert random.getstate() == state


def test_uniform_always_includes_newest(pool_of):
    pool = pool_of(*[(25.0, 8.0)] * 5)
    for seed in range(20):
        assert pool.latest() in UniformSelector().select(pool.window(5), 2, random.Random(seed))


def test_lucb_takes_champion_and_newest_then_optimistic_challenger(pool_of):
    # p0: solid champion (high mu, low sigma); p1: uncertain (highest mu + 2 sigma); p3 newest.
    pool = pool_of((30.0, 1.0), (24.0, 6.0), (20.0, 1.0), (10.0, 1.0))
    chosen = [p.id for p in LUCBSelector(2.0).select(pool.window(4), 3, random.Random(0))]
    assert chosen == ["p0", "p3", "p1"]


def test_ucb_takes_top_by_upper_bound(pool_of):
    pool = pool_of((30.0, 1.0), (24.0, 6.0), (20.0, 1.0), (10.0, 1.0))
    chosen = [p.id for p in UCBSelector(2.0).select(pool.window(4), 2, random.Random(0))]
    assert chosen == ["p1", "p0"]  # 36 and 32


def test_softmax_prefers_higher_scores(pool_of):
    pool = pool_of((40.0, 1.0), (0.0, 1.0), (0.0, 1.0), (0.0, 1.0))
    rng = random.Random(3)
    firsts = Counter(SoftmaxSelector(2.0).select(pool.window(4), 1, rng)[0].id for _ in range(400))
    assert firsts["p0"] > 150  # ~0.48 with T = max score; uniform would give ~100


@pytest.mark.parametrize("name", ["uniform", "lucb", "ucb", "softmax"])
def test_an_empty_window_or_no_slots_is_a_clear_error_before_any_draw(name, pool_of, rng):
    selector = make_selector(name)
    state = rng.getstate()
    with pytest.raises(ValueError, match="non-empty window"):
        selector.select([], 2, rng)
    with pytest.raises(ValueError, match="m >= 1"):
        selector.select(pool_of((25, 8)).window(5), 0, rng)
    assert rng.getstate() == state
    assert make_selector(selector) is selector
    with pytest.raises(ValueError, match="unknown selection strategy"):
        make_selector("best")
