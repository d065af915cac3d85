"""The command line: clear one-line errors for bad input, a run, and resume."""

import json
import subprocess
import sys

import pytest

from espl_bench.running.cli import main

SMALL = ["--iterations", "1", "--programs", "2", "--batch-size", "2", "--group-size", "2", "--max-new-tokens", "8",
         "--reflector-max-tokens", "16", "--eval-problems", "2", "--eval-samples", "2", "--micro-batch-size", "4"]


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "espl_bench", *args], capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["run", "--env", "espl/Nope-v0"], "unknown environment"),
    (["run", "--env", "espl/Arithmetic-v0", "--iterations", "0"], "--iterations=0 is invalid"),
    (["run", "--env", "espl/Arithmetic-v0", "--model", "/no/such/model"], "does not exist"),
    (["run", "--env", "espl/Arithmetic-v0", "--config", "/no/such.yaml"], "does not exist"),
    (["run", "--env", "espl/Arithmetic-v0", "--env-kwargs", "{oops"], "--env-kwargs must be JSON"),
    # values the trainer would reject are refused before any model loads
    (["run", "--env", "espl/Arithmetic-v0", "--method", "rl", "--group-size", "1"], "--group-size 1 gives every RL group"),
    (["run", "--env", "espl/Arithmetic-v0", "--method", "gepa", "--test-program", "lcb"], "does not apply to gepa"),
    (["run", "--env", "espl/Arithmetic-v0", "--env-kwargs", '{"train_size": "many"}'], "cannot build"),
    (["run", "--env", "espl/SearchQA-v0", "--env-kwargs", '{"corpus_size": 10}'], "raise corpus_size"),
])
def test_bad_input_is_one_clear_line_and_exit_2(args, message, tmp_path):
    code, out, err = run_cli(*args, "--out", str(tmp_path / "run"))
    assert code == 2
    assert message in err and "fix:" in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "ERROR" in line]) == 1
    assert not (tmp_path / "run" / "run.json").exists()  # nothing left to block the corrected command


def test_a_failed_start_then_the_corrected_command_in_the_same_out_runs(tiny_model, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_cli("run", "--env", "espl/Arithmetc-v0", "--model", str(tiny_model), "--out", str(out), *SMALL)
    assert code == 2 and "unknown environment" in err
    code, _, err = run_cli("run", "--env", "espl/Arithmetic-v0", "--model", "/no/such/model", "--out", str(out), *SMALL)
    assert code == 2 and "does not exist" in err
    code, stdout, err = run_cli("run", "--env", "espl/Arithmetic-v0", "--method", "rl", "--model", str(tiny_model),
                                "--out", str(out), *SMALL)
    assert code == 0, err[-2000:]
    assert json.loads((out / "summary.json").read_text())["iterations_completed"] == 1


def test_unknown_option_in_config_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("env: espl/Arithmetic-v0\nbogus: 3\n")
    code, _, err = run_cli("run", "--config", str(config), "--out", str(tmp_path / "run"))
    assert code == 2 and "unknown option 'bogus'" in err


def test_envs_lists_ids_as_text_and_json(capsys):
    assert main(["envs"]) == 0
    assert "espl/Arithmetic-v0" in capsys.readouterr().out
    assert main(["envs", "--json"]) == 0
    assert {"id": "espl/Arithmetic-v0"}.items() <= json.loads(capsys.readouterr().out)[0].items()


def test_run_then_resume_from_toml_config(tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    config = tmp_path / "run.toml"
    config.write_text(f'env = "espl/Arithmetic-v0"\nmethod = "espl"\nmodel = "{tiny_model}"\nseed = 3\n')
    assert main(["run", "--config", str(config), "--out", str(out), *SMALL]) == 0
    assert "E-SPL run finished" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations_completed"] == 1 and summary["method"] == "espl"
    assert summary["provenance"]["git"]["commit"] and summary["provenance"]["packages"]["trl"]  # the code it ran
    assert (out / "best_prompt.txt").read_text().strip() == summary["test_program"]["text"].strip()
    assert (out / "LATEST").read_text().strip() == "1"
    assert (out / "learner" / "checkpoint-1").is_dir()

    # the same folder again without --resume is refused
    assert main(["run", "--config", str(config), "--out", str(out), *SMALL]) == 2
    # a changed config is refused on resume
    assert main(["run", "--config", str(config), "--out", str(out), *SMALL, "--resume", "--seed", "4"]) == 2

    more = [a if a != "1" else "2" for a in SMALL]  # --iterations 2
    # memory knobs are not part of a run's identity: an OOM-killed run resumes with smaller passes
    memory = ["--micro-batch-size", "1", "--no-gradient-checkpointing"]
    assert main(["run", "--config", str(config), "--out", str(out), *more, *memory, "--resume"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations_completed"] == 2 and len(summary["train_reward"]) == 2
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2]
    pool = json.loads((out / "iterations" / "000002" / "pool.json").read_text())
    assert pool["programs"][0]["id"] == "p0"
    assert (out / "learner" / "checkpoint-2").is_dir()

    # resuming a finished run runs nothing: the summary keeps the code that made it (or none)
    summary = json.loads((out / "summary.json").read_text())
    older = {**summary["provenance"], "git": {"commit": "0" * 40, "dirty": False}}
    for recorded in ({**summary, "provenance": older}, {k: v for k, v in summary.items() if k != "provenance"}):
        (out / "summary.json").write_text(json.dumps(recorded))
        assert main(["run", "--config", str(config), "--out", str(out), *more, "--resume"]) == 0
        assert json.loads((out / "summary.json").read_text()).get("provenance") == recorded.get("provenance")
