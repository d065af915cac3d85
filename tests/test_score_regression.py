"""Score regression (bench compare) and the versioned suite."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from espl_bench.config import RunConfig
from espl_bench.leaderboards.regression import (
    ScoreFileError,
    ScoreRecord,
    compare,
    compare_files,
    dump_scores,
    load_scores,
    render_table,
)
from espl_bench.leaderboards.suite import SUITE_VERSION, SUITES, SuiteId, get_suite

A = SuiteId("espl/Arithmetic-v0", "espl", "smollm2-135m", 0, "smoke")
B = SuiteId("espl/Arithmetic-v0", "rl", "smollm2-135m", 0, "smoke")
C = SuiteId("espl/ToolUse-v0", "espl", "smollm2-135m", 1, "small")


def rec(suite_id: SuiteId, rates, samples: int = 4, seed: int = 0) -> ScoreRecord:
    """Outcomes drawn per problem from its own success rate (so samples of a problem are correlated)."""
    rng = np.random.default_rng(seed)
    rates = np.atleast_1d(rates)
    outcomes = tuple(tuple(int(x) for x in rng.random(samples) < p) for p in rates)
    return ScoreRecord(suite_id, tuple(f"test/{i}" for i in range(len(rates))), outcomes)


def clustered(n: int = 60, seed: int = 0) -> np.ndarray:
    """Per-problem success rates of a policy: most problems always or never solved."""
    return np.random.default_rng(seed).beta(0.4, 0.4, size=n)


def test_a_real_drop_fails_and_noise_on_clustered_problems_passes(caplog):
    p = clustered()
    # the same policy with fresh samples: a false alarm at most about as often as the 5% level allows
    alarms = sum(not compare([rec(A, p, seed=1000 + k)], [rec(A, p, seed=k)]).passed for k in range(100))
    assert alarms <= 8
    # a real drop of 0.3 on every problem is caught every time
    drops = [compare([rec(A, np.clip(p - 0.3, 0, 1), seed=1000 + k)], [rec(A, p, seed=k)]) for k in range(20)]
    assert all(not r.passed and r.comparisons[0].status == "regressed" for r in drops)
    baseline = [rec(A, p, seed=1), rec(B, p, seed=2)]
    with caplog.at_level(logging.WARNING, logger="espl_bench.leaderboards"):
        dropped = compare([rec(A, np.clip(p - 0.3, 0, 1), seed=3), rec(B, p, seed=2)], baseline)
    assert [c.status for c in dropped.comparisons] == ["regressed", "ok"] and [c.suite_id for c in dropped.failures] == [A]
    assert dropped.comparisons[0].delta < -0.15 and dropped.comparisons[0].difference.high < 0
    assert "espl/Arithmetic-v0 espl" in caplog.text
    better = compare([rec(A, np.clip(p + 0.3, 0, 1), seed=3)], baseline[:1])
    assert better.passed and better.comparisons[0].status == "improved"


def test_the_comparison_is_paired_on_problems_and_matches_scipy():
    from scipy import stats as sp

    p = clustered(200, seed=5)
    base, cur = rec(A, p, samples=8, seed=6), rec(A, np.clip(p - 0.05, 0, 1), samples=8, seed=7)
    c = compare([cur], [base]).comparisons[0]
    old, new = np.array(list(base.rates().values())), np.array(list(cur.rates().values()))
    ci = sp.ttest_rel(new, old).confidence_interval(0.95)
    assert c.difference.estimate == pytest.approx(new.mean() - old.mean())
    assert c.difference.low == pytest.approx(ci.low, abs=0.01) and c.difference.high == pytest.approx(ci.high, abs=0.01)


def test_the_floor_absorbs_tiny_real_drops():
    base = ScoreRecord(A, tuple(f"t{i}" for i in range(400)), tuple((1, 1, 1, 1) for _ in range(400)))
    cur = ScoreRecord(A, base.problems, tuple((1, 1, 1, 0) if i < 24 else (1, 1, 1, 1) for i in range(400)))
    c = compare([cur], [base]).comparisons[0]
    assert c.delta == pytest.approx(-0.015) and c.difference.high < 0 and c.status == "ok"  # real, but under the floor
    assert not compare([cur], [base], floor=0.0).passed


def test_missing_incomparable_and_new_entries():
    p = clustered(20)
    other = ScoreRecord(B, ("elsewhere/0",), ((1,),))
    report = compare([rec(A, p), rec(C, p), other], [rec(A, p), rec(B, p)])
    assert {c.suite_id: c.status for c in report.comparisons} == {A: "ok", B: "incomparable", C: "new"}
    report = compare([rec(A, p), rec(C, p)], [rec(A, p), rec(B, p)])
    assert {c.suite_id: c.status for c in report.comparisons} == {A: "ok", B: "missing", C: "new"}
    assert not report.passed and [c.suite_id for c in report.failures] == [B]
    assert compare([rec(A, p), rec(C, p)], [rec(A, p), rec(B, p)], allow_missing=True).passed


def test_table_rendering():
    p = clustered()
    report = compare([rec(A, np.clip(p - 0.3, 0, 1), seed=3), rec(C, p)], [rec(A, p, seed=1), rec(B, p)])
    assert [c.status for c in report.comparisons] == ["regressed", "missing", "new"]
    lines = render_table(report).splitlines()
    assert lines[0].split()[:7] == ["env", "method", "model", "seed", "budget", "baseline", "current"]
    assert set(lines[1]) <= {"-", " "}
    assert "(60x4)" in lines[2] and lines[2].endswith("REGRESSED") and " 60 " in lines[2]
    assert lines[3].endswith("MISSING") and lines[4].endswith("new")
    assert lines[-1].startswith("FAIL (2 of 3): paired on shared problems")
    assert render_table(compare([rec(A, p)], [rec(A, p)])).splitlines()[-1].startswith("PASS")


def test_files_round_trip_and_list_form_ids(tmp_path):
    p = clustered(10)
    base, cur = tmp_path / "baseline.json", tmp_path / "current.json"
    dump_scores([rec(A, p), rec(B, p)], base)
    assert load_scores(base) == [rec(A, p), rec(B, p)]
    entry = rec(A, p).to_dict()
    cur.write_text(json.dumps([{**entry, "suite_id": ["espl/Arithmetic-v0", "espl", "smollm2-135m", 0, "smoke"]},
                               rec(B, p).to_dict()]))
    assert [c.status for c in compare_files(cur, base).comparisons] == ["ok", "ok"]


GOOD = '"problems": ["t0"], "outcomes": [[1, 0]]'


@pytest.mark.parametrize("content, message", [
    ("{oops", "cannot read scores"),
    ('{"suite_id": 1}', "expected a JSON list"),
    ('[{"success": 0.5}]', "needs suite_id"),
    ('[{"suite_id": ["e", "m", "x", 0, "b"], "success": 0.5, "n": 3}]', "no per-problem outcomes"),
    ('[{"suite_id": ["e", "m", "x", 0], ' + GOOD + '}]', "suite_id must be"),
    ('[{"suite_id": {"env": "e", "method": "m"}, ' + GOOD + '}]', "suite_id lacks model, seed, budget"),
    ('[{"suite_id": ["e", "m", "x", "0", "b"], ' + GOOD + '}]', "seed must be an integer"),
    ('[{"suite_id": ["e", "m", "x", 0, "b"], "problems": ["t0"], "outcomes": [[2]]}]', "0/1 lists"),
    ('[{"suite_id": ["e", "m", "x", 0, "b"], ' + GOOD + '}, {"suite_id": ["e", "m", "x", 0, "b"], ' + GOOD + '}]',
     "entry 1: duplicate suite_id"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "scores.json"
    path.write_text(content)
    with pytest.raises(ScoreFileError) as info:
        load_scores(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_score_from_a_run_summary():
    from espl_bench.records import CellResult, EvalItems, RunSummary, TestProgram

    cell = CellResult(EvalItems("test", (0, 1), 2), "p3", ((1, 0), (0, 0)), ((1.0, 0.0), (0.0, 0.0)), ("t/0", "t/1"))
    program = TestProgram(id="p3", rule="lcb", mu=25, sigma=8, text="t")
    summary = RunSummary(env="e", method="m", model="x", seed=0, iterations_completed=1, iterations_planned=1,
                         test=cell, test_program=program)
    record = ScoreRecord.from_summary(A, RunSummary.from_dict(summary.to_dict()))  # through its JSON form
    assert record == ScoreRecord(A, ("t/0", "t/1"), ((1, 0), (0, 0))) and record.success == 0.25
    with pytest.raises(ValueError, match="no test evaluation"):
        ScoreRecord.from_summary(A, summary.model_copy(update={"test": None}))


def test_suite_is_versioned_and_its_arguments_are_run_config_fields():
    assert SUITE_VERSION and all(s.version == SUITE_VERSION for s in SUITES.values())
    smoke = get_suite("smoke")
    assert {c.method for c in smoke.configs} == {"espl", "rl", "evolution", "self-reflection", "gepa"}
    ids = [c.suite_id for s in SUITES.values() for c in s.configs]
    assert len(ids) == len(set(ids))
    for config in get_suite("standard").configs[:4] + smoke.configs:
        args = config.run_args("runs/x")
        fields = dict(zip(args[::2], args[1::2]))
        parsed = RunConfig(**{k[2:].replace("-", "_"): v for k, v in fields.items()})
        assert (parsed.env, parsed.method, parsed.model, parsed.seed) == (config.env, config.method, config.model,
                                                                          config.seed)
        assert parsed.iterations == config.budget.iterations
        assert SuiteId.from_obj(config.suite_id.to_dict()) == config.suite_id
    with pytest.raises(KeyError, match="known: board, calibrated, long, smoke, standard"):
        get_suite("nope")
