"""Score regression (bench compare) and the versioned suite."""

from __future__ import annotations

import json
import logging
import math

import pytest

from espl.config import RunConfig
from leaderboards.scores import (ScoreFileError, ScoreRecord, compare, compare_files, dump_scores, load_scores,
                                 render_table, tolerance)
from leaderboards.suite import SUITE_VERSION, SUITES, SuiteId, get_suite

A = SuiteId("espl/Arithmetic-v0", "espl", "smollm2-135m", 0, "smoke")
B = SuiteId("espl/Arithmetic-v0", "rl", "smollm2-135m", 0, "smoke")
C = SuiteId("espl/ToolUse-v0", "espl", "smollm2-135m", 1, "small")


def rec(suite_id: SuiteId, success: float, n: int = 200) -> ScoreRecord:
    return ScoreRecord(suite_id, success, n)


def test_tolerance_is_z_times_the_combined_binomial_standard_error():
    base, cur = rec(A, 0.8), rec(A, 0.7)
    expected = 2 * math.sqrt(0.8 * 0.2 / 200 + 0.7 * 0.3 / 200)
    assert tolerance(base, cur) == pytest.approx(expected)
    assert tolerance(base, cur, z=3) == pytest.approx(1.5 * expected)
    assert tolerance(rec(A, 1.0), rec(A, 1.0), floor=0.03) == 0.03  # se 0: the floor


def test_an_injected_drop_fails(caplog):
    baseline = [rec(A, 0.8), rec(B, 0.5)]
    with caplog.at_level(logging.WARNING, logger="leaderboards"):
        report = compare([rec(A, 0.6), rec(B, 0.5)], baseline)
    assert not report.passed
    assert [c.status for c in report.comparisons] == ["regressed", "ok"]
    assert [c.suite_id for c in report.failures] == [A]
    assert report.comparisons[0].delta == pytest.approx(-0.2)
    assert "espl/Arithmetic-v0 espl" in caplog.text


def test_noise_within_tolerance_passes_and_z_is_configurable():
    baseline = [rec(A, 0.8), rec(B, 0.5)]
    current = [rec(A, 0.76), rec(B, 0.55)]  # tolerance ~0.08 and ~0.10
    report = compare(current, baseline)
    assert report.passed and [c.status for c in report.comparisons] == ["ok", "ok"]
    strict = compare(current, baseline, z=0.5)
    assert not strict.passed and [c.status for c in strict.comparisons] == ["regressed", "improved"]


def test_the_floor_absorbs_tiny_drops_from_a_perfect_baseline():
    baseline, current = [rec(A, 1.0, 1000)], [rec(A, 0.985, 1000)]
    assert compare(current, baseline).passed  # z * se ~ 0.008 < floor 0.02
    assert not compare(current, baseline, floor=0.0).passed


def test_missing_and_new_entries():
    report = compare([rec(A, 0.8), rec(C, 0.1)], [rec(A, 0.8), rec(B, 0.5)])
    assert {c.suite_id: c.status for c in report.comparisons} == {A: "ok", B: "missing", C: "new"}
    assert not report.passed and [c.suite_id for c in report.failures] == [B]
    assert compare([rec(A, 0.8), rec(C, 0.1)], [rec(A, 0.8), rec(B, 0.5)], allow_missing=True).passed


def test_table_rendering():
    report = compare([rec(A, 0.6), rec(C, 0.1)], [rec(A, 0.8), rec(B, 0.5)])
    table = render_table(report)
    lines = table.splitlines()
    assert lines[0].split() == ["env", "method", "model", "seed", "budget", "baseline", "current", "delta",
                                "tolerance", "status"]
    assert set(lines[1]) <= {"-", " "}
    assert "0.800 (n=200)" in lines[2] and "0.600 (n=200)" in lines[2] and "-0.200" in lines[2]
    assert lines[2].endswith("REGRESSED") and lines[3].endswith("MISSING") and lines[4].endswith("new")
    assert lines[-1].startswith("FAIL (2 of 3): z=2, floor=0.02")
    assert render_table(compare([rec(A, 0.8)], [rec(A, 0.8)])).splitlines()[-1].startswith("PASS")


def test_files_round_trip_and_list_form_ids(tmp_path):
    base, cur = tmp_path / "baseline.json", tmp_path / "current.json"
    dump_scores([rec(A, 0.8), rec(B, 0.5)], base)
    cur.write_text(json.dumps([{"suite_id": ["espl/Arithmetic-v0", "espl", "smollm2-135m", 0, "smoke"],
                                "success": 0.5, "n": 200}, {"suite_id": B.to_dict(), "success": 0.5, "n": 200}]))
    assert load_scores(base) == [rec(A, 0.8), rec(B, 0.5)]
    report = compare_files(cur, base)
    assert [c.status for c in report.comparisons] == ["regressed", "ok"]


@pytest.mark.parametrize("content, message", [
    ("{oops", "cannot read scores"),
    ('{"suite_id": 1}', "expected a JSON list"),
    ('[{"success": 0.5, "n": 3}]', "needs suite_id"),
    ('[{"suite_id": ["e", "m", "x", 0], "success": 0.5, "n": 3}]', "suite_id must be"),
    ('[{"suite_id": {"env": "e", "method": "m"}, "success": 0.5, "n": 3}]', "suite_id lacks model, seed, budget"),
    ('[{"suite_id": ["e", "m", "x", "0", "b"], "success": 0.5, "n": 3}]', "seed must be an integer"),
    ('[{"suite_id": ["e", "m", "x", 0, "b"], "success": 1.5, "n": 3}]', "success must be a number in [0, 1]"),
    ('[{"suite_id": ["e", "m", "x", 0, "b"], "success": 0.5, "n": 0}]', "n must be a positive integer"),
    ('[{"suite_id": ["e", "m", "x", 0, "b"], "success": 0.5, "n": 3},'
     ' {"suite_id": ["e", "m", "x", 0, "b"], "success": 0.6, "n": 3}]', "entry 1: duplicate suite_id"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "scores.json"
    path.write_text(content)
    with pytest.raises(ScoreFileError) as info:
        load_scores(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_score_from_a_run_summary():
    summary = {"test": {"program": "p3", "success": 0.375, "pass@1": 0.375, "problems": 4, "samples": 2}}
    assert ScoreRecord.from_summary(A, summary) == ScoreRecord(A, 0.375, 8)
    with pytest.raises(ValueError, match="no test evaluation"):
        ScoreRecord.from_summary(A, {"test": None})


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
    with pytest.raises(KeyError, match="known: board, smoke, standard"):
        get_suite("nope")
