"""Intervals and paired comparisons that respect how results are made.

A result is a matrix ``Y[s, p]``: the success of run (seed) ``s`` on test problem ``p``, averaged
over that problem's samples. Samples of one problem are not independent (the problem is easy or
hard for this policy), so the unit of resampling is the problem, never the episode; and runs of
one method with different seeds vary too (training is random), so seeds are a second unit.
Every method of an env is evaluated on the same problems, so comparisons are paired on them.

* :func:`interval`: mean of ``Y`` with a percentile bootstrap that resamples seeds and problems
  independently (``scipy.stats.bootstrap`` over index vectors, the two-way bootstrap of a crossed
  design; with one seed, the cluster bootstrap over problems).
* :func:`difference`: mean(A) - mean(B) with the problems resampled jointly (paired) and each
  method's seeds on their own (runs of two methods are not paired).
* When the data have no variation at all (say, every episode failed) a bootstrap collapses to a
  point, which would claim certainty from 16 zeros. The interval is then the exact
  Clopper-Pearson interval (``scipy.stats.binomtest``) that treats each problem as a single
  trial, the most conservative reading of clustered samples; a difference of two such cells
  takes the widest gap of their intervals. ``Interval.method`` says which was used.
* :func:`detectable_difference`: the smallest true difference a two-sided test at ``alpha``
  finds with probability ``power``, ``(z_{1-alpha/2} + z_power) * se`` (normal approximation).
* :func:`change`: mean(later) - mean(earlier) for two independent sets of clusters (a learning
  curve's last iterations against its first: different problems, so not paired).
* :func:`problems_needed`: the problems a paired comparison needs for a target detectable
  difference, given the standard deviation of per-problem differences (the power computation
  written before an experiment is run).
* :func:`tie_groups`: methods grouped, best first, into sets the data cannot separate.
* :func:`pass_at_k`: the unbiased pass@k estimator of one problem's samples.

Every function is deterministic (a fixed bootstrap generator), so a resumed run writes the same
numbers as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import comb

import numpy as np
from scipy import stats as _stats

LEVEL = 0.95
RESAMPLES = 4000
_SEED = 20260201


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval and its standard error."""

    estimate: float
    low: float
    high: float
    se: float
    level: float = LEVEL
    method: str = "bootstrap"  # bootstrap | exact (no variation in the data) | bound (difference of exact cells)

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {"estimate": round(self.estimate, 6), "low": round(self.low, 6), "high": round(self.high, 6),
                "se": round(self.se, 6), "level": self.level, "method": self.method}

    @classmethod
    def from_dict(cls, data: Mapping) -> Interval:
        return cls(float(data["estimate"]), float(data["low"]), float(data["high"]), float(data["se"]),
                   float(data.get("level", LEVEL)), str(data.get("method", "bootstrap")))

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _matrix(y) -> np.ndarray:
    m = np.asarray(y, dtype=float)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.size == 0:
        raise ValueError("results must be a non-empty (seeds x problems) matrix")
    return m


def _bootstrap(index_sets: list[np.ndarray], statistic, level: float):
    """scipy's percentile bootstrap over independent index vectors (vectorized)."""
    return _stats.bootstrap(tuple(index_sets), statistic, paired=False, vectorized=True, n_resamples=RESAMPLES,
                            confidence_level=level, method="percentile", random_state=np.random.default_rng(_SEED))


def _exact(y: np.ndarray, level: float) -> Interval:
    """Clopper-Pearson with each problem as one trial (see the module docstring)."""
    problems = y.shape[1]
    mean = float(y.mean())
    k = int(round(mean * problems))
    ci = _stats.binomtest(k, problems).proportion_ci(confidence_level=level, method="exact")
    z = _stats.norm.ppf(0.5 + level / 2)
    return Interval(mean, float(ci.low), float(ci.high), (float(ci.high) - float(ci.low)) / (2 * z), level, "exact")


def interval(y, level: float = LEVEL) -> Interval:
    """Mean success of a (seeds x problems) matrix (or one run's per-problem vector); see above."""
    m = _matrix(y)
    seeds, problems = m.shape
    mean = float(m.mean())
    if np.ptp(m) == 0:
        return _exact(m, level)
    axes = [n for n in (seeds, problems) if n > 1]

    def statistic(*idx, axis=-1):
        s = idx[0] if seeds > 1 else np.zeros(idx[0].shape[:-1] + (1,), dtype=int)
        p = idx[-1] if problems > 1 else np.zeros(idx[-1].shape[:-1] + (1,), dtype=int)
        return m[s[..., :, None], p[..., None, :]].mean(axis=(-2, -1))

    res = _bootstrap([np.arange(n) for n in axes], statistic, level)
    if np.ptp(res.bootstrap_distribution) == 0:
        return _exact(m, level)
    ci = res.confidence_interval
    return Interval(mean, float(ci.low), float(ci.high), float(res.standard_error), level)


def difference(a, b, level: float = LEVEL) -> Interval:
    """mean(a) - mean(b) for two (seeds x problems) matrices on the same problems, paired on them."""
    ma, mb = _matrix(a), _matrix(b)
    if ma.shape[1] != mb.shape[1]:
        raise ValueError(f"paired results need the same problems ({ma.shape[1]} vs {mb.shape[1]})")
    estimate = float(ma.mean() - mb.mean())
    sa, sb, problems = ma.shape[0], mb.shape[0], ma.shape[1]
    if np.ptp(ma.mean(axis=0) - mb.mean(axis=0)) == 0 and np.ptp(ma) == 0 and np.ptp(mb) == 0:
        return _bound(ma, mb, level)
    sets, roles = [], []
    for role, n in (("a", sa), ("b", sb), ("p", problems)):
        if n > 1:
            sets.append(np.arange(n))
            roles.append(role)
    if not sets:
        return _bound(ma, mb, level)

    def statistic(*idx, axis=-1):
        got = dict(zip(roles, idx))
        shape = idx[0].shape[:-1]
        ia = got.get("a", np.zeros(shape + (1,), dtype=int))
        ib = got.get("b", np.zeros(shape + (1,), dtype=int))
        ip = got.get("p", np.zeros(shape + (1,), dtype=int))
        mean_a = ma[ia[..., :, None], ip[..., None, :]].mean(axis=(-2, -1))
        mean_b = mb[ib[..., :, None], ip[..., None, :]].mean(axis=(-2, -1))
        return mean_a - mean_b

    res = _bootstrap(sets, statistic, level)
    if np.ptp(res.bootstrap_distribution) == 0:
        return _bound(ma, mb, level)
    ci = res.confidence_interval
    return Interval(estimate, float(ci.low), float(ci.high), float(res.standard_error), level)


def contrast(terms: Sequence[tuple[float, object]], level: float = LEVEL) -> Interval:
    """``sum(w * mean(cell))`` over cells scored by the same runs on the same problems (the weights
    x prompt effects): each cell is a (seeds x problems) matrix, and seeds and problems are
    resampled jointly for all cells (paired on both). Without variation, the bound from each
    cell's exact interval."""
    weights = np.array([w for w, _ in terms], dtype=float)
    cells = [_matrix(c) for _, c in terms]
    if len({c.shape for c in cells}) != 1:
        raise ValueError("a contrast needs cells of the same runs on the same problems")
    combined = np.tensordot(weights, np.array(cells), axes=1)
    seeds, problems = combined.shape
    estimate = float(combined.mean())
    axes = [n for n in (seeds, problems) if n > 1]
    if axes and np.ptp(combined) > 0:
        def statistic(*idx, axis=-1):
            s = idx[0] if seeds > 1 else np.zeros(idx[0].shape[:-1] + (1,), dtype=int)
            p = idx[-1] if problems > 1 else np.zeros(idx[-1].shape[:-1] + (1,), dtype=int)
            return combined[s[..., :, None], p[..., None, :]].mean(axis=(-2, -1))

        res = _bootstrap([np.arange(n) for n in axes], statistic, level)
        if np.ptp(res.bootstrap_distribution) > 0:
            ci = res.confidence_interval
            return Interval(estimate, float(ci.low), float(ci.high), float(res.standard_error), level)
    exact = [interval(c, level) for c in cells]
    low = sum(w * (e.low if w > 0 else e.high) for w, e in zip(weights, exact))
    high = sum(w * (e.high if w > 0 else e.low) for w, e in zip(weights, exact))
    se = float(np.sqrt(sum((w * e.se) ** 2 for w, e in zip(weights, exact))))
    return Interval(estimate, float(low), float(high), se, level, "bound")


def _bound(ma: np.ndarray, mb: np.ndarray, level: float) -> Interval:
    ia, ib = interval(ma, level), interval(mb, level)
    low, high = ia.low - ib.high, ia.high - ib.low
    return Interval(ia.estimate - ib.estimate, low, high, float(np.hypot(ia.se, ib.se)), level, "bound")


def detectable_difference(se: float, alpha: float = 1 - LEVEL, power: float = 0.8) -> float:
    """Smallest true difference found with probability ``power`` by a two-sided level-``alpha`` test."""
    return float((_stats.norm.ppf(1 - alpha / 2) + _stats.norm.ppf(power)) * se)


def problems_needed(target: float, sd: float, alpha: float = 1 - LEVEL, power: float = 0.8) -> int:
    """Problems for :func:`detectable_difference` to reach ``target`` when per-problem paired
    differences have standard deviation ``sd``: ``((z_{1-alpha/2} + z_power) * sd / target)^2``."""
    if target <= 0 or sd < 0:
        raise ValueError("a target difference > 0 and a standard deviation >= 0 are needed")
    z = _stats.norm.ppf(1 - alpha / 2) + _stats.norm.ppf(power)
    return max(1, int(np.ceil((z * sd / target) ** 2)))


def change(earlier: Sequence[float], later: Sequence[float], level: float = LEVEL) -> Interval:
    """mean(later) - mean(earlier), each a set of independent clusters (say, per-problem training
    success of a curve's first and last iterations), with the two sets resampled apart."""
    a, b = np.asarray(earlier, dtype=float), np.asarray(later, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("change needs clusters on both sides")
    estimate = float(b.mean() - a.mean())
    if a.size > 1 and b.size > 1 and (np.ptp(a) > 0 or np.ptp(b) > 0):
        res = _stats.bootstrap((a, b), lambda x, y, axis=-1: y.mean(axis=axis) - x.mean(axis=axis), paired=False,
                               vectorized=True, n_resamples=RESAMPLES, confidence_level=level, method="percentile",
                               random_state=np.random.default_rng(_SEED))
        if np.ptp(res.bootstrap_distribution) > 0:
            ci = res.confidence_interval
            return Interval(estimate, float(ci.low), float(ci.high), float(res.standard_error), level)
    return _bound(b[None, :], a[None, :], level)


def tie_groups(results: Mapping[str, np.ndarray], level: float = LEVEL) -> list[list[str]]:
    """Methods in tiers, best first: each tier is the best remaining method and every remaining
    method whose paired difference from it has an interval containing 0. The level is
    Bonferroni-adjusted for the comparisons a tier makes, so a wider field is not easier to split."""
    means = {name: float(_matrix(y).mean()) for name, y in results.items()}
    remaining = sorted(results, key=lambda n: (-means[n], n))
    tiers: list[list[str]] = []
    while remaining:
        leader, rest = remaining[0], remaining[1:]
        adjusted = 1 - (1 - level) / max(1, len(rest))
        tied = [n for n in rest if not difference(results[leader], results[n], adjusted).excludes_zero]
        tiers.append([leader, *tied])
        remaining = [n for n in rest if n not in tied]
    return tiers


def pooled_se(intervals: Sequence[Interval]) -> float:
    """Root mean square of standard errors (one method's typical uncertainty in a field)."""
    ses = [i.se for i in intervals]
    return float(np.sqrt(np.mean(np.square(ses)))) if ses else float("nan")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), for n samples with c correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)
