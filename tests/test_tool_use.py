import json
import re

import pytest
from gymnasium.utils.env_checker import check_env

from espl_bench.envs.tool_use import ToolUseEnv, calculator, convert

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def call(env, name, **arguments):
    """One tool call through the text protocol; returns the tool's output."""
    reply = f'<tool_call>{json.dumps({"name": name, "arguments": arguments})}</tool_call>'
    observation, reward, terminated, truncated, info = env.step(reply)
    assert info["valid"] and reward == 0.0 and not terminated and not truncated, observation
    assert not observation.startswith("Tool error"), observation
    return observation


def last_number(text):
    return float(_NUMBER.findall(text)[-1])


def oracle(env, split, index):
    """Solves a problem from its plan, taking every number from the tools' text replies."""
    env.reset(options={"split": split, "index": index})
    plan = env.problem(split, index).metadata
    work = plan["work_unit"]

    def in_work_unit(value, unit):
        if unit == work:
            return value
        return last_number(call(env, "convert", value=value, from_unit=unit, to_unit=work))

    expression = repr(in_work_unit(*plan["start"]))
    for op in plan["ops"]:
        if op[0] in ("add", "sub"):
            expression = f"({expression} {'+' if op[0] == 'add' else '-'} {in_work_unit(op[1], op[2])!r})"
        else:
            expression = f"({expression} {'*' if op[0] == 'mul' else '/'} {op[1]})"
    result = last_number(call(env, "calculator", expression=expression))
    if plan["target_unit"] != work:
        result = last_number(call(env, "convert", value=result, from_unit=work, to_unit=plan["target_unit"]))
    return env.step(f"<answer>{result:.2f}</answer>")


def test_passes_gymnasium_checker():
    check_env(ToolUseEnv(), skip_render_check=True)


def test_same_seed_same_episodes():
    a, b = ToolUseEnv(data_seed=3), ToolUseEnv(data_seed=3)
    for seed in range(8):
        assert a.reset(seed=seed) == b.reset(seed=seed)
        for action in ('<tool_call>{"name": "calculator", "arguments": {"expression": "2*3"}}</tool_call>',
                       "hmm", "<answer>12.5</answer>"):
            assert a.step(action) == b.step(action)


def test_splits_are_disjoint_and_depend_only_on_the_seed():
    env = ToolUseEnv(train_size=400, test_size=200)
    train = {env.problem("train", i).question for i in range(400)}
    test = {env.problem("test", i).question for i in range(200)}
    assert len(test) == 200 and not train & test
    assert ToolUseEnv(train_size=5, difficulty=2).problem("test", 17) == env.problem("test", 17)
    assert ToolUseEnv(data_seed=1).problem("test", 17) != env.problem("test", 17)
    categories = {env.problem("test", i).metadata["category"] for i in range(200)}
    assert categories == {"length", "mass", "time", "temperature"}


@pytest.mark.parametrize(("difficulty", "max_turns"), [(2, 6), (1, 6), (3, 8)])
def test_oracle_agent_solves_test_problems(difficulty, max_turns):
    env = ToolUseEnv(difficulty=difficulty, max_turns=max_turns)
    for index in range(30):
        _, reward, terminated, truncated, info = oracle(env, "test", index)
        assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True), info
        assert info["metadata"]["tool_calls"] >= 2 and info["metadata"]["invalid_actions"] == 0


def test_example_question_reads_like_a_word_problem():
    env = ToolUseEnv()
    observation, _ = env.reset(options={"split": "test", "index": 0})
    assert "Round to 2 decimals" in observation and "convert(value, from_unit, to_unit)" in observation
    assert re.match(r"^(A rope|A crate|A job|A pot of water) ", observation)


def test_score_tolerance_and_answer_forms():
    env = ToolUseEnv()
    problem = env.problem("test", 2)
    reference = float(problem.answer)
    assert env.score(f"{reference * 1.005:.4f}", problem) == 1.0
    assert env.score(f"{reference * 1.02:.4f}", problem) == 0.0
    assert env.score(f"about {reference:,.2f} units", problem) == 1.0
    assert env.score("I don't know", problem) == 0.0


def test_invalid_action_and_tool_errors_keep_the_episode_going():
    env = ToolUseEnv(max_turns=3)
    env.reset(options={"split": "test", "index": 0})
    observation, reward, terminated, truncated, info = env.step("I think it is 5")
    assert (reward, terminated, truncated, info["valid"]) == (0.0, False, False, False)
    assert observation.startswith("Invalid action")
    observation, reward, terminated, truncated, info = env.step('convert(3, "mile", "kg")')
    assert info["valid"] and not terminated and "cannot convert length (mi) to mass (kg)" in observation
    _, reward, terminated, truncated, info = env.step('calculator("1 + 1")')
    assert (reward, terminated, truncated) == (0.0, False, True)  # out of turns without an answer


@pytest.mark.parametrize(("expression", "value"), [
    ("(5632.704 + 200) / 7", "833.2434286"), ("2**10", "1024"), ("2^3", "8"), ("-2.5 * 4", "-10"),
    ("1e3 / 4", "250"), (12, "12"), ("((1 + 2) * 3) - 0.5", "8.5"),
])
def test_calculator_does_arithmetic(expression, value):
    assert calculator(expression) == value


@pytest.mark.parametrize(("expression", "message"), [
    ("__import__('os')", "Call is not allowed"),
    ("(1).real", "Attribute is not allowed"),
    ("x + 1", "Name is not allowed"),
    ("().__class__", "Attribute is not allowed"),
    ("[1, 2]", "List is not allowed"),
    ("'a' * 3", "Constant is not allowed"),
    ("True + 1", "Constant is not allowed"),
    ("lambda: 1", "Lambda is not allowed"),
    ("9 ** 9 ** 9", "exponent .* too large"),
    ("2 ** 1000", "exponent .* too large"),
    ("10 ** 99 * 10 ** 99", "reasonable size"),
    ("(-8) ** 0.5", "real number"),
    ("1 / 0", "division by zero"),
    ("1 +", "cannot read"),
    ("1+" * 150 + "1", "longer than"),
    ("-" * 150 + "1", "too long"),
])
def test_calculator_rejects_anything_but_arithmetic(expression, message):
    with pytest.raises(ValueError, match=message):
        calculator(expression)


def test_convert_units():
    assert convert(3.5, "miles", "m") == "3.5 mi = 5632.704 m"
    assert convert(50, "°F", "kelvin") == "50 F = 283.15 K"
    assert convert("2", "hours", "min") == "2 h = 120 min"
    assert convert([1, "lb", "g"]) == "1 lb = 453.59237 g"
    with pytest.raises(ValueError, match="unknown unit 'parsec'"):
        convert(1, "parsec", "m")
    with pytest.raises(ValueError, match="cannot convert time"):
        convert(1, "s", "m")
