"""Difficulty grids: the env settings ``espl-bench calibrate`` tries, easiest first.

A grid is a list of ``env_kwargs`` objects, each merged over the run's own ``--env-kwargs``. The
built-in grids below cover the envs whose difficulty espl-bench knows; any other env (every
reasoning-gym dataset has config options, a plugin has its own) takes ``--grid`` as JSON: a list
of objects, or an object of lists whose cartesian product is the grid
(``{"max_terms": [2, 3], "max_digits": [1, 2]}``).

Every setting keeps a content space large enough for three disjoint splits of a few hundred
distinct problems each (:mod:`espl_bench.envs.splits`), so a powered evaluation does not score
one question many times.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

# The success a calibrated setting must lie in: at success p a group of 4 samples is informative
# with probability 1 - p^4 - (1-p)^4, at least a third of the groups from p = 0.1 on; above 0.7 a
# prompt has little room left to help.
DEFAULT_BAND = (0.1, 0.7)

GRIDS: dict[str, tuple[dict[str, Any], ...]] = {
    # reasoning-gym basic_arithmetic: the registered setting (2-3 terms, 1-2 digits) is the hardest here
    "espl/Arithmetic-v0": (
        {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+", "-"]},
        {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
        {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2, "operators": ["+", "-"]},
        {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2},
        {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2},
    ),
    "rg/letter_counting-v0": (
        {"min_words": 1, "max_words": 3},
        {"min_words": 3, "max_words": 6},
        {"min_words": 5, "max_words": 15},
    ),
    "rg/leg_counting-v0": (
        {"min_animals": 1, "max_animals": 1, "min_instances": 1, "max_instances": 15},
        {"min_animals": 1, "max_animals": 2, "min_instances": 1, "max_instances": 15},
        {"min_animals": 3, "max_animals": 10, "min_instances": 1, "max_instances": 15},
    ),
    "espl/ToolUse-v0": ({"difficulty": 1}, {"difficulty": 2}, {"difficulty": 3}),
    "espl/GuessTheNumber-v0": ({"max_number": 30}, {"max_number": 50}, {"max_number": 100}),
}


class GridError(ValueError):
    """A ``--grid`` that is not a list of objects or an object of lists."""


def grid_for(env_id: str, text: str | None) -> list[dict[str, Any]]:
    """The settings to calibrate ``env_id`` over: ``text`` (``--grid`` JSON) when given, else its built-in grid."""
    if text is None:
        if env_id not in GRIDS:
            raise GridError(f"{env_id!r} has no built-in difficulty grid; fix: pass --grid with its options, e.g. "
                            "--grid '{\"max_terms\": [2, 3]}' (built-in: " + ", ".join(sorted(GRIDS)) + ")")
        return [dict(point) for point in GRIDS[env_id]]
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise GridError("--grid must be JSON; fix: --grid '{\"max_terms\": [2, 3]}' or '[{\"max_terms\": 2}]'") from None
    if isinstance(value, dict) and value and all(isinstance(v, list) and v for v in value.values()):
        keys = list(value)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(value[k] for k in keys))]
    if isinstance(value, list) and value and all(isinstance(p, dict) for p in value):
        return [dict(p) for p in value]
    raise GridError("--grid must be a non-empty list of objects or an object of non-empty lists; fix: "
                    "--grid '{\"max_terms\": [2, 3]}'")
