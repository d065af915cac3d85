"""The ``Selector`` seam: which M programs of the window get rollouts this iteration.

Contract: ``select(window, m, rng)`` returns exactly ``m`` programs drawn from ``window`` (most
recent last). When the window holds fewer than ``m`` programs, programs repeat (as in the
reference code, the root fills every slot at step 0). Randomness comes only from ``rng``.
Each strategy matches the reference code's function of the same name.
"""

from __future__ import annotations

import math
import random
from typing import Protocol

from espl_bench.method.program import Program


class Selector(Protocol):
    def select(self, window: list[Program], m: int, rng: random.Random) -> list[Program]: ...


def _score(program: Program, lam: float) -> float:
    return program.mu + lam * program.sigma


def _fill(chosen: list[Program], window: list[Program], m: int, rng: random.Random) -> list[Program]:
    """Top up ``chosen`` to ``m`` with unchosen programs, then with repeats."""
    rest = [p for p in window if p not in chosen]
    rng.shuffle(rest)
    chosen = chosen + rest[: m - len(chosen)]
    while len(chosen) < m:
        chosen.append(chosen[len(chosen) % len(window)] if len(chosen) < len(window) else rng.choice(window))
    return chosen[:m]


class UniformSelector:
    """The newest program plus uniformly random others; ignores ratings."""

    def select(self, window: list[Program], m: int, rng: random.Random) -> list[Program]:
        return _fill([window[-1]], window, m, rng)


class LUCBSelector:
    """A champion (best mu - lam sigma), challengers (best mu + lam sigma), the newest forced in."""

    def __init__(self, lam: float = 2.0):
        self.lam = lam

    def select(self, window: list[Program], m: int, rng: random.Random) -> list[Program]:
        champion = max(window, key=lambda p: p.mu - self.lam * p.sigma)
        chosen = [champion]
        newest = window[-1]
        if newest not in chosen and m > 1:
            chosen.append(newest)
        challengers = sorted((p for p in window if p not in chosen), key=lambda p: -_score(p, self.lam))
        chosen += challengers[: max(0, m - len(chosen))]
        return _fill(chosen, window, m, rng)


class UCBSelector:
    """The top ``m`` programs by mu + lam sigma."""

    def __init__(self, lam: float = 2.0):
        self.lam = lam

    def select(self, window: list[Program], m: int, rng: random.Random) -> list[Program]:
        ranked = sorted(window, key=lambda p: -_score(p, self.lam))
        return _fill(ranked[:m], window, m, rng)


class SoftmaxSelector:
    """Sampling without replacement with p ~ exp(score / T), T = the largest score (as in the code)."""

    def __init__(self, lam: float = 2.0):
        self.lam = lam

    def select(self, window: list[Program], m: int, rng: random.Random) -> list[Program]:
        remaining = list(window)
        chosen: list[Program] = []
        while remaining and len(chosen) < m:
            scores = [_score(p, self.lam) for p in remaining]
            temperature = max(abs(max(scores)), 1e-6)
            top = max(scores)
            weights = [math.exp((s - top) / temperature) for s in scores]
            pick = rng.choices(range(len(remaining)), weights=weights, k=1)[0]
            chosen.append(remaining.pop(pick))
        return _fill(chosen, window, m, rng)


SELECTORS: dict[str, type] = {
    "uniform": UniformSelector,
    "lucb": LUCBSelector,
    "ucb": UCBSelector,
    "softmax": SoftmaxSelector,
}


def make_selector(name: str, lam: float = 2.0) -> Selector:
    cls = SELECTORS[name]
    return cls() if cls is UniformSelector else cls(lam)
