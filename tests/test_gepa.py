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


class PromptSensitiveEngine:
    """Rewards replies under the scripted prompt only, so GEPA must accept the proposal to win."""

    def __init__(self):
        self.calls = 0

    def run(self, specs, params):
        self.calls += 1
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
