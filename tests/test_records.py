"""The run folder's typed records: round trips, old schemas refused with the fix, and the
leaderboard reading run folders through them alone."""

import ast
import json
from pathlib import Path

import pytest

from espl_bench.errors import RecordError
from espl_bench.records import (
    SCHEMA_VERSION,
    Budget,
    CellResult,
    EvalItems,
    IterationMetrics,
    ReflectionRecord,
    RunHeader,
    RunSummary,
    TestProgram,
    Usage,
)

ROOT = Path(__file__).resolve().parents[1]
CELL = CellResult(EvalItems("test", (0, 1), 2), "p1", ((1, 0), (0, 0)), ((1.0, 0.0), (0.0, 0.0)), ("t/0", "t/1"),
                  invalid_actions=1, turns=4, generated_tokens=30)


def summary(**overrides) -> RunSummary:
    fields = dict(env="espl/Arithmetic-v0", method="espl", model="m", seed=3, iterations_completed=2,
                  iterations_planned=2, test=CELL, test_program=TestProgram(id="p1", rule="lcb", mu=25, sigma=1, text="t"),
                  budget=Budget(training_rollouts=16, evaluation_rollouts=8), usage={"reflector": Usage(calls=3)})
    return RunSummary(**{**fields, **overrides})


@pytest.mark.parametrize("record", [
    IterationMetrics(iteration=1, train_reward=0.5, train_success=0.25, rollouts=8, test=CELL,
                     usage={"reflector": Usage(calls=2, prompt_tokens=10)}, phase_seconds={"rollouts": 1.5}),
    ReflectionRecord(kind="mutation", status="ok", label="revision", child="p1", log=[{"prompt": "x", "answer": "y"}]),
    RunHeader(config={"env": "espl/Arithmetic-v0"}, templates={"critique": "abc"}),
    summary(),
])
def test_records_round_trip_through_json(record):
    data = json.loads(json.dumps(record.to_dict()))
    assert data["schema_version"] == SCHEMA_VERSION
    again = type(record).from_dict(data)
    assert again == record and again.to_dict() == record.to_dict()


def test_a_summary_carries_typed_results():
    loaded = RunSummary.from_dict(json.loads(json.dumps(summary().to_dict())))
    assert isinstance(loaded.test, CellResult) and loaded.test.per_problem == [0.5, 0.0]
    assert loaded.finished and loaded.budget.training_rollouts == 16 and loaded.cost_usd == 0.0


def test_an_old_or_broken_file_is_one_line_with_the_fix():
    old = {**summary().to_dict(), "schema_version": 1}
    with pytest.raises(RecordError, match=r"runs/x/summary.json has schema version 1, .* reads 2 \(written before"):
        RunSummary.from_dict(old, "runs/x/summary.json")
    broken = summary().to_dict()
    del broken["test_program"]
    with pytest.raises(RecordError, match="test_program: Field required; fix: restore the file or re-run"):
        RunSummary.from_dict(broken, "summary.json")
    with pytest.raises(RecordError, match="unknown_field"):
        IterationMetrics.from_dict({**IterationMetrics(iteration=1, train_reward=0, train_success=0, rollouts=1).to_dict(),
                                    "unknown_field": 1})
    with pytest.raises(RecordError, match="not a JSON object"):
        RunHeader.from_dict([1, 2])


def _string_keyed_reads(path: Path) -> list[str]:
    """Subscripts and .get() calls with a literal string key: reading a record by key."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            found.append(f"{path.name}:{node.lineno}")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_the_leaderboard_reads_run_folders_through_the_typed_records_only():
    readers = [ROOT / "leaderboards" / name for name in ("aggregate.py", "render.py", "commands.py")]
    assert [hit for path in readers for hit in _string_keyed_reads(path)] == []
