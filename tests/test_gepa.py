"""The GEPA baseline through the gepa library, on a tiny model with a scripted reflector."""

import json
import random

from espl_bench.agents.rollout import EpisodeSpec, Rollout
from espl_bench.baselines.gepa import feedback
from espl_bench.envs.splits import SplitPlan
from espl_bench.running.cli import main

# GEPA's reflection prompt asks for the new instruction inside ``` fences.
NEW_PROMPT = "Compute carefully. Reply with only the number inside <answer></answer> tags."
SCRIPT = [{"contains": "", "answer": f"```\n{NEW_PROMPT}\n```"}]


def run_gepa(tiny_model, tmp_path, *extra):
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    out = tmp_path / "gepa"
    code = main(["run", "--env", "espl/Arithmetic-v0", "--method", "gepa", "--model", str(tiny_model),
                 "--reflector", f"script:{script}", "--iterations", "2", "--programs", "2", "--batch-size", "2",
                 "--group-size", "2", "--max-new-tokens", "8", "--eval-problems", "2", "--out", str(out), *extra])
    return code, out


def test_gepa_run_spends_the_espl_rollout_budget_and_commits_its_candidates(tiny_model, tmp_path):
    code, out = run_gepa(tiny_model, tmp_path)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["method"] == "gepa" and summary["iterations_completed"] == summary["iterations_planned"] == 1 and len(metrics) == 1
    budget = 2 * 2 * 2 * 2  # iterations x programs x batch x group: what E-SPL spends on this config
    gepa = metrics[0]["gepa"]
    # exactly E-SPL's training rollouts on the same flags, its validation passes included
    assert gepa["budget"] == budget and metrics[0]["rollouts"] == budget
    assert summary["budget"]["training_rollouts"] + summary["budget"]["validation_rollouts"] == budget
    assert metrics[0]["reflection_calls"] >= 1 and summary["test"]["problems"] == 2
    pool = json.loads((out / "iterations" / "000001" / "pool.json").read_text())
    texts = [p["preamble"] for p in pool["programs"]]
    assert texts[0] == "You are a careful problem solver."
    assert summary["test_program"]["id"] == gepa["best"]
    # the winner and whether it is the root, in the summary the board reads (budget 16: 4 problems, a quarter)
    assert summary["gepa"]["winner"] == gepa["best"] and summary["gepa"]["root"] == (gepa["best"] == "p0")
    assert summary["gepa"]["validation_problems"] == gepa["validation_problems"] == 4


class PromptSensitiveEngine:
    """Rewards replies under the scripted prompt only, so GEPA must accept the proposal to win."""

    def __init__(self):
        self.calls = 0
        self.specs: list[EpisodeSpec] = []

    def run(self, specs, params):
        self.calls += 1
        self.specs += specs
        return [Rollout(spec=s, problem_id=f"{s.split}/{s.index}", reward=float(NEW_PROMPT in s.system_prompt),
                        success=NEW_PROMPT in s.system_prompt, valid=True, answer="7", turns=1,
                        messages=[{"role": "system", "content": s.system_prompt},
                                  {"role": "user", "content": f"problem {s.index}"},
                                  {"role": "assistant", "content": "<answer>3</answer>"}], generated_tokens=5)
                for s in specs]


def test_gepa_accepts_a_better_prompt_and_records_its_lineage(tmp_path):
    from espl_bench.agents.offline_reflectors import offline_reflector
    from espl_bench.baselines.gepa import GepaLoop
    from espl_bench.config import RunConfig
    from espl_bench.method.learning import FrozenLearner
    from espl_bench.method.loop import Parts
    from espl_bench.method.program import Pool
    from espl_bench.method.selection import make_selector

    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    cfg = RunConfig(env="espl/Arithmetic-v0", method="gepa", iterations=3, programs=2, batch_size=2, group_size=2,
                    eval_problems=3, eval_samples=1)
    parts = Parts(engine=PromptSensitiveEngine(), learner=FrozenLearner(), selector=make_selector("uniform", 2.0),
                  mutation=None, crossover=None, plan=SplitPlan.of_sizes(20, 5), eos_id=0,
                  reflector=offline_reflector(f"script:{script}"))
    loop = GepaLoop(cfg, parts, Pool.with_root(), random.Random(0))
    shown: list[str] = []
    result = loop.iteration(1, progress=shown.append)
    programs = loop.pool.programs
    assert [p.preamble for p in programs[:2]] == ["You are a careful problem solver.", NEW_PROMPT]
    assert programs[1].parents == ["p0"] and programs[1].origin == "mutation"
    assert programs[1].mu == 1.0 and programs[0].mu == 0.0  # GEPA's validation means
    assert loop.test_program().id == "p1" and result.metrics.test.success == 1.0
    assert result.metrics.rollouts == cfg.rollout_budget  # the budget, to the rollout
    assert result.metrics.reflection_calls >= 1 and result.metrics.train_reward > 0
    # the progress bar follows the budget through the search
    spent = [s for s in shown if s.startswith("gepa search, ")]
    assert len(spent) > 1 and spent[-1] == f"gepa search, {result.metrics.rollouts}/{cfg.rollout_budget} rollouts"


def test_a_finished_gepa_run_resumes_to_the_same_summary(tiny_model, tmp_path):
    code, out = run_gepa(tiny_model, tmp_path)
    first = json.loads((out / "summary.json").read_text())
    code, out = run_gepa(tiny_model, tmp_path, "--resume")
    assert code == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["test"] == first["test"] and again["test_program"] == first["test_program"]


def test_feedback_names_the_reward_the_format_and_the_reference():
    rollout = Rollout(spec=EpisodeSpec("s", "train", 0), reward=0.0, success=False, valid=False, answer="42")
    text = feedback(rollout)
    assert "incorrect" in text and "format" in text and "42" in text
    assert "failed" in feedback(Rollout(spec=EpisodeSpec("s", "train", 0), error="step: ValueError: x"))


def test_the_validation_set_is_sized_from_gepas_budget_rule_with_a_floor():
    """GEPA's rule (budget >= valset + 15 x (minibatch + valset)) on large budgets, at least 10
    problems, at most a quarter of the budget, never more than the split has; the flag wins."""
    from espl_bench.baselines.gepa import MIN_VALSET, valset_size
    from espl_bench.config import RunConfig

    def cfg(**kw):
        return RunConfig(env="espl/Arithmetic-v0", method="gepa", **kw)

    calibrated = cfg(iterations=4, programs=2, batch_size=4, group_size=4)  # budget 128: the formula gives 4
    assert calibrated.rollout_budget == 128 and valset_size(calibrated, 16, 4) == MIN_VALSET == 10
    large = cfg(iterations=10, programs=4, batch_size=10, group_size=5, validation_problems=200)  # budget 2000
    assert valset_size(large, 200, 3) == (2000 - 15 * 3) // 16 == 122
    assert large.rollout_budget >= 122 + 15 * (3 + 122)  # room for GEPA's 15 proposal attempts
    assert valset_size(large, 16, 3) == 16  # the split has no more
    assert valset_size(cfg(iterations=2, programs=2, batch_size=2, group_size=2), 16, 2) == 4  # budget 16: a quarter
    assert valset_size(cfg(gepa_validation_problems=12), 16, 2) == 12


def test_the_validation_setting_is_refused_where_it_cannot_apply():
    import pytest

    from espl_bench.config import RunConfig

    with pytest.raises(ValueError, match="--method gepa only"):
        RunConfig(env="espl/Arithmetic-v0", method="evolution", gepa_validation_problems=10)
    with pytest.raises(ValueError, match="raise --validation-problems"):
        RunConfig(env="espl/Arithmetic-v0", method="gepa", gepa_validation_problems=20, validation_problems=16)


def gepa_loop(tmp_path, script_answers=SCRIPT, **kw):
    from espl_bench.agents.offline_reflectors import offline_reflector
    from espl_bench.baselines.gepa import GepaLoop
    from espl_bench.config import RunConfig
    from espl_bench.method.learning import FrozenLearner
    from espl_bench.method.loop import Parts
    from espl_bench.method.program import Pool
    from espl_bench.method.selection import make_selector

    script = tmp_path / "script.json"
    script.write_text(json.dumps(script_answers))
    cfg = RunConfig(env="espl/Arithmetic-v0", method="gepa", eval_problems=3, eval_samples=1, **kw)
    parts = Parts(engine=PromptSensitiveEngine(), learner=FrozenLearner(), selector=make_selector("uniform", 2.0),
                  mutation=None, crossover=None, plan=SplitPlan.of_sizes(60, 5, 16), eos_id=0,
                  reflector=offline_reflector(f"script:{script}"))
    return cfg, GepaLoop(cfg, parts, Pool.with_root(), random.Random(0))


def test_gepa_validates_on_ten_problems_paid_from_the_same_rollout_budget(tmp_path):
    """The calibrated budget (128): the validation set is 10 problems of the validation split, each
    of its passes is 10 rollouts, and training plus validation rollouts are the budget exactly."""
    from espl_bench.baselines.gepa import selection
    from espl_bench.running.runner import budget

    cfg, loop = gepa_loop(tmp_path, iterations=4, programs=2, batch_size=4, group_size=4)
    metrics = loop.iteration(1).metrics
    account = metrics.gepa
    assert account["validation_problems"] == 10 and account["validation_samples"] == 1
    assert metrics.validation_rollouts >= 10 and metrics.validation_rollouts % 10 == 0
    ledger = budget([metrics])
    assert ledger.training_rollouts + ledger.validation_rollouts == metrics.rollouts == cfg.rollout_budget == 128
    assert ledger.validation_rollouts == metrics.validation_rollouts and ledger.training_rollouts > 0
    won = selection([metrics])  # the scripted prompt wins on validation: not the root
    assert won is not None and won.winner == account["best"] == "p1" and won.root is False and not account["winner_is_root"]
    assert won.winner_score == 1.0 and won.root_score == 0.0 and won.validation_problems == 10
    assert won.candidates == account["candidates"] >= 2


def test_a_junk_proposal_is_refused_counted_and_costs_no_rollouts(tmp_path):
    """GEPA's proposals pass the admission rule: a proposal of code is no candidate, no rollout
    is spent evaluating it, and the refusals are counted by reason as E-SPL's refused edits are."""
    junk = [{"contains": "", "answer": "```\nconst {assert} = require('jest'); task1(5);\n```"}]
    cfg, loop = gepa_loop(tmp_path, junk, iterations=4, programs=2, batch_size=4, group_size=4)
    metrics = loop.iteration(1).metrics
    assert [p.id for p in loop.pool.programs] == ["p0"] and loop.test_program().id == "p0"
    refused = metrics.reflection_counts.rejected_edits
    assert refused == {"placeholder": metrics.reflection_calls} and metrics.reflection_calls >= 2
    assert metrics.reflection_counts.copied_edits_rejected == metrics.reflection_calls  # the copy guard's share
    # every rollout went to the root: its validation pass and the minibatches it was shown on
    assert metrics.rollouts == cfg.rollout_budget
    assert all(s.system_prompt == loop.pool.programs[0].render() for s in loop.parts.engine.specs)


def test_the_board_says_which_candidate_each_gepa_run_ended_on_and_older_runs_not_recorded(tmp_path):
    from espl_bench.leaderboards.aggregate import build_leaderboard
    from espl_bench.leaderboards.render import render_markdown, render_site
    from tests.test_leaderboards import write_run

    def gepa_run(seed, selection=None):
        folder = write_run(tmp_path / "runs" / f"gepa-s{seed}", method="gepa", seed=seed)
        summary = json.loads((folder / "summary.json").read_text())
        summary["gepa"] = selection
        (folder / "summary.json").write_text(json.dumps(summary))

    gepa_run(0, {"winner": "p0", "root": True, "candidates": 3, "validation_problems": 10,
                 "winner_score": 0.3, "root_score": 0.3})
    gepa_run(1, {"winner": "p2", "root": False, "candidates": 4, "validation_problems": 10,
                 "winner_score": 0.6, "root_score": 0.2})
    gepa_run(2)  # made before runs recorded it
    write_run(tmp_path / "runs" / "espl-s0", seed=0)
    markdown = render_markdown(build_leaderboard([tmp_path / "runs"]))
    assert "GEPA's selection per run" in markdown
    assert "| 0 | p0 | yes | 0.300 | 0.300 | 3 | 10 |" in markdown
    assert "| 1 | p2 | no | 0.600 | 0.200 | 4 | 10 |" in markdown
    assert "| 2 | not recorded |" in markdown
    render_site(build_leaderboard([tmp_path / "runs"]), tmp_path / "site")
    index = (tmp_path / "site" / "index.html").read_text()
    assert "GEPA&#x27;s selection" in index and "not recorded" in index
    pages = {p.name: p.read_text() for p in (tmp_path / "site" / "runs").glob("*gepa*")}
    assert sum("GEPA&#x27;s winner</th><td class=\"t\">p2 (not the root" in t for t in pages.values()) == 1
    assert sum("GEPA&#x27;s winner" in t for t in pages.values()) == 2  # the unrecorded run's page as before


def test_a_board_whose_gepa_runs_recorded_no_winner_renders_as_before(tmp_path):
    """No run recorded a winner (the committed board's runs): no section, no new fact, nothing changes."""
    from espl_bench.leaderboards.aggregate import build_leaderboard
    from espl_bench.leaderboards.render import render_markdown
    from tests.test_leaderboards import write_run

    write_run(tmp_path / "runs" / "gepa-s0", method="gepa", seed=0)
    markdown = render_markdown(build_leaderboard([tmp_path / "runs"]))
    assert "GEPA" not in markdown and "not recorded" not in markdown.split("Runs by code version")[0]
