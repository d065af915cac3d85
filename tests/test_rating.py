import math

import pytest

from espl_bench.method.program import Program
from espl_bench.method.rating import (
    MU0,
    SIGMA0,
    crossover_prior,
    mutation_prior,
    tie_ranks,
    update_ratings,
)


def fresh(pid):
    return Program(id=pid, principles={})


def test_tie_ranks_chain_within_tolerance():
    assert tie_ranks([0.9, 0.5, 0.1], 0.01) == [0, 1, 2]
    assert tie_ranks([0.5, 0.495, 0.49, 0.1], 0.01) == [0, 0, 0, 3]  # chained ties


def test_winner_gains_loser_loses_and_sigma_shrinks():
    a, b = fresh("a"), fresh("b")
    update_ratings([a, b], {"a": 0.8, "b": 0.2})
    assert a.mu > MU0 > b.mu
    assert a.sigma < SIGMA0 and b.sigma < SIGMA0


def test_tie_keeps_equal_players_equal():
    a, b = fresh("a"), fresh("b")
    update_ratings([a, b], {"a": 0.5, "b": 0.505})
    assert a.mu == pytest.approx(b.mu)
    assert a.mu == pytest.approx(MU0)
    assert a.sigma < SIGMA0


def test_duplicate_selection_is_rated_once():
    a1, b1 = fresh("a"), fresh("b")
    update_ratings([a1, a1, b1], {"a": 1.0, "b": 0.0})
    a2, b2 = fresh("a"), fresh("b")
    update_ratings([a2, b2], {"a": 1.0, "b": 0.0})
    assert (a1.mu, a1.sigma, b1.mu) == pytest.approx((a2.mu, a2.sigma, b2.mu))


def test_single_program_is_not_rated():
    a = fresh("a")
    assert update_ratings([a, a], {"a": 1.0}) == {}
    assert (a.mu, a.sigma) == (MU0, SIGMA0)


def test_three_way_ranking_orders_mu():
    a, b, c = fresh("a"), fresh("b"), fresh("c")
    update_ratings([c, a, b], {"a": 0.9, "b": 0.5, "c": 0.1})
    assert a.mu > b.mu > c.mu


def test_mutation_prior_inflates_sigma_in_quadrature():
    parent = Program(id="p", principles={}, mu=28.0, sigma=3.0)
    assert mutation_prior(parent, 4.0) == pytest.approx((28.0, 5.0))


def test_crossover_prior_is_precision_weighted():
    p = Program(id="p", principles={}, mu=30.0, sigma=1.0)
    q = Program(id="q", principles={}, mu=20.0, sigma=2.0)
    mu, sigma = crossover_prior([p, q], 1.0)
    assert mu == pytest.approx((30 / 1 + 20 / 4) / (1 + 1 / 4))  # 28
    assert sigma == pytest.approx(math.sqrt(1 / (1 + 1 / 4) + 1.0))
