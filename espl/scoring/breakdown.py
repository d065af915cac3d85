"""The weights x prompt breakdown: what the weights gave, what the prompt gave, and how they interact.

E-SPL's claim is that prompts carry declarative knowledge and weights procedural knowledge. A run
answers it for itself by scoring four cells on the same test items with the evaluation protocol
(:mod:`espl_bench.scoring.evaluation`):

    {base weights, trained weights} x {root prompt, test-time program}

and reporting paired effects, each a contrast over the same problems with an interval
(:func:`espl_bench.stats.contrast`):

* ``prompt (base weights)`` = base/program - base/root, and ``prompt (trained weights)``;
* ``weights (root prompt)`` = trained/root - base/root, and ``weights (test program)``;
* ``interaction`` = trained/program - trained/root - base/program + base/root;
* ``total`` = trained/program - base/root.

Frozen methods have only the base row (``weights`` effects do not exist); a run whose test-time
program is the root has only the root column. A cell that repeats another (same weights, same
prompt) is scored once: the protocol makes them identical.
"""

from __future__ import annotations

from collections.abc import Callable

from espl_bench import stats
from espl_bench.records import Breakdown, CellResult

# effect name: (weight, (weights, prompt)) terms
EFFECTS: dict[str, tuple[tuple[float, tuple[str, str]], ...]] = {
    "prompt (base weights)": ((1, ("base", "program")), (-1, ("base", "root"))),
    "prompt (trained weights)": ((1, ("trained", "program")), (-1, ("trained", "root"))),
    "weights (root prompt)": ((1, ("trained", "root")), (-1, ("base", "root"))),
    "weights (test program)": ((1, ("trained", "program")), (-1, ("base", "program"))),
    "interaction": ((1, ("trained", "program")), (-1, ("trained", "root")), (-1, ("base", "program")),
                    (1, ("base", "root"))),
    "total": ((1, ("trained", "program")), (-1, ("base", "root"))),
}


def cell_name(weights: str, prompt: str) -> str:
    return f"{weights}/{prompt}"


def breakdown(score: Callable[[str, list[str]], list[CellResult]], *, trained: bool, root: str, program: str,
              same_prompt: bool, known: dict[str, CellResult] | None = None) -> Breakdown:
    """Score the cells (``score(weights, prompts)``, one call per row: ``weights`` in base|trained,
    ``prompts`` those of root|program not yet known, a result for each) and their effects.
    ``known`` holds cells already scored on the same items (the final test evaluation is
    trained/program)."""
    rows = ("base", "trained") if trained else ("base",)
    columns = ("root",) if same_prompt else ("root", "program")
    cells = dict(known or {})
    for weights in rows:
        missing = [prompt for prompt in columns if cell_name(weights, prompt) not in cells]
        if missing:
            for prompt, cell in zip(missing, score(weights, missing), strict=True):
                cells[cell_name(weights, prompt)] = cell
    cells = {name: cells[name] for name in (cell_name(w, p) for w in rows for p in columns)}
    items = next(iter(cells.values())).items
    if any(c.items != items for c in cells.values()):
        raise ValueError("the breakdown's cells were scored on different items")
    effects = {}
    for name, terms in EFFECTS.items():
        needed = [cell_name(*cell) for _, cell in terms]
        if all(n in cells for n in needed):
            effects[name] = stats.contrast([(w, cells[cell_name(*cell)].per_problem) for w, cell in terms])
    return Breakdown(items, root, program, cells, effects, tuple(n for n in (known or {}) if n in cells))
