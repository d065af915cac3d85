"""TrueSkill ratings of programs, through the ``trueskill`` library (no hand-written math).

Parameters follow the paper: mu0 = 25, sigma0 = 25/3, beta = 25/6, tau = 25/300, draw
probability 0.10. Each iteration ranks the selected programs by mean reward; scores within
``tie_tolerance`` of their neighbour tie (ties chain), and a program selected into several slots
is rated once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import trueskill

from espl_bench.method.program import Program

MU0 = 25.0
SIGMA0 = MU0 / 3.0


def make_env() -> trueskill.TrueSkill:
    return trueskill.TrueSkill(mu=MU0, sigma=SIGMA0, beta=MU0 / 6.0, tau=MU0 / 300.0, draw_probability=0.10,
                               backend=None)


def tie_ranks(scores: list[float], tolerance: float) -> list[int]:
    """Ranks (0 = best) for scores sorted in descending order; near-equal neighbours share a rank."""
    ranks: list[int] = []
    for i, score in enumerate(scores):
        if i and scores[i - 1] - score <= tolerance:
            ranks.append(ranks[-1])
        else:
            ranks.append(i)
    return ranks


def update_ratings(programs: Iterable[Program], scores: dict[str, float], *, tolerance: float = 0.01,
                   env: trueskill.TrueSkill | None = None) -> dict[str, tuple[float, float]]:
    """Rate the programs whose ids are in ``scores`` from their ranking; mutates them in place.

    Returns ``{id: (mu, sigma)}`` of the updated programs; with fewer than two distinct programs
    nothing is rated (a ranking needs two players).
    """
    env = env or make_env()
    unique: dict[str, Program] = {}
    for program in programs:
        if program.id in scores:
            unique.setdefault(program.id, program)
    if len(unique) < 2:
        return {}
    ordered = sorted(unique.values(), key=lambda p: -scores[p.id])
    ranks = tie_ranks([scores[p.id] for p in ordered], tolerance)
    groups = [(env.create_rating(mu=p.mu, sigma=p.sigma),) for p in ordered]
    rated = env.rate(groups, ranks=ranks)
    for program, (rating,) in zip(ordered, rated):
        program.mu, program.sigma = float(rating.mu), float(rating.sigma)
    return {p.id: (p.mu, p.sigma) for p in ordered}


def mutation_prior(parent: Program, inflation: float) -> tuple[float, float]:
    """A mutated child keeps the parent's mu; sigma grows in quadrature (paper, App. B)."""
    return parent.mu, math.sqrt(parent.sigma**2 + inflation**2)


def crossover_prior(parents: list[Program], inflation: float) -> tuple[float, float]:
    """Precision-weighted mean of the parents' mu; variance 1 / sum(precisions) + inflation^2."""
    precisions = [1.0 / p.sigma**2 for p in parents]
    total = sum(precisions)
    mu = sum(w * p.mu for w, p in zip(precisions, parents)) / total
    return mu, math.sqrt(1.0 / total + inflation**2)
