"""`espl-bench bench compare` and `espl-bench leaderboard` from the command line."""

import json

import numpy as np
import pytest

from espl_bench.leaderboards.suite import METHODS
from espl_bench.running.cli import main


def scores(path, success, seed):
    """Per-problem outcomes: 50 problems, 4 samples each, every problem at its own rate."""
    rng = np.random.default_rng(seed)
    rates = np.random.default_rng(0).beta(0.5, 0.5, size=50)
    rows = [{"suite_id": {"env": "espl/Arithmetic-v0", "method": m, "model": "smollm2-135m", "seed": 0, "budget": "smoke"},
             "problems": [f"test/{i}" for i in range(50)],
             "outcomes": [[int(x) for x in rng.random(4) < np.clip(r + shift, 0, 1)] for r in rates]}
            for m, shift in success.items()]
    path.write_text(json.dumps(rows))
    return str(path)


def test_compare_fails_on_an_injected_drop_and_passes_on_noise(tmp_path, capsys):
    base = scores(tmp_path / "base.json", {"espl": 0.0, "rl": 0.0}, seed=1)
    noisy = scores(tmp_path / "noisy.json", {"espl": 0.0, "rl": 0.0}, seed=2)
    dropped = scores(tmp_path / "drop.json", {"espl": -0.35, "rl": 0.0}, seed=2)
    assert main(["bench", "compare", noisy, base]) == 0
    assert main(["bench", "compare", dropped, base]) == 1
    table = capsys.readouterr().out
    assert "espl" in table and "FAIL (1 of 2)" in table


def test_compare_needs_two_readable_files(tmp_path):
    assert main(["bench", "compare", str(tmp_path / "one.json")]) == 2
    (tmp_path / "bad.json").write_text("{oops")
    assert main(["bench", "compare", str(tmp_path / "bad.json"), str(tmp_path / "bad.json")]) == 2


def test_leaderboard_from_real_run_folders(tiny_model, tmp_path, capsys):
    for method in ("espl", "rl"):
        assert main(["run", "--env", "espl/Arithmetic-v0", "--method", method, "--model", str(tiny_model),
                     "--iterations", "1", "--programs", "2", "--batch-size", "2", "--group-size", "2",
                     "--max-new-tokens", "8", "--reflector-max-tokens", "16", "--eval-problems", "2",
                     "--out", str(tmp_path / "runs" / method)]) == 0
    capsys.readouterr()
    assert main(["leaderboard", str(tmp_path / "runs"), "--out", str(tmp_path / "site")]) == 0
    out = capsys.readouterr().out
    assert "espl/Arithmetic-v0" in out and "rl" in out
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "leaderboard.md").is_file()
    assert main(["leaderboard", str(tmp_path / "nothing")]) == 2


def test_bench_runs_only_the_requested_seeds(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--suite", "smoke", "--seeds", "7", "--out", str(out)]) == 0  # smoke has seed 0 only
    assert "0 results" in capsys.readouterr().out and not any(out.glob("*--*"))
    assert main(["bench", "--suite", "smoke", "--seeds", "zero", "--out", str(out)]) == 2


def summary(completed: int, planned: int = 2) -> str:
    """A finished (or not) run's summary.json, as the runner writes it."""
    from espl_bench.records import CellResult, EvalItems, RunSummary, TestProgram

    test = CellResult(EvalItems("test", (0, 1), 2), "p0", ((1, 0), (0, 1)), ((1.0, 0.0), (0.0, 1.0)), ("t/0", "t/1"))
    return json.dumps(RunSummary(env="e", method="m", model="x", seed=0, iterations_completed=completed,
                                 iterations_planned=planned, test=test,
                                 test_program=TestProgram(id="p0", rule="lcb", mu=25, sigma=8, text="t")).to_dict())


def test_an_old_results_summary_is_one_clear_error(tmp_path, caplog):
    from espl_bench.leaderboards.suite import get_suite

    out = tmp_path / "bench"
    sid = get_suite("smoke").configs[0].suite_id
    folder = out / f"{sid.env.replace('/', '_')}--{sid.method}--{sid.seed}--{sid.budget}"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"iterations_completed": 2, "iterations_planned": 2,
                                                     "test": {"success": 0.5, "problems": 4, "samples": 2}}))
    assert main(["bench", "--suite", "smoke", "--collect", "--out", str(out)]) == 2
    assert "schema version 1" in caplog.text and "fix: re-run" in caplog.text


def test_collect_writes_results_for_finished_runs_only(tmp_path, capsys):
    from espl_bench.leaderboards.suite import get_suite

    out = tmp_path / "bench"
    done, unfinished = get_suite("smoke").configs[:2]
    for config, completed in ((done, 2), (unfinished, 1)):
        sid = config.suite_id
        folder = out / f"{sid.env.replace('/', '_')}--{sid.method}--{sid.seed}--{sid.budget}"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(summary(completed))
    assert main(["bench", "--suite", "smoke", "--collect", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "1 results" in capsys.readouterr().out
    assert [r["suite_id"]["method"] for r in results] == [done.method]


def test_bench_runs_only_the_requested_envs(tmp_path, capsys, caplog):
    from espl_bench.leaderboards.suite import get_suite

    out = tmp_path / "bench"
    board = get_suite("board").configs
    for config in board:  # every run of the suite finished, so --collect reads them without running
        sid = config.suite_id
        folder = out / f"{sid.env.replace('/', '_')}--{sid.method}--{sid.seed}--{sid.budget}"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(summary(2))
    assert main(["bench", "--suite", "board", "--collect", "--out", str(out), "--envs",
                 "espl/ToolUse-v0, rg/letter_counting-v0", "--seeds", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted({(r["suite_id"]["env"], r["suite_id"]["seed"]) for r in results}) == [
        ("espl/ToolUse-v0", 1), ("rg/letter_counting-v0", 1)]
    assert len(results) == 10  # five methods each
    assert main(["bench", "--suite", "board", "--envs", "espl/Nope-v0", "--out", str(out)]) == 2
    assert "--envs names espl/Nope-v0, which suite 'board' does not run; fix:" in caplog.text
    assert main(["bench", "--suite", "board", "--collect", "--out", str(out), "--methods", "espl,rl", "--seeds", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted((r["suite_id"]["method"], r["suite_id"]["seed"]) for r in results) == [("espl", 2)] * 3 + [("rl", 2)] * 3
    assert main(["bench", "--suite", "board", "--methods", "espl,grpo", "--out", str(out)]) == 2
    assert "--methods names grpo, which suite 'board' does not run; fix: pick from espl, evolution" in caplog.text


@pytest.mark.slow
def test_bench_runs_every_method_of_a_suite_and_resumes(tiny_model, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--suite", "smoke", "--model", str(tiny_model), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted(r["suite_id"]["method"] for r in results) == sorted(METHODS)
    assert all(r["suite_id"]["model"] == str(tiny_model) for r in results)
    folders = sorted(p.parent for p in out.glob("*/summary.json"))
    assert len(folders) == len(METHODS)
    committed = [(folder / "metrics.jsonl").read_text() for folder in folders]
    # a second call resumes every finished run (nothing is redone) and writes the same results
    assert main(["bench", "--suite", "smoke", "--model", str(tiny_model), "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text()) == results
    assert [(folder / "metrics.jsonl").read_text() for folder in folders] == committed


def test_finished_runs_are_kept_compactly_and_never_run_again(tmp_path, monkeypatch, capsys):
    """--keep holds what the board needs from each finished run (no weights); a suite completed on
    another machine, or later, skips what is kept there."""
    import subprocess

    from espl_bench.leaderboards.suite import get_suite

    def no_runs(*args, **kwargs):
        raise AssertionError(f"a finished run was started again: {args}")

    monkeypatch.setattr(subprocess, "run", no_runs)
    from espl_bench.config import build_config
    from espl_bench.leaderboards.identity import node_identity, write_identity
    from espl_bench.leaderboards.suite import SUITE_VERSION

    # made as this grid would make them (bench checks that before it reuses records)
    identity = node_identity(build_config({"env": "espl/Arithmetic-v0"}), SUITE_VERSION, {})
    out, keep = tmp_path / "bench", tmp_path / "kept"
    for config in get_suite("smoke").configs:
        sid = config.suite_id
        folder = out / f"{sid.env.replace('/', '_')}--{sid.method}--{sid.seed}--{sid.budget}"
        (folder / "iterations" / "000002").mkdir(parents=True)
        (folder / "learner" / "checkpoint-2").mkdir(parents=True)
        (folder / "learner" / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"weights")
        (folder / "iterations" / "000002" / "pool.json").write_text("{}")
        (folder / "iterations" / "000002" / "rollouts.jsonl").write_text("{}\n")
        (folder / "summary.json").write_text(summary(2))
        (folder / "run.json").write_text("{}")
        (folder / "LATEST").write_text("2")
        write_identity(folder, identity)
    assert main(["bench", "--suite", "smoke", "--out", str(out), "--keep", str(keep)]) == 0
    first = json.loads((out / "results.json").read_text())
    kept = sorted(p.relative_to(keep).as_posix() for p in keep.rglob("*") if p.is_file())
    name = next(keep.iterdir()).name
    assert {f"{name}/iterations/000002/pool.json", f"{name}/summary.json", f"{name}/suite.json"} <= set(kept)
    assert not any("learner" in p or "rollouts" in p for p in kept)
    assert len({p.split("/")[0] for p in kept}) == len(METHODS)
    import shutil

    shutil.rmtree(out)  # a fresh machine: only the kept records
    assert main(["bench", "--suite", "smoke", "--out", str(out), "--keep", str(keep)]) == 0
    assert json.loads((out / "results.json").read_text()) == first
