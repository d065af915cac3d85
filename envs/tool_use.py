"""Unit-conversion word problems solved with structured tool calls (multi-turn, see envs.tool_env).

A problem states a quantity, applies ``difficulty`` operations to it (add or remove an amount
given in another unit, repeat it k times, split it into k equal parts; for temperatures, warm
or cool by some degrees Celsius) and asks for the result in a different unit, rounded to 2
decimals. Example: "A rope is 3.5 miles long. Everything is cut into 7 equal pieces. How long
is each piece, in meters? Round to 2 decimals and answer with the number only."

* Tools: ``calculator(expression)``, a safe evaluator of numbers, ``+ - * / **`` and parentheses
  (an ``ast`` whitelist with size limits, never ``eval``), and ``convert(value, from_unit,
  to_unit)`` over the length/mass/time/temperature table :data:`UNITS`. A bad call returns its
  error text to the model.
* Splits (train, validation, test): problem ``(split, index)`` is drawn from ``random.Random``
  seeded by (data_seed, difficulty, split, index, attempt); a hash of the question text decides
  which split it may belong to (:func:`envs.splits.content_split`), so no two splits share a
  question. No global random state is used.
* Score: 1.0 when the first number in the ``<answer>`` is within a relative 1e-2 of the
  reference, else 0. ``Problem.metadata`` records the plan (start, ops, units) for oracles.
"""

from __future__ import annotations

import ast
import itertools
import math
import operator
import random
import re
from collections.abc import Callable
from functools import lru_cache

from espl_bench.envs.splits import content_split
from espl_bench.envs.tool_env import Problem, Tool, ToolEnv

# key: (category, factor to the category's base unit, singular, plural); temperatures are affine.
UNITS = {
    "m": ("length", 1.0, "meter", "meters"), "km": ("length", 1000.0, "kilometer", "kilometers"),
    "cm": ("length", 0.01, "centimeter", "centimeters"), "mm": ("length", 0.001, "millimeter", "millimeters"),
    "mi": ("length", 1609.344, "mile", "miles"), "yd": ("length", 0.9144, "yard", "yards"),
    "ft": ("length", 0.3048, "foot", "feet"), "in": ("length", 0.0254, "inch", "inches"),
    "kg": ("mass", 1.0, "kilogram", "kilograms"), "g": ("mass", 0.001, "gram", "grams"),
    "mg": ("mass", 1e-6, "milligram", "milligrams"), "t": ("mass", 1000.0, "tonne", "tonnes"),
    "lb": ("mass", 0.45359237, "pound", "pounds"), "oz": ("mass", 0.028349523125, "ounce", "ounces"),
    "s": ("time", 1.0, "second", "seconds"), "min": ("time", 60.0, "minute", "minutes"),
    "h": ("time", 3600.0, "hour", "hours"), "day": ("time", 86400.0, "day", "days"),
    "week": ("time", 604800.0, "week", "weeks"),
    "C": ("temperature", 1.0, "degree Celsius", "degrees Celsius"),
    "F": ("temperature", 1.0, "degree Fahrenheit", "degrees Fahrenheit"),
    "K": ("temperature", 1.0, "kelvin", "kelvin"),
}
_EXTRA_ALIASES = {"metre": "m", "metres": "m", "kilometre": "km", "kilometres": "km", "sec": "s", "secs": "s",
                  "mins": "min", "hr": "h", "hrs": "h", "d": "day", "lbs": "lb", "tonne": "t", "ton": "t",
                  "metric ton": "t", "celsius": "C", "fahrenheit": "F", "kelvin": "K", "kelvins": "K"}
_ALIASES = {**{a.lower(): k for k, (_, _, one, many) in UNITS.items() for a in (k, one, many)}, **_EXTRA_ALIASES}


def unit_key(name: str) -> str:
    text = re.sub(r"^(degrees?\s+|°\s*)", "", str(name).strip().lower())
    if text not in _ALIASES:
        raise ValueError(f"unknown unit {name!r}; known units: {', '.join(UNITS)}")
    return _ALIASES[text]


def _to_celsius(value: float, unit: str) -> float:
    return {"C": value, "F": (value - 32) * 5 / 9, "K": value - 273.15}[unit]


def _from_celsius(value: float, unit: str) -> float:
    return {"C": value, "F": value * 9 / 5 + 32, "K": value + 273.15}[unit]


def convert_value(value: float, source: str, target: str) -> float:
    (kind_a, factor_a, *_), (kind_b, factor_b, *_) = UNITS[source], UNITS[target]
    if kind_a != kind_b:
        raise ValueError(f"cannot convert {kind_a} ({source}) to {kind_b} ({target})")
    if kind_a == "temperature":
        return _from_celsius(_to_celsius(value, source), target)
    return value * factor_a / factor_b


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:.10g}"


def convert(value, from_unit=None, to_unit=None) -> str:
    """The ``convert`` tool; also takes the short form's positional list ``[value, from, to]``."""
    if isinstance(value, (list, tuple)) and len(value) == 3 and from_unit is None and to_unit is None:
        value, from_unit, to_unit = value
    if from_unit is None or to_unit is None:
        raise ValueError("convert needs value, from_unit and to_unit")
    number = float(value)
    source, target = unit_key(from_unit), unit_key(to_unit)
    return f"{_fmt(number)} {source} = {_fmt(convert_value(number, source, target))} {target}"


# -- calculator: a whitelist interpreter over the ast, since eval() would run any Python ---------

MAX_EXPRESSION_CHARS, MAX_NODES, MAX_EXPONENT, MAX_MAGNITUDE = 200, 100, 100, 1e100
_BINARY: dict[type, Callable[[float, float], float]] = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow}
_UNARY: dict[type, Callable[[float], float]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def calculator(expression) -> str:
    """The ``calculator`` tool: numbers, ``+ - * / **`` (``^`` means ``**``) and parentheses."""
    text = str(expression).strip().replace("^", "**")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot read {text!r}; use numbers, + - * / ** and parentheses") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ValueError("expression too long; split it into smaller calculations")
    return _fmt(_evaluate(tree.body))


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        result = float(node.value)
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent {_fmt(right)} is too large (limit {MAX_EXPONENT})")
        try:
            result = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
        except OverflowError:
            raise ValueError("result too large") from None
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        result = _UNARY[type(node.op)](_evaluate(node.operand))
    else:
        raise ValueError(f"{type(node).__name__} is not allowed; use numbers, + - * / ** and parentheses")
    if isinstance(result, complex) or not math.isfinite(result) or abs(result) > MAX_MAGNITUDE:
        raise ValueError("result is not a real number of reasonable size")
    return result


# -- problems ---------------------------------------------------------------------------------

_SCENES = {  # per category: intro, add, sub, mul, div, question (whole), question (after a split)
    "length": ("A rope is {q} long.", "A piece {q} long is tied to its end.",
               "A piece {q} long is cut off and thrown away.",
               "It is tied end to end with {more} more ropes of exactly the same length.",
               "Everything is cut into {k} equal pieces.", "What is the total length now", "How long is each piece"),
    "mass": ("A crate weighs {q}.", "Goods weighing {q} are packed into it.", "Goods weighing {q} are taken out of it.",
             "It is stacked with {more} more crates of exactly the same weight.",
             "Everything is split into {k} parcels of equal weight.", "What is the total weight now",
             "How much does each parcel weigh"),
    "time": ("A job takes {q}.", "An extra step taking {q} is added to it.", "An improvement shortens it by {q}.",
             "It is repeated so that it runs {k} times in a row.",
             "The work is then shared equally by {k} people working at the same time.",
             "How long does it take in total now", "How long does each person work"),
}
_UNIT_CHOICES = {c: [k for k, u in UNITS.items() if u[0] == c] for c in ("length", "mass", "time", "temperature")}


def _quantity(value: float, unit: str) -> str:
    _, _, one, many = UNITS[unit]
    return f"{_fmt(value)} {one if value == 1 else many}"


def _nice_amount(rng: random.Random, base_amount: float, category: str) -> tuple[float, str]:
    """A round-looking amount near ``base_amount``, in a unit where it reads naturally."""
    units = [u for u in _UNIT_CHOICES[category] if 0.5 <= base_amount / UNITS[u][1] <= 5000]
    unit = rng.choice(units or _UNIT_CHOICES[category])
    return float(f"{base_amount / UNITS[unit][1]:.2g}"), unit


def generate(rng: random.Random, difficulty: int) -> Problem | None:
    """One problem from ``rng``, or None when the draw is degenerate (the caller redraws)."""
    category = rng.choice(("length", "mass", "time", "temperature"))
    start_unit = rng.choice(_UNIT_CHOICES[category])
    lines, ops = [], []
    if category == "temperature":
        start = round(convert_value(rng.uniform(-10, 90), "C", start_unit), 1)
        total = _to_celsius(start, start_unit)  # the working value, in degrees Celsius
        lines.append(f"A pot of water is at {_quantity(start, start_unit)}.")
        for _ in range(difficulty):
            delta = round(rng.uniform(1, 30), 1)
            sign = 1 if total - delta < -200 else rng.choice((1, -1))
            total += sign * delta
            ops.append(["add" if sign > 0 else "sub", delta, "C"])
            lines.append(f"It is {'warmed' if sign > 0 else 'cooled'} by {_fmt(delta)} degrees Celsius.")
        question, work_unit = "What is its temperature now", "C"
    else:
        start = round(rng.uniform(1.5, 60), 1)
        total = start * UNITS[start_unit][1]  # the working value, in the category's base unit
        intro, add, sub, mul, div, ask_whole, ask_each = _SCENES[category]
        lines.append(intro.format(q=_quantity(start, start_unit)))
        question, work_unit, multiplied = ask_whole, None, False
        for i in range(difficulty):
            kinds = ["add", "sub"] + ([] if multiplied else ["mul"]) + (["div"] if i == difficulty - 1 else [])
            kind = rng.choice(kinds)
            if kind in ("mul", "div"):
                k = rng.randint(2, 5) if kind == "mul" else rng.randint(2, 9)
                total = total * k if kind == "mul" else total / k
                multiplied = multiplied or kind == "mul"
                ops.append([kind, k])
                lines.append((mul if kind == "mul" else div).format(k=k, more=k - 1))
                question = ask_each if kind == "div" else question
                continue
            amount, unit = _nice_amount(rng, total * rng.uniform(0.1, 0.5), category)
            total += amount * UNITS[unit][1] * (1 if kind == "add" else -1)
            ops.append([kind, amount, unit])
            lines.append((add if kind == "add" else sub).format(q=_quantity(amount, unit)))
    base = "C" if category == "temperature" else _UNIT_CHOICES[category][0]
    targets = [u for u in _UNIT_CHOICES[category]
               if u != start_unit and 1 <= abs(convert_value(total, base, u)) <= 1e6]
    if not targets:
        return None  # e.g. a temperature that is about 0 in every other scale: 2 decimals cannot carry 1%
    target = rng.choice(targets)
    answer = round(convert_value(total, base, target), 2)
    lines.append(f"{question}, in {UNITS[target][3]}? Round to 2 decimals and answer with the number only.")
    metadata = {"category": category, "difficulty": difficulty, "start": [start, start_unit], "ops": ops,
                "target_unit": target, "work_unit": work_unit or target}
    return Problem(question=" ".join(lines), answer=f"{answer:.2f}", metadata=metadata)


@lru_cache(maxsize=4096)
def _problem(data_seed: int, difficulty: int, split: str, index: int) -> Problem:
    for attempt in itertools.count():
        rng = random.Random(f"tool-use/{data_seed}/{difficulty}/{split}/{index}/{attempt}")
        problem = generate(rng, difficulty)
        # The question's hash, not the draw, decides the split: equal questions land in one split.
        if problem and content_split(problem.question) == split:
            return problem
    raise AssertionError("unreachable")


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class ToolUseEnv(ToolEnv):
    """Word problems solved with calculator and unit-conversion tool calls."""

    metadata = {"render_modes": [], "kind": "agentic"}

    def __init__(self, *, train_size: int = 1000, validation_size: int = 200, test_size: int = 200,
                 data_seed: int = 0, max_turns: int = 6, difficulty: int = 2):
        super().__init__(max_turns=max_turns)
        if difficulty < 1 or train_size < 1 or test_size < 1 or validation_size < 0:
            raise ValueError("difficulty, train_size and test_size must all be at least 1 (validation_size at least 0)")
        self.sizes = {"train": train_size, "validation": validation_size, "test": test_size}
        self.data_seed, self.difficulty = data_seed, difficulty
        self._tools = {
            "calculator": Tool("calculator(expression)",
                               "evaluate numbers with + - * / ** and parentheses, e.g. (5632.7 + 200) / 7", calculator),
            "convert": Tool("convert(value, from_unit, to_unit)",
                            f"convert a length, mass, time or temperature; units: {', '.join(UNITS)}", convert),
        }

    def split_size(self, split: str) -> int:
        return self.sizes[split]

    def problem(self, split: str, index: int) -> Problem:
        return _problem(self.data_seed, self.difficulty, split, index)

    def tools(self) -> dict[str, Tool]:
        return self._tools

    def score(self, answer: str, problem: Problem) -> float:
        found = _NUMBER.search(re.sub(r"(?<=\d),(?=\d{3})", "", answer))  # "1,234.5" is one number
        if not found:
            return 0.0
        return 1.0 if math.isclose(float(found.group()), float(problem.answer), rel_tol=1e-2) else 0.0
