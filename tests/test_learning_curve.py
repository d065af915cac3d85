"""scripts/learning_curve.py: the long runs' training-curve statistics, on runs with a known curve."""

import json
import subprocess
import sys
from pathlib import Path

from espl_bench.records import IterationMetrics

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "learning_curve.py"


def write_run(folder: Path, problem_success: list[list[float]], flat: list[int]) -> None:
    """A committed run folder whose iteration t trained on ``problem_success[t]`` (4 groups each)."""
    folder.mkdir(parents=True)
    lines = [IterationMetrics(iteration=t + 1, train_reward=sum(p) / len(p), train_success=sum(p) / len(p), train_problem_success=p, groups=4,
                              flat_groups=f, learner={"loss": 0.01 * (t + 1), "grad_norm": 0.0 if f == 4 else 0.1 * (t + 1)},
                              rollouts=8).to_dict()
             for t, (p, f) in enumerate(zip(problem_success, flat, strict=True))]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    (folder / "LATEST").write_text(str(len(lines)))
    (folder / "run.json").write_text("{}")


def curve(*roots: Path, window: int) -> list[list[str]]:
    out = subprocess.run([sys.executable, str(SCRIPT), *map(str, roots), "--window", str(window)],
                         capture_output=True, text=True, check=True).stdout
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines()[2:]]


def test_a_rising_curve_rises_and_a_flat_step_adds_no_gradient_norm(tmp_path):
    write_run(tmp_path / "a", [[0, 0], [0, 0], [1, 0], [1, 1]], flat=[4, 2, 2, 4])
    write_run(tmp_path / "b", [[0, 0], [1, 0], [1, 0], [1, 1]], flat=[2, 2, 2, 4])
    rows = curve(tmp_path, window=2)
    assert [r[0] for r in rows] == ["a", "b", "all 2"]
    a, b, both = rows
    # last two iterations' problems minus the first two's: a 0.75 - 0, b 0.75 - 0.25, both 0.75 - 0.125
    assert (a[1], a[3][:6], b[3][:6], both[3][:6]) == ("4", "+0.750", "+0.500", "+0.625")
    assert a[4].startswith("+0.3500 ±")  # least squares through 0, 0, 0.5, 1
    assert both[4].startswith("+0.3250 [")  # the mean of the two runs' slopes (0.35 and 0.3)
    assert a[5] == "75%" and both[5] == "69%"  # 12 of 16 groups flat in a, 10 of 16 in b
    # a's steps 1 and 4 were all flat: only steps 2 and 3 count (norms 0.2 and 0.3)
    assert a[6] == "0.250 (0.200-0.300)"


def test_too_short_a_run_is_one_line_and_exit_2(tmp_path):
    write_run(tmp_path / "a", [[0, 1]] * 3, flat=[2] * 3)
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "at least 20 iterations" in result.stderr
