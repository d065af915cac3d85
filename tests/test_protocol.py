"""The evaluation protocol, the method table's test-time rules, and the weights x prompt breakdown."""

import dataclasses
import json
import random

import pytest

from espl_bench.agents.offline_reflectors import offline_reflector
from espl_bench.agents.rollout import EpisodeId, EpisodeSpec, Rollout, RolloutEngine
from espl_bench.agents.sampler import SamplingParams, TransformersSampler
from espl_bench.baselines.gepa import GepaLoop
from espl_bench.config import RunConfig
from espl_bench.envs.registry import make_env
from espl_bench.envs.splits import SplitPlan
from espl_bench.method.learning import FrozenLearner
from espl_bench.method.loop import EsplLoop, Parts
from espl_bench.method.program import Pool
from espl_bench.method.reflection import Crossover, Mutation
from espl_bench.method.selection import make_selector
from espl_bench.method_table import METHODS
from espl_bench.records import EvalItems
from espl_bench.running.cli import main
from espl_bench.scoring.evaluation import evaluate_prompts, item_specs
from tests.fakes import ScriptedReflector

SMALL = ["--iterations", "2", "--programs", "2", "--batch-size", "2", "--group-size", "2", "--max-new-tokens", "8",
         "--eval-problems", "3", "--eval-samples", "2", "--reflector-max-tokens", "16", "--micro-batch-size", "4"]


def test_an_episode_depends_on_its_coordinates_not_on_its_batch(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sampler = TransformersSampler(AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model))
    engine = RolloutEngine(lambda: make_env("espl/Arithmetic-v0"), sampler)
    items = EvalItems("test", (0, 1, 2), 2, seed=5)
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=1.0)
    alone = evaluate_prompts(engine, [("Be brief.", "p")], items, params)[0]
    # the same episodes inside a bigger batch, in another order, next to another prompt's
    others = item_specs(EvalItems("test", (7, 3), 3, seed=9), "Be careful.")
    mixed = engine.run([*others, *reversed(item_specs(items, "Be brief."))], params)
    replies = {(r.spec.index, r.spec.id.sample): r.response for r in mixed if r.spec.system_prompt == "Be brief."}
    again = {(r.spec.index, r.spec.id.sample): r.response for r in engine.run(item_specs(items, "Be brief."), params)}
    assert replies == again and len(again) == 6
    assert evaluate_prompts(engine, [("Be brief.", "p")], items, params)[0] == alone
    assert len(set(again.values())) > 1  # the samples of one problem differ: each has its own seed


def test_each_cell_is_decoded_in_a_call_of_its_own():
    """In bfloat16 a row's logits depend on its batch-mates (the v8 arithmetic base/root cell lost a
    problem when scored beside another prompt), so the breakdown's cells never share a batch."""

    class Recording:
        def __init__(self):
            self.calls: list[list[EpisodeSpec]] = []

        def run(self, specs, params):
            self.calls.append(list(specs))
            return [Rollout(spec=s, success=s.system_prompt == "B" and s.index == 3) for s in specs]

    engine = Recording()
    items = EvalItems("test", (3, 1), 2, seed=5)
    cells = evaluate_prompts(engine, [("A", "pa"), ("B", "pb")], items, SamplingParams(max_new_tokens=4))  # type: ignore[arg-type]
    assert [{s.system_prompt for s in call} for call in engine.calls] == [{"A"}, {"B"}]
    assert all(call == item_specs(items, prompt) for call, prompt in zip(engine.calls, "AB"))
    assert [c.program for c in cells] == ["pa", "pb"] and [c.successes for c in cells] == [((0, 0), (0, 0)), ((1, 1), (0, 0))]


def _script(tmp_path, rules):
    path = tmp_path / f"script-{len(list(tmp_path.glob('script-*')))}.json"
    path.write_text(json.dumps(rules))
    return str(path)


def test_two_methods_ending_on_the_same_prompt_and_weights_report_identical_results(tiny_model, tmp_path):
    # reflectors that change nothing: evolution's edits are unusable, GEPA's proposals are empty
    nothing = _script(tmp_path, [{"contains": "", "answer": "no edits"}])
    results = {}
    for method, seed in (("evolution", 0), ("gepa", 1), ("self-reflection", 2)):
        out = tmp_path / method
        assert main(["run", "--env", "espl/Arithmetic-v0", "--method", method, "--model", str(tiny_model),
                     "--reflector", f"script:{nothing}", "--seed", str(seed), "--out", str(out), *SMALL]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["test_program"]["text"] == "You are a careful problem solver."
        results[method] = summary["test"]
    first = results["evolution"]
    for other in results.values():
        assert other["per_problem"] == first["per_problem"] and other["success"] == first["success"]
        assert other["items"] == first["items"] and other["interval"] == first["interval"]


class PrincipleEngine:
    """Rewards a prompt by how many principles it has: every child of a growing lineage is better."""

    def run(self, specs, params):
        out = []
        for s in specs:
            n = s.system_prompt.count("[G")
            reward = min(1.0, 0.2 * n + (0.1 if (s.id.sample or 0) % 2 else 0.0))
            out.append(Rollout(spec=s, problem_id=f"{s.split}/{s.index}", observation=f"problem {s.index}",
                               messages=[*s.first_messages(f"problem {s.index}"), {"role": "assistant", "content": "x"}],
                               reward=reward, success=reward >= 0.5, valid=True, answer="1", turns=1, generated_tokens=1))
        return out


class NullLearner(FrozenLearner):
    trainable = True


def _improving_reflector():
    counter = iter(range(10**6))

    def respond(messages):
        text = messages[-1]["content"]
        if "Summarise" in text:
            return "summary"
        return f'```json\n[{{"op": "add", "text": "Carry the digits of column {next(counter)} before moving to the next one."}}]\n```'

    return ScriptedReflector(respond)


@pytest.mark.parametrize("method", ["espl", "rl", "evolution", "self-reflection"])
def test_every_method_is_scored_with_the_program_its_spec_names(method):
    cfg = RunConfig(env="espl/Arithmetic-v0", method=method, iterations=4, programs=2, batch_size=3, group_size=2,
                    eval_problems=3, eval_samples=1, crossover_prob=0.0)
    reflector = _improving_reflector()
    spec = METHODS[method]
    parts = Parts(engine=PrincipleEngine(), learner=NullLearner() if spec.trains else FrozenLearner(),
                  selector=make_selector("lucb"), mutation=Mutation(reflector) if spec.mutates else None,
                  crossover=Crossover(reflector) if spec.crosses else None, plan=SplitPlan.of_sizes(40, 10), eos_id=0)
    loop = EsplLoop(cfg, parts, Pool.with_root(), random.Random(0))
    tests = [loop.iteration(t).metrics.test for t in range(1, 5)]
    chosen = loop.test_program()
    expected = {"lcb": loop.pool.best(), "latest": loop.pool.latest(), "root": loop.pool.root()}[spec.test_rule]
    assert chosen is expected and tests[-1].program == chosen.id
    if method == "self-reflection":
        # a population of one: each iteration's child is the newest, better program, and it is scored
        assert chosen.id == f"p{len(loop.pool) - 1}" and chosen.id != "p0"
        assert [t.program for t in tests] == ["p1", "p2", "p3", "p4"]
        assert tests[-1].success > tests[0].success
    if method == "rl":
        assert chosen.id == "p0" and len(loop.pool) == 1
    override = RunConfig(**{**cfg.model_dump(), "test_program": "root"})
    assert EsplLoop(override, parts, loop.pool, random.Random(0)).test_program().id == "p0"


class AdviceEngine(PrincipleEngine):
    """Rewards a prompt by how many lines of advice it has (GEPA writes whole prompts, not principles)."""

    def run(self, specs, params):
        return [dataclasses.replace(r, reward=min(1.0, 0.3 * r.spec.system_prompt.count("\n- ")),
                                    success=r.spec.system_prompt.count("\n- ") >= 2)
                for r in super().run(specs, params)]


def test_gepa_is_scored_with_its_validation_best(tmp_path):
    new = "Compute carefully.\n\n- Add the ones digits first.\n- Carry the tens.\n- Write the sum alone."
    script = _script(tmp_path, [{"contains": "", "answer": f"```\n{new}\n```"}])
    cfg = RunConfig(env="espl/Arithmetic-v0", method="gepa", iterations=3, programs=2, batch_size=2, group_size=2,
                    eval_problems=3, eval_samples=1)
    parts = Parts(engine=AdviceEngine(), learner=FrozenLearner(), selector=make_selector("uniform"), mutation=None,
                  crossover=None, plan=SplitPlan.of_sizes(20, 5, 4), eos_id=0, reflector=offline_reflector(f"script:{script}"))
    loop = GepaLoop(cfg, parts, Pool.with_root(), random.Random(0))
    result = loop.iteration(1)
    best = max(loop.pool.programs, key=lambda p: p.mu)
    assert loop.test_program() is best and best.preamble == new and result.metrics.test.program == best.id
    assert result.metrics.rollouts == cfg.rollout_budget


def test_an_espl_run_reports_the_weights_x_prompt_breakdown_and_evaluate_repeats_it(tiny_model, tmp_path, capsys):
    edit = _script(tmp_path, [{"contains": "Summarise", "answer": "It added."},
                              {"contains": "", "answer": '```json\n[{"op": "add", "text": "Add the units digits first."}]\n```'}])
    out = tmp_path / "espl"
    assert main(["run", "--env", "espl/Arithmetic-v0", "--method", "espl", "--model", str(tiny_model),
                 "--reflector", f"script:{edit}", "--test-program", "latest", "--learning-rate", "0.01",
                 "--out", str(out), *SMALL]) == 0
    summary = json.loads((out / "summary.json").read_text())
    split = summary["breakdown"]
    assert split["measured_on"] == "test split, 3 problems x 2 samples"
    assert set(split["cells"]) == {"base/root", "base/program", "trained/root", "trained/program"}
    assert split["test_program"] == summary["test_program"]["id"] != split["root_program"]
    assert set(split["effects"]) == {"prompt (base weights)", "prompt (trained weights)", "weights (root prompt)",
                                     "weights (test program)", "interaction", "total"}
    for effect in split["effects"].values():
        assert effect["low"] <= effect["estimate"] <= effect["high"] and effect["level"] == 0.95
    cells = split["cells"]
    interaction = (cells["trained/program"]["success"] - cells["trained/root"]["success"]
                   - cells["base/program"]["success"] + cells["base/root"]["success"])
    assert split["effects"]["interaction"]["estimate"] == pytest.approx(interaction)
    assert split["reused"] == ["trained/program"]  # the final test evaluation is that cell
    assert summary["budget"]["evaluation_rollouts"] == 2 * 6 + 3 * 6  # two test evaluations, three new cells
    assert json.loads((out / "breakdown.json").read_text())["cells"] == cells

    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    again = json.loads((out / "evaluation-3x2.json").read_text())
    for name, cell in cells.items():  # the same protocol on the same items, from the run folder
        assert again["cells"][name]["per_problem"]["successes"] == cell["per_problem"]["successes"]
    assert "interaction" in capsys.readouterr().out
    assert main(["evaluate", str(out), "--problems", "5", "--samples", "1"]) == 0
    bigger = json.loads((out / "evaluation-5x1.json").read_text())
    assert bigger["measured_on"] == "test split, 5 problems x 1 samples" and len(bigger["cells"]) == 4


def test_a_frozen_run_on_its_root_prompt_has_one_cell(tiny_model, tmp_path):
    nothing = _script(tmp_path, [{"contains": "", "answer": "no edits"}])
    out = tmp_path / "evo"
    assert main(["run", "--env", "espl/Arithmetic-v0", "--method", "evolution", "--model", str(tiny_model),
                 "--reflector", f"script:{nothing}", "--out", str(out), *SMALL]) == 0
    split = json.loads((out / "summary.json").read_text())["breakdown"]
    assert list(split["cells"]) == ["base/root"] and split["effects"] == {}
    assert main(["evaluate", str(out)]) == 0


def test_placement_user_appends_the_program_to_the_problem_and_empty_root_is_the_bare_problem():
    spec = EpisodeSpec("[G0] Check signs.", "test", 0, placement="user")
    messages = spec.first_messages("What is 2 + 2?")
    assert len(messages) == 1 and messages[0]["role"] == "user"
    assert messages[0]["content"].startswith("What is 2 + 2?") and messages[0]["content"].endswith("[G0] Check signs.")
    assert EpisodeSpec("", "test", 0, placement="user").first_messages("What is 2 + 2?") == [
        {"role": "user", "content": "What is 2 + 2?"}]
    assert EpisodeSpec("Sys.", "test", 0).first_messages("Q")[0] == {"role": "system", "content": "Sys."}


def test_crossover_runs_only_when_the_best_program_won_a_problem_outright():
    from espl_bench.method.program import Program

    cfg = RunConfig(env="espl/Arithmetic-v0", method="evolution", crossover_prob=1.0, programs=2, group_size=1)
    calls = []
    crossover = Crossover(ScriptedReflector(lambda m: calls.append(m) or '[{"op": "add", "text": "Merge both."}]'))
    parts = Parts(engine=PrincipleEngine(), learner=FrozenLearner(), selector=make_selector("uniform"),
                  mutation=Mutation(ScriptedReflector(["summary", "no edits"])), crossover=crossover,
                  plan=SplitPlan.of_sizes(10, 5), eos_id=0)
    a, b = Program("p0", {"G0": "a"}), Program("p1", {"G0": "b"})
    loop = EsplLoop(cfg, parts, Pool([a, b]), random.Random(0))

    def rollouts(scores):
        return [Rollout(spec=EpisodeSpec("s", "train", q, EpisodeId(program=pid, slot=slot, problem=q, sample=0)),
                        problem_id=f"q{q}", observation=f"problem {q}", reward=r)
                for slot, (pid, row) in enumerate(scores.items()) for q, r in enumerate(row)]

    # p0 is best overall but wins no problem outright (ties, and p1 wins q1): no crossover
    outcomes = loop.evolve([a, b], {"p0": 0.5, "p1": 0.45}, rollouts({"p0": [1, 0, 0], "p1": [1, 0.35, 0]}), 1)
    assert [o.label for o in outcomes if o.kind == "crossover"] == ["skipped"] and not calls
    outcomes = loop.evolve([a, b], {"p0": 0.6, "p1": 0.45}, rollouts({"p0": [1, 0, 0.8], "p1": [1, 0.35, 0]}), 1)
    assert any(o.kind == "crossover" and o.label != "skipped" for o in outcomes) and calls


def test_the_config_offers_exactly_the_method_table():
    """`--method`'s choices are the table's names: a method added to one and not the other fails here."""
    from typing import get_args

    from espl_bench.config import Method

    assert set(get_args(Method)) == set(METHODS)
