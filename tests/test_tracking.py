"""--report-to: the loop's numbers and the learner's, in one tracker run inside the run folder."""

import json

import pytest

from espl_bench.running.cli import main
from tests.test_resume_kill import SCRIPT


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the TensorBoard event files under ``folder``, read back by TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder)).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.parametrize("method", ["rl", "evolution"])
def test_tensorboard_event_files_in_the_run_folder_hold_the_loop_and_the_learner(method, tiny_model, tmp_path):
    out, script = tmp_path / "run", tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    assert main(["run", "--env", "espl/Arithmetic-v0", "--method", method, "--model", str(tiny_model),
                 "--reflector", f"script:{script}", "--iterations", "2", "--programs", "2", "--batch-size", "2",
                 "--group-size", "2", "--max-new-tokens", "8", "--eval-problems", "2", "--report-to", "tensorboard",
                 "--out", str(out)]) == 0
    assert list((out / "tracking").glob("events.out.tfevents.*"))
    series = scalars(out / "tracking")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert series["loop/train_reward"] == [(m["iteration"], pytest.approx(m["train_reward"])) for m in metrics]
    assert series["loop/test/success"][-1] == (2, pytest.approx(metrics[-1]["test"]["success"]))
    assert series["loop/test/success_low"][-1][1] <= series["loop/test/success_high"][-1][1]
    assert {"loop/seconds/rollouts", "loop/children/revision", "loop/reflection/failed"} <= set(series)
    if method == "rl":  # the learner's loss, through TRL's own TensorBoard callback, at its optimizer step
        assert [step for step, _ in series["train/loss"]] == [1, 2]
    else:  # frozen weights: no learner to log; an evolving pool's ratings
        assert not any(tag.startswith("train/") for tag in series)
        rated = [m["iteration"] for m in metrics if m["ratings"]]
        assert rated and [step for step, _ in series["loop/ratings/best_lcb"]] == rated
