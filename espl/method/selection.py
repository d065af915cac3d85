"""The ``Selector`` seam: which M programs of the window get rollouts this iteration.

Contract: ``select(window, m, rng)`` returns exactly ``m`` programs drawn from ``window`` (most
recent last). When the window holds fewer than ``m`` programs, programs repeat (as in the
reference code, the root fills every slot at step 0). Randomness comes only from ``rng``; the
window and its programs are not changed. Each strategy matches the reference code's function of
the same name.

Error policy: an empty window or ``m < 1`` is a programming error, not data (the pool always
holds its root, and the config requires ``--programs >= 1``): ``ValueError``, before any draw.
A strategy is given by name (:func:`make_selector`) or as an instance.
"""

from __future__ import annotations

import math
import random
from typing import Protocol

from espl_bench.method.program import Program


class Selector(Protocol):
    """Chooses the iteration's programs; see the module docstring."""

    def select(self, window: list[Program], m: int, rng: random.Random) -> list[Program]: ...


def check_request(window: list[Program], m: int) -> None:
    """The error policy every strategy applies first."""
    if not window:
        raise ValueError("select needs a non-empty window of programs (the pool holds at least its root)")
    if m < 1:
        raise ValueError(f"select needs m >= 1 programs, got {m}")


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
        check_request(window, m)
        return _fill([window[-1]], window, m, rng)


class LUCBSelector:
    """A champion (best mu - lam sigma), challengers (best mu + lam sigma), the newest forced in."""

    def __init__(self, lam: float = 2.0):
        self.lam = lam

    def select(self, window: list[Program], m: int, rng: random.Random) -> list[Program]:
        check_request(window, m)
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
        check_request(window, m)
        ranked = sorted(window, key=lambda p: -_score(p, self.lam))
        return _fill(ranked[:m], window, m, rng)


class SoftmaxSelector:
    """Sampling without replacement with p ~ exp(score / T), T = the largest score (as in the code)."""

    def __init__(self, lam: float = 2.0):
        self.lam = lam

    def select(self, window: list[Program], m: int, rng: random.Random) -> list[Program]:
        check_request(window, m)
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


def make_selector(name: str | Selector, lam: float = 2.0) -> Selector:
    """The strategy called ``name`` (``uniform``, ``lucb``, ``ucb``, ``softmax``), or ``name`` itself
    when it already is a selector."""
    if not isinstance(name, str):
        return name
    if name not in SELECTORS:
        raise ValueError(f"unknown selection strategy {name!r}; use one of {sorted(SELECTORS)}")
    cls = SELECTORS[name]
    return cls() if cls is UniformSelector else cls(lam)
