"""Fuzzing the whole reflection path: operators, admission into the pool, and the committed run folder.

Whatever the reflector answers (arbitrary text, arbitrary JSON, broken unicode), an iteration's
operators return an outcome, the pool only gains admissible programs, and the commit writes files
that read back.
"""

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from espl_bench.agents.rollout import EpisodeId, EpisodeSpec, Rollout
from espl_bench.method.learning import FrozenLearner
from espl_bench.method.program import Pool, Program
from espl_bench.method.reflection import Crossover, Mutation, win_matrix
from espl_bench.records import (
    IterationMetrics,
    IterationState,
    RunHeader,
    RunSummary,
    TestProgram,
)
from espl_bench.rundir import IterationRecord, RunDir
from espl_bench.training.policy import Policy
from tests.fakes import ScriptedReflector

ODD = ["\udcff", "\ud800x", "<new principle, at most 32 words>", "...", "$max_words", "G0", "\x00", "é" * 500]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=40),
                    st.sampled_from(ODD))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                      max_leaves=12)
ops = st.fixed_dictionaries({"op": st.sampled_from(["add", "modify", "merge", "remove", "delete", 3])},
                            optional={"text": st.one_of(st.text(max_size=80), st.sampled_from(ODD), values),
                                      "id": st.one_of(st.sampled_from(["G0", "G1", "G9"]), values),
                                      "ids": st.one_of(st.lists(st.sampled_from(["G0", "G1", "G5"]), max_size=3), values)})
answers = st.one_of(st.text(max_size=300), st.sampled_from(ODD),
                    values.map(lambda v: json.dumps(v)),
                    st.lists(ops, max_size=10).map(lambda v: "```json\n" + json.dumps(v, ensure_ascii=False) + "\n```"))


class _Tokens:
    """A sampler stand-in with a chat template: four characters a token."""

    def encode(self, conversation):
        return list(range(sum(len(m["content"]) for m in conversation) // 4))


ADMIT = Policy(sampler=_Tokens(), learner=FrozenLearner(), eos_id=0, reference=lambda: ("", {})).admit


def _rollout(program: str, slot: int, problem: int, sample: int, reward: float) -> Rollout:
    spec = EpisodeSpec("sys", "train", problem, EpisodeId(program=program, slot=slot, problem=problem, sample=sample))
    return Rollout(spec=spec, problem_id=f"q{problem}", observation=f"problem {problem}",
                   messages=[*spec.first_messages(f"problem {problem}"), {"role": "assistant", "content": "x"}],
                   reward=reward, success=reward >= 1, answer="42", turns=1)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(answers, min_size=1, max_size=8), fallback=st.booleans())
def test_no_reflector_answer_crashes_an_iteration_or_writes_an_unreadable_run(script, fallback):
    a = Program("p0", {"G0": "Be careful.", "G1": "Check signs."}, mu=27.0, sigma=3.0)
    b = Program("p1", {"G0": "Show steps."}, parents=["p0"], origin="mutation", iteration=1)
    pool = Pool([a, b])
    rollouts = [_rollout(p.id, s, q, n, float((q + n + s) % 2)) for s, p in enumerate((a, b)) for q in range(3)
                for n in range(2)]
    reflector = ScriptedReflector(script)
    outcomes = [Mutation(reflector, revision_fallback=fallback, concurrency=1)(a, rollouts[:6], 2)]
    _, wins = win_matrix(rollouts)
    outcomes.append(Crossover(reflector)(a, [a, b], wins, {r.problem_id: r.observation for r in rollouts}, 2))
    for outcome in outcomes:
        assert outcome.label in ("revision", "fallback", "crossover", "failed", "skipped")
        if outcome.child is not None:
            refused = ADMIT(outcome.child)
            if refused:
                outcome.reject(refused)
            else:
                pool.add(outcome.child)
                assert outcome.child.principles and all(isinstance(t, str) and t for t in outcome.child.principles.values())
    with tempfile.TemporaryDirectory() as tmp:
        rundir = RunDir(Path(tmp) / "run")
        rundir.create(RunHeader(config={}))
        rundir.commit(IterationRecord(
            iteration=1, state=IterationState(iteration=1), pool=pool.to_record(),
            rollouts=tuple(r.to_record() for r in rollouts), reflections=tuple(o.to_record() for o in outcomes),
            metrics=IterationMetrics(iteration=1, train_reward=0.0, train_success=0.0, rollouts=len(rollouts),
                                     children=[o.child.id for o in outcomes if o.child])),
            summary=RunSummary(env="e", method="espl", model="m", seed=0, iterations_completed=1, iterations_planned=1,
                               test_program=TestProgram(id=pool.latest().id, rule="latest", mu=25.0, sigma=8.0,
                                                        text=pool.latest().render())),
            best_prompt=pool.latest().render())
        for path in rundir.root.rglob("*"):
            if path.is_file():
                path.read_text(encoding="utf-8")  # valid UTF-8, whatever the reflector wrote
        loaded = rundir.load(1, transcripts=True)
        assert Pool.from_record(loaded.pool).to_dict() == json.loads(json.dumps(pool.to_dict()))
        assert [r.label for r in loaded.reflections] == [o.label for o in outcomes]
        lines = (rundir.iterations / "000001" / "reflections.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line)["label"] for line in lines] == [o.label for o in outcomes]
    assert len(pool) == 2 + sum(o.child is not None for o in outcomes)
