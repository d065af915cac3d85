import json

import pytest

from espl_bench.agents.reflector import ReflectorCallError
from espl_bench.agents.rollout import EpisodeId, EpisodeSpec, Rollout
from espl_bench.method.program import Pool, Program
from espl_bench.method.reflection import Crossover, Mutation, win_matrix
from tests.fakes import ScriptedReflector

# longer than a summary would be, so that reflection summarises it (shorter ones are shown as they are)
LONG_REASONING = "I lined up the digits, added the units, carried the ten and went on to the tens. " * 4


def rollout(program, problem, reward, slot=0, sample=0):
    r = Rollout(spec=EpisodeSpec("sys", "train", 0, EpisodeId(program=program, slot=slot, problem=problem, sample=sample)))
    r.problem_id = f"q{problem}"
    r.messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": f"problem {problem}"},
                  {"role": "assistant", "content": f"answer {reward}. " + LONG_REASONING}]
    r.reward, r.success, r.answer = reward, reward >= 1, "42"
    return r


def answer_by_purpose(mapping):
    def respond(messages):
        text = messages[0]["content"]
        for key, value in mapping.items():
            if key in text:
                return value(messages) if callable(value) else value
        raise AssertionError(f"unexpected prompt: {text[:80]}")

    return respond


CRITIQUE = '```json\n[{"op": "add", "text": "Evaluate parentheses first."}]\n```'
REVISION = '```json\n[{"op": "modify", "id": "G0", "text": "Check every sign."}, {"op": "add", "text": "Evaluate parentheses first."}]\n```'


def scripted(critique=CRITIQUE, revision=REVISION):
    return ScriptedReflector(answer_by_purpose({
        "Summarise the attempt": "Used G0, forgot the sign.",
        "Propose at most": critique,
        "Turn them into one coherent revision": revision,
        "Your previous answer could not be used": revision,
    }))


def setup():
    parent = Program(id="p0", principles={"G0": "Be careful."}, mu=27.0, sigma=3.0)
    pool = Pool([parent])
    rollouts = [rollout("p0", 0, 1.0), rollout("p0", 0, 0.0, sample=1), rollout("p0", 1, 0.0), rollout("p0", 1, 0.0, sample=1)]
    return parent, pool, rollouts


def test_valid_reflection_adds_child_with_parent_edits_and_prior():
    parent, pool, rollouts = setup()
    reflector = scripted()
    outcome = Mutation(reflector, inflation=4.0)(parent, rollouts, iteration=3)
    assert outcome.status == "ok" and outcome.child is not None
    child = outcome.child
    assert child.parents == ["p0"] and child.origin == "mutation" and child.iteration == 3
    assert child.principles == {"G0": "Check every sign.", "G1": "Evaluate parentheses first."}
    assert child.edits[0] == {"op": "modify", "id": "G0", "text": "Check every sign."}
    assert (child.mu, child.sigma) == pytest.approx((27.0, 5.0))
    # only the mixed-outcome problem q0 is reflected on: 2 summaries, 1 critique, 1 revision
    assert outcome.calls == 4 and len(reflector.calls) == 4


@pytest.mark.parametrize("bad", ["", "no json here", '```json\n[{"op": "add", "text": "trunc', '[{"op": "explode"}]',
                                 '[{"op": "modify", "id": "G42", "text": "x"}]'])
def test_malformed_reflection_leaves_pool_unchanged_and_is_counted(bad):
    parent, pool, rollouts = setup()
    before = json.dumps(pool.to_dict(), sort_keys=True)
    outcome = Mutation(scripted(critique=bad, revision=bad), revision_fallback=False)(parent, rollouts, 1)
    assert outcome.status == "failed" and outcome.child is None
    assert json.dumps(pool.to_dict(), sort_keys=True) == before


def test_bad_revision_gets_one_repair_then_fails_without_fallback():
    parent, pool, rollouts = setup()
    outcome = Mutation(scripted(revision="nope"), revision_fallback=False)(parent, rollouts, 1)
    assert outcome.status == "failed" and outcome.repairs == 1
    assert "revision" in outcome.reason


def test_revision_fallback_applies_validated_critique_edits():
    parent, pool, rollouts = setup()
    outcome = Mutation(scripted(revision="nope"))(parent, rollouts, 1)
    assert outcome.status == "ok" and outcome.fallback
    assert outcome.child.principles == {"G0": "Be careful.", "G1": "Evaluate parentheses first."}


def test_reflector_call_error_is_a_failed_reflection():
    parent, pool, rollouts = setup()

    class Down:
        honours_schema = False

        def complete(self, messages, *, purpose="", max_tokens=None, schema=None, stop=None):
            raise ReflectorCallError("timeout")

    outcome = Mutation(Down())(parent, rollouts, 1)
    assert outcome.status == "failed" and outcome.child is None and len(pool) == 1


def test_all_solved_is_skipped():
    parent, pool, _ = setup()
    outcome = Mutation(scripted())(parent, [rollout("p0", 0, 1.0)], 1)
    assert outcome.status == "skipped"


def test_win_matrix_lists_outright_winners_only():
    rs = [rollout("a", 0, 1.0), rollout("b", 0, 0.0, slot=1), rollout("a", 1, 0.0), rollout("b", 1, 1.0, slot=1),
          rollout("a", 2, 1.0), rollout("b", 2, 1.0, slot=1)]
    phi, wins = win_matrix(rs)
    assert phi == {"a": {"q0": 1.0, "q1": 0.0, "q2": 1.0}, "b": {"q0": 0.0, "q1": 1.0, "q2": 1.0}}
    assert wins == {"a": ["q0"], "b": ["q1"]}  # q2 is a tie: nobody wins it


def test_crossover_child_has_both_parents_and_precision_weighted_prior():
    a = Program(id="a", principles={"G0": "x"}, mu=30.0, sigma=1.0)
    b = Program(id="b", principles={"G0": "y"}, mu=20.0, sigma=2.0)
    reflector = ScriptedReflector(['```json\n[{"op": "add", "text": "Write y too."}]\n```'])
    outcome = Crossover(reflector, inflation=0.0)(a, [a, b], {"a": ["q0"], "b": ["q1"]}, {"q0": "P0", "q1": "P1"}, 2)
    assert outcome.status == "ok"
    assert outcome.child.parents == ["a", "b"] and outcome.child.origin == "crossover"
    assert outcome.child.principles == {"G0": "x", "G1": "Write y too."}
    assert outcome.child.mu == pytest.approx(28.0)
    assert "P1" in reflector.calls[0][0]["content"]  # the winner's problem is shown


def test_crossover_skipped_without_other_winners():
    a = Program(id="a", principles={}, mu=30.0, sigma=1.0)
    outcome = Crossover(ScriptedReflector(["[]"]))(a, [a], {"a": ["q0"]}, {"q0": "P0"}, 1)
    assert outcome.status == "skipped"


def test_multi_turn_trajectory_is_rendered_with_actions_observations_and_outcome():
    from espl_bench.method.reflection import render_trajectory

    r = rollout("p0", 0, 0.0)
    r.messages = r.messages[:2] + [
        {"role": "assistant", "content": '<tool_call>{"name": "search", "arguments": {"query": "Voss"}}</tool_call>'},
        {"role": "user", "content": "[d3] Voss Prize: an award."},
        {"role": "assistant", "content": "<answer>Lake Mirrow</answer>"},
    ]
    r.turns, r.invalid_actions = 2, 1
    text = render_trajectory(r)
    assert "[1] ACTION: <tool_call>" in text and "[1] OBSERVATION: [d3] Voss Prize" in text
    assert "[2] ACTION: <answer>Lake Mirrow</answer>" in text
    assert "OUTCOME: reward 0 after 2 turns, 1 invalid actions" in text


def test_long_trajectories_fit_the_budget():
    from espl_bench.method.reflection import render_trajectory

    r = rollout("p0", 0, 0.0)
    r.messages = r.messages[:2] + [{"role": "assistant" if i % 2 == 0 else "user", "content": "x" * 5000} for i in range(40)]
    text = render_trajectory(r, budget=3000)
    assert len(text) < 7000 and "elided" in text and text.splitlines()[-1].startswith("OUTCOME")


def test_an_edit_copying_the_templates_is_rejected_and_counted():
    from espl_bench.method.reflection import load_templates

    # a sentence of the critique's instructions, with the run's word cap filled in
    copied = "Each text is one principle of at most 32 words."
    assert "Each text is one principle of at most $max_words words." in load_templates()["critique"].template
    example = '{"ops": [{"op": "add", "text": "' + copied + '"}, {"op": "add", "text": "your edits"}]}'
    parent, pool, rollouts = setup()
    outcome = Mutation(scripted(critique=example, revision=example))(parent, rollouts, iteration=1)
    assert outcome.status == "failed" and outcome.child is None and outcome.label == "failed"
    assert outcome.copies == 4 and outcome.repairs == 1  # the copies got their repair attempt, which copied again
    assert outcome.reason == "no critique produced a valid edit"
    assert any("copies the example" in entry.get("prompt", "") for entry in outcome.log)
    # a near-copy, a placeholder, words lifted from an instruction: no better than the text itself
    mixed = ('```json\n[{"op": "add", "text": "Each text is one principle of at most 32 words!"}, '
             '{"op": "add", "text": "your edits"}, {"op": "add", "text": "Carry the tens digit before adding."}]\n```')
    outcome = Mutation(scripted(critique=mixed, revision=mixed), max_ops=3)(parent, rollouts, iteration=1)
    assert outcome.label == "revision" and outcome.copies == 4  # two copies in the critique, two in the revision
    assert list(outcome.child.principles.values()) == ["Be careful.", "Carry the tens digit before adding."]


def test_edits_that_change_nothing_make_no_child():
    parent, pool, rollouts = setup()
    same = '```json\n[{"op": "modify", "id": "G0", "text": "Be careful."}]\n```'
    outcome = Mutation(scripted(critique=same, revision=same))(parent, rollouts, iteration=1)
    assert outcome.status == "failed" and "unchanged" in outcome.reason


def test_outcomes_name_where_a_child_came_from():
    parent, pool, rollouts = setup()
    assert Mutation(scripted())(parent, rollouts, 1).label == "revision"
    fallback = Mutation(scripted(revision="not json"))(parent, rollouts, 1)
    assert fallback.label == "fallback" and fallback.fallback and fallback.child is not None
    strict = Mutation(scripted(revision="not json"), revision_fallback=False)(parent, rollouts, 1)
    assert strict.label == "failed"


def test_an_attempt_shorter_than_a_summary_is_shown_as_it_is():
    parent, pool, rollouts = setup()
    for r in rollouts:
        r.messages[-1]["content"] = f"The answer is {r.reward:g}."
    reflector = scripted()
    outcome = Mutation(reflector)(parent, rollouts, iteration=1)
    assert outcome.label == "revision" and outcome.calls == 2  # one critique, one revision: no summaries
    critique = next(e for e in outcome.log if e["purpose"].startswith("critique"))
    assert "the attempt itself: The answer is 1." in critique["prompt"]
    assert [e["verbatim"] for e in outcome.log if "verbatim" in e] == ["The answer is 1.", "The answer is 0."]


@pytest.mark.parametrize("tokens,summarised", [(64, False), (65, True), (0, True)])
def test_a_reply_of_no_more_tokens_than_a_summary_is_shown_as_it_is_however_many_characters(tokens, summarised):
    from espl_bench.method.reflection import SUMMARY_TOKENS, VERBATIM_CHARS

    parent, pool, rollouts = setup()
    for r in rollouts:
        r.generated_tokens = tokens  # 0: not recorded (a replayed record), so characters decide
        assert len(r.messages[-1]["content"]) > VERBATIM_CHARS
    outcome = Mutation(scripted())(parent, rollouts, iteration=1)
    summaries = [e for e in outcome.log if e["purpose"].startswith("summary")]
    assert summaries and all(("verbatim" not in e) == summarised for e in summaries)
    assert outcome.label == "revision" and SUMMARY_TOKENS == 64
