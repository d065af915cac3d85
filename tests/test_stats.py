"""Intervals, paired comparisons and tiers (espl_bench.stats): against scipy.stats on known data,
and by simulation from a known crossed model (problems x seeds, binary outcomes)."""

import numpy as np
import pytest
from scipy import optimize
from scipy import stats as sp
from scipy.special import expit

from espl_bench import stats


def test_one_run_interval_is_the_t_interval_over_problem_means():
    rng = np.random.default_rng(1)
    per_problem = rng.binomial(4, rng.beta(2, 3, size=300), size=300) / 4
    ours = stats.interval(per_problem)
    ci = sp.ttest_1samp(per_problem, 0).confidence_interval(0.95)
    assert ours.estimate == pytest.approx(per_problem.mean())
    assert (ours.low, ours.high, ours.se) == pytest.approx((ci.low, ci.high, sp.sem(per_problem)))
    assert ours.method == "t" and ours.df == 299


def test_paired_difference_of_single_runs_is_scipys_paired_t_interval():
    rng = np.random.default_rng(2)
    p = rng.beta(2, 2, size=400)
    a = rng.binomial(8, np.clip(p + 0.1, 0, 1)) / 8
    b = rng.binomial(8, p) / 8
    ours = stats.difference(a, b)
    ci = sp.ttest_rel(a, b).confidence_interval(0.95)
    assert ours.estimate == pytest.approx(a.mean() - b.mean())
    assert (ours.low, ours.high) == pytest.approx((ci.low, ci.high))
    assert ours.excludes_zero


def test_no_variation_gives_the_exact_interval_over_problems_not_a_point():
    zeros = np.zeros((1, 8))
    ours = stats.interval(zeros)
    exact = sp.binomtest(0, 8).proportion_ci(0.95, method="exact")
    assert (ours.low, ours.high, ours.method) == (0.0, pytest.approx(exact.high), "exact")
    # 8 problems x 4 identical samples are 8 trials, not 32
    assert stats.interval(np.zeros((1, 8))).high == pytest.approx(stats.interval(np.zeros((3, 8))).high)
    diff = stats.difference(zeros, zeros)
    assert diff.method == "bound" and diff.low == pytest.approx(-exact.high) and diff.high == pytest.approx(exact.high)


def test_samples_of_one_problem_are_not_independent():
    # every problem is all-or-nothing for this policy: 4 samples per problem say no more than 1
    rng = np.random.default_rng(3)
    solved = rng.random(40) < 0.5
    interval = stats.interval(solved.astype(float))
    naive_se = np.sqrt(solved.mean() * (1 - solved.mean()) / (40 * 4))  # 160 "independent" episodes
    assert interval.se > 1.8 * naive_se


def test_seeds_are_a_second_source_of_variance():
    rng = np.random.default_rng(4)
    base = rng.beta(2, 2, size=30)
    offsets = np.array([-0.2, 0.0, 0.2])[:, None]  # training made the three seeds differ
    runs = np.clip(base[None, :] + offsets, 0, 1)
    two_way = stats.interval(runs)
    problems_only = stats.interval(runs.mean(axis=0))
    assert two_way.estimate == pytest.approx(problems_only.estimate)
    assert two_way.high - two_way.low > 1.5 * (problems_only.high - problems_only.low)
    assert two_way.df < 5  # three seeds: the quantile is a t with few degrees of freedom, not the normal


def test_the_seed_x_problem_residual_is_counted_once():
    # Pure residual (no seed or problem effect): Var(mean) = p (1 - p) / (S P). A bootstrap that
    # resamples seeds and problems independently counts the residual with each: about sqrt(2) times
    # the standard error. (The seed component, estimated at 0 when its mean square falls below the
    # residual's, is kept otherwise, so the estimate is a little above the truth, never twice it.)
    rng = np.random.default_rng(8)
    runs = (rng.random((400, 5, 300)) < 0.15).astype(float)
    truth = np.sqrt(0.15 * 0.85 / 1500)
    se = stats.crossed([(1.0, runs)]).se
    assert np.median(se) == pytest.approx(truth, rel=0.06) and np.sqrt(np.mean(se**2)) < 1.2 * truth
    y = runs[0]

    def mean(s, p, axis=-1):
        return y[s[..., :, None], p[..., None, :]].mean(axis=(-2, -1))

    two_way = sp.bootstrap((np.arange(5), np.arange(300)), mean, paired=False, vectorized=True, n_resamples=2000,
                           random_state=np.random.default_rng(0))
    assert two_way.standard_error > 1.35 * truth


def crossed_model(rng, reps: int, seeds: int, problems: int, samples: int, logits, problem_sd: float = 1.5,
                  seed_sd: float = 0.3, interaction_sd: float = 0.5) -> list[np.ndarray]:
    """(reps, seeds, problems) success rates of methods with these logits: a problem effect shared by
    the methods, a seed effect and a seed x problem interaction per method, binomial samples."""
    problem = rng.normal(0, problem_sd, (reps, 1, problems))
    out = []
    for logit in logits:
        eta = (logit + problem + rng.normal(0, seed_sd, (reps, seeds, 1))
               + rng.normal(0, interaction_sd, (reps, seeds, problems)))
        out.append(rng.binomial(samples, expit(eta)) / samples)
    return out


def true_success(logit: float, problem_sd: float = 1.5, seed_sd: float = 0.3, interaction_sd: float = 0.5) -> float:
    """A method's success over the populations of problems and seeds (Gauss-Hermite quadrature)."""
    x, w = np.polynomial.hermite_e.hermegauss(80)
    sd = np.sqrt(problem_sd**2 + seed_sd**2 + interaction_sd**2)
    return float((w * expit(logit + sd * x)).sum() / w.sum())


# 2000 replications: a coverage of 95% is estimated with a binomial sd of 0.49 points, so the
# 93-97% band is four sd either side (a correct interval fails it with probability < 1e-4, one
# that covers 92% fails it with probability 0.98).
REPS = 2000
# (seeds, problems, samples, logit, seed sd); one run says nothing about other seeds, so its
# interval is for that run's success: the design without a seed effect.
DESIGNS = {"letter counting: 5 seeds x 300 problems x 1 sample": (5, 300, 1, -2.0, 0.3),
           "4 samples: 5 seeds x 100 problems x 4 samples": (5, 100, 4, -1.0, 0.3),
           "one run: 1 seed x 300 problems x 1 sample": (1, 300, 1, -2.0, 0.0)}


@pytest.mark.parametrize("design", DESIGNS)
def test_intervals_cover_the_truth_95_percent_of_the_time(design):
    seeds, problems, samples, logit, seed_sd = DESIGNS[design]
    rng = np.random.default_rng(11)
    a, b = crossed_model(rng, REPS, seeds, problems, samples, (logit + 0.3, logit), seed_sd=seed_sd)
    truth_a, truth_b = true_success(logit + 0.3, seed_sd=seed_sd), true_success(logit, seed_sd=seed_sd)
    success = stats.crossed([(1.0, a)])
    paired = stats.crossed([(1.0, a), (-1.0, b)])
    assert 0.93 <= np.mean(np.abs(success.estimate - truth_a) <= success.half_width()) <= 0.97
    assert 0.93 <= np.mean(np.abs(paired.estimate - (truth_a - truth_b)) <= paired.half_width()) <= 0.97
    # the interval functions are these numbers on one matrix
    one = stats.difference(a[0], b[0])
    assert (one.estimate, one.high - one.estimate) == pytest.approx((paired.estimate[0], paired.half_width()[0]))


@pytest.mark.parametrize("design", DESIGNS)
def test_the_stated_detectable_difference_is_detected_80_percent_of_the_time(design):
    """At the level the tiers state it (Holm's first step over the 10 pairs of five methods). The
    stated number depends on the variance where the methods are, so the true difference is set to
    what the board states there (two fixed-point steps from the null)."""
    seeds, problems, samples, logit, seed_sd = DESIGNS[design]
    alpha = stats.tier_alpha(5)
    rng = np.random.default_rng(12)

    def gap(h: float) -> float:
        return true_success(logit + h, seed_sd=seed_sd) - true_success(logit - h, seed_sd=seed_sd)

    half = 0.0
    for _ in range(3):
        a, b = crossed_model(rng, REPS, seeds, problems, samples, (logit + half, logit - half), seed_sd=seed_sd)
        paired = stats.crossed([(1.0, a), (-1.0, b)])
        detected = np.mean(stats.p_value(paired.estimate, paired.se, paired.df) < alpha)
        truth = gap(half)
        stated = stats.detectable_difference(paired.variance.expected().average(), alpha)
        half = optimize.brentq(lambda h, stated=stated: gap(h) - stated, 0, 5)
    assert truth == pytest.approx(stated, rel=0.05)  # the last step set the truth to what is stated
    assert 0.75 <= detected <= 0.85


def test_detectable_difference_is_the_normal_power_formula_when_the_variance_is_known():
    known = stats.detectable_difference(stats.Variance((0.05**2, 1e9)))
    assert known == pytest.approx((sp.norm.ppf(0.975) + sp.norm.ppf(0.8)) * 0.05, rel=0.01)
    assert stats.detectable_difference(stats.Variance((0.05**2, 1e9)), power=0.9) > known
    # the same variance estimated from few seeds needs a larger difference, and more so at a smaller level
    few = stats.Variance((0.02**2, 1e9), (((0.0022, 4), (0.01**2, 4000)),))
    assert few.combine()[0] == pytest.approx(0.05**2, rel=0.01)
    assert stats.detectable_difference(few) > 1.2 * known
    assert stats.detectable_difference(few, alpha=0.005) > 1.3 * stats.detectable_difference(few)


def test_design_is_what_crossed_estimates_on_average():
    rng = np.random.default_rng(9)
    seeds, problems = 4, 200
    problem = rng.normal(0, 0.3, (3000, 1, problems))
    runs = [problem + rng.normal(0, sd, (3000, seeds, 1)) + rng.normal(0, 0.4, (3000, seeds, problems))
            for sd in (0.05, 0.02)]
    parts = [stats.VarianceComponents(seed=sd**2, problem=0.09, residual=0.16) for sd in (0.05, 0.02)]
    planned = float(stats.design(parts, seeds, problems).combine()[0])
    measured = stats.crossed([(1.0, runs[0]), (-1.0, runs[1])])
    assert planned == pytest.approx(np.mean(measured.se**2), rel=0.05)
    assert planned == pytest.approx(np.var(measured.estimate), rel=0.1)
    found = stats.components(runs[0][0])
    assert found.residual == pytest.approx(0.16, rel=0.1) and found.problem == pytest.approx(0.09, rel=0.3)


def test_holm_adjusts_every_pair():
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([[0.5, 0.001]]).tolist() == [[0.5, 0.002]]  # vectorized over leading axes


def test_letters_overlap_where_the_data_do_not_separate():
    assert stats.letters(["A", "B", "C"], {frozenset("AC")}) == {"A": "a", "B": "ab", "C": "b"}
    assert stats.letters(["A", "B", "C"], set()) == {"A": "a", "B": "a", "C": "a"}
    everything = {frozenset(p) for p in ("AB", "AC", "BC")}
    assert stats.letters(["A", "B", "C"], everything) == {"A": "a", "B": "b", "C": "c"}


def test_tiers_on_a_known_ordering():
    rng = np.random.default_rng(5)
    a, b, c, d = crossed_model(rng, 1, 4, 200, 2, (1.0, -0.5, -2.0, -2.0), seed_sd=0.1)
    found = stats.tiers({"best": a[0], "middle": b[0], "low": c[0], "also low": d[0]})
    assert found.letters["best"] == "a" and found.letters["middle"] == "b"
    assert found.letters["low"] == found.letters["also low"] == "c"
    assert len(found.pairs) == 6 and found.pair_alpha == pytest.approx(0.05 / 6)
    assert {(t.a, t.b) for t in found.pairs if not t.separated} <= {("low", "also low"), ("also low", "low")}
    assert all(t.detectable is not None and t.detectable > 0 for t in found.pairs)
    same = np.zeros((1, 8))
    assert set(stats.tiers({"x": same, "y": same, "z": same}).letters.values()) == {"a"}


def test_tiers_keep_the_familywise_error_of_equal_methods_near_the_level():
    methods, reps = 5, 1000
    rng = np.random.default_rng(6)
    runs = crossed_model(rng, reps, 4, 100, 1, (-2.0,) * methods)
    p = [stats.p_value(*(lambda e: (e.estimate, e.se, e.df))(stats.crossed([(1.0, runs[i]), (-1.0, runs[j])])))
         for i in range(methods) for j in range(i + 1, methods)]
    separated_any = (stats.holm(np.stack(p, -1)) <= 0.05).any(-1)
    unadjusted_any = (np.stack(p, -1) <= 0.05).any(-1)
    assert np.mean(separated_any) <= 0.065  # 5% familywise (binomial sd 0.7 points over 1000 replications)
    assert np.mean(unadjusted_any) > 0.1  # what ten unadjusted tests would claim


def test_contrast_pairs_cells_of_the_same_runs():
    rng = np.random.default_rng(6)
    root = rng.binomial(4, 0.3, size=(2, 50)) / 4
    program = np.clip(root + 0.25, 0, 1)  # the same problems, each improved
    effect = stats.contrast([(1, program), (-1, root)])
    assert effect.estimate == pytest.approx((program - root).mean()) and effect.low > 0
    with pytest.raises(ValueError, match="same runs"):
        stats.contrast([(1, program), (-1, root[:, :10])])


def test_intervals_round_trip_and_are_deterministic():
    y = np.random.default_rng(7).random((2, 20))
    assert stats.interval(y) == stats.interval(y)
    assert stats.difference(y, y[::-1]) == stats.difference(y, y[::-1])
    i = stats.interval(y)
    rounded = stats.Interval(*(round(x, 6) for x in (i.estimate, i.low, i.high, i.se)), i.level, i.method, round(i.df, 3))
    assert stats.Interval.from_dict(i.to_dict()) == rounded
