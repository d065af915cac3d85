"""`espl-bench run` end to end on the embedded model for one env of each family (small settings)."""

import json

import pytest

from espl_bench.running.cli import main


def write_math(tmp_path):
    rows = {"train": [("What is 3 + 4?", "7"), ("What is 10 - 6?", "4"), ("What is 2 * 5?", "10")],
            "test": [("What is 6 + 6?", "12"), ("What is 9 - 2?", "7")]}
    for split, items in rows.items():
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps({"problem": p, "answer": a}) + "\n" for p, a in items))
    return json.dumps({"train_path": str(tmp_path / "train.jsonl"), "test_path": str(tmp_path / "test.jsonl")})


FAMILIES = {
    "math-jsonl": ("espl/MathJSONL-v0", "rl", None),
    "search-qa": ("espl/SearchQA-v0", "espl", {"corpus_size": 80, "train_size": 10, "validation_size": 4, "test_size": 5, "max_turns": 2}),
    "tool-use": ("espl/ToolUse-v0", "rl", {"max_turns": 2}),
    "game": ("espl/GuessTheNumber-v0", "rl", {"max_turns": 2}),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_runs_end_to_end_on_embedded_model(family, tmp_path):
    env_id, method, kwargs = FAMILIES[family]
    env_kwargs = write_math(tmp_path) if kwargs is None else json.dumps(kwargs)
    out = tmp_path / "run"
    code = main(["run", "--env", env_id, "--env-kwargs", env_kwargs, "--method", method, "--iterations", "1",
                 "--programs", "2", "--batch-size", "2", "--group-size", "2", "--max-new-tokens", "32",
                 "--reflector-max-tokens", "64", "--eval-problems", "1", "--eval-samples", "2", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["env"] == env_id and summary["iterations_completed"] == 1
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["rollouts"] == 2 * 2 * 2  # every method fills its 2 program slots (equal budgets)
    assert 0.0 <= metrics["invalid_action_rate"] <= 1.0
    rollout = json.loads((out / "iterations" / "000001" / "rollouts.jsonl").read_text().splitlines()[0])
    assert rollout["turns"] >= 1 and rollout["messages"][0]["role"] == "system"
