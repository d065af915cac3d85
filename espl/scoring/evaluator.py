"""The run's evaluator: the one owner of how a run's prompts are scored on its items.

It holds the run's sampling settings (:func:`sampling`), its test items (:func:`test_items`)
and the base-weights cells shared with other runs (:mod:`espl_bench.scoring.cells`), and scores
programs with the evaluation protocol (:func:`espl_bench.scoring.evaluation.evaluate_prompts`).
The loops, the final breakdown, ``calibrate``, ``select-best`` and ``evaluate`` all score through
it, so a number on the board is produced by one piece of code whichever command printed it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Protocol

from espl_bench.agents.rollout import RolloutEngine
from espl_bench.agents.sampler import SamplingParams
from espl_bench.config import RunConfig
from espl_bench.envs.splits import SplitPlan
from espl_bench.records import CellResult, EvalItems
from espl_bench.scoring.cells import CellStore
from espl_bench.scoring.evaluation import evaluate_prompts


class Scored(Protocol):
    """What the evaluator scores: a program's id and the prompt it renders (espl_bench.method.program.Program)."""

    id: str

    def render(self) -> str: ...


def sampling(cfg: RunConfig) -> SamplingParams:
    """How the policy samples; seeds come from each episode's coordinates, not from here."""
    return SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)


def test_items(cfg: RunConfig, plan: SplitPlan, problems: int | None = None, samples: int | None = None) -> EvalItems:
    """The run's test items: the first ``--eval-problems`` problems of the test split."""
    test = plan.test
    n = min(problems or cfg.eval_problems, test.size)
    return EvalItems(test.split, tuple(test.indices[:n]), samples or cfg.eval_samples, cfg.eval_seed,
                     cfg.prompt_placement)


class Evaluator:
    """Scores programs on the run's test items (or given ones) under the run's sampling settings.

    ``weights`` names the row a cell belongs to ("trained" or "base"); a run that trains no weights
    scores every cell as "base". Base-weights cells come from ``cells`` when another run already
    scored them with the same prompt, items and settings, and go there when this one does.
    """

    def __init__(self, cfg: RunConfig, plan: SplitPlan, cells: CellStore | None = None):
        self.params = sampling(cfg)
        self.items = test_items(cfg, plan)
        self.trains_weights = cfg.trains_weights
        self.cells = cells

    def score(self, engine: RolloutEngine, programs: Sequence[Scored], weights: str = "trained",
              items: EvalItems | None = None) -> list[CellResult]:
        """One cell per program, each decoded on its own (:func:`evaluate_prompts`)."""
        items = items or self.items
        weights = weights if self.trains_weights else "base"
        store = self.cells if weights == "base" else None
        # claimed: a parallel run that wants one of these cells waits for this one, then reads it
        with store.claimed([p.render() for p in programs], items, self.params) if store else contextlib.nullcontext():
            found: dict[int, CellResult] = {}
            if store is not None:
                for i, program in enumerate(programs):
                    if (cell := store.get(program.render(), program.id, items, self.params)) is not None:
                        found[i] = cell
            todo = [i for i in range(len(programs)) if i not in found]
            scored = evaluate_prompts(engine, [(programs[i].render(), programs[i].id) for i in todo], items,
                                      self.params, weights=weights) if todo else []
            for i, cell in zip(todo, scored):
                found[i] = cell
                if store is not None:
                    store.put(programs[i].render(), cell, self.params)
        return [found[i] for i in range(len(programs))]
