"""The README's first command, on the real embedded model (minutes on a 2-core CPU)."""

import json

import pytest

from espl_bench.running.cli import main


@pytest.mark.slow
def test_quickstart_run_on_embedded_model(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--env", "espl/Arithmetic-v0", "--env-kwargs", '{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}',
                 "--iterations", "2", "--programs", "2", "--batch-size", "2",
                 "--group-size", "2", "--max-new-tokens", "64", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations_completed"] == 2 and summary["model"] == "smollm2-135m"
    assert len(summary["train_reward"]) == 2 and summary["test"] is not None
    assert 0.0 <= summary["test"]["success"] <= 1.0
    assert (out / "best_prompt.txt").read_text().strip()
    pool = json.loads((out / "iterations" / "000002" / "pool.json").read_text())
    assert pool["programs"][0]["id"] == "p0"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(m["rollouts"] == 8 for m in metrics)
    assert all(m["reflection_calls"] > 0 for m in metrics)  # the reference model was asked every iteration
    # the in-process reflector honours the edit schema: no call took the parse-and-repair path
    assert all(set(m["reflection_counts"]["edit_calls"]) == {"schema"} for m in metrics)
    assert "E-SPL run finished" in capsys.readouterr().out
