"""select-best: a run's best iteration chosen on its validation split, never on the test split."""

import json

import pytest

from espl.cli import main

SMALL = ["--programs", "2", "--batch-size", "2", "--group-size", "2", "--max-new-tokens", "8",
         "--reflector-max-tokens", "16", "--eval-problems", "2", "--eval-samples", "1", "--micro-batch-size", "4"]


@pytest.fixture(scope="module")
def trained_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "rl"
    assert main(["run", "--env", "espl/Arithmetic-v0", "--method", "rl", "--model", str(tiny_model),
                 "--iterations", "2", "--validation-problems", "3", "--out", str(out), *SMALL]) == 0
    return out


def test_training_never_samples_the_validation_problems(trained_run):
    for t in (1, 2):
        rollouts = (trained_run / "iterations" / f"{t:06d}" / "rollouts.jsonl").read_text().splitlines()
        indices = {json.loads(line)["spec"]["index"] for line in rollouts}
        assert indices and min(indices) >= 3  # problems 0-2 of the train split are the validation split


def test_select_best_scores_every_iteration_with_its_own_weights_on_validation_only(trained_run, monkeypatch, capsys):
    import agents.rollout as rollout

    seen = []
    original = rollout.RolloutEngine.run

    def spy(self, specs, params):
        seen.extend((s.split, s.index) for s in specs)
        return original(self, specs, params)

    monkeypatch.setattr(rollout.RolloutEngine, "run", spy)
    assert main(["select-best", str(trained_run), "--samples", "2"]) == 0
    assert {split for split, _ in seen} == {"train"} and {i for _, i in seen} == {0, 1, 2}
    result = json.loads((trained_run / "selection.json").read_text())
    assert [r["iteration"] for r in result["iterations"]] == [1, 2] and result["problems"] == 3
    assert result["best"] in result["iterations"] and result["best_prompt"].strip()
    assert max(r["success"] for r in result["iterations"]) == result["best"]["success"]
    for t in (1, 2):  # each iteration keeps its own adapter, since the learner prunes old checkpoints
        assert (trained_run / "iterations" / f"{t:06d}" / "adapter" / "adapter_model.safetensors").is_file()
    assert "<- best" in capsys.readouterr().out


def test_select_best_explains_a_run_without_a_validation_split(tiny_model, tmp_path, caplog):
    script = tmp_path / "script.json"
    script.write_text('[{"contains": "", "answer": "no edits"}]')
    out = tmp_path / "noval"
    assert main(["run", "--env", "espl/Arithmetic-v0", "--method", "evolution", "--model", str(tiny_model),
                 "--iterations", "1", "--validation-problems", "0", "--reflector", f"script:{script}",
                 "--out", str(out), *SMALL]) == 0
    assert main(["select-best", str(out)]) == 2
    assert "has no validation split" in caplog.text and "--validation-problems" in caplog.text
    assert main(["select-best", str(tmp_path / "nothing-here")]) == 2
    assert "holds no run" in caplog.text
