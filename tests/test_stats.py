"""Intervals and paired comparisons (espl_bench.stats) against scipy.stats on known data."""

import numpy as np
import pytest
from espl_bench import stats
from scipy import stats as sp


def test_one_run_interval_matches_the_t_interval_over_problem_means():
    rng = np.random.default_rng(1)
    per_problem = rng.binomial(4, rng.beta(2, 3, size=300), size=300) / 4
    ours = stats.interval(per_problem)
    ci = sp.ttest_1samp(per_problem, 0).confidence_interval(0.95)
    assert ours.estimate == pytest.approx(per_problem.mean())
    assert ours.low == pytest.approx(ci.low, abs=0.01) and ours.high == pytest.approx(ci.high, abs=0.01)
    assert ours.se == pytest.approx(sp.sem(per_problem), rel=0.1) and ours.method == "bootstrap"


def test_paired_difference_matches_scipys_paired_t_interval():
    rng = np.random.default_rng(2)
    p = rng.beta(2, 2, size=400)
    a = rng.binomial(8, np.clip(p + 0.1, 0, 1)) / 8
    b = rng.binomial(8, p) / 8
    ours = stats.difference(a, b)
    ci = sp.ttest_rel(a, b).confidence_interval(0.95)
    assert ours.estimate == pytest.approx(a.mean() - b.mean())
    assert ours.low == pytest.approx(ci.low, abs=0.01) and ours.high == pytest.approx(ci.high, abs=0.01)
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


def test_detectable_difference_is_the_normal_power_formula():
    assert stats.detectable_difference(0.05) == pytest.approx((sp.norm.ppf(0.975) + sp.norm.ppf(0.8)) * 0.05)
    assert stats.detectable_difference(0.05, power=0.9) > stats.detectable_difference(0.05)


def test_tie_groups_separate_only_what_the_data_separates():
    rng = np.random.default_rng(5)
    strong = rng.binomial(4, 0.9, size=(3, 60)) / 4
    weak = rng.binomial(4, 0.2, size=(3, 60)) / 4
    also_weak = rng.binomial(4, 0.2, size=(3, 60)) / 4
    tiers = stats.tie_groups({"a": strong, "b": weak, "c": also_weak})
    assert tiers[0] == ["a"] and sorted(tiers[1]) == ["b", "c"]
    same = np.zeros((1, 8))
    assert stats.tie_groups({"x": same, "y": same, "z": same}) == [["x", "y", "z"]]


def test_contrast_pairs_cells_of_the_same_runs():
    rng = np.random.default_rng(6)
    root = rng.binomial(4, 0.3, size=(2, 50)) / 4
    program = np.clip(root + 0.25, 0, 1)  # the same problems, each improved
    effect = stats.contrast([(1, program), (-1, root)])
    assert effect.estimate == pytest.approx((program - root).mean()) and effect.low > 0
    with pytest.raises(ValueError, match="same runs"):
        stats.contrast([(1, program), (-1, root[:, :10])])


def test_results_are_deterministic():
    y = np.random.default_rng(7).random((2, 20))
    assert stats.interval(y) == stats.interval(y)
    assert stats.difference(y, y[::-1]) == stats.difference(y, y[::-1])
