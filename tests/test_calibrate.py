"""``espl-bench calibrate``: settings measured on train problems only, one chosen by a stated rule."""

import json

import pytest
import yaml

from espl_bench.config import build_config, load_file
from espl_bench.envs.difficulty import GRIDS, GridError, grid_for
from espl_bench.envs.reasoning_gym_env import ReasoningGymEnv
from espl_bench.running.calibrate import CalibrationPoint, choose
from espl_bench.running.cli import main
from espl_bench.stats import Interval


def point(success: float, informative: float) -> CalibrationPoint:
    return CalibrationPoint({"s": success}, Interval(success, max(0, success - 0.1), min(1, success + 0.1), 0.05),
                            informative, problems=32, samples=4, tokens_per_reply=10.0, seconds=1.0)


def test_the_most_informative_setting_inside_the_band_is_chosen():
    points = [point(0.05, 0.1), point(0.3, 0.5), point(0.5, 0.7), point(0.9, 0.9)]
    assert choose(points, (0.15, 0.65)) == 2  # 0.9 informative is above the band: no room for a prompt
    assert choose(points, (0.15, 0.4)) == 1


def test_ties_go_to_the_success_nearest_the_middle_of_the_band_and_none_inside_is_none():
    assert choose([point(0.2, 0.5), point(0.45, 0.5), point(0.6, 0.5)], (0.2, 0.6)) == 1
    assert choose([point(0.0, 0.0), point(0.95, 0.1)], (0.15, 0.65)) is None


def test_grids_come_from_the_env_or_from_json():
    assert grid_for("espl/Arithmetic-v0", None) == [dict(p) for p in GRIDS["espl/Arithmetic-v0"]]
    assert grid_for("rg/x-v0", '{"a": [1, 2], "b": [3]}') == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]
    assert grid_for("rg/x-v0", '[{"a": 1}]') == [{"a": 1}]
    for bad in ('{"a": 1}', "[]", "[1]", "not json"):
        with pytest.raises(GridError, match="fix:"):
            grid_for("rg/x-v0", bad)
    with pytest.raises(GridError, match="no built-in difficulty grid; fix: pass --grid"):
        grid_for("rg/chain_sum-v0", None)


def test_every_builtin_grid_setting_builds_its_env():
    from espl_bench.envs.registry import make_env

    for env_id, grid in GRIDS.items():
        for setting in grid:
            make_env(env_id, **setting).close()


def test_calibrate_scores_train_problems_only_and_writes_a_config_a_run_accepts(tiny_model, tmp_path, capsys,
                                                                              monkeypatch):
    splits = []
    reset = ReasoningGymEnv.reset

    def spy(self, *, seed=None, options=None):
        splits.append((options or {}).get("split"))
        return reset(self, seed=seed, options=options)

    monkeypatch.setattr(ReasoningGymEnv, "reset", spy)
    out = tmp_path / "cal"
    grid = '[{"max_terms": 2, "max_digits": 1}, {"max_terms": 3}]'
    code = main(["calibrate", "--env", "espl/Arithmetic-v0", "--model", str(tiny_model), "--grid", grid,
                 "--problems", "3", "--samples", "2", "--max-new-tokens", "4", "--band", "0,1", "--out", str(out)])
    assert code == 0, capsys.readouterr()
    assert set(splits) == {"train"} and len(splits) >= 2 * 3 * 2
    report = json.loads((out / "calibration.json").read_text())
    assert report["measured_on"].startswith("train") and len(report["points"]) == 2
    assert all(p["problems"] == 3 and p["samples"] == 2 for p in report["points"])
    assert report["chosen"] in (0, 1)
    chosen = report["points"][report["chosen"]]["env_kwargs"]
    cfg = build_config(load_file(str(out / "config.yaml")))
    assert cfg.env == "espl/Arithmetic-v0" and cfg.env_kwargs == chosen and cfg.group_size == 2
    assert "calibrate" in (out / "config.yaml").read_text().splitlines()[0]
    assert "chosen" in capsys.readouterr().out


def test_calibrate_without_a_setting_in_the_band_says_so_writes_no_config_and_fails(tiny_model, tmp_path, capsys):
    out = tmp_path / "cal"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump({"env": "stale"}))
    code = main(["calibrate", "--env", "espl/Arithmetic-v0", "--model", str(tiny_model), "--grid", '[{"max_terms": 3}]',
                 "--problems", "2", "--samples", "2", "--max-new-tokens", "2", "--band", "0.9,1", "--out", str(out)])
    assert code == 1
    assert "no setting puts success in [0.90, 1.00]" in capsys.readouterr().out
    assert not (out / "config.yaml").exists()
    assert json.loads((out / "calibration.json").read_text())["chosen"] is None


@pytest.mark.parametrize("args, message", [
    (["--band", "0.7,0.2"], "--band='0.7,0.2' is invalid; fix:"),
    (["--samples", "1"], "--samples=1 is invalid; fix: pass 2 or more"),
    (["--grid", "[1]"], "--grid must be a non-empty list"),
])
def test_bad_calibrate_input_is_one_line_and_exit_2(args, message, caplog):
    assert main(["calibrate", "--env", "espl/Arithmetic-v0", *args]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0]


def test_the_calibrated_suite_uses_the_committed_calibration():
    """leaderboards/suite.py's CALIBRATED holds the settings calibration/<env>/config.yaml chose
    (plus a larger test split where the board needs one)."""
    from pathlib import Path

    from espl_bench.leaderboards.suite import CALIBRATED, get_suite

    root = Path(__file__).resolve().parents[1] / "calibration"
    for env, kwargs in CALIBRATED.items():
        chosen = load_file(str(root / env.replace("/", "_") / "config.yaml"))
        assert chosen["env"] == env and chosen["env_kwargs"].items() <= kwargs.items()
    configs = get_suite("calibrated").configs
    assert {c.env for c in configs} == set(CALIBRATED) and {c.seed for c in configs} == {0, 1, 2, 3, 4}
    assert all(json.loads(c.env_kwargs) == CALIBRATED[c.env] for c in configs)
    assert all("--env-kwargs" in c.run_args("x") and "--skip-flat-groups" in c.run_args("x") for c in configs)
    from espl_bench.running.cli import _parser

    for config in configs[:5]:  # every flag of the suite is a run flag, and its values are valid
        args = vars(_parser().parse_args(["run", *config.run_args("runs/x")]))
        cfg = build_config({k: v for k, v in args.items() if k not in ("command", "verbose", "config")})
        assert cfg.env_kwargs == CALIBRATED[config.env] and cfg.skip_flat_groups and cfg.eval_problems == 300
