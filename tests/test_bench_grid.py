"""``bench`` runs a grid: locally or on Ray with the same results, retrying a run killed mid-way
(it resumes its folder), reporting a run that fails while the others finish; run options reach
every run; records of another identity are refused."""

import json
import subprocess

import pytest

from espl_bench.config import build_config
from espl_bench.leaderboards.identity import node_identity, write_identity
from espl_bench.leaderboards.suite import SUITE_VERSION, get_suite
from espl_bench.running.cli import main
from tests.test_bench_cli import summary
from tests.test_ownership import files
from tests.test_resume_kill import SCRIPT

METHODS = "evolution,rl,self-reflection"
RL = "espl_Arithmetic-v0--rl--0--smoke"
FAILING = "espl_Arithmetic-v0--self-reflection--0--smoke"


def grid(tiny_model, tmp_path, out, *extra) -> list[str]:
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    return ["bench", "--suite", "smoke", "--methods", METHODS, "--model", str(tiny_model), "--reflector",
            f"script:{script}", "--out", str(out), *extra]


def report(text: str) -> dict[str, list[str]]:
    """The end table's rows by run name."""
    return {line.split()[0]: line.split(None, 3)[1:] for line in text.splitlines() if line.startswith("espl_")}


@pytest.mark.enable_socket
@pytest.mark.slow
def test_ray_gives_the_local_results_retries_a_killed_run_and_reports_a_failed_one(
        ray_cluster, hooked, tiny_model, tmp_path, monkeypatch, capsys):
    fail = {"at": "1:rollouts", "action": "fail", "method": "self-reflection"}
    hooked([fail])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the thread count Ray gives a run of one CPU: equal arithmetic
    assert main(grid(tiny_model, tmp_path, tmp_path / "local")) == 1  # one run failed, the others finished
    local = report(capsys.readouterr().out)
    hooked([fail, {"at": "1:commit", "action": "kill", "method": "rl", "once": str(tmp_path / "killed-once")}])
    assert main(grid(tiny_model, tmp_path, tmp_path / "ray", "--executor", "ray", "--max-parallel", "2")) == 1
    text = capsys.readouterr().out
    remote = report(text)
    assert (tmp_path / "killed-once").exists()
    for rows in (local, remote):
        assert rows[FAILING][:2] == ["FAILED", "1"]  # refused with its one line: not retried
        assert rows[FAILING][2].startswith("injected failure at 1:rollouts; fix:")
        assert rows["espl_Arithmetic-v0--evolution--0--smoke"][0] == "finished"
    assert local[RL][:2] == ["finished", "1"]
    assert remote[RL][:2] == ["finished", "2"] and remote[RL][2] == "retried after: killed by signal 9"
    assert "2 finished, 1 failed, 1 retried" in text
    assert "=== espl-bench run --resume" in (tmp_path / "ray" / ".logs" / f"{RL}.log").read_text()
    results = [json.loads((tmp_path / out / "results.json").read_text()) for out in ("local", "ray")]
    assert results[0] == results[1] and sorted(r["suite_id"]["method"] for r in results[0]) == ["evolution", "rl"]
    for name in ("espl_Arithmetic-v0--evolution--0--smoke", RL):  # every record of the runs, not only the score
        assert files(tmp_path / "local" / name) == files(tmp_path / "ray" / name)


def kept_runs(keep, identity) -> None:
    """Every smoke run finished and kept, made under ``identity`` (None: before identities were recorded)."""
    for config in get_suite("smoke").configs:
        sid = config.suite_id
        folder = keep / f"{sid.env.replace('/', '_')}--{sid.method}--{sid.seed}--{sid.budget}"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(summary(2))
        if identity is not None:
            write_identity(folder, identity)


@pytest.mark.usefixtures("emulated_bf16")
@pytest.mark.parametrize("flags, differs", [(["--dtype", "bfloat16"], "dtype float32 vs bfloat16"),
                                            (["--sampler", "vllm"], "sampler transformers vs vllm"),
                                            (["--temperature", "0.9"], 'settings {} vs {"temperature": 0.9}'),
                                            ([], "suite_version none vs " + SUITE_VERSION)])
def test_keep_refuses_records_of_another_identity(flags, differs, tmp_path, monkeypatch, caplog):
    def no_runs(*args, **kwargs):
        raise AssertionError(f"a run was started: {args}")

    monkeypatch.setattr(subprocess, "run", no_runs)
    made = node_identity(build_config({"env": "espl/Arithmetic-v0"}), SUITE_VERSION, {})
    kept_runs(tmp_path / "keep", made if flags else None)
    (tmp_path / "keep" / RL / "summary.json").unlink()  # one run left to make
    assert main(["bench", "--suite", "smoke", "--keep", str(tmp_path / "keep"), "--out", str(tmp_path / "out"),
                 *flags]) == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert f"in --keep was made as suite v{made.suite_version if flags else '?'}" in line
    assert f"(they differ in {differs}" in line and "; fix: give the options its records were made with" in line


@pytest.mark.usefixtures("emulated_bf16")
def test_collect_refuses_to_mix_identities_and_bench_refuses_suite_owned_options(tmp_path, caplog):
    made = node_identity(build_config({"env": "espl/Arithmetic-v0"}), SUITE_VERSION, {})
    kept_runs(tmp_path / "keep", made)
    assert main(["bench", "--suite", "smoke", "--keep", str(tmp_path / "keep"), "--collect",
                 "--out", str(tmp_path / "out")]) == 0
    write_identity(tmp_path / "keep" / RL, node_identity(build_config({"env": "e", "dtype": "bfloat16"}),
                                                          SUITE_VERSION, {}))
    assert main(["bench", "--suite", "smoke", "--keep", str(tmp_path / "keep"), "--collect",
                 "--out", str(tmp_path / "out")]) == 2
    assert "were made under different identities (dtype float32 vs bfloat16); fix: collect each kind" in caplog.text
    for owned in (["--seed", "3"], ["--iterations", "9"], ["--env", "espl/ToolUse-v0"]):
        caplog.clear()
        assert main(["bench", "--suite", "smoke", "--out", str(tmp_path / "out"), *owned]) == 2
        assert f"{owned[0]}: set by suite 'smoke' for each of its runs" in caplog.text
    caplog.clear()
    assert main(["bench", "--suite", "calibrated", "--out", str(tmp_path / "out"), "--learning-rate", "1e-3"]) == 2
    assert "--learning-rate: set by suite 'calibrated'" in caplog.text  # its budget sets it
