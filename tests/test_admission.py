"""The admission rule for an edit's text (espl/method/admission.py), its use by the operators, and
``espl-bench principles check``."""

import json
import random
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from espl_bench.method.admission import Reason, admit
from espl_bench.method.copies import ProblemCopies
from espl_bench.method.loop import reflection_counts
from espl_bench.method.reflection import Crossover, Mutation, win_matrix
from espl_bench.running.cli import main
from tests.fakes import ScriptedReflector
from tests.test_reflection import CRITIQUE, answer_by_purpose, rollout, scripted, setup

BOARD = Path(__file__).resolve().parents[1] / "leaderboards" / "calibrated-v6" / "records"

# Texts the calibrated board's children hold (issue 23), and the reason each must get.
JUNK = [
    ("[Your text here]", Reason.PLACEHOLDER),
    ("{{[Your edit text]}}", Reason.PLACEHOLDER),
    ("(1) Add a new principle (2)", Reason.PLACEHOLDER),
    ("{YOUR ENTIRE EXPLANATION}", Reason.PLACEHOLDER),
    ("<new principle, at most 32 words>", Reason.PLACEHOLDER),
    ("Use $max_words words for each rule.", Reason.PLACEHOLDER),
    ("<p>The answer is 12. The text says 'the work on a physical medium you must'", Reason.MARKUP),
    ("<script class=", Reason.MARKUP),
    ("<font unit=", Reason.MARKUP),
    ("<custom_json.value", Reason.MARKUP),
    ("<math>2.5</math>", Reason.MARKUP),
    ("Always write `count = text.count(letter)` first.", Reason.MARKUP),
    ("* This is a problem with the letter h.", Reason.MARKUP),
    ("/* this is the last attempt of multiple attempts to solve problem 1 */", Reason.MARKUP),
    ("Read the word\x1b[31m letter by letter.", Reason.CONTROL),
    ("Count\u202e each letter twice.", Reason.CONTROL),
    ("Each text is one principle of at most 32 words.", Reason.ECHO),
    ("your edits", Reason.ECHO),
    ("The answer is 2", Reason.ANSWER),
    ("Remember that 7 + 6 = 13 here.", Reason.ANSWER),
    ("This edit was improved by your AI assistant, and it seems that you have tried several additional edits",
     Reason.META),
    ("G1: It is delightful thus to take breakfast with you.", Reason.META),
    ("The previous attempt was twenty times the answer.", Reason.META),
    ("I'm ready to assist you with your problem today.", Reason.META),
    # the one child of the first suite-version-8 arithmetic run (espl seed 0), before this pattern
    ("This is an example of how to modify your original text (providing additional information).", Reason.META),
    ("Rewrite the prompt so that every step is clearer and shorter.", Reason.META),
    ("motive aalmined qwpeoz vrtxlk navigation", Reason.NOT_WORDS),
    ("xkcdq wprtz mmnbv lqpzr", Reason.NOT_WORDS),
    ("aa aaa aaaa aaaaa", Reason.NOT_WORDS),
    ("NO;TEXT;HERE", Reason.NOT_WORDS),
    ("   ", Reason.EMPTY),
    # children the v8 arithmetic runs at d5154db ended on (evolution seeds 0 and 3, espl seed 4), before these patterns
    ("The answer is: 24", Reason.ANSWER),
    ("Let's take our problem as follows...", Reason.PLACEHOLDER),
    ("This is just a simple example of how to solve this problem. It should not be taken as an advice.", Reason.META),
    # principles of the v8 letter-counting runs at 9973318, before these patterns
    ("The answer to this question is 1", Reason.ANSWER),
    ("The letter 'l' appears only once in the text. 2", Reason.ANSWER),
    ("go to work in earnest on the letter g is 4 times", Reason.ANSWER),
    ("The letter h appears more than four times in this text.", Reason.ANSWER),
]

ADVICE = [
    "Count each letter separately before giving the total.",
    "Evaluate parentheses first.",
    "Check every sign.",
    "Be careful.",
    "Multiply and divide before you add or subtract, working from left to right.",
    "Read the whole word slowly, then count how often the letter appears, including capitals.",
    "If a number is negative, keep its minus sign when you subtract.",
    "Write the final number alone on the last line.",
    "Carry the tens digit before adding the next column.",
    "Solve for x, then check that x times y gives the product.",
    "Count how many times the letter r appears in the word.",
    "Write your answer as a single number on the last line.",
    "Count the letters of the original text one by one.",
    "The answer is one whole number, so round only at the end.",
    "Re-read your attempt before you answer.",
    "If the letter e appears twice, count both.",
    "Check whether the letter r appears more than once.",
]


@pytest.mark.parametrize("text,reason", JUNK)
def test_junk_is_rejected_with_its_reason(text, reason):
    verdict = admit(text)
    assert not verdict.admitted and verdict.reason == reason, verdict.describe()
    assert verdict.detail  # a reason names what failed it


@pytest.mark.parametrize("text", ADVICE)
def test_plain_advice_is_admitted(text):
    verdict = admit(text)
    assert verdict.admitted, verdict.describe()


def test_the_word_check_follows_the_language():
    german = "Zähle jeden Buchstaben einzeln, bevor du die Summe nennst."
    assert admit(german, language="de").admitted
    assert admit(german, language="en").reason == Reason.NOT_WORDS
    with pytest.raises(ValueError, match="no word list"):
        admit(german, language="xx")


# Strings drawn a character at a time: st.text() also offers string constants it finds in the
# code under test ("no text", "admitted"), which are English on purpose.
RANDOM_CHARS = st.lists(st.characters(), min_size=1, max_size=120).map("".join)
RANDOM_WORD = st.lists(st.sampled_from(string.ascii_letters), min_size=2, max_size=12).map("".join)


# random characters from every category (letters, digits, symbols, controls, other scripts)
# derandomized: the same examples on every run, so CI cannot flake on a rare one
@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(RANDOM_CHARS)
def test_random_character_strings_are_rejected(text):
    assert not admit(text).admitted


# random letters in random words: the case the word frequencies exist for
# derandomized: the same examples on every run, so CI cannot flake on a rare one
@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(RANDOM_WORD, min_size=2, max_size=12))
def test_random_letter_words_are_rejected(words):
    assert not admit(" ".join(words)).admitted


def _board_programs() -> dict[str, list[str]]:
    """The principles of each test-time program evolution wrote on leaderboards/calibrated-v6 (the committed board when issue 23 was filed)."""
    programs = {}
    for summary in sorted(BOARD.glob("*/summary.json")):
        text = json.loads(summary.read_text(encoding="utf-8"))["test_program"]["text"]
        principles = re.findall(r"^\[G\d+\] (.*)$", text, re.M)
        if principles:
            programs[summary.parent.name] = principles
    return programs


def test_every_evolved_program_of_the_v6_calibrated_board_holds_a_rejected_principle(tmp_path):
    programs = _board_programs()
    assert len(programs) >= 20  # the board's E-SPL, evolution and self-reflection runs that ended on a child
    for name, principles in programs.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(principles), encoding="utf-8")
        assert main(["principles", "check", "--file", str(path)]) == 1, name
        assert any(not admit(t).admitted for t in principles), name


def test_principles_check_prints_each_verdict(tmp_path, capsys):
    assert main(["principles", "check", *ADVICE[:3]]) == 0
    assert capsys.readouterr().out.count("admitted:") == 3
    listed = tmp_path / "mixed.txt"
    listed.write_text(f"{ADVICE[0]}\n\n[Your text here]\n", encoding="utf-8")
    assert main(["principles", "check", "--file", str(listed), "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [(r["admitted"], r["reason"]) for r in rows] == [(True, None), (False, "placeholder")]


@pytest.mark.parametrize("args,content", [
    ([], None),  # nothing to check
    (["--file", "missing.json"], None),
    (["--file", "bad.json"], '["unterminated'),
    (["--file", "bad.json"], '["fine", 3]'),
    (["Count each letter.", "--language", "xx"], None),
    (["Count each letter.", "--problems", "missing.json"], None),
    (["Count each letter.", "--problems", "bad.json"], '["a problem", 3]'),
])
def test_principles_check_refuses_bad_input_in_one_line(tmp_path, monkeypatch, capsys, args, content):
    monkeypatch.chdir(tmp_path)
    if content is not None:
        (tmp_path / "bad.json").write_text(content, encoding="utf-8")
    assert main(["principles", "check", *args]) == 2
    assert "Traceback" not in capsys.readouterr().err


def _junk_edit(text):
    return json.dumps({"ops": [{"op": "add", "text": text}]})


def test_a_junk_edit_makes_no_child_and_is_counted_by_reason():
    parent, pool, rollouts = setup()
    junk = _junk_edit("[Your text here]")
    outcome = Mutation(scripted(critique=junk, revision=junk))(parent, rollouts, iteration=1)
    assert outcome.child is None and outcome.label == "failed"
    assert outcome.rejected == {"placeholder": 2}  # the critique and its repair
    counts = reflection_counts([outcome])
    assert counts.rejected_edits == {"placeholder": 2} and sum(counts.children.values()) == 0
    log = [e for e in outcome.log if e.get("refused")]
    assert log and log[0]["refused"][0]["reason"] == "placeholder"


def test_a_junk_revision_is_dropped_and_the_admitted_edits_make_the_child():
    parent, pool, rollouts = setup()
    revision = json.dumps({"ops": [{"op": "add", "text": "<script class="},
                                   {"op": "add", "text": "Count each letter separately before giving the total."}]})
    outcome = Mutation(scripted(revision=revision))(parent, rollouts, iteration=1)
    assert outcome.label == "revision"
    assert list(outcome.child.principles.values()) == ["Be careful.", "Count each letter separately before giving the total."]
    assert outcome.rejected == {"markup or code": 1}
    assert reflection_counts([outcome]).children["revision"] == 1


def test_a_junk_crossover_edit_makes_no_child():
    parent, pool, rollouts = setup()
    other = rollout("p1", 1, 1.0, slot=1)
    best, rival = parent, type(parent)(id="p1", principles={"G0": "Show steps."})
    _, wins = win_matrix([*rollouts, other])
    reflector = ScriptedReflector([_junk_edit("{{json: {code}}}")])
    outcome = Crossover(reflector)(best, [best, rival], wins, {}, iteration=1)
    assert outcome.child is None and outcome.rejected == {"placeholder": 2}


def test_a_text_cut_at_the_word_cap_is_judged_again():
    """An edit admitted whole can lose its words to ``max_words``; the child's text is what counts."""
    parent, pool, rollouts = setup()
    text = "Qwxzv: count each letter separately before giving the total."
    assert admit(text).admitted and not admit("Qwxzv: count").admitted
    long = json.dumps({"ops": [{"op": "add", "text": text}]})
    outcome = Mutation(scripted(critique=CRITIQUE, revision=long), max_words=2)(parent, rollouts, iteration=1)
    assert outcome.child is None and "not admitted" in outcome.reason
    assert outcome.rejected == {"not words of the language": 1}
    assert outcome.log[-1]["purpose"] == "child" and outcome.log[-1]["refused"][0]["text"] == "Qwxzv: count"


def test_the_fallback_applies_only_admitted_critique_edits():
    parent, pool, rollouts = setup()
    critique = json.dumps({"ops": [{"op": "add", "text": "[insert text here]"},
                                   {"op": "add", "text": "Evaluate parentheses first."}]})
    reflector = ScriptedReflector(answer_by_purpose({
        "Summarise the attempt": "Used G0, forgot the sign.", "Propose at most": critique,
        "Turn them into one coherent revision": "not json", "Your previous answer could not be used": "not json"}))
    outcome = Mutation(reflector)(parent, rollouts, iteration=1)
    assert outcome.label == "fallback"
    assert list(outcome.child.principles.values()) == ["Be careful.", "Evaluate parentheses first."]
    assert outcome.rejected == {"placeholder": 1}


def test_the_iteration_metrics_count_refusals_by_reason_and_only_admitted_children():
    from espl_bench.config import RunConfig
    from espl_bench.envs.splits import SplitPlan
    from espl_bench.method.learning import FrozenLearner
    from espl_bench.method.loop import EsplLoop, Parts
    from espl_bench.method.program import Pool
    from espl_bench.method.selection import make_selector
    from espl_bench.records import IterationMetrics
    from tests.test_protocol import PrincipleEngine

    answers = iter([json.dumps({"ops": [{"op": "add", "text": "<p>The answer is 12"},
                                       {"op": "add", "text": "Count each letter separately before giving the total."}]}),
                    _junk_edit("{{[Your edit text]}}")])

    def respond(messages):
        text = messages[-1]["content"]
        return "summary" if "Summarise" in text else next(answers, _junk_edit("[Your text here]"))

    cfg = RunConfig(env="espl/Arithmetic-v0", method="self-reflection", iterations=2, programs=1, batch_size=1,
                    group_size=2, eval_problems=1, eval_samples=1)
    parts = Parts(engine=PrincipleEngine(), learner=FrozenLearner(), selector=make_selector("uniform"),
                  mutation=Mutation(ScriptedReflector(respond)), crossover=None, plan=SplitPlan.of_sizes(20, 5), eos_id=0)
    loop = EsplLoop(cfg, parts, Pool.with_root(), random.Random(0))
    first, second = (loop.iteration(t).metrics for t in (1, 2))
    # 1: the critique's markup is refused and its advice kept; the revision answers only
    # placeholders (refused), so the fallback applies the critique's admitted edit
    assert first.reflection_counts.rejected_edits == {"markup or code": 1, "placeholder": 2}
    assert first.children == ["p1"] and first.reflection_counts.children["fallback"] == 1
    assert list(loop.pool["p1"].principles.values()) == ["Count each letter separately before giving the total."]
    # 2: nothing but placeholders: no child, every refusal counted
    assert second.children == [] and second.reflection_counts.rejected_edits == {"placeholder": 2}
    assert sum(second.reflection_counts.children.values()) == 0 and second.reflection_failures == 1
    again = IterationMetrics.model_validate_json(second.model_dump_json())
    assert again.reflection_counts.rejected_edits == {"placeholder": 2}


# Whole prompts, as GEPA's proposer writes them: the candidate GEPA's seed 1 ended on in the first
# suite-version-8 arithmetic runs (d5154db, before GEPA's proposals were screened), and others.
JUNK_PROMPTS = [
    ("const {assert} = require('jest'); \n const task1;  // You can't have multiple tasks on one command right?\n"
     " \ntask1(5);   /* [<code>test2</code></script><br/> */ test3();", Reason.PLACEHOLDER),
    ("You are a helpful AI assistant.\n*Provide the first two lines of your response with bold text for emphasis*.",
     Reason.MARKUP),
    ("I'm ready to help. Please provide the task description.", Reason.META),
    ("## Task\nYour task is to write a new instruction for the assistant.", Reason.ECHO),
    ("", Reason.EMPTY),
    ("Reply with the sum inside <answer>12</answer>.", Reason.MARKUP),  # a filled tag is not a format's name
]

PLAIN_PROMPTS = [
    "You are a careful problem solver.",
    "Compute carefully. Reply with only the number inside <answer></answer> tags.",
    "## Task\nYou add two numbers.\n\n- Add the ones digits first.\n- Write the sum alone on the last line.",
    "**Counting letters**\n1. Read the word slowly.\n2. Count how often the letter appears, capitals too.",
]


@pytest.mark.parametrize("text,reason", JUNK_PROMPTS)
def test_a_junk_whole_prompt_is_refused_with_its_reason(text, reason):
    from espl_bench.baselines.gepa import template_guard
    from espl_bench.method.admission import admit_prompt

    verdict = admit_prompt(text, guard=template_guard())
    assert verdict.reason == reason, verdict.describe()
    assert verdict.text == text  # the prompt as given, not its plain form


@pytest.mark.parametrize("text", PLAIN_PROMPTS)
def test_a_plain_whole_prompt_is_admitted_with_its_markdown(text):
    from espl_bench.method.admission import admit_prompt

    assert admit_prompt(text).admitted, admit_prompt(text).describe()
    if "\n" in text:  # its markdown or numbered lines are what a principle may not hold
        assert admit(text).reason in (Reason.MARKUP, Reason.PLACEHOLDER)


def test_principles_check_judges_whole_prompts_with_prompt(tmp_path, capsys):
    listed = tmp_path / "prompts.json"
    listed.write_text(json.dumps([PLAIN_PROMPTS[1], JUNK_PROMPTS[0][0]]), encoding="utf-8")
    assert main(["principles", "check", "--prompt", "--file", str(listed), "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [(r["admitted"], r["reason"]) for r in rows] == [(True, None), (False, "placeholder")]
    assert main(["principles", "check", "--file", str(listed), "--json"]) == 1  # as principles: both refused
    assert [r["admitted"] for r in json.loads(capsys.readouterr().out)] == [False, False]


def _letter_problem(letter, passage):
    return (f'How many times does the letter "{letter}" appear in the text: "{passage}"?\n\n'
            "Think step by step, then give only the final answer inside <answer></answer> tags.")


# Two letter-counting problems as the env states them; the v8 letter-counting runs at 9973318 held
# principles that are fragments of such passages.
SHOWN = [_letter_problem("r", "He pressed a button. After a few seconds a faint rumbling"),
         _letter_problem("n", "the laws of the country where you are located")]


@pytest.mark.parametrize("text", ["He pressed a button After a few seconds a faint rumbling",
                                  "Remember: the laws of the country where you live."])
def test_a_fragment_of_a_problem_shown_is_refused(text):
    verdict = admit(text, problems=ProblemCopies(SHOWN))
    assert verdict.reason == Reason.PROBLEM, verdict.describe()
    assert admit(text).admitted  # without the problems the words pass: the check needs what was shown


@pytest.mark.parametrize("text", ["Count how many times the letter appears in the text.",
                                  "Think step by step, then give only the final answer.",  # every problem's own wording
                                  *ADVICE])
def test_advice_that_restates_the_task_is_not_a_copy_of_a_problem(text):
    verdict = admit(text, problems=ProblemCopies(SHOWN))
    assert verdict.admitted, verdict.describe()


def test_one_problem_shown_makes_all_its_runs_copies():
    assert ProblemCopies(SHOWN[:1]).copied("Then give only the final answer inside tags.") == "then give only the final"
    assert ProblemCopies([]).copied(SHOWN[0]) == ""


def test_an_edit_copying_a_rollouts_problem_makes_no_child():
    parent, pool, rollouts = setup()
    for r in rollouts:
        r.observation = SHOWN[int(r.problem_id[1:])]
    copy = _junk_edit("A faint rumbling came after a few seconds, he pressed a button after a few seconds.")
    outcome = Mutation(scripted(critique=copy, revision=copy))(parent, rollouts, iteration=1)
    assert outcome.child is None and outcome.rejected == {"copies a problem": 2}


def test_principles_check_takes_the_problems_shown(tmp_path, capsys):
    problems = tmp_path / "problems.json"
    problems.write_text(json.dumps(SHOWN), encoding="utf-8")
    fragment = "He pressed a button After a few seconds a faint rumbling"
    assert main(["principles", "check", fragment, ADVICE[0], "--problems", str(problems), "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [(r["admitted"], r["reason"]) for r in rows] == [(False, "copies a problem"), (True, None)]
    assert main(["principles", "check", fragment]) == 0


RECHECK = Path(__file__).resolve().parents[1] / "scripts" / "recheck_principles.py"
V8 = Path(__file__).resolve().parents[1] / "leaderboards" / "calibrated-v8" / "records"


def test_recheck_reads_a_boards_programs_against_their_envs_train_problems():
    """scripts/recheck_principles.py on two committed v8 letter-counting runs (made under the rule
    of 9973318): E-SPL seed 1's passage fragment is refused today, espl seed 0 ended on the root."""
    runs = [V8 / f"rg_letter_counting-v0--espl--{seed}--calibrated" for seed in (0, 1)]
    done = subprocess.run([sys.executable, str(RECHECK), *map(str, runs), "--json"], capture_output=True, text=True,
                          check=True)
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["run"] for r in rows] == ["rg/letter_counting-v0 espl seed 1"]
    assert [(t["admitted"], t["reason"]) for t in rows[0]["texts"]] == [(True, None), (False, "copies a problem")]
    assert "1 of 1 runs" in done.stderr


def test_recheck_refuses_a_folder_without_runs_in_one_line(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text("{not json")
    for target in (tmp_path / "empty", tmp_path / "broken"):
        target.mkdir(exist_ok=True)
        done = subprocess.run([sys.executable, str(RECHECK), str(target)], capture_output=True, text=True)
        assert done.returncode == 2 and "fix:" in done.stderr and "Traceback" not in done.stderr, done.stderr
