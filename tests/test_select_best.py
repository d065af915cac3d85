"""select-best: a run's best iteration chosen on its validation split, never on the test split."""

import json

import pytest

from espl_bench.running.cli import main

SMALL = ["--programs", "2", "--batch-size", "2", "--group-size", "2", "--max-new-tokens", "8",
         "--reflector-max-tokens", "16", "--eval-problems", "2", "--eval-samples", "1", "--micro-batch-size", "4"]


@pytest.fixture(scope="module")
def trained_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "rl"
    assert main(["run", "--env", "espl/Arithmetic-v0", "--method", "rl", "--model", str(tiny_model),
                 "--iterations", "2", "--validation-problems", "3", "--out", str(out), *SMALL]) == 0
    return out


def test_training_samples_only_the_train_split(trained_run):
    for t in (1, 2):
        rollouts = (trained_run / "iterations" / f"{t:06d}" / "rollouts.jsonl").read_text().splitlines()
        assert {json.loads(line)["spec"]["split"] for line in rollouts} == {"train"}
    splits = json.loads((trained_run / "summary.json").read_text())["splits"]
    assert splits["validation"] == {"split": "validation", "start": 0, "size": 3}  # the env's own split


def test_a_validation_split_held_out_of_train_is_never_trained_on(tiny_model, tmp_path):
    for name, n in (("train", 12), ("test", 4)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"problem": f"{name} {i} + 1", "answer": i + 1}) + "\n"
                                                        for i in range(n)))
    out = tmp_path / "held"
    kwargs = json.dumps({"train_path": str(tmp_path / "train.jsonl"), "test_path": str(tmp_path / "test.jsonl")})
    assert main(["run", "--env", "espl/MathJSONL-v0", "--env-kwargs", kwargs, "--method", "rl", "--model",
                 str(tiny_model), "--iterations", "2", "--validation-problems", "3", "--out", str(out), *SMALL]) == 0
    for t in (1, 2):
        rollouts = (out / "iterations" / f"{t:06d}" / "rollouts.jsonl").read_text().splitlines()
        indices = {json.loads(line)["spec"]["index"] for line in rollouts}
        assert indices and min(indices) >= 3  # train problems 0-2 are the validation split
    assert json.loads((out / "summary.json").read_text())["splits"]["validation"] == {"split": "train", "start": 0, "size": 3}


def test_select_best_scores_every_iteration_with_its_own_weights_on_validation_only(trained_run, monkeypatch, capsys):
    import espl_bench.agents.rollout as rollout

    seen = []
    original = rollout.RolloutEngine.run

    def spy(self, specs, params):
        seen.extend((s.split, s.index) for s in specs)
        return original(self, specs, params)

    monkeypatch.setattr(rollout.RolloutEngine, "run", spy)
    assert main(["select-best", str(trained_run), "--samples", "2"]) == 0
    assert {split for split, _ in seen} == {"validation"} and {i for _, i in seen} == {0, 1, 2}
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
