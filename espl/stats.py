"""Intervals, paired comparisons and tiers that respect how results are made.

A result is a matrix ``Y[s, p]``: the success of run (seed) ``s`` on test problem ``p``, averaged
over that problem's samples. Samples of one problem are not independent (the problem is easy or
hard for this policy), so the unit is the problem, never the episode; runs of one method with
different seeds vary too (training is random), so seeds are a second unit, crossed with problems.
Every method of an env is evaluated on the same problems, so comparisons are paired on them; the
runs of two methods are not paired.

The model is the two-way crossed random-effects model of generalizability theory (Brennan 2001):
``Y[s, p] = mu + a_p + b_s + e_sp`` with problem, seed and residual (seed x problem interaction plus
sampling) variances. Its ANOVA mean squares estimate the variance of a mean without counting the
residual twice (a bootstrap that resamples seeds and problems independently counts it once with
each, Owen 2007). For ``sum_g w_g * mean(Y_g)`` over methods ``g`` on the same problems:

    Var = MS_D / P + sum_g w_g^2 (MS_seed,g - MS_resid,g) / (S_g P),

``MS_D`` the variance over problems of ``D_p = sum_g w_g * mean_s Y_g[s, p]``, ``MS_seed,g`` and
``MS_resid,g`` method ``g``'s seed and residual mean squares; a seed term estimated below 0 is set
to 0 (as generalizability theory does), and a method with one seed adds none: a single run's
interval is over problems only, the (paired) t interval, the same as a bootstrap over problems. The
quantile is Student's t with Satterthwaite's degrees of freedom, so a method with five seeds whose
seeds disagree gets the wide interval five seeds allow. ``tests/test_stats.py`` checks 95% coverage
by simulation from a crossed logistic model. When the data have no variation at all (every episode
failed) the interval is the exact Clopper-Pearson interval (``scipy.stats.binomtest``) that treats
each problem as a single trial; a difference of such cells takes the widest gap of their intervals.
``Interval.method`` says which was used.

* :func:`crossed`: the estimate, standard error and degrees of freedom above, vectorized over
  leading axes (so a simulation runs thousands of designs at once); the functions below use it.
* :func:`interval`, :func:`difference`, :func:`contrast`: one method's success, a paired
  difference of two methods, and a contrast of cells scored by the same runs (weights x prompt).
* :func:`detectable_difference`: the smallest true difference that test finds at ``alpha`` with
  probability ``power``, over the uncertainty of its estimated standard error and df.
* :func:`tiers`: every pair of methods tested, Holm-adjusted over all pairs (familywise error),
  shown as a compact letter display; :func:`tier_alpha` is the level at which a board states what
  it could detect.
* :func:`components` and :func:`design`: the variance components of a matrix, and the variance a
  planned design would have (``scripts/power.py``).
* :func:`change`: mean(later) - mean(earlier) for two independent sets of clusters.
* :func:`pass_at_k`: the unbiased pass@k estimator of one problem's samples.

Every function is deterministic, so a resumed run writes the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import comb, inf

import numpy as np


class _OnFirstUse:
    """A module imported when first used: the run-folder records import this one, and the GPU
    check's machine (scripts/gpu_check.py) reads them without scipy."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)


_optimize = _OnFirstUse("scipy.optimize")
_stats = _OnFirstUse("scipy.stats")

LEVEL = 0.95
ALPHA = 0.05  # familywise, for the tiers; 1 - LEVEL
RESAMPLES = 4000
_SEED = 20260201


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval, its standard error and the degrees
    of freedom of its t quantile (``inf``: normal)."""

    estimate: float
    low: float
    high: float
    se: float
    level: float = LEVEL
    method: str = "t"  # t | bootstrap (change) | exact (no variation in the data) | bound (difference of exact cells)
    df: float = inf

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def from_variation(self) -> bool:
        """False where the data did not vary and the interval is an exact bound."""
        return self.method not in ("exact", "bound")

    def to_dict(self) -> dict:
        return {"estimate": round(self.estimate, 6), "low": round(self.low, 6), "high": round(self.high, 6),
                "se": round(self.se, 6), "level": self.level, "method": self.method,
                "df": None if self.df == inf else round(self.df, 3)}

    @classmethod
    def from_dict(cls, data: Mapping) -> Interval:
        df = data.get("df")
        return cls(float(data["estimate"]), float(data["low"]), float(data["high"]), float(data["se"]),
                   float(data.get("level", LEVEL)), str(data.get("method", "bootstrap")),
                   inf if df is None else float(df))

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _matrix(y) -> np.ndarray:
    m = np.asarray(y, dtype=float)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.size == 0:
        raise ValueError("results must be a non-empty (seeds x problems) matrix")
    return m


Term = tuple[np.ndarray, float]  # (coefficient x mean square, its degrees of freedom)


@dataclass(frozen=True)
class Variance:
    """What a crossed estimate's variance is made of: ``MS_D / P`` and, per method with two seeds or
    more, ``c * MS_seed`` and ``c * MS_resid`` (``c = w^2 / (S P)``). A method whose seed mean square
    falls below its residual one has a seed component estimated at 0 (set to 0, as generalizability
    theory does, Brennan 2001) and adds nothing."""

    problem: Term
    seeds: tuple[tuple[Term, Term], ...] = ()

    def combine(self) -> tuple[np.ndarray, np.ndarray]:
        """The variance and its Satterthwaite degrees of freedom (arrays over leading axes)."""
        parts = [self.problem]
        for (seed, seed_df), (resid, resid_df) in self.seeds:
            keep = seed > resid
            parts += [(np.where(keep, seed, 0.0), seed_df), (np.where(keep, -resid, 0.0), resid_df)]
        return _satterthwaite(parts)

    def expected(self) -> Variance:
        """The mean squares' expectations under components floored at 0 (a seed mean square at least
        the residual one, ``MS_D`` at least the residual it holds), for power computations."""
        floor = sum((resid for _, (resid, _) in self.seeds), np.zeros_like(self.problem[0]))
        seeds = tuple(((np.maximum(seed, resid), sdf), (resid, rdf)) for (seed, sdf), (resid, rdf) in self.seeds)
        return Variance((np.maximum(self.problem[0], floor), self.problem[1]), seeds)

    def average(self) -> Variance:
        """Each mean square averaged over the leading axes (a simulation's expected mean squares)."""
        return Variance((np.asarray(np.mean(self.problem[0])), self.problem[1]),
                        tuple(((np.asarray(np.mean(s)), sdf), (np.asarray(np.mean(r)), rdf))
                              for (s, sdf), (r, rdf) in self.seeds))


@dataclass(frozen=True)
class Estimate:
    """:func:`crossed`'s result: arrays over the leading axes of its inputs."""

    estimate: np.ndarray
    se: np.ndarray
    df: np.ndarray
    variance: Variance

    def half_width(self, level: float = LEVEL) -> np.ndarray:
        """Half the width of the two-sided t interval at ``level``."""
        return _stats.t.ppf(0.5 + level / 2, self.df) * self.se


def _mean_squares(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Seed and residual mean squares of ``y`` (..., S, P), S > 1 and P > 1."""
    seeds, problems = y.shape[-2:]
    rows, cols = y.mean(-1, keepdims=True), y.mean(-2, keepdims=True)
    grand = y.mean((-2, -1), keepdims=True)
    seed = problems * ((rows - grand) ** 2).sum((-2, -1)) / (seeds - 1)
    resid = ((y - rows - cols + grand) ** 2).sum((-2, -1)) / ((seeds - 1) * (problems - 1))
    return seed, resid


def _satterthwaite(parts: list[Term]) -> tuple[np.ndarray, np.ndarray]:
    """``sum(c * MS)`` and its Satterthwaite degrees of freedom, from (``c * MS``, df) terms."""
    var = np.asarray(sum(term for term, _ in parts))  # terms broadcast against each other
    spread = np.asarray(sum(term**2 / df for term, df in parts))
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(spread > 0, var**2 / np.where(spread > 0, spread, 1.0), inf)
    return var, df


def crossed(terms: Sequence[tuple[float, object]]) -> Estimate:
    """``sum(w * mean(Y))`` over methods on the same problems, with its variance-components standard
    error and degrees of freedom (the module docstring). Each ``Y`` is (..., seeds, problems); the
    leading axes (replications of a simulation) broadcast."""
    mats = [(float(w), np.asarray(y, dtype=float)) for w, y in terms]
    problems = mats[0][1].shape[-1]
    if problems < 2 or any(y.shape[-1] != problems for _, y in mats):
        raise ValueError("a crossed estimate needs two problems or more, the same in every term")
    per_problem = sum(w * y.mean(-2) for w, y in mats)
    seeds = []
    for w, y in mats:
        n = y.shape[-2]
        if n > 1:
            seed, resid = _mean_squares(y)
            c = w * w / (n * problems)
            seeds.append(((c * seed, n - 1), (c * resid, (n - 1) * (problems - 1))))
    variance = Variance((per_problem.var(-1, ddof=1) / problems, problems - 1), tuple(seeds))
    var, df = variance.combine()
    return Estimate(per_problem.mean(-1), np.sqrt(np.maximum(var, 0.0)), df, variance)


def _t_interval(est: Estimate, level: float, bounds: tuple[float, float]) -> Interval | None:
    """The t interval of a 2-D :func:`crossed` result, clipped to the parameter's range; None when
    the standard error is 0 (no variation to estimate from)."""
    if not float(est.se) > 0:
        return None
    mid, half = float(est.estimate), float(est.half_width(level))
    low, high = max(bounds[0], mid - half), min(bounds[1], mid + half)
    return Interval(mid, low, high, float(est.se), level, "t", float(est.df))


def _exact(y: np.ndarray, level: float) -> Interval:
    """Clopper-Pearson with each problem as one trial (see the module docstring)."""
    problems = y.shape[1]
    mean = float(y.mean())
    k = int(round(mean * problems))
    ci = _stats.binomtest(k, problems).proportion_ci(confidence_level=level, method="exact")
    z = _stats.norm.ppf(0.5 + level / 2)
    return Interval(mean, float(ci.low), float(ci.high), (float(ci.high) - float(ci.low)) / (2 * z), level, "exact")


def _bound(ma: np.ndarray, mb: np.ndarray, level: float) -> Interval:
    ia, ib = interval(ma, level), interval(mb, level)
    low, high = ia.low - ib.high, ia.high - ib.low
    return Interval(ia.estimate - ib.estimate, low, high, float(np.hypot(ia.se, ib.se)), level, "bound")


def interval(y, level: float = LEVEL) -> Interval:
    """Mean success of a (seeds x problems) matrix (or one run's per-problem vector); see above."""
    m = _matrix(y)
    if np.ptp(m) == 0 or m.shape[1] < 2:
        return _exact(m, level)
    return _t_interval(crossed([(1.0, m)]), level, (0.0, 1.0)) or _exact(m, level)


def difference(a, b, level: float = LEVEL) -> Interval:
    """mean(a) - mean(b) for two (seeds x problems) matrices on the same problems, paired on them."""
    ma, mb = _matrix(a), _matrix(b)
    if ma.shape[1] != mb.shape[1]:
        raise ValueError(f"paired results need the same problems ({ma.shape[1]} vs {mb.shape[1]})")
    if ma.shape[1] < 2:
        return _bound(ma, mb, level)
    return _t_interval(crossed([(1.0, ma), (-1.0, mb)]), level, (-1.0, 1.0)) or _bound(ma, mb, level)


def contrast(terms: Sequence[tuple[float, object]], level: float = LEVEL) -> Interval:
    """``sum(w * mean(cell))`` over cells scored by the same runs on the same problems (the weights
    x prompt effects): each cell is a (seeds x problems) matrix, paired on seeds and problems, so
    the contrast is the mean of one combined matrix. Without variation, the bound from each
    cell's exact interval."""
    weights = np.array([w for w, _ in terms], dtype=float)
    cells = [_matrix(c) for _, c in terms]
    if len({c.shape for c in cells}) != 1:
        raise ValueError("a contrast needs cells of the same runs on the same problems")
    combined = np.tensordot(weights, np.array(cells), axes=1)
    reach = float(np.abs(weights).sum())
    if combined.shape[1] > 1 and np.ptp(combined) > 0:
        found = _t_interval(crossed([(1.0, combined)]), level, (-reach, reach))
        if found is not None:
            return found
    exact = [interval(c, level) for c in cells]
    low = sum(w * (e.low if w > 0 else e.high) for w, e in zip(weights, exact))
    high = sum(w * (e.high if w > 0 else e.low) for w, e in zip(weights, exact))
    se = float(np.sqrt(sum((w * e.se) ** 2 for w, e in zip(weights, exact))))
    return Interval(float(combined.mean()), float(low), float(high), se, level, "bound")


def p_value(estimate, se, df):
    """Two-sided p-value of ``estimate = 0`` from a t statistic (vectorized); 1 where se is 0."""
    estimate, se = np.asarray(estimate, dtype=float), np.asarray(se, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, np.abs(estimate) / np.where(se > 0, se, 1.0), 0.0)
    return 2 * _stats.t.sf(t, df)


def _drawn(variance: Variance, rng: np.random.Generator, draws: int) -> Variance:
    """Each mean square drawn as its expectation times a chi-square over its df (normal theory)."""
    def draw(term: Term) -> Term:
        value, df = term
        return float(value) * rng.chisquare(df, draws) / df, df

    return Variance(draw(variance.problem), tuple((draw(s), draw(r)) for s, r in variance.seeds))


def detectable_difference(variance: Variance, alpha: float = ALPHA, power: float = 0.8, draws: int = 20000) -> float:
    """Smallest true difference that the two-sided level-``alpha`` t test of :func:`crossed` finds
    with probability ``power`` when its mean squares have the expectations ``variance`` holds
    (:meth:`Variance.expected` of the data, or :func:`design`). The test estimates its own standard
    error and degrees of freedom, which few seeds make uncertain, so the power is computed over that
    uncertainty (fixed draws): a noncentral t at the estimated df would overstate it. ``nan`` when
    the variance is not > 0; ``inf`` when no difference reaches ``power``."""
    var = float(variance.combine()[0])
    if not var > 0:
        return float("nan")
    est_var, est_df = _drawn(variance, np.random.default_rng(_SEED), draws).combine()
    ok = est_var > 0  # otherwise the interval is an exact bound, which this does not model: no detection
    if ok.mean() < power:
        return inf
    quantile = _stats.t.ppf(1 - alpha / 2, np.where(ok, est_df, 1.0))
    reach = np.where(ok, quantile * np.sqrt(np.where(ok, est_var, 0.0)), inf)  # |estimate| needed to reject
    sd = np.sqrt(var)

    def shortfall(delta: float) -> float:
        return float(np.mean(_stats.norm.sf((reach - delta) / sd) + _stats.norm.cdf((-reach - delta) / sd))) - power

    high = sd
    while shortfall(high) < 0:
        high *= 2
    return float(_optimize.brentq(shortfall, 0.0, high, xtol=1e-6 * sd))


@dataclass(frozen=True)
class VarianceComponents:
    """The crossed model's variances of one (seeds x problems) matrix (ANOVA estimates, floored at 0)."""

    seed: float  # a method's true success from seed to seed (what training or evolution does per seed)
    problem: float
    residual: float  # seed x problem interaction plus the sampling noise of a problem's samples


def components(y) -> VarianceComponents:
    """Variance components of a matrix with two seeds and two problems or more."""
    m = _matrix(y)
    seeds, problems = m.shape
    if seeds < 2 or problems < 2:
        raise ValueError("variance components need two seeds and two problems or more")
    seed, resid = (float(x) for x in _mean_squares(m))
    problem_ms = seeds * float(m.mean(0).var(ddof=1))
    return VarianceComponents(max(0.0, (seed - resid) / problems), max(0.0, (problem_ms - resid) / seeds), resid)


def design(parts: Sequence[VarianceComponents], seeds: int, problems: int, problem_difference: float = 0.0) -> Variance:
    """The expected mean squares of a paired difference of two methods (``parts``: each method's
    components), each run with ``seeds`` seeds on the same ``problems``: the planning form of
    :func:`crossed`, for :func:`detectable_difference`. ``problem_difference``: the variance over
    problems of the two methods' true difference (0: the methods find the same problems hard)."""
    ms_d = problem_difference + sum(c.residual for c in parts) / seeds
    k = 1 / (seeds * problems)
    per_method = tuple(((np.array(k * (c.residual + problems * c.seed)), seeds - 1),
                        (np.array(k * c.residual), (seeds - 1) * (problems - 1))) for c in parts) if seeds > 1 else ()
    return Variance((np.array(ms_d / problems), problems - 1), per_method)


def tier_alpha(methods: int, alpha: float = ALPHA) -> float:
    """The per-pair level at which a board states what it could detect: Holm's first step over all
    ``methods * (methods - 1) / 2`` pairs (a pair with a true difference detectable at this level is
    separated with at least that power whatever the other pairs do)."""
    return alpha / max(1, methods * (methods - 1) // 2)


def holm(p) -> np.ndarray:
    """Holm-adjusted p-values over the last axis (vectorized): a pair is separated at familywise
    level alpha when its adjusted p-value is at most alpha. (A few lines, so no statsmodels.)"""
    p = np.asarray(p, dtype=float)
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, -1) * (m - np.arange(m))
    adjusted = np.minimum(1.0, np.maximum.accumulate(ranked, axis=-1))
    out = np.empty_like(adjusted)
    np.put_along_axis(out, order, adjusted, -1)
    return out


def letters(order: Sequence[str], separated: set[frozenset[str]]) -> dict[str, str]:
    """Compact letter display (Piepho 2004, insert and absorb): methods that share a letter are not
    separated, every separated pair shares none. ``order``: best first; letters follow it."""
    columns: list[set[str]] = [set(order)]
    for pair in separated:
        split = []
        for col in columns:
            if pair <= col:
                split += [col - {x} for x in pair]
            else:
                split.append(col)
        columns = [c for c in split if c and not any(c < other for other in split)]
        columns = [c for i, c in enumerate(columns) if c not in columns[:i]]
    rank = {name: i for i, name in enumerate(order)}
    columns.sort(key=lambda c: sorted(rank[n] for n in c))
    return {n: "".join(chr(ord("a") + i) for i, c in enumerate(columns) if n in c) for n in order}


@dataclass(frozen=True)
class PairTest:
    """``a`` minus ``b`` (the better-scoring first), paired on problems: its unadjusted interval,
    its p-value, its Holm-adjusted p-value over all pairs, whether that separates the two, and the
    smallest true difference it would detect at :func:`tier_alpha` (None without variation)."""

    a: str
    b: str
    difference: Interval
    p: float
    adjusted: float
    separated: bool
    detectable: float | None


@dataclass(frozen=True)
class Tiers:
    """Every pair tested, and the compact letter display of what they separate."""

    pairs: tuple[PairTest, ...]
    letters: Mapping[str, str]
    alpha: float  # familywise

    @property
    def pair_alpha(self) -> float:
        return tier_alpha(len(self.letters), self.alpha)


def _pair_p(ma: np.ndarray, mb: np.ndarray, d: Interval) -> float:
    """p-value of a difference; for an exact bound (no variation), the smallest level at which the
    bound excludes 0."""
    if d.method == "t":
        return float(p_value(d.estimate, d.se, d.df))

    def margin(alpha: float) -> float:  # > 0 once the (1 - alpha) bound excludes 0; grows with alpha
        bound = _bound(ma, mb, 1 - alpha)
        return bound.low if d.estimate > 0 else -bound.high

    tiny, most = 1e-12, 1 - 1e-9
    if d.estimate == 0 or margin(most) <= 0:
        return 1.0
    return tiny if margin(tiny) > 0 else float(_optimize.brentq(margin, tiny, most))


def tiers(results: Mapping[str, object], alpha: float = ALPHA, level: float = LEVEL) -> Tiers:
    """Paired tests of every pair of methods (each a seeds x problems matrix on the same problems),
    Holm-adjusted so that the chance of separating any two equal methods is at most ``alpha``, and
    the letters (best mean first). Intervals are unadjusted, at ``level``."""
    mats = {name: _matrix(y) for name, y in results.items()}
    order = sorted(mats, key=lambda n: (-float(mats[n].mean()), n))
    per_pair = tier_alpha(len(order), alpha)
    raw = []
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            d = difference(mats[a], mats[b], level)
            pair = crossed([(1.0, mats[a]), (-1.0, mats[b])])
            detectable = detectable_difference(pair.variance.expected(), per_pair) if d.method == "t" else None
            raw.append((a, b, d, _pair_p(mats[a], mats[b], d), detectable))
    adjusted = holm([r[3] for r in raw]) if raw else np.zeros(0)
    pairs = tuple(PairTest(a, b, d, p, float(q), bool(q <= alpha), det) for (a, b, d, p, det), q in zip(raw, adjusted))
    return Tiers(pairs, letters(order, {frozenset((t.a, t.b)) for t in pairs if t.separated}), alpha)


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
            return Interval(estimate, float(ci.low), float(ci.high), float(res.standard_error), level, "bootstrap")
    return _bound(b[None, :], a[None, :], level)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), for n samples with c correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)
